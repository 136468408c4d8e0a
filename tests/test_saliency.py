"""Saliency methods on the tiny BiomedCLIP stand-in: shapes, ranges, batching, determinism, real optimisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from localize.precision import autocast
from localize.saliency import (
    M2IBSaliency,
    PatchSimilaritySaliency,
    build_saliency,
    encode_prompts,
    image_text_scores,
)
from localize.saliency.common import vit_trunk
from localize.saliency.vit_suffix import ClassTokenBlock, VisionSuffix

pytest_plugins = ["tests.localize_fixtures"]  # fixtures: standins, clip, clip_dir, sam

PROMPTS = ["brain tumor", "left and right lungs", "lung nodule"]
M2IB = M2IBSaliency(layer=3, steps=4, noise_samples=2)  # the release's M2IB, fewer steps and noise copies


@pytest.fixture(scope="module")
def batch(clip):
    model, tokenizer, preprocess, _ = clip
    rng = np.random.default_rng(0)
    images = [rng.random((48, 64)).astype(np.float32), rng.random((40, 40, 3)).astype(np.float32)]
    return preprocess(images), encode_prompts(model, tokenizer, PROMPTS)


@pytest.mark.parametrize("method", [M2IB, PatchSimilaritySaliency()], ids=["m2ib", "similarity"])
def test_shape_range_and_batched_equals_one_at_a_time(clip, batch, method):
    model = clip.model
    images, text = batch
    saliency = method(model, images, text)
    assert saliency.shape == (2, 3, 160, 160) and saliency.dtype == torch.float32
    flat = saliency.flatten(2)
    assert torch.allclose(flat.amin(-1), torch.zeros(2, 3)) and torch.allclose(flat.amax(-1), torch.ones(2, 3))
    one_at_a_time = torch.stack(
        [torch.cat([method(model, images[b : b + 1], text[p : p + 1]) for p in range(3)], 1)[0] for b in range(2)]
    )
    assert torch.allclose(saliency, one_at_a_time, atol=1e-4)
    assert not torch.allclose(saliency[0, 0], saliency[1, 0], atol=1e-2)  # maps depend on the image


def test_m2ib_is_deterministic_given_its_seed(clip, batch):
    images, text = batch
    first, again = M2IB(clip.model, images, text), M2IB(clip.model, images, text)
    assert torch.equal(first, again)
    other_seed = M2IBSaliency(layer=3, steps=4, noise_samples=2, seed=1)(clip.model, images, text)
    assert not torch.allclose(first, other_seed, atol=1e-3)


def test_m2ib_prefix_reuse_equals_the_full_tower_every_step(clip, batch):
    images, text = batch
    first_block = vit_trunk(clip.model).blocks[0]
    calls = []
    handle = first_block.register_forward_hook(lambda m, i, out: calls.append(1))
    try:
        reused = M2IB.run(clip.model, images, text)
        reused_calls = len(calls)
        full = M2IBSaliency(layer=3, steps=4, noise_samples=2, reuse_prefix=False).run(clip.model, images, text)
    finally:
        handle.remove()
    assert reused_calls == 1 and len(calls) - reused_calls == 1 + 4  # the prefix runs once, not once per step
    torch.testing.assert_close(reused.saliency_bphw, full.saliency_bphw, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reused.loss_s, full.loss_s, atol=1e-5, rtol=1e-4)
    assert "reuse_prefix" not in M2IBSaliency().provenance()


def test_m2ib_map_only_skips_the_last_steps_pass_and_gives_the_same_map(clip, batch):
    """The release's map is the capacity of the last forward pass: the mask before the final update. Skipping that
    step's tower pass must leave the map as it is (a skip taken one step too early would give the map of step 3)."""
    images, text = batch
    method = M2IBSaliency(layer=3, steps=4, noise_samples=2, reuse_prefix=False)
    last_block = vit_trunk(clip.model).blocks[-1]
    calls = []
    handle = last_block.register_forward_hook(lambda m, i, out: calls.append(1))
    try:
        full = method.run(clip.model, images, text)
        full_calls = len(calls)
        saliency = method(clip.model, images, text)
    finally:
        handle.remove()
    assert full_calls == 1 + 4 and len(calls) - full_calls == 1 + 3  # the clean pass, then one pass per step
    torch.testing.assert_close(saliency, full.saliency_bphw, atol=1e-6, rtol=1e-5)
    three_steps = M2IBSaliency(layer=3, steps=3, noise_samples=2, reuse_prefix=False).run(clip.model, images, text)
    assert not torch.allclose(saliency, three_steps.saliency_bphw, atol=1e-4)  # the steps do move the map


