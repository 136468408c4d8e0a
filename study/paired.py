"""Paired comparisons over seeds: the per-seed differences between two arms and their t-interval.

Two arms run with the same seed share the downstream run's randomness (head init, data order, augmentation)
and the pretraining's data order, so their difference is read seed by seed: d_s = metric(A, s) - metric(B, s)
over the seeds both finished, and the interval is Student's t on those differences,
mean(d) +- t_{(1+level)/2, n-1} * sd(d) / sqrt(n) (sample sd, n - 1 degrees of freedom), with the two-sided
p-value of mean(d) = 0. With one seed there is no interval (NaN).

Beside it, statistics that do not overclaim on a few seeds:
- zero spread: when every seed gives the same difference (a discrete metric often does), sd = 0 and the
  t-interval has zero width; t is undefined, so its p-value is NaN and the interval is flagged (`zero_spread`)
  instead of reading as certainty;
- the exact sign-flip (permutation) p-value: under "no difference" each d_s is as likely to be -d_s, so the
  p-value is the share of the 2^n sign patterns whose |mean| is at least the observed one (two-sided). It needs
  no normality, and with n seeds it is never below 2^(1-n) (3 seeds: 0.25; 5 seeds: 0.0625);
- Holm's step-down adjustment of a family of p-values (all comparisons of one table), controlling the
  family-wise error rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

ZERO_SPREAD_TOL = 1e-9  # relative: differences equal up to floating-point rounding count as one value


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
    zero_spread: bool = False  # n >= 2 and every difference equal: the zero-width interval is not certainty


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
    if sd <= ZERO_SPREAD_TOL * max(1.0, abs(mean)):  # equal up to rounding (0.7 - 0.6 vs 0.8 - 0.7)
        return PairedInterval(mean, 0.0, n, mean, mean, math.nan, level, zero_spread=True)
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * se
    p_value = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return PairedInterval(mean, sd, n, mean - half, mean + half, p_value, level)


def sign_flip_p(values: Sequence[float], max_exact: int = 16, draws: int = 100_000) -> float:
    """Two-sided sign-flip p-value of mean(values) = 0: the share of sign patterns s in {-1, 1}^n with
    |sum(s * values)| >= |sum(values)|, over all 2^n patterns (n <= max_exact), else over `draws` random ones
    (seeded; the observed pattern counted once more, so p > 0). NaN without values."""
    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n == 0:
        return math.nan
    observed = abs(float(x.sum()))
    tol = ZERO_SPREAD_TOL * max(1.0, float(np.abs(x).sum()))
    if n <= max_exact:
        patterns = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1  # every row a sign pattern
        return float(np.mean(np.abs(patterns @ x) >= observed - tol))
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(draws, n))
    return float((np.sum(np.abs(signs @ x) >= observed - tol) + 1) / (draws + 1))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order: the k-th smallest of the m non-NaN values is
    multiplied by m - k + 1, then made non-decreasing along that order and capped at 1. NaN stays NaN and is
    not counted in m."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def per_seed(runs: pd.DataFrame, arm: str, downstream: str, metric: str) -> pd.Series:
    """The metric of `arm` on `downstream`, indexed by seed."""
    rows = runs[(runs.arm == arm) & (runs.downstream == downstream) & (runs.metric == metric)]
    return rows.set_index("seed")["value"].astype(float)


def paired_differences(runs: pd.DataFrame, arm: str, reference: str, downstream: str, metric: str) -> pd.Series:
    """metric(arm, s) - metric(reference, s) for every seed s both arms finished, indexed by seed."""
    a, b = per_seed(runs, arm, downstream, metric), per_seed(runs, reference, downstream, metric)
    common = a.index.intersection(b.index).sort_values()
    return a.loc[common] - b.loc[common]
