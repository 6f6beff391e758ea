"""The statistics of the report: means with t confidence intervals, paired t-tests over seeds, corrections.

Every knockout cell is compared with its model's baseline *paired by seed*: a trial and its baseline with the
same seed share the initialisation and the sampling stream, so the per-seed difference removes most of the
seed-to-seed variance. With the few seeds a study affords (3 to 5), a rank test cannot reach p < 0.05
(the smallest two-sided Wilcoxon p with 3 pairs is 0.25), so the test is the paired Student t-test on the
per-seed differences (`scipy.stats.ttest_rel`, two-sided). Its p-values are corrected within a family: all
knockout cells of one model on one dataset for one metric (many treatments against one control), with
Holm's step-down method by default (strong family-wise error control, no independence assumption), or
Benjamini-Hochberg (false discovery rate) on request.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

CORRECTIONS = ("holm", "bh", "none")


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided t interval of the mean; the interval is NaN with fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def paired_t(a, b) -> float:
    """Two-sided p of the paired t-test of a against b (same length, paired by position).

    Fewer than 2 pairs: NaN (no test). Differences all equal to zero: 1.0 (nothing changed). Differences
    all equal but not zero (zero variance): 0.0, the limit of the test.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = a - b
    if d.size < 2:
        return math.nan
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_rel(a, b).pvalue)


def adjust(pvalues, method: str = "holm") -> np.ndarray:
    """Corrected p-values of one family; NaN entries (no test) stay NaN and do not count in the family."""
    if method not in CORRECTIONS:
        raise ValueError(f"correction {method!r}: expected one of {CORRECTIONS}")
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    if method == "none":
        out[ok] = p[ok]
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    sorted_p = p[order]
    if method == "holm":
        factors = m - np.arange(m)
        adjusted = np.maximum.accumulate(np.minimum(1.0, factors * sorted_p))
    else:  # Benjamini-Hochberg
        factors = m / np.arange(1, m + 1)
        adjusted = np.minimum.accumulate((factors * sorted_p)[::-1])[::-1]
        adjusted = np.minimum(1.0, adjusted)
    out[order] = adjusted
    return out


def stars(p: float, alpha: float = 0.05) -> str:
    """Significance mark of a corrected p: *** < 0.001, ** < 0.01, * < alpha, 'ns' otherwise, '' untested."""
    if not np.isfinite(p):
        return ""
    if p >= alpha:
        return "ns"
    if p < 0.001:
        return "***"
    if p < 0.01:
        return "**"
    return "*"
