"""Compare two runs cell by cell: deltas and whether each is statistically significant."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from evalkit.report.html import load_runs
from evalkit.report.plots import accuracy_plot
from evalkit.scoring import aggregate
from evalkit.types import SummaryRow


@dataclass(frozen=True)
class CompareRow:
    task: str
    subset: str
    length: int | str
    a: SummaryRow | None
    b: SummaryRow | None
    delta: float | None     # b - a
    p_value: float | None
    test: str               # "z" (two-proportion z-test) or "fisher" (small counts)

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < 0.05


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


def compare_runs(run_a: Path, run_b: Path,
                 plot_dir: Path | None = None) -> tuple[str, str, list[CompareRow]]:
    """(label A, label B, rows); with plot_dir, also the combined plots per task."""
    runs = load_runs([run_a, run_b])
    rows = aggregate([r for run in runs for r in run.records])
    la, lb = runs[0].label, runs[1].label
    cells: dict[tuple[str, str, int | str], dict[str, SummaryRow]] = {}
    for r in rows:
        if r.metric == "accuracy":
            cells.setdefault((r.task, r.subset, r.length), {})[r.model] = r
    out = []
    for (task, subset, length), by in cells.items():
        a, b = by.get(la), by.get(lb)
        delta = p = None
        test = ""
        if a and b and a.n and b.n and not (math.isnan(a.value) or math.isnan(b.value)):
            delta = b.value - a.value
            p, test = proportion_test(a, b)
        out.append(CompareRow(task, subset, length, a, b, delta, p, test))
    out.sort(key=lambda r: (r.task, r.subset != "all", r.subset,
                            (0, r.length) if isinstance(r.length, int) else (1, str(r.length))))
    if plot_dir is not None:
        for task in sorted({r.task for r in rows}):
            accuracy_plot(rows, task, plot_dir / f"compare_{task}")
    return la, lb, out


def format_compare(label_a: str, label_b: str, rows: list[CompareRow]) -> str:
    def cell(r: SummaryRow | None) -> str:
        return "-" if r is None else f"{r.value:.2f} n={r.n}"

    head = (f"{'task':<14} {'length':>10} {label_a[:18]:>18} {label_b[:18]:>18} "
            f"{'delta':>7} {'p':>7}  sig")
    lines = [head, "-" * len(head)]
    for r in rows:
        name = r.task if r.subset == "all" else f"{r.task}:{r.subset}"
        length = f"{r.length / 1024:g}k" if isinstance(r.length, int) and r.length % 256 == 0 \
            else str(r.length)
        delta = "-" if r.delta is None else f"{r.delta:+.2f}"
        p = "-" if r.p_value is None else f"{r.p_value:.3f}"
        sig = f"{'yes' if r.significant else 'no'} ({r.test})" if r.test else "-"
        lines.append(f"{name:<14} {length:>10} {cell(r.a):>18} {cell(r.b):>18} {delta:>7} "
                     f"{p:>7}  {sig}")
    return "\n".join(lines)