def test_vision_suffix_computes_the_class_token_only_and_exactly(clip, batch):
    images, _ = batch
    model = clip.model
    trunk = vit_trunk(model)
    captured = []
    handle = trunk.blocks[3].register_forward_hook(lambda m, i, out: captured.append(out))
    with torch.no_grad():
        embedding_bd = model.encode_image(images)
    handle.remove()
    feat_btc = captured[0]
    short, full = VisionSuffix(model, trunk, 3), VisionSuffix(model, trunk, 3, class_token_only=False)
    assert isinstance(short._parts[0][-1], ClassTokenBlock)
    assert not any(isinstance(b, ClassTokenBlock) for b in full._parts[0])
    assert short.reproduces(feat_btc, embedding_bd) and full.reproduces(feat_btc, embedding_bd)
    # The check tolerates rounding at the precision the model runs at, and nothing more.
    assert not short.reproduces(feat_btc, embedding_bd * 1.01)
    assert short.reproduces(feat_btc, (embedding_bd * 1.01).bfloat16())
    assert not short.reproduces(feat_btc, (embedding_bd * 1.2).bfloat16())
    assert not short.reproduces(feat_btc, torch.roll(embedding_bd, 1, dims=0))
    # The class token's row of the last block, computed alone, is that row of the whole block.
    last = trunk.blocks[-1]
    with torch.no_grad():
        torch.testing.assert_close(ClassTokenBlock(last)(feat_btc), last(feat_btc)[:, :1], atol=1e-5, rtol=1e-4)
    # Pooling that reads every token keeps the whole last block (the shortcut would be wrong there).
    trunk.global_pool = "avg"
    try:
        assert not any(isinstance(b, ClassTokenBlock) for b in VisionSuffix(model, trunk, 3)._parts[0])
    finally:
        trunk.global_pool = "token"


def test_m2ib_noise_samples_average_several_draws_per_step(clip, batch):
    images, text = batch
    several = M2IBSaliency(layer=3, steps=3, noise_samples=3)
    maps = several.run(clip.model, images, text)
    # Every (image, prompt) item gets one mask whatever the number of draws, and batching still changes nothing.
    assert maps.lambda_ntc.shape[0] == 2 * 3 and maps.saliency_bphw.shape == (2, 3, 160, 160)
    alone = several(clip.model, images[1:], text[2:])
    torch.testing.assert_close(maps.saliency_bphw[1:, 2:], alone, atol=1e-4, rtol=1e-4)
    full = M2IBSaliency(layer=3, steps=3, noise_samples=3, reuse_prefix=False).run(clip.model, images, text)
    torch.testing.assert_close(maps.saliency_bphw, full.saliency_bphw, atol=1e-5, rtol=1e-4)
    # The first draw of each step is the one-sample run's draw: more samples change the learnt mask.
    one = M2IBSaliency(layer=3, steps=3, noise_samples=1).run(clip.model, images, text)
    assert not torch.allclose(one.lambda_ntc, maps.lambda_ntc, atol=1e-4)
    assert several.provenance()["noise_samples"] == 3
    with pytest.raises(ValueError, match="noise_samples >= 1"):
        M2IBSaliency(noise_samples=0)
    assert M2IBSaliency().noise_samples == 10  # the release's IBAInterpreter batch_size


def test_m2ib_really_optimises_its_mask(clip, batch):
    images, text = batch
    run = M2IBSaliency(layer=3, steps=10, noise_samples=2).run(clip.model, images[:1], text[:1])
    initial = torch.sigmoid(torch.tensor(5.0))
    assert run.lambda_ntc.shape == (1, 101, 64)  # 1 item, 1 + 10x10 tokens, 64 channels (test_vit)
    assert (run.lambda_ntc - initial).abs().max() > 0.1
    assert run.loss_s.shape == (10,) and run.loss_s[-1] < run.loss_s[0]
    # More steps give a different map: the map is the learnt information, not a fixed function of the features.
    shorter = M2IBSaliency(layer=3, steps=1, noise_samples=2)(clip.model, images[:1], text[:1])
    assert not torch.allclose(run.saliency_bphw, shorter, atol=1e-3)


def test_m2ib_leaves_the_model_as_it_was(clip, batch):
    model = clip.model
    images, text = batch
    reference = image_text_scores(model, images, text)
    M2IB(model, images, text)
    assert all(not block._forward_hooks for block in model.visual.trunk.blocks)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert torch.equal(image_text_scores(model, images, text), reference)


