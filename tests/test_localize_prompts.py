"""Prompt configuration per modality and the combination of several prompts' saliency maps."""

from __future__ import annotations

import pytest
import torch

from localize.prompts import DEFAULT_PROMPTS_PATH, PromptConfig, PromptConfigError, combine_saliency


def test_shipped_prompts_cover_the_three_modalities_and_a_default():
    config = PromptConfig.load(DEFAULT_PROMPTS_PATH)
    assert "brain tumor" in config.for_modality("MR").prompts
    assert config.for_modality("XR").prompts[0] == "left and right lungs"
    assert config.for_modality("CT").combine == "union"
    assert config.for_modality("US") == config.by_modality["default"]
    assert PromptConfig.load(config.to_dict()) == config  # round trip through the inline form


def test_inline_lists_mappings_and_per_modality_combine():
    config = PromptConfig.load(
        {
            "combine": "best",
            "modalities": {"MR": ["glioma", "brain tumor"], "XR": {"prompts": ["lungs"], "combine": "union"}},
        }
    )
    assert config.for_modality("MR").prompts == ("glioma", "brain tumor")
    assert config.for_modality("MR").combine == "best" and config.for_modality("XR").combine == "union"
    assert config.all_prompts() == ["glioma", "brain tumor", "lungs"]
    with pytest.raises(PromptConfigError, match="No prompts for modality 'CT' and no 'default'"):
        config.for_modality("CT")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"modalities": {"MR": "brain tumor"}}, "modalities.MR: needs a non-empty list"),
        ({"modalities": {"MR": []}}, "needs a non-empty list"),
        ({"modalities": {"MR": ["tumor", ""]}}, "non-empty string"),
        ({"modalities": {"MR": ["tumor", "tumor"]}}, "duplicate"),
        ({"modalities": {"MR": {"prompts": ["tumor"], "combine": "mean"}}}, "combine must be one of"),
        ({"prompts": ["tumor"]}, "'modalities'"),
    ],
)
def test_invalid_prompt_configs_are_named(raw, message):
    with pytest.raises(PromptConfigError, match=message):
        PromptConfig.load(raw)


def test_unreadable_prompt_file_is_named(tmp_path):
    bad = tmp_path / "prompts.yaml"
    bad.write_text("modalities: [unclosed")
    with pytest.raises(PromptConfigError, match="prompts.yaml"):
        PromptConfig.load(bad)
    with pytest.raises(PromptConfigError, match="absent.yaml"):
        PromptConfig.load(tmp_path / "absent.yaml")


def test_combine_union_and_best():
    saliency = torch.zeros(2, 3, 4, 4)
    saliency[0, 0, 0, 0], saliency[0, 2, 3, 3] = 1.0, 0.5
    saliency[1, 1] = 0.25
    union = combine_saliency(saliency, "union")
    assert union[0, 0, 0] == 1.0 and union[0, 3, 3] == 0.5 and torch.all(union[1] == 0.25)
    scores = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.1, 0.0]])
    best = combine_saliency(saliency, "best", scores)
    assert torch.equal(best[0], saliency[0, 2]) and torch.equal(best[1], saliency[1, 0])
    with pytest.raises(ValueError, match="needs scores of shape"):
        combine_saliency(saliency, "best")
