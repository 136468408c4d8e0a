"""data/splits.py: whole patients per split, with counts derived by hand from the rank-quantile rule."""

import numpy as np
import pytest

from data.splits import assign_group_splits, check_groups_disjoint, split_counts


def _patients(n_patients: int, slices: int) -> list[str]:
    return [f"p{p}" for p in range(n_patients) for _ in range(slices)]


def test_no_patient_on_two_sides_and_shares_are_of_patients():
    groups = _patients(10, 3)
    splits = assign_group_splits(groups, seed=0, val_share=0.3, test_share=0.1)
    check_groups_disjoint(groups, splits)
    # 10 patients, quantiles 0.05 < 0.1 -> test; 0.15, 0.25, 0.35 < 0.4 -> val; six train
    assert split_counts(groups, splits) == {
        "test": {"patients": 1, "items": 3},
        "train": {"patients": 6, "items": 18},
        "val": {"patients": 3, "items": 9},
    }


def test_uneven_series_lengths_still_whole_patients():
    groups = ["a"] * 50 + ["b"] + ["c"] * 7 + ["d"] * 2 + ["e"] * 3
    splits = assign_group_splits(groups, seed=3, val_share=0.2, test_share=0.2)
    for g in set(groups):
        assert len({s for gg, s in zip(groups, splits, strict=True) if gg == g}) == 1


def test_row_order_does_not_change_a_patients_split():
    groups = _patients(12, 4)
    base = dict(zip(groups, assign_group_splits(groups, seed=7), strict=True))
    perm = np.random.default_rng(1).permutation(len(groups))
    shuffled = [groups[i] for i in perm]
    again = dict(zip(shuffled, assign_group_splits(shuffled, seed=7), strict=True))
    assert again == base


def test_stratified_over_patients_by_majority_label():
    # stratum A: p0..p4, stratum B: p5..p9; p4 has one stray B slice but its majority is A
    groups, strata = [], []
    for p in range(10):
        label = "A" if p < 5 else "B"
        groups += [f"p{p}"] * 3
        strata += [label] * 3
    strata[14] = "B"  # p4's last slice
    splits = assign_group_splits(groups, seed=0, val_share=0.2, test_share=0.2, strata=strata)
    per_patient = {g: s for g, s in zip(groups, splits, strict=True)}
    for members in (range(0, 5), range(5, 10)):
        got = sorted(per_patient[f"p{p}"] for p in members)
        # 5 patients: quantiles 0.1 -> test, 0.3 -> val, 0.5, 0.7, 0.9 -> train
        assert got == ["test", "train", "train", "train", "val"]


def test_seed_changes_the_draw():
    groups = _patients(40, 1)
    assert list(assign_group_splits(groups, seed=0)) != list(assign_group_splits(groups, seed=1))


def test_a_patient_on_two_sides_is_named():
    with pytest.raises(ValueError, match="both 'train' and 'test'"):
        check_groups_disjoint(["x", "x", "y"], ["train", "test", "train"])


def test_bad_shares_refused():
    with pytest.raises(ValueError, match="val_share"):
        assign_group_splits(["a"], seed=0, val_share=0.6, test_share=0.5)
