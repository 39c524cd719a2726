"""Plots (matplotlib, Agg, PNG + SVG): each metric against input length per task, one line
per model with its 95% interval as a band; for a task that declares sample axes
(TaskDef.axes, such as a needle's depth), each metric by axis x length as a heatmap.
Tasks without a length axis get no plot (their table says it all)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from evalkit.report.tables import fmt_effective, fmt_lower
from evalkit.types import EffectiveLength, Record, SummaryRow


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: object, base: Path) -> list[Path]:
    base.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "svg"):
        path = base.with_suffix(f".{ext}")
        fig.savefig(path, dpi=110, bbox_inches="tight", metadata=_metadata(ext))  # type: ignore[attr-defined]
        out.append(path)
    _pyplot().close(fig)
    return out


def _metadata(ext: str) -> dict[str, str | None]:
    # no creation dates in the files: the same run renders the same bytes
    return {"Date": None} if ext == "svg" else {"Software": "evalkit"}


def length_plot(rows: Iterable[SummaryRow], task: str, metric: str, base: Path,
                labels: dict[str, str] | None = None,
                effective: Iterable[EffectiveLength] = ()) -> list[Path] | None:
    """A task's metric against input length, one line per model: each point with its 95%
    interval as an error bar, and as a band where a line joins two or more. Where
    `effective` has the task's effective lengths: the threshold as a dotted line, and each
    model's effective length by its scores as a dashed line of its colour (named in the
    legend with the one by its lower bounds). None (no file) when the task has no scored
    cell."""
    by_model = _scored_cells(rows, task, metric)
    xs = sorted({round(_x(r)) for rs in by_model.values() for r in rs})
    if not xs:
        return None
    marks = {e.model: e for e in effective if (e.task, e.metric) == (task, metric)
             and e.longest > e.shortest}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ys: list[float] = []
    for i, (model, rs) in enumerate(sorted(by_model.items())):
        rs.sort(key=_x)
        dodge = _dodge(i, len(by_model))
        label = (labels or {}).get(model, model)
        mark = marks.get(model)
        if mark is not None:
            label += (f" (effective {fmt_effective(mark.by_value, mark)}; "
                      f"by lower bound {fmt_lower(mark)})")
        color = _model_line(ax, [_x(r) * dodge for r in rs], rs, label, ys)
        if mark is not None and mark.by_value is not None:
            ax.axvline(mark.by_value * dodge, color=color, linestyle="--", linewidth=1,
                       alpha=0.7)
    if marks:
        threshold = next(iter(marks.values())).threshold
        ax.axhline(threshold, color="grey", linestyle=":", linewidth=1,
                   label=f"threshold {threshold:g}")
    _length_axes(ax, xs, ys, task, metric)
    return _save(fig, base)


def _scored_cells(rows: Iterable[SummaryRow], task: str,
                  metric: str) -> dict[str, list[SummaryRow]]:
    """Model -> the task's "all" rows of the metric with a value, in the order given."""
    by_model: dict[str, list[SummaryRow]] = defaultdict(list)
    for r in rows:
        if (r.task, r.metric, r.subset) == (task, metric, "all") and not math.isnan(r.value):
            by_model[r.model].append(r)
    return by_model


def _dodge(i: int, n_models: int) -> float:
    """The factor that sets model i of n beside the others at each length (a few percent
    apart), so that error bars at the same length do not hide each other."""
    return float(2 ** (0.04 * (i - (n_models - 1) / 2)))


def _model_line(ax: Any, x: list[float], rs: list[SummaryRow], label: str,
                ys: list[float]) -> Any:
    """One model's line at `x`, with its 95% intervals; adds every y drawn to `ys` (for
    the scale) and returns the line's colour."""
    line, = ax.plot(x, [r.value for r in rs], marker="o", label=label)
    band = [(xi, r.value, r.ci_low, r.ci_high) for xi, r in zip(x, rs, strict=True)
            if not (math.isnan(r.ci_low) or math.isnan(r.ci_high))]
    _intervals(ax, band, line.get_color())
    ys += [r.value for r in rs] + [b[2] for b in band] + [b[3] for b in band]
    return line.get_color()


def _intervals(ax: Any, band: list[tuple[float, float, float, float]], color: str) -> None:
    """Intervals (x, value, low, high) as error bars, and as a band where two or more
    join."""
    if band:
        ax.errorbar([b[0] for b in band], [b[1] for b in band],
                    yerr=[[max(0.0, b[1] - b[2]) for b in band],
                          [max(0.0, b[3] - b[1]) for b in band]],
                    fmt="none", ecolor=color, elinewidth=1.2, capsize=4)
    if len(band) > 1:
        ax.fill_between([b[0] for b in band], [b[2] for b in band], [b[3] for b in band],
                        alpha=0.18, color=color, linewidth=0)


