"""Accuracy-by-length tables from summary rows."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from evalkit.types import SummaryRow


def rows_frame(rows: Iterable[SummaryRow]) -> pd.DataFrame:
    return pd.DataFrame([r.__dict__ for r in rows])


def _fmt_length(length: int | str) -> str:
    if isinstance(length, int):
        return f"{length / 1024:g}k" if length % 256 == 0 else str(length)
    return length


def format_table(rows: Iterable[SummaryRow]) -> str:
    """One line per (task, subset, length): tokens read, accuracy with its 95% interval, n."""
    rows = [r for r in rows if r.metric == "accuracy"]
    if not rows:
        return "(no results yet)"
    models = sorted({r.model for r in rows})
    lines = []
    header = f"{'task':<9} {'length':>10} {'tokens':>8}"
    for m in models:
        header += f"  {m[:26]:>26}"
    lines.append(header)
    lines.append("-" * len(header))
    keyed: dict[tuple[str, str, int | str], dict[str, SummaryRow]] = {}
    for r in rows:
        keyed.setdefault((r.task, r.subset, r.length), {})[r.model] = r
    for (task, subset, length), by_model in keyed.items():
        name = task if subset == "all" else f"{task}:{subset}"
        tokens = max(r.input_tokens_mean for r in by_model.values())
        line = f"{name:<9} {_fmt_length(length):>10} {tokens:>8.0f}"
        for m in models:
            cell_row = by_model.get(m)
            if cell_row is None or math.isnan(cell_row.value):
                cell = "-"
            else:
                r = cell_row
                cell = f"{r.value:.2f} [{r.ci_low:.2f},{r.ci_high:.2f}] n={r.n}"
                if r.n_errors:
                    cell += f" err={r.n_errors}"
            line += f"  {cell:>26}"
        lines.append(line)
    return "\n".join(lines)
