"""What the report needs to know about metrics, read from the records themselves.

A metric is binary (accuracy, acc, acc_norm: a Wilson interval and proportion tests fit) or
continuous (TruthfulQA mc2, a probability mass in [0, 1]: a normal interval and t-tests
fit). A task evalkit knows declares its metrics (TaskDef.metrics); for any other task
(an older run, a task from elsewhere) a metric is binary when every score it has is 0 or 1.
Nothing here knows a metric by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from evalkit.scoring import length_key
from evalkit.types import MetricKind, Record, SummaryRow

# (task, length, subset, metric) -> {sample id: score}
CellKey = tuple[str, int | str, str, str]


@dataclass(frozen=True)
class MetricInfo:
    kind: MetricKind
    higher_is_better: bool = True


def _known_tasks(tasks: Iterable[str]) -> dict[str, Any]:
    """The TaskDefs of those of `tasks` this evalkit knows (an older run, or a task from
    elsewhere, may name others)."""
    from evalkit.generators import get_task, task_names

    known = set(task_names())
    return {task: get_task(task) for task in sorted(set(tasks) & known)}


def declared_metrics(tasks: Iterable[str]) -> dict[tuple[str, str], MetricInfo]:
    """(task, metric) -> what the task declares (TaskDef.metrics), in declared order, for
    the tasks this evalkit knows; a task it does not know is read from its scores alone."""
    out: dict[tuple[str, str], MetricInfo] = {}
    for task, taskdef in _known_tasks(tasks).items():
        for m in getattr(taskdef, "metrics", ()):
            out[(task, str(m.name))] = MetricInfo(
                "continuous" if m.kind == "continuous" else "binary",
                bool(getattr(m, "higher_is_better", True)))
    return out


def loglikelihood_tasks(tasks: Iterable[str]) -> set[str]:
    """Those of `tasks` declared as loglikelihood tasks (nothing to parse in their output)."""
    return {task for task, taskdef in _known_tasks(tasks).items()
            if getattr(taskdef, "kind", "generate") == "loglikelihood"}


def metric_info(records: Iterable[Record]) -> dict[tuple[str, str], MetricInfo]:
    """(task, metric) -> kind and direction: declared by the task where it is known, else
    read off the scores (binary when every one is 0 or 1; higher taken as better)."""
    records = list(records)
    inferred: dict[tuple[str, str], MetricKind] = {}
    for r in records:
        if not r.ok:
            continue
        for metric, value in r.scores.items():
            key = (r.sample.task, metric)
            if value not in (0.0, 1.0):
                inferred[key] = "continuous"
            else:
                inferred.setdefault(key, "binary")
    declared = declared_metrics({task for task, _ in inferred})
    return {key: declared.get(key, MetricInfo(kind)) for key, kind in inferred.items()}


def metric_kinds(records: Iterable[Record]) -> dict[tuple[str, str], MetricKind]:
    """(task, metric) -> its kind (see metric_info)."""
    return {key: info.kind for key, info in metric_info(records).items()}


def primary_metrics(rows: Sequence[SummaryRow], records: Iterable[Record]) -> dict[str, str]:
    """task -> the metric that decides a sample's outcome in the sample browser: the first
    the task declares, else the first its summary rows list, else the first its records
    carry."""
    records = list(records)
    out: dict[str, str] = {}
    for task, metric in declared_metrics({r.sample.task for r in records}):
        out.setdefault(task, metric)
    for row in rows:
        out.setdefault(row.task, row.metric)
    for r in records:
        if r.sample.task not in out and r.scores:
            out[r.sample.task] = next(iter(r.scores))
    return out


def cell_values(records: Iterable[Record]) -> dict[CellKey, dict[str, float]]:
    """Each scored sample's value per summary cell (task, length, subset, metric), by
    sample id: what aggregate() averages, kept per sample for the tests of compare."""
    cells: dict[CellKey, dict[str, float]] = {}
    for r in records:
        if not r.ok:
            continue
        length = length_key(r)
        for subset in ("all", *r.sample.meta.get("subsets", [])):
            for metric, value in r.scores.items():
                cells.setdefault((r.sample.task, length, str(subset), metric), {})[
                    r.sample.id] = float(value)
    return cells
