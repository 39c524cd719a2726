"""Tables from summary rows, for every metric the rows carry.

Rows are laid out by their shape, never by a task's or a metric's name:
- tasks with a length axis (evalkit's long-context tasks, or any task whose rows have a
  length in tokens or several length bins): one table per metric, a line per (task, subset, length);
- tasks scored once over all their data (tasks scored whole by their own harness, a single
  natural-length bin): the score table, a line per (task, metric) with the task's subsets
  folded under it. Its "all" line is the task's own row, as the summary gives it (for a
  task that averages its subsets, the unweighted mean of their means, not a pooled one).

The same layout feeds `evalkit show` (text) and the HTML report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from evalkit.results.summary import length_order
from evalkit.tasks.base import has_length_axis
from evalkit.types import EffectiveLength, SummaryRow


@dataclass(frozen=True)
class LengthLine:
    """One line of a by-length table: a (task, subset, length) cell, one row per model.
    `tokens`: model -> the mean input tokens it read there, counted by its own tokenizer
    (models of different tokenizers read different counts at one target length)."""

    task: str
    subset: str
    length: int | str
    tokens: dict[str, float]
    cells: dict[str, SummaryRow]


@dataclass(frozen=True)
class ScoreLine:
    """One line of the score table: a task's metric over all its data, one row per model,
    with its subsets (subset name, rows by model) in first-seen order."""

    task: str
    metric: str
    cells: dict[str, SummaryRow]
    subsets: list[tuple[str, dict[str, SummaryRow]]] = field(default_factory=list)
    summary_of_tasks: bool = False  # a mean over other tasks (a suite's average)


def models_of(rows: Iterable[SummaryRow]) -> list[str]:
    """Models in first-seen order (the order the runs were given in)."""
    return list(dict.fromkeys(r.model for r in rows))


def length_tasks(rows: Sequence[SummaryRow]) -> set[str]:
    """Tasks that have a length axis: evalkit's long-context tasks (even a run of one
    natural-length bin, such as published cases all of one size), and any task with a
    length in tokens or several length bins."""
    bins: dict[str, set[int | str]] = {}
    for r in rows:
        bins.setdefault(r.task, set()).add(r.length)
    return {t for t, lengths in bins.items()
            if has_length_axis(t) or len(lengths) > 1 or any(isinstance(x, int) for x in lengths)}


def split_rows(rows: Iterable[SummaryRow]) -> tuple[list[SummaryRow], list[SummaryRow]]:
    """(rows of tasks with a length axis, rows of tasks scored once over all their data)."""
    rows = list(rows)
    with_axis = length_tasks(rows)
    return ([r for r in rows if r.task in with_axis], [r for r in rows if r.task not in with_axis])


def length_tables(rows: Iterable[SummaryRow]) -> list[tuple[str, list[LengthLine]]]:
    """(metric, lines) per metric present, metrics in first-seen order; lines in task,
    subset ("all" first), length order."""
    by_metric: dict[str, dict[tuple[str, str, int | str], dict[str, SummaryRow]]] = {}
    for r in rows:
        by_metric.setdefault(r.metric, {}).setdefault((r.task, r.subset, r.length), {})[
            r.model] = r
    out = []
    for metric, cells in by_metric.items():
        keys = sorted(cells, key=lambda k: (k[0], k[1] != "all", k[1], length_order(k[2])))
        lines = []
        for task, subset, length in keys:
            by_model = cells[(task, subset, length)]
            tokens = {model: r.input_tokens_mean for model, r in by_model.items()}
            lines.append(LengthLine(task, subset, length, tokens, by_model))
        out.append((metric, lines))
    return out


def is_mean_of_tasks(task: str, metric: str) -> bool:
    # presentation only: a row named like a suite's average (task "average", or metric
    # "average" of a suite's task) goes last, set apart
    return any(name.lower().replace("-", "_").split("_")[-1] in ("average", "avg")
               for name in (task, metric))


def score_lines(rows: Iterable[SummaryRow]) -> list[ScoreLine]:
    """One line per (task, metric) in first-seen order, a mean over tasks last."""
    main: dict[tuple[str, str], dict[str, SummaryRow]] = {}
    subs: dict[tuple[str, str], dict[str, dict[str, SummaryRow]]] = {}
    for r in rows:
        key = (r.task, r.metric)
        main.setdefault(key, {})
        if r.subset == "all":
            main[key][r.model] = r
        else:
            subs.setdefault(key, {}).setdefault(r.subset, {})[r.model] = r
    lines = [ScoreLine(task, metric, cells, list(subs.get((task, metric), {}).items()),
                       is_mean_of_tasks(task, metric))
             for (task, metric), cells in main.items()]
    return sorted(lines, key=lambda line: line.summary_of_tasks)  # stable: first-seen order


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """"1 answer", "2 answers": a count with its noun in the number it takes."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def fmt_length(length: int | str) -> str:
    if isinstance(length, int):
        return f"{length / 1024:g}k" if length % 256 == 0 else str(length)
    return length


