"""Summary rows: the mean of each metric by (model, task, length cell, subset), with its
95% interval and success count."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from evalkit.stats.intervals import Z95, clustered_interval, interval, interval_se, metric_kind
from evalkit.types import MetricKind, Record, SummaryRow


def length_key(record: Record) -> int | str:
    """The length cell a record belongs to (Sample.cell)."""
    return record.sample.cell


def mean_row(model: str, task: str, length: int | str, subset: str, metric: str,
             values: Sequence[float], n_errors: int, tokens: float,
             kind: MetricKind | None = None,
             clusters: Sequence[str] | None = None) -> SummaryRow:
    """The summary row of a plain mean of sample scores: its 95% interval (clustered where
    `clusters` names each sample's haystack), and for a binary metric the success count
    (None where a score is not 0 or 1)."""
    kind = kind or metric_kind(values)
    value = statistics.fmean(values) if values else float("nan")
    if clusters is not None:
        lo, hi = clustered_interval(values, clusters, kind)
    else:
        lo, hi = interval(values)
    successes = (int(sum(values)) if kind == "binary" and metric_kind(values) == "binary"
                 else None)
    return SummaryRow(model=model, task=task, length=length, subset=subset, metric=metric,
                      value=value, ci_low=lo, ci_high=hi, n=len(values), n_errors=n_errors,
                      input_tokens_mean=round(tokens, 1), kind=kind, successes=successes,
                      clusters=None if clusters is None else len(set(clusters)))


def aggregate(records: Iterable[Record],
              kinds: Mapping[tuple[str, str], MetricKind] | None = None) -> list[SummaryRow]:
    """Mean of each score by (model, task, length, subset), with Wilson intervals for
    0/1 scores and normal ones for continuous scores. Errored samples are counted apart and
    left out of the mean. `kinds` gives (task, metric) -> the kind a task declares; a metric
    it lacks is binary when every score is 0 or 1."""
    kinds = kinds or {}
    groups: dict[tuple[str, str, int | str, str], list[Record]] = defaultdict(list)
    for r in records:
        subsets = ["all", *r.sample.subsets]
        for subset in subsets:
            groups[(r.model, r.sample.task, length_key(r), subset)].append(r)
    rows: list[SummaryRow] = []
    for (model, task, length, subset), recs in groups.items():
        ok = [r for r in recs if r.ok]
        n_errors = len(recs) - len(ok)
        tokens = statistics.fmean(r.sample.input_tokens for r in recs)
        metrics = sorted({m for r in ok for m in r.scores}) or ["accuracy"]
        for metric in metrics:
            scored = [r for r in ok if metric in r.scores]
            haystacks = [r.sample.cluster for r in scored]
            rows.append(mean_row(model, task, length, subset, metric,
                                 [r.scores[metric] for r in scored], n_errors, tokens,
                                 kinds.get((task, metric)),
                                 [str(h) for h in haystacks] if any(haystacks) else None))
    rows.sort(key=lambda r: (r.model, r.task, r.subset != "all", r.subset, length_order(r.length),
                             r.metric))
    return rows


def length_order(length: int | str) -> tuple[int, int | str]:
    """Sort key of length cells: token lengths by size, then named bins."""
    return (0, length) if isinstance(length, int) else (1, length)


def _se(row: SummaryRow) -> float:
    """A standard error read off a row's 95% interval (0 where it has none)."""
    se = interval_se(row)
    return 0.0 if math.isnan(se) else se


def derived_row(model: str, task: str, length: int | str, metric: str,
                parts: Sequence[SummaryRow], n_errors: int, tokens: float) -> SummaryRow:
    """The unweighted mean of `parts` (a task's subjects, a suite's tasks: its average), its
    normal interval from each part's standard error (read off its interval, not p(1-p)/n,
    which is 0 for a part answered all right or all wrong)."""
    mean = statistics.fmean(p.value for p in parts)
    half = Z95 * math.sqrt(sum(_se(p) ** 2 for p in parts)) / len(parts)
    return SummaryRow(model=model, task=task, length=length, subset="all", metric=metric,
                      value=mean, ci_low=max(0.0, mean - half), ci_high=min(1.0, mean + half),
                      n=sum(p.n for p in parts), n_errors=n_errors,
                      input_tokens_mean=round(tokens, 1), derived=True,
                      kind="binary" if all(p.kind == "binary" for p in parts) else "continuous")
