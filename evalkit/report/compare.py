"""Compare two runs cell by cell: deltas and whether each is statistically significant.

A cell is (task, length, subset, metric), for every metric the runs' summary rows carry.
The test fits the metric and what the cell's value is:
- a binary metric (every score 0 or 1) whose value is the mean of its samples: the pooled
  two-proportion z-test, or Fisher's exact test where counts are small;
- a continuous metric (TruthfulQA mc2) whose value is the mean of its samples: the paired
  t-test when both runs scored the same sample ids, else Welch's t-test;
- a derived value (a mean of subset means such as MMLU's unweighted mean, the leaderboard
  average): a z-test on the difference with each side's standard error read off its 95%
  interval.
The t distribution is computed here with the standard library (scipy is not a dependency
of evalkit); tests/test_report_metrics.py checks it against scipy.stats.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from evalkit import store
from evalkit.report.html import load_runs
from evalkit.report.metrics import MetricInfo, cell_values, metric_info
from evalkit.report.plots import length_plot
from evalkit.report.tables import fmt_length, is_mean_of_tasks, length_tables, split_rows
from evalkit.scoring import Z95
from evalkit.types import MetricKind, SummaryRow

LEGEND = ("delta = B - A; sig: p < 0.05. Tests: z = two-proportion z-test, fisher = Fisher's "
          "exact test (0/1 scores, small counts);\npaired-t = paired t-test on the sample ids "
          "both runs scored, welch-t = Welch's t-test (continuous scores);\nz-ci = z-test "
          "with standard errors from the 95% intervals (derived values: means of subset "
          "means, averages over tasks)")


@dataclass(frozen=True)
class CompareRow:
    task: str
    subset: str
    length: int | str
    a: SummaryRow | None
    b: SummaryRow | None
    delta: float | None     # b - a
    p_value: float | None
    test: str               # "z", "fisher", "paired-t", "welch-t", "z-ci" or "" (none)
    metric: str = "accuracy"
    kind: MetricKind = "binary"
    higher_is_better: bool = True

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < 0.05

    @property
    def verdict(self) -> str:
        """"better" or "worse" (B against A) when significant, else ""."""
        if not self.significant or not self.delta:
            return ""
        return "better" if (self.delta > 0) == self.higher_is_better else "worse"


def two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p of the pooled two-proportion z-test."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (k2 / n2 - k1 / n1) / se
    return math.erfc(abs(z) / math.sqrt(2))


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p of Fisher's exact test on the 2x2 table (exact for small counts)."""
    total, k = n1 + n2, k1 + k2

    def prob(x: int) -> float:
        return math.comb(n1, x) * math.comb(n2, k - x) / math.comb(total, k)

    observed = prob(k1)
    lo, hi = max(0, k - n2), min(k, n1)
    return min(1.0, sum(p for x in range(lo, hi + 1) if (p := prob(x)) <= observed * (1 + 1e-9)))


def proportion_test(a: SummaryRow, b: SummaryRow) -> tuple[float, str]:
    k1, k2 = round(a.value * a.n), round(b.value * b.n)
    if a.n == 0 or b.n == 0:
        return 1.0, "none"  # a cell with no scored sample on one side: nothing to test
    expected = min(a.n, b.n) * min((k1 + k2), (a.n + b.n - k1 - k2)) / (a.n + b.n)
    if expected < 5:
        return fisher_exact(k1, a.n, k2, b.n), "fisher"
    return two_proportion_z(k1, a.n, k2, b.n), "z"


# ---- the t distribution, standard library only -----------------------------------------

_TINY = 1e-300


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz); converges
    in a few dozen steps where it is used (x below the mean), bounded at 500."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 501):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            step = c * d
            h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_two_sided(t: float, df: float) -> float:
    """Two-sided p of Student's t with `df` degrees of freedom: P(|T| >= |t|)."""
    if math.isnan(t) or df <= 0:
        return float("nan")
    if math.isinf(t):
        return 0.0
    return min(1.0, betainc(df / 2.0, 0.5, df / (df + t * t)))


