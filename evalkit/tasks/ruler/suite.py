"""RULER as a suite: its 13 tasks (scripts/synthetic.yaml) and their average at each length,
as RULER reports it (the mean of the task scores; its effective length is read off it)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence

from evalkit.results.summary import aggregate, derived_row
from evalkit.types import MetricKind, Record, SummaryRow

SUITE, AVERAGE = "ruler", "average"
TASK_NAMES: tuple[str, ...] = (
    "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
    "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1",
    "qa_2")


def rows(records: Sequence[Record]) -> list[SummaryRow]:
    """Every RULER task's rows (a mean per length), then the suite's average at each length
    where all 13 tasks were run (a mean over fewer would not be RULER's number)."""
    from evalkit.tasks.base import get_task

    kinds: dict[tuple[str, str], MetricKind] = {
        (t, m.name): m.kind for t in {r.sample.task for r in records} for m in
        get_task(t).metrics}
    out = aggregate(records, kinds)
    by_length: dict[tuple[str, int | str], list[SummaryRow]] = defaultdict(list)
    for row in out:
        if row.subset == "all" and row.task in TASK_NAMES:
            by_length[(row.model, row.length)].append(row)
    for (model, length), parts in sorted(by_length.items(), key=lambda kv: str(kv[0])):
        if {p.task for p in parts} == set(TASK_NAMES):
            out.append(derived_row(model, SUITE, length, AVERAGE, parts,
                                   sum(p.n_errors for p in parts),
                                   statistics.fmean(p.input_tokens_mean for p in parts)))
    return out
