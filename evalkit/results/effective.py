"""The effective context length (Hsieh et al. 2024's figure of merit), with its interval.

A task's effective length at a threshold is the longest length up to which its score stays
at or above the threshold: every length measured up to it passes. The paper's threshold
is 0.856 (Llama-2-7B's 13-task average at 4K), the default here. It is read two ways off
the summary rows of one model, task and metric (subset "all", lengths in tokens):
- `by_value`: by the point estimates;
- `by_ci_low`: by each length's lower 95% bound: the length one can claim with
  confidence;
and, for the gate, `by_ci_high`: by the upper bounds (the longest the data do not rule
out).
None where the shortest length measured already falls below; `longest` is the longest
length measured, so that a length that passes everywhere reads "at least `longest`". A
suite's effective length is its average's (a row like any other task's). Where a length
has no interval (one sample of a continuous score, one haystack of a clustered task),
there are no bounds (`bounded` False): readers say so instead of reading a bound.

Only metrics on a [0, 1] scale where higher is better, and lengths in tokens, take part;
a length whose every sample errored is not measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from evalkit.types import EffectiveLength, EvalkitError, SummaryRow

DEFAULT_THRESHOLD = 0.856  # the paper's: Llama-2-7B's 13-task average at 4K


def longest_passing(points: Sequence[tuple[int, float]], threshold: float) -> int | None:
    """The longest of `points` (length, value) up to which every value is at or above the
    threshold, lengths in increasing order; None when the first already falls below (a
    NaN value counts as falling below)."""
    best = None
    for length, value in sorted(points):
        if math.isnan(value) or value < threshold:
            break
        best = length
    return best


def check_threshold(threshold: float) -> None:
    """Refuse, in one line, a threshold that is not a score in [0, 1]."""
    if not 0.0 <= threshold <= 1.0:  # NaN fails too
        raise EvalkitError(f"--threshold {threshold:g}: give a score between 0 and 1, such as "
                           f"the default {DEFAULT_THRESHOLD}")


def effective_lengths(rows: Iterable[SummaryRow], threshold: float = DEFAULT_THRESHOLD,
                      higher_is_better: Callable[[str, str], bool] | None = None
                      ) -> list[EffectiveLength]:
    """Per (model, task, metric) with lengths in tokens: its effective length at
    `threshold`, by the point estimates and by the lower and upper 95% bounds, in the order
    the rows come. `higher_is_better(task, metric)` leaves out metrics where lower is
    better (all take part when it is not given)."""
    check_threshold(threshold)
    cells: dict[tuple[str, str, str], list[SummaryRow]] = {}
    for r in rows:
        if r.subset != "all" or not isinstance(r.length, int) or isinstance(r.length, bool):
            continue
        if higher_is_better is not None and not higher_is_better(r.task, r.metric):
            continue
        cells.setdefault((r.model, r.task, r.metric), []).append(r)
    out = []
    for (model, task, metric), cell in cells.items():
        # a length with no scored sample (all errored) is not measured; a metric off the
        # [0, 1] scale (a log-probability) has no threshold to stay above
        rs = [r for r in cell if not math.isnan(r.value)]
        if not rs or any(not 0.0 <= r.value <= 1.0 for r in rs):
            continue
        lengths = sorted(int(r.length) for r in rs)
        bounded = not any(math.isnan(r.ci_low) or math.isnan(r.ci_high) for r in rs)

        def by(bound: Callable[[SummaryRow], float], rs: list[SummaryRow] = rs) -> int | None:
            return longest_passing([(int(r.length), bound(r)) for r in rs], threshold)

        out.append(EffectiveLength(
            model=model, task=task, metric=metric, threshold=threshold,
            by_value=by(lambda r: r.value),
            by_ci_low=by(lambda r: r.ci_low) if bounded else None,
            by_ci_high=by(lambda r: r.ci_high) if bounded else None,
            shortest=lengths[0], longest=lengths[-1], bounded=bounded))
    return out


def run_effective_lengths(rows: Sequence[SummaryRow], info: Mapping[tuple[str, str], Any],
                          threshold: float = DEFAULT_THRESHOLD) -> list[EffectiveLength]:
    """effective_lengths over a run's rows, with each metric's direction from `info`
    ((task, metric) -> an object with `higher_is_better`, such as read.MetricInfo)."""
    def higher(task: str, metric: str) -> bool:
        return bool(getattr(info.get((task, metric)), "higher_is_better", True))

    return effective_lengths(rows, threshold, higher)