def welch_t(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p of Welch's t-test (unequal variances) on two independent samples."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(b) - statistics.fmean(a)
    if va + vb == 0:
        return 1.0 if diff == 0 else 0.0  # no spread at all: equal or certainly different
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    return t_two_sided(diff / math.sqrt(va + vb), df)


def paired_t(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p of the paired t-test on b - a, sample by sample."""
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    if len(diffs) < 2:
        return float("nan")
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    return t_two_sided(mean / (sd / math.sqrt(len(diffs))), len(diffs) - 1)


def interval_z(a: SummaryRow, b: SummaryRow) -> float:
    """Two-sided p of a z-test on b - a with each standard error read off its 95% interval
    (for values that are not a plain mean of samples)."""
    se2 = sum(((r.ci_high - r.ci_low) / (2 * Z95)) ** 2 for r in (a, b))
    diff = b.value - a.value
    if se2 == 0:
        return 1.0 if diff == 0 else 0.0
    return math.erfc(abs(diff) / math.sqrt(2 * se2))


def _is_sample_mean(row: SummaryRow, values: dict[str, float]) -> bool:
    """The row's value is the plain mean of these samples (not a mean of means)."""
    return (len(values) == row.n > 0
            and math.isclose(statistics.fmean(values.values()), row.value, abs_tol=1e-9))


def _finite(*xs: float) -> bool:
    return all(not (math.isnan(x) or math.isinf(x)) for x in xs)


def cell_test(a: SummaryRow, b: SummaryRow, va: dict[str, float], vb: dict[str, float],
              kind: MetricKind) -> tuple[float | None, str]:
    """(p, test name) for one cell; (None, "") when no test applies."""
    if _is_sample_mean(a, va) and _is_sample_mean(b, vb):
        if kind == "binary":
            return proportion_test(a, b)
        if va.keys() == vb.keys() and len(va) >= 2:
            ids = list(va)
            p = paired_t([va[i] for i in ids], [vb[i] for i in ids])
            test = "paired-t"
        else:
            p, test = welch_t(list(va.values()), list(vb.values())), "welch-t"
        return (p, test) if not math.isnan(p) else (None, "")
    if _finite(a.ci_low, a.ci_high, b.ci_low, b.ci_high):
        return interval_z(a, b), "z-ci"
    return None, ""


def compare_runs(run_a: Path, run_b: Path,
                 plot_dir: Path | None = None) -> tuple[str, str, list[CompareRow]]:
    """(label A, label B, rows), a row per (task, length, subset, metric); with plot_dir,
    also the combined plots per task and metric (tasks with a length axis only)."""
    runs = load_runs([run_a, run_b])
    la, lb = runs[0].label, runs[1].label
    rows = runs[0].rows + runs[1].rows
    infos = metric_info(r for run in runs for r in run.records)
    values = {run.label: cell_values(run.records) for run in runs}
    cells: dict[tuple[str, str, int | str, str], dict[str, SummaryRow]] = {}
    for r in rows:
        cells.setdefault((r.task, r.subset, r.length, r.metric), {})[r.model] = r
    out = []
    for (task, subset, length, metric), by in cells.items():
        a, b = by.get(la), by.get(lb)
        info = infos.get((task, metric), MetricInfo("binary"))
        delta = p = None
        test = ""
        if a and b and a.n and b.n and _finite(a.value, b.value):
            delta = b.value - a.value
            key = (task, length, subset, metric)
            p, test = cell_test(a, b, values[la].get(key, {}), values[lb].get(key, {}),
                                info.kind)
        out.append(CompareRow(task, subset, length, a, b, delta, p, test, metric, info.kind,
                              info.higher_is_better))
    with_axis = {r.task for r in split_rows(rows)[0]}
    out.sort(key=lambda r: (r.task not in with_axis, is_mean_of_tasks(r.task, r.metric),
                            r.task,
                            r.subset != "all", r.subset,
                            (0, r.length) if isinstance(r.length, int) else (1, str(r.length)),
                            r.metric))
    if plot_dir is not None:
        tables = length_tables(split_rows(rows)[0])
        metrics_of: dict[str, list[str]] = {}
        for metric, lines in tables:
            for task in dict.fromkeys(line.task for line in lines):
                metrics_of.setdefault(task, []).append(metric)
        for task, metrics in sorted(metrics_of.items()):
            for metric in metrics:
                name = f"compare_{task}" + ("" if len(metrics) == 1 else f"_{metric}")
                length_plot(rows, task, metric, plot_dir / store.safe_name(name))
    return la, lb, out


def format_compare(label_a: str, label_b: str, rows: list[CompareRow]) -> str:
    def cell(r: SummaryRow | None) -> str:
        return "-" if r is None or math.isnan(r.value) else f"{r.value:.3f} n={r.n}"

    width = max([14, *(len(r.task if r.subset == "all" else f"{r.task}:{r.subset}") + 1
                       for r in rows)])
    head = (f"{'task':<{width}} {'length':>8} {'metric':<10} {label_a[:18]:>18} "
            f"{label_b[:18]:>18} {'delta':>7} {'p':>7}  sig")
    lines = [head, "-" * len(head)]
    for r in rows:
        name = r.task if r.subset == "all" else f"{r.task}:{r.subset}"
        delta = "-" if r.delta is None else f"{r.delta:+.3f}"
        p = "-" if r.p_value is None else f"{r.p_value:.3f}"
        sig = f"{'yes' if r.significant else 'no'} ({r.test})" if r.test else "-"
        if r.verdict:
            sig += f", {r.verdict}"
        lines.append(f"{name:<{width}} {fmt_length(r.length):>8} {r.metric:<10} "
                     f"{cell(r.a):>18} {cell(r.b):>18} {delta:>7} {p:>7}  {sig}")
    return "\n".join(lines)