def _length_axes(ax: Any, xs: list[int], ys: list[float], task: str, metric: str) -> None:
    """Scales, ticks, labels, title and legend of a by-length plot: lengths on a log2
    scale, a value in [0, 1] on the whole of it."""
    ax.set_xscale("log", base=2)
    if len(xs) == 1:  # one length: room around its point (and its error bars)
        ax.set_xlim(xs[0] / 1.6, xs[0] * 1.6)
    if all(0.0 <= y <= 1.0 for y in ys):  # a rate or a score in [0, 1]: the whole scale
        ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("input tokens (the target; natural-length cases at their mean)")
    ax.set_ylabel(metric)
    ax.set_title(f"{task}: {metric} by input length (95% CI)")
    ax.grid(alpha=0.3)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x / 1024:.1f}k" if x >= 1024 else str(x) for x in xs], fontsize=8,
                       rotation=45 if len(xs) > 5 else 0)
    ax.minorticks_off()
    ax.legend(fontsize=8, loc="lower left")


def _x(row: SummaryRow) -> float:
    """Where a cell sits on the length axis: the length asked for, so that models with
    different tokenizers line up; cases of natural length at their mean measured length."""
    return float(row.length) if isinstance(row.length, int) else row.input_tokens_mean


# A sample axis (TaskDef.axes) is read as a fraction in [0, 1], a place in the input such
# as a needle's depth; the heatmap bins it to the nearest quarter. A value that is not a
# number in [0, 1] leaves the sample out of the heatmap.
AXIS_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)
AXIS_LABELS = {"depth": "needle depth"}  # an axis's name on a heatmap, where not its own


def axis_bin(value: float, bins: Sequence[float] = AXIS_BINS) -> float:
    """The nearest of the sweep's bins (values drawn at random are binned to them)."""
    return min(bins, key=lambda b: abs(b - value))


Cells = dict[tuple[float, int], list[float]]  # (axis bin, target length) -> scores


def axis_heatmap(records: Iterable[Record], model: str, task: str, axis: str, metric: str,
                 base: Path) -> list[Path] | None:
    """A task's metric by a sample axis (rows) and target length (columns), for one model;
    None when the run has no sample of the task for this model with a usable axis value."""
    cells = _axis_cells(records, model, task, axis, metric)
    if not cells:
        return None
    plt = _pyplot()
    bins = sorted({d for d, _ in cells})
    lengths = sorted({n for _, n in cells})
    means = {k: sum(v) / len(v) for k, v in cells.items()}
    # a rate or a score in [0, 1] on the whole scale, as percentages; any other value on
    # a scale of its own, as itself
    rate = not any(m < 0.0 or m > 1.0 for m in means.values())
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.55 * len(bins)))
    im = ax.imshow([[means.get((d, n), math.nan) for n in lengths] for d in bins],
                   vmin=0 if rate else min(means.values()),
                   vmax=1 if rate else max(means.values()), cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)))
    ax.set_xticklabels([f"{n / 1024:g}k" if n % 256 == 0 else str(n) for n in lengths])
    ax.set_yticks(range(len(bins)))
    ax.set_yticklabels([f"{d:.0%}" for d in bins])
    ax.set_xlabel("target input tokens")
    ax.set_ylabel(AXIS_LABELS.get(axis, axis))
    ax.set_title(f"{task} {metric}: {model}", fontsize=10)
    _cell_texts(ax, bins, lengths, cells, rate)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return _save(fig, base)


def _cell_texts(ax: Any, bins: list[float], lengths: list[int], cells: Cells,
                rate: bool) -> None:
    """Each filled cell's mean (a percentage for a rate) and its sample count, row by row."""
    for i, d in enumerate(bins):
        for j, n in enumerate(lengths):
            v = cells.get((d, n))
            if v:
                mean = sum(v) / len(v)
                ax.text(j, i, f"{mean:.0%}\nn={len(v)}" if rate else f"{mean:.2f}\nn={len(v)}",
                        ha="center", va="center", fontsize=7)


def _axis_cells(records: Iterable[Record], model: str, task: str, axis: str,
                metric: str) -> Cells:
    """The scores of the model's scored samples of the task at a target length, by their
    axis bin and length."""
    cells: Cells = defaultdict(list)
    for r in records:
        s = r.sample
        if (r.model != model or s.task != task or not r.ok or s.target_tokens is None
                or metric not in r.scores):
            continue
        # a sample that records no value of the axis sits at its start (where the report
        # has always put one); meta is free-form: a record whose value is not a number in
        # [0, 1] is left out here
        value = s.axis(axis) if axis in s.meta else 0.0
        if value is None or not 0 <= value <= 1:
            continue
        cells[(axis_bin(value), s.target_tokens)].append(r.scores[metric])
    return cells
