"""95% intervals of a mean: Wilson's for 0/1 scores, normal (t) ones for continuous
scores, clustered where samples share a haystack, and the standard error read off one."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence

from evalkit.types import MetricKind, SummaryRow

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (95% by default) for a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """Normal-approximation 95% interval of the mean of continuous scores (a
    probability mass, say): mean +- z * sd / sqrt(n). NaN bounds with fewer than two values."""
    n = len(values)
    if n < 2:
        return (float("nan"), float("nan"))
    mean = statistics.fmean(values)
    half = z * statistics.stdev(values) / math.sqrt(n)
    return (mean - half, mean + half)


def interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95% interval of a mean score: Wilson for 0/1 scores, else the normal one, kept
    inside [0, 1] when every score is (a probability mass, say)."""
    if metric_kind(values) == "binary":
        return wilson(sum(values), len(values))
    lo, hi = mean_interval(values)
    if all(0.0 <= v <= 1.0 for v in values) and not math.isnan(lo):
        return max(0.0, lo), min(1.0, hi)
    return lo, hi


def clustered_interval(values: Sequence[float], clusters: Sequence[str],
                       kind: MetricKind) -> tuple[float, float]:
    """The 95% interval of a mean whose samples come in clusters (questions sharing one
    haystack), from the cluster-robust variance sum_c (S_c - m_c * mean)^2 * G / (G - 1) / n^2.
    Binary: Wilson's interval at the effective sample size n / design effect (Kish), the
    design effect at least 1, and n / max cluster size when every score is equal;
    continuous: mean +- z * se. NaN bounds with fewer than two clusters."""
    n, groups = len(values), len(set(clusters))
    if n == 0 or groups < 2:
        return (float("nan"), float("nan"))
    mean = statistics.fmean(values)
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for v, c in zip(values, clusters, strict=True):
        sums[c][0] += v
        sums[c][1] += 1
    var = groups / (groups - 1) * sum((s - m * mean) ** 2 for s, m in sums.values()) / n**2
    if kind == "binary":
        iid = mean * (1 - mean) / n
        largest = max(m for _, m in sums.values())
        n_eff = max(1, round(n / max(1.0, var / iid) if iid > 0 else n / largest))
        return wilson(mean * n_eff, n_eff)
    half = Z95 * math.sqrt(var)
    return (mean - half, mean + half)


def interval_se(row: SummaryRow) -> float:
    """A standard error read off a row's 95% interval: its wider side over z, since an
    interval clipped to [0, 1] is narrower on the clipped side (NaN where it has none)."""
    return max(row.value - row.ci_low, row.ci_high - row.value) / Z95


def metric_kind(values: Sequence[float]) -> MetricKind:
    """binary when every score is 0 or 1, else continuous (for a metric no task declares)."""
    return "binary" if all(v in (0.0, 1.0) for v in values) else "continuous"
