"""Paired comparisons over seeds: the per-seed differences between two arms and their t-interval.

Two arms run with the same seed share the downstream run's randomness (head init, data order, augmentation)
and the pretraining's data order, so their difference is read seed by seed: d_s = metric(A, s) - metric(B, s)
over the seeds both finished, and the interval is Student's t on those differences,
mean(d) +- t_{(1+level)/2, n-1} * sd(d) / sqrt(n) (sample sd, n - 1 degrees of freedom), with the two-sided
p-value of mean(d) = 0. With one seed there is no interval (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class PairedInterval:
    """Mean of the paired differences with its t-interval (`level`), from n pairs."""

    mean: float
    sd: float
    n: int
    low: float
    high: float
    p_value: float
    level: float = 0.95


def t_interval(values: Sequence[float], level: float = 0.95) -> PairedInterval:
    """Student's t-interval of the mean of `values` (for paired differences: the paired t-interval)."""
    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n == 0:
        raise ValueError("no values: no interval")
    mean = float(x.mean())
    if n < 2:
        return PairedInterval(mean, math.nan, n, math.nan, math.nan, math.nan, level)
    sd = float(x.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * se
    p_value = float(2 * stats.t.sf(abs(mean) / se, n - 1)) if se > 0 else (0.0 if mean != 0 else 1.0)
    return PairedInterval(mean, sd, n, mean - half, mean + half, p_value, level)


def per_seed(runs: pd.DataFrame, arm: str, downstream: str, metric: str) -> pd.Series:
    """The metric of `arm` on `downstream`, indexed by seed."""
    rows = runs[(runs.arm == arm) & (runs.downstream == downstream) & (runs.metric == metric)]
    return rows.set_index("seed")["value"].astype(float)


def paired_differences(runs: pd.DataFrame, arm: str, reference: str, downstream: str, metric: str) -> pd.Series:
    """metric(arm, s) - metric(reference, s) for every seed s both arms finished, indexed by seed."""
    a, b = per_seed(runs, arm, downstream, metric), per_seed(runs, reference, downstream, metric)
    common = a.index.intersection(b.index).sort_values()
    return a.loc[common] - b.loc[common]
