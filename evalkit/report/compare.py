"""Compare two runs cell by cell: deltas, and whether each is significant.

A cell is (task, length, subset, metric), for every metric the runs' summary rows carry.
The test is the gate's (evalkit.stats.gate.cell_test), two-sided: exact McNemar or the paired
t-test where both runs scored the same sample ids, Fisher's exact test or Welch's t-test
where they did not, and a z-test on the 95% intervals for a value that is not a plain mean
of its samples (a mean of subset means, a suite's average over tasks). Significance is read
off Holm-adjusted p-values over every tested cell. Reads only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from evalkit.report.plots import length_plot
from evalkit.report.tables import (
    columns,
    fmt_length,
    is_mean_of_tasks,
    length_tables,
    split_rows,
)
from evalkit.results import store
from evalkit.results.effective import DEFAULT_THRESHOLD, effective_lengths
from evalkit.results.read import effective_of, load_runs
from evalkit.stats.gate import Cell, holm, paired_cells, value_cell
from evalkit.types import EffectiveLength, MetricKind, SummaryRow

ALPHA = 0.05
LEGEND = ("delta = B - A; p: two-sided, Holm-adjusted over every tested cell; sig: p < 0.05.\n"
          "Tests: mcnemar = exact McNemar on the pairs of one sample id (0/1 scores), "
          "paired-t = paired t-test (continuous scores),\nfisher = Fisher's exact test, "
          "welch-t = Welch's t-test (the runs scored different samples),\nz-ci = z-test "
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
    p_value: float | None   # Holm-adjusted, two-sided
    test: str               # "mcnemar", "paired-t", "fisher", "welch-t", "z-ci" or "" (none)
    metric: str = "accuracy"
    kind: MetricKind = "binary"
    higher_is_better: bool = True
    p_raw: float | None = None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA

    @property
    def verdict(self) -> str:
        """"better" or "worse" (B against A) when significant, else ""."""
        if not self.significant or not self.delta:
            return ""
        return "better" if (self.delta > 0) == self.higher_is_better else "worse"


def compare_runs(run_a: Path, run_b: Path, plot_dir: Path | None = None,
                 threshold: float = DEFAULT_THRESHOLD) -> tuple[str, str, list[CompareRow]]:
    """(label A, label B, rows), a row per (task, length, subset, metric); with plot_dir,
    also the combined plots per task and metric (tasks with a length axis only), each
    model's effective length at `threshold` marked."""
    runs = load_runs([run_a, run_b], prompts=False)
    out = _compare_rows(paired_cells(runs[0], runs[1], 0.0, "two-sided"))
    rows = runs[0].rows + runs[1].rows
    with_axis = {r.task for r in split_rows(rows)[0]}
    out.sort(key=lambda r: (r.task not in with_axis, is_mean_of_tasks(r.task, r.metric),
                            r.task,
                            r.subset != "all", r.subset,
                            (0, r.length) if isinstance(r.length, int) else (1, str(r.length)),
                            r.metric))
    if plot_dir is not None:
        effective = [e for run in runs for e in effective_of(run.rows, run.records, threshold)]
        _compare_plots(rows, plot_dir, effective)
    return runs[0].label, runs[1].label, out


def compare_effective(rows: list[CompareRow],
                      threshold: float = DEFAULT_THRESHOLD) -> list[EffectiveLength]:
    """Each run's effective lengths at `threshold`, read off the compared cells (metrics
    where lower is better left out)."""
    higher = {(r.task, r.metric): r.higher_is_better for r in rows}
    cells = [c for r in rows for c in (r.a, r.b) if c is not None]
    return effective_lengths(cells, threshold, lambda task, metric: higher[(task, metric)])


def _compare_rows(cells: list[Cell]) -> list[CompareRow]:
    """A row per cell, in the cells' order, its p-value Holm-adjusted over every tested
    cell."""
    tested = [c for c in cells if c.test is not None and c.test.p is not None]
    adjusted = dict(zip((c.key for c in tested),
                        holm([c.test.p for c in tested]), strict=True))  # type: ignore[union-attr,misc]
    out = []
    for c in cells:
        task, length, subset, metric = c.key
        out.append(CompareRow(task, subset, length, c.baseline, c.candidate, _delta(c),
                              adjusted.get(c.key), c.test.test if c.test else "", metric,
                              c.info.kind, c.info.higher_is_better,
                              c.test.p if c.test else None))
    return out


def _delta(c: Cell) -> float | None:
    """B - A, where both runs have a finite value."""
    if (c.baseline is not None and c.candidate is not None
            and math.isfinite(c.baseline.value) and math.isfinite(c.candidate.value)):
        return c.candidate.value - c.baseline.value
    return None


def _compare_plots(rows: list[SummaryRow], plot_dir: Path,
                   effective: list[EffectiveLength]) -> None:
    """Both runs' lines in one plot per task and metric (tasks with a length axis only):
    compare_TASK, or compare_TASK_METRIC for a task of several metrics."""
    metrics_of: dict[str, list[str]] = {}
    for metric, lines in length_tables(split_rows(rows)[0]):
        for task in dict.fromkeys(line.task for line in lines):
            metrics_of.setdefault(task, []).append(metric)
    for task, metrics in sorted(metrics_of.items()):
        for metric in metrics:
            name = f"compare_{task}" + ("" if len(metrics) == 1 else f"_{metric}")
            length_plot(rows, task, metric, plot_dir / store.safe_name(name),
                        effective=effective)


def format_compare(label_a: str, label_b: str, rows: list[CompareRow]) -> str:
    """A line per compared cell; every column is as wide as its widest entry, so that the
    lines align whatever the metric's name, and the two models' labels are shown whole."""
    body = []
    for r in rows:
        sig = f"{'yes' if r.significant else 'no'} ({r.test})" if r.test else "-"
        if r.verdict:
            sig += f", {r.verdict}"
        body.append([r.task if r.subset == "all" else f"{r.task}:{r.subset}",
                     fmt_length(r.length), r.metric, value_cell(r.a), value_cell(r.b),
                     "-" if r.delta is None else f"{r.delta:+.3f}",
                     "-" if r.p_value is None else f"{r.p_value:.3f}", sig])
    lines = columns(["task", "length", "metric", label_a, label_b, "delta", "p", "sig"], body,
                    "lrlrrrrl")
    return "\n".join([lines[0], "-" * max(map(len, lines)), *lines[1:]])