def test_m2ib_layer_beyond_depth_is_clamped_with_a_warning(clip, batch):
    images, text = batch
    with pytest.warns(UserWarning, match="using the last block"):
        clamped = M2IBSaliency(layer=7, steps=2, noise_samples=1)(clip.model, images[:1], text[:1])
        assert M2IBSaliency(layer=7).provenance(clip.model)["effective_layer"] == 5
    last = M2IBSaliency(layer=5, steps=2, noise_samples=1)(clip.model, images[:1], text[:1])
    assert torch.equal(clamped, last)
    assert M2IBSaliency(layer=3).provenance(clip.model)["effective_layer"] == 3


def test_similarity_peaks_where_the_patch_matches_the_text(clip, batch):
    model = clip.model
    images, _ = batch
    trunk = model.visual.trunk
    with torch.no_grad():
        patches = model.visual.head(trunk.forward_features(images[:1])[:, trunk.num_prefix_tokens :])
    row, col = 2, 7  # on the 10x10 patch grid of 16 px patches
    text = F.normalize(patches[0, row * 10 + col][None], dim=-1)
    saliency = PatchSimilaritySaliency()(model, images[:1], text)[0, 0]
    y, x = divmod(int(saliency.argmax()), 160)
    assert (y // 16, x // 16) == (row, col)


def test_prompt_embeddings_and_scores(clip, batch):
    images, text = batch
    assert text.shape == (3, 32) and torch.allclose(text.norm(dim=-1), torch.ones(3))
    scores = image_text_scores(clip.model, images, text)
    assert scores.shape == (2, 3) and (scores.abs() <= 1).all()


def test_build_saliency_from_config_and_presets():
    release = build_saliency({"method": "m2ib"})
    assert release == M2IBSaliency() and release.provenance()["gradient_free"] is False
    # the release's values (scripts/iba.py, methods.py, generate_saliency_maps.py defaults)
    assert (release.layer, release.beta, release.steps, release.lr, release.noise_samples) == (7, 0.1, 10, 1.0, 10)
    assert (release.noise_stats, release.map_at, release.preset) == ("raw", "last_forward", "release")
    fast = build_saliency({"method": "m2ib", "preset": "fast", "steps": 4})
    assert fast.provenance() | {"steps": 10} == release.provenance() | {
        "preset": "fast",
        "noise_stats": "empirical",
        "noise_samples": 1,
        "map_at": "final",
    }
    assert build_saliency({"method": "similarity"}).provenance() == {"method": "similarity", "gradient_free": True}
    with pytest.raises(ValueError, match="Unknown saliency method"):
        build_saliency({"method": "gradcam"})
    with pytest.raises(ValueError, match="Unknown m2ib preset"):
        build_saliency({"method": "m2ib", "preset": "fastest"})
    with pytest.raises(ValueError, match="Bad parameters"):
        build_saliency({"method": "m2ib", "layers": 7})
    with pytest.raises(ValueError, match="steps >= 1"):
        build_saliency({"method": "m2ib", "steps": 0})
    with pytest.raises(ValueError, match="map_at"):
        build_saliency({"method": "m2ib", "map_at": "best"})


def test_bf16_autocast_runs_on_the_cpu_and_stays_close(clip, batch):
    images, text = batch
    fp32 = M2IB(clip.model, images, text)
    with autocast(images.device, "bf16"):
        bf16 = M2IB(clip.model, images, text)
    assert bf16.dtype == torch.float32 and 0 <= bf16.min() and bf16.max() <= 1
    assert not torch.equal(bf16, fp32) and (bf16 - fp32).abs().mean() < 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bf16_on_gpu_matches_cpu_roughly(clip, batch):
    images, text = batch
    model_gpu = clip.model.to("cuda")
    try:
        for method in (M2IB, PatchSimilaritySaliency()):
            with autocast(torch.device("cuda"), "bf16"):
                on_gpu = method(model_gpu, images.cuda(), text.cuda()).cpu()
            assert on_gpu.shape == (2, 3, 160, 160) and on_gpu.dtype == torch.float32
            assert 0 <= on_gpu.min() and on_gpu.max() <= 1
        # Under bf16 the suffix (class-token last block included) still passes its check: the prefix runs once.
        calls = []
        handle = vit_trunk(model_gpu).blocks[0].register_forward_hook(lambda m, i, out: calls.append(1))
        try:
            with autocast(torch.device("cuda"), "bf16"):
                M2IB(model_gpu, images.cuda(), text.cuda())
        finally:
            handle.remove()
        assert len(calls) == 1
    finally:
        clip.model.to("cpu")
