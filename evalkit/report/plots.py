"""Plots (matplotlib, Agg, PNG + SVG): each metric against input length per task, one line
per model with its 95% interval as a band; the passkey needle-depth x length heatmap.
Tasks without a length axis get no plot (their table says it all)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from evalkit.types import Record, SummaryRow


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
                labels: dict[str, str] | None = None) -> list[Path] | None:
    """A task's metric against input length, one line per model: each point with its 95%
    interval as an error bar, and as a band where a line joins two or more. None (no file)
    when the task has no scored cell."""
    by_model: dict[str, list[SummaryRow]] = defaultdict(list)
    for r in rows:
        if (r.task, r.metric, r.subset) == (task, metric, "all") and not math.isnan(r.value):
            by_model[r.model].append(r)
    xs = sorted({round(_x(r)) for rs in by_model.values() for r in rs})
    if not xs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ys: list[float] = []
    n_models = len(by_model)
    for i, (model, rs) in enumerate(sorted(by_model.items())):
        rs.sort(key=_x)
        # models side by side at each length (a few percent apart), so that error bars
        # at the same length do not hide each other
        dodge = 2 ** (0.04 * (i - (n_models - 1) / 2))
        x = [_x(r) * dodge for r in rs]
        label = (labels or {}).get(model, model)
        line, = ax.plot(x, [r.value for r in rs], marker="o", label=label)
        ys += [r.value for r in rs]
        band = [(xi, r.value, r.ci_low, r.ci_high) for xi, r in zip(x, rs, strict=True)
                if not (math.isnan(r.ci_low) or math.isnan(r.ci_high))]
        if band:
            ax.errorbar([b[0] for b in band], [b[1] for b in band],
                        yerr=[[max(0.0, b[1] - b[2]) for b in band],
                              [max(0.0, b[3] - b[1]) for b in band]],
                        fmt="none", ecolor=line.get_color(), elinewidth=1.2, capsize=4)
            ys += [b[2] for b in band] + [b[3] for b in band]
        if len(band) > 1:
            ax.fill_between([b[0] for b in band], [b[2] for b in band], [b[3] for b in band],
                            alpha=0.18, color=line.get_color(), linewidth=0)
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
    return _save(fig, base)


def _x(row: SummaryRow) -> float:
    """Where a cell sits on the length axis: the length asked for, so that models with
    different tokenizers line up; cases of natural length at their mean measured length."""
    return float(row.length) if isinstance(row.length, int) else row.input_tokens_mean


DEPTH_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)


def depth_bin(depth: float, bins: Sequence[float] = DEPTH_BINS) -> float:
    """The nearest of the sweep's depths (random depths are binned to them)."""
    return min(bins, key=lambda b: abs(b - depth))


def depth_heatmap(records: Iterable[Record], model: str, base: Path,
                  metric: str) -> list[Path] | None:
    """A passkey metric by needle depth (rows) and target length (columns); None when the
    run has no passkey samples for this model."""
    cells: dict[tuple[float, int], list[float]] = defaultdict(list)
    for r in records:
        s = r.sample
        if (r.model != model or s.task != "passkey" or not r.ok or s.target_tokens is None
                or metric not in r.scores):
            continue
        depth = s.meta.get("depth", 0.0)
        if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0 <= depth <= 1:
            continue  # meta is free-form: a record without a usable depth is left out here
        cells[(depth_bin(float(depth)), s.target_tokens)].append(r.scores[metric])
    if not cells:
        return None
    plt = _pyplot()
    depths = sorted({d for d, _ in cells})
    lengths = sorted({n for _, n in cells})
    grid = [[(sum(v) / len(v)) if (v := cells.get((d, n))) else math.nan for n in lengths]
            for d in depths]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.55 * len(depths)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)))
    ax.set_xticklabels([f"{n / 1024:g}k" if n % 256 == 0 else str(n) for n in lengths])
    ax.set_yticks(range(len(depths)))
    ax.set_yticklabels([f"{d:.0%}" for d in depths])
    ax.set_xlabel("target input tokens")
    ax.set_ylabel("needle depth")
    ax.set_title(f"passkey {metric}: {model}", fontsize=10)
    for i, d in enumerate(depths):
        for j, n in enumerate(lengths):
            v = cells.get((d, n))
            if v:
                ax.text(j, i, f"{sum(v) / len(v):.0%}\nn={len(v)}", ha="center", va="center",
                        fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return _save(fig, base)