def _fmt_cell(r: SummaryRow | None, digits: int) -> str:
    if r is None or math.isnan(r.value):
        return "-"
    cell = f"{r.value:.{digits}f}"
    if not (math.isnan(r.ci_low) or math.isnan(r.ci_high)):
        cell += f" [{r.ci_low:.{digits}f},{r.ci_high:.{digits}f}]"
    cell += f" n={r.n}"
    if r.n_errors:
        cell += f" err={r.n_errors}"
    return cell


def _fmt_tokens(tokens: float | None) -> str:
    return "-" if tokens is None or math.isnan(tokens) else f"{tokens:.0f}"


def columns(header: Sequence[str], body: Sequence[Sequence[str]], align: str) -> list[str]:
    """The header and body lines of a text table, each column as wide as its widest entry
    (so that every line lines up, whatever the length of a name or a value), two spaces
    apart; `align` has a letter per column, "l" (left) or "r" (right)."""
    widths = [max(len(x) for x in column) for column in zip(header, *body, strict=True)]
    return ["  ".join(x.ljust(w) if a == "l" else x.rjust(w)
                      for x, w, a in zip(line, widths, align, strict=True)).rstrip()
            for line in (header, *body)]


def format_length_table(metric: str, lines: list[LengthLine], models: list[str]) -> str:
    """One line per (task, subset, length); per model, the input tokens it read (its own
    tokenizer's count) and the metric with its 95% interval. Model names are shown whole."""
    header = ["task", "length"]
    for m in models:
        header += ["tokens", m]
    body = []
    for line in lines:
        text = [line.task if line.subset == "all" else f"{line.task}:{line.subset}",
                fmt_length(line.length)]
        for m in models:
            text += [_fmt_tokens(line.tokens.get(m)), _fmt_cell(line.cells.get(m), 2)]
        body.append(text)
    out = columns(header, body, "lr" + "rr" * len(models))
    return "\n".join([f"{metric} by length", out[0], "-" * max(map(len, out)), *out[1:]])


def format_score_table(lines: list[ScoreLine], models: list[str]) -> str:
    """One line per (task, metric) with its 95% interval and n; subsets are counted (the
    HTML report lists them). Model names are shown whole."""
    header = ["task", "metric", *models, ""]
    body = [[line.task, line.metric, *(_fmt_cell(line.cells.get(m), 4) for m in models),
             f"({counted(len(line.subsets), 'subset')})" if line.subsets else ""]
            for line in lines]
    out = columns(header, body, "ll" + "r" * len(models) + "l")
    rule = "-" * max(map(len, out))
    text = ["scores (tasks without a length axis, scored over all their data)", out[0],
            rule]
    for line, row in zip(lines, out[1:], strict=True):
        if line.summary_of_tasks:
            text.append(rule)
        text.append(row)
    return "\n".join(text)


def fmt_effective(length: int | None, e: EffectiveLength) -> str:
    """An effective length: "16k"; ">=128k" where every length measured passes (at least
    the longest); "<4k" where the shortest already falls below."""
    if length is None:
        return f"<{fmt_length(e.shortest)}"
    return (">=" if length == e.longest else "") + fmt_length(length)


def fmt_lower(e: EffectiveLength) -> str:
    """The effective length by the lower 95% bounds; "n/a" where a length has no interval."""
    return fmt_effective(e.by_ci_low, e) if e.bounded else "n/a"


def _fmt_both(e: EffectiveLength | None) -> str:
    return "-" if e is None else f"{fmt_effective(e.by_value, e)} / {fmt_lower(e)}"


def effective_shown(effective: Iterable[EffectiveLength]) -> list[EffectiveLength]:
    """Those effective lengths worth a line: of tasks measured at two lengths or more."""
    return [e for e in effective if e.longest > e.shortest]


def format_effective_table(effective: Iterable[EffectiveLength], models: list[str]) -> str:
    """Per (task, metric), each model's effective length by the point estimates and by the
    lower 95% bounds ("" where there is none)."""
    shown = effective_shown(effective)
    if not shown:
        return ""
    cells: dict[tuple[str, str], dict[str, EffectiveLength]] = {}
    for e in shown:
        cells.setdefault((e.task, e.metric), {})[e.model] = e
    header = ["task", "metric", *models]
    body = [[task, metric, *(_fmt_both(by_model.get(m)) for m in models)]
            for (task, metric), by_model in cells.items()]
    out = columns(header, body, "ll" + "r" * len(models))
    threshold = shown[0].threshold
    return "\n".join([f"effective length: the longest length up to which the score stays "
                      f">= {threshold:g} (by the score / by its lower 95% bound)", out[0],
                      "-" * max(map(len, out)), *out[1:]])


def format_table(rows: Iterable[SummaryRow],
                 effective: Iterable[EffectiveLength] = ()) -> str:
    """Every metric of every task: by-length tables, the effective lengths, then the score
    table."""
    rows = list(rows)
    if not rows:
        return "(no results yet)"
    models = models_of(rows)
    by_length, once = split_rows(rows)
    parts = [format_length_table(metric, lines, models)
             for metric, lines in length_tables(by_length)]
    effective_text = format_effective_table(effective, models)
    if effective_text:
        parts.append(effective_text)
    if once:
        parts.append(format_score_table(score_lines(once), models))
    return "\n\n".join(parts)
