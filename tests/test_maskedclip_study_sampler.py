"""Batches of K images per study (`data.images_per_study`, issue 25 item 5): composition, ranks, epochs, resume,
and a short run whose L_CLIP sees several images of a study, masked as each other's negatives."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
import pytorch_lightning as pl
import torch

from pretrain.maskedclip.datamodule import PairedDataModule
from pretrain.maskedclip.module import MaskedClipPretraining
from pretrain.maskedclip.study_sampler import KeyedBatches, StudyBatchSampler
from tests.maskedclip_fixtures import tiny_model_args, write_study_corpus


def sampler(studies, k=2, batch=4, world=1, rank=0, seed=0) -> StudyBatchSampler:
    return StudyBatchSampler(studies, k, batch, world, rank, seed)


def epoch_batches(s: StudyBatchSampler, epoch: int) -> list[list[int]]:
    s.set_epoch(epoch)
    batches = [[i for e, i in batch] for batch in s]
    assert all(e == epoch for batch in s for e, _ in batch)  # keys carry the epoch (augmentation seeds)
    return batches


def study_counts(batch: list[int], studies: list[str]) -> Counter:
    return Counter(studies[i] for i in batch)


def test_every_batch_holds_b_over_k_studies_with_k_images_each_and_every_image_once():
    # 12 studies of exactly 2 images (shuffled in the table), K=2, B=6: 3 studies a batch, 4 batches an epoch
    studies = [f"s{i % 12}" for i in range(24)]
    s = sampler(studies, k=2, batch=6)
    assert len(s) == 4
    batches = epoch_batches(s, 0)
    assert len(batches) == 4
    for batch in batches:
        assert sorted(study_counts(batch, studies).values()) == [2, 2, 2]
    assert sorted(i for b in batches for i in b) == list(range(24))


def test_large_studies_give_k_images_a_batch_and_small_ones_fewer():
    # sizes 5, 4, 3, 1, 1, 6: chunks of 2 (the last shorter); 2 distinct studies a batch
    sizes = [5, 4, 3, 1, 1, 6]
    studies = [f"st{j}" for j, n in enumerate(sizes) for _ in range(n)]
    s = sampler(studies, k=2, batch=4)
    chunks = 3 + 2 + 2 + 1 + 1 + 3
    assert len(s) == chunks // 2
    for epoch in range(3):
        batches = epoch_batches(s, epoch)
        assert len(batches) == len(s)
        for batch in batches:
            counts = study_counts(batch, studies)
            assert len(counts) == 2  # B/K studies, never one study twice
            for study, n in counts.items():
                assert 1 <= n <= 2
                if n == 1:  # a short chunk: the study's size is odd or it has a single image
                    assert sizes[int(study[2:])] % 2 == 1
            assert len(set(batch)) == len(batch)  # without replacement within a batch


def test_a_dominant_study_never_fills_a_batch_alone():
    studies = ["big"] * 12 + [f"small{j}" for j in range(6)]  # 6 chunks of "big", 6 single images
    s = sampler(studies, k=2, batch=4)
    for epoch in range(4):
        for batch in epoch_batches(s, epoch):
            counts = study_counts(batch, studies)
            assert len(counts) == 2 and max(counts.values()) <= 2


def test_ranks_get_disjoint_studies_and_the_same_number_of_batches():
    studies = [f"s{i // 2}" for i in range(48)]  # 24 studies of 2
    for epoch in (0, 1):
        per_rank = [epoch_batches(sampler(studies, k=2, batch=4, world=3, rank=r), epoch) for r in range(3)]
        assert [len(b) for b in per_rank] == [4, 4, 4]
        seen = [{studies[i] for b in batches for i in b} for batches in per_rank]
        for a in range(3):
            for b in range(a + 1, 3):
                assert not seen[a] & seen[b], (epoch, a, b)
        assert sorted(i for batches in per_rank for b in batches for i in b) == list(range(48))
    # the studies are dealt anew each epoch
    rank0 = [{studies[i] for b in epoch_batches(sampler(studies, world=3), e) for i in b} for e in (0, 1)]
    assert rank0[0] != rank0[1]


def test_unequal_ranks_still_yield_equal_batch_counts():
    sizes = [9, 1, 1, 1, 2, 2, 3, 1]
    studies = [f"s{j}" for j, n in enumerate(sizes) for _ in range(n)]
    per_rank = [epoch_batches(sampler(studies, k=2, batch=4, world=2, rank=r), 5) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == (5 + 1 + 1 + 1 + 1 + 1 + 2 + 1) // 4
    assert not {studies[i] for b in per_rank[0] for i in b} & {studies[i] for b in per_rank[1] for i in b}


def test_order_depends_on_seed_and_epoch_only():
    studies = [f"s{i // 3}" for i in range(60)]
    a = epoch_batches(sampler(studies, seed=1), 2)
    assert a == epoch_batches(sampler(studies, seed=1), 2)
    assert a != epoch_batches(sampler(studies, seed=1), 3)
    assert a != epoch_batches(sampler(studies, seed=2), 2)
    # the studies' order changes from epoch to epoch, not only the images within them
    first_studies = [[studies[b[0]] for b in epoch_batches(sampler(studies, seed=1), e)] for e in range(3)]
    assert first_studies[0] != first_studies[1] != first_studies[2]


def test_a_resumed_epoch_starts_after_the_batches_already_done():
    studies = [f"s{i // 2}" for i in range(40)]
    s = sampler(studies)
    full = epoch_batches(s, 4)
    s.skip_next(3)
    assert epoch_batches(s, 4) == full[3:]
    assert epoch_batches(s, 4) == full  # once only


def test_bad_settings_are_refused():
    studies = [f"s{i // 2}" for i in range(20)]
    with pytest.raises(ValueError, match="divide the batch size"):
        sampler(studies, k=3, batch=4)
    with pytest.raises(ValueError, match="10 studies over 3 device"):
        sampler(studies, k=1, batch=4, world=3)
    with pytest.raises(ValueError, match="images_per_study must be >= 1"):
        PairedDataModule("c", "c.zarr", images_per_study=0)


def test_keyed_batches_collate_the_items_of_a_batch():
    batches = KeyedBatches([{"x": torch.tensor(i)} for i in range(5)])
    assert batches[[3, 1]]["x"].tolist() == [3, 1]


def test_a_run_with_k_images_per_study_masks_same_study_negatives(tmp_path):
    """Two images per study in every batch: each L_CLIP call gets pairs of one study side by side, with their
    study keys (the negatives' mask); validation is split by patient, whole studies."""
    corpus, cache, manifest, manifest_path, reports = write_study_corpus(tmp_path, images_per_patient=4)
    data = PairedDataModule(
        corpus,
        cache,
        manifest=manifest_path,
        reports=reports,
        input_size=64,
        batch_size=4,
        images_per_study=2,
        num_workers=0,
        val_fraction=0.25,
        context_length=48,
        hflip=0,
    )
    module = MaskedClipPretraining(**tiny_model_args(lr=1e-3))
    calls = []
    module.model.clip_loss.register_forward_hook(
        lambda m, args, kwargs, out: m.training and calls.append(kwargs.get("groups")), with_kwargs=True
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
    assert trainer.num_training_batches == len(data.train_dataloader()) >= 2
    assert len(calls) == trainer.num_training_batches  # a contrast every training step
    for groups in calls:
        per_study = Counter(groups[:, 1].tolist())
        assert len(per_study) == 2 and max(per_study.values()) == 2  # two images of one study meet in L_CLIP
    study_of_row = manifest["study_key"].to_numpy()
    train_studies = set()
    for batch in data.train_dataloader():
        counts = Counter(study_of_row[batch["index"].numpy()])
        assert len(counts) == 2 and set(counts.values()) <= {1, 2}
        train_studies |= set(counts)
    val_studies = {study_of_row[data.val_set[i]["index"]] for i in range(len(data.val_set))}
    assert val_studies and not val_studies & train_studies

    # a run restored inside epoch 1 after 2 batches gets that epoch's batches from the third on
    def loader_positions(epochs_started: int, batches_done: int, epochs_done: int = 1) -> list[list[int]]:
        restored = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        restored.fit_loop.epoch_progress.current.processed = epochs_done
        restored.fit_loop.epoch_progress.current.started = epochs_started
        restored.fit_loop.epoch_loop.batch_progress.current.processed = batches_done
        data.trainer = restored
        return [batch["index"].tolist() for batch in data.train_dataloader()]

    whole_epoch = loader_positions(epochs_started=1, batches_done=0)  # between epochs: epoch 1 from its start
    assert loader_positions(epochs_started=2, batches_done=2) == whole_epoch[2:]
    assert whole_epoch != loader_positions(epochs_started=2, batches_done=0, epochs_done=2)  # epoch 2: a new order
