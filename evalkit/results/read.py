"""The read side: runs as pandas frames, their summaries, and two runs paired by sample id.

Report, show, compare and gate read runs through here, and nothing here writes: reading a
run never changes its folder (a finished run may sit in a read-only place, or in a CI
cache). A run is read from its folder (run.json, samples.jsonl, summary.json), or from a
summary.json alone: a baseline a repository commits without its samples.

What the read side knows about a metric comes from the tasks themselves: a task evalkit
knows declares its metrics (TaskDef.metrics: binary or continuous, which way is better);
for any other task (an older run, a task from elsewhere) a metric is binary when every
score it has is 0 or 1. Nothing here knows a metric by name.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from evalkit.results import store
from evalkit.results.effective import DEFAULT_THRESHOLD, run_effective_lengths
from evalkit.results.summary import aggregate, length_key
from evalkit.stats.intervals import wilson
from evalkit.types import (
    EffectiveLength,
    EvalkitError,
    MetricKind,
    Record,
    RunSummary,
    SummaryRow,
)

# a summary cell: (task, length, subset, metric)
CellKey = tuple[str, int | str, str, str]
CELL = ["task", "length", "subset", "metric"]


# ---- what a metric is ------------------------------------------------------------------

@dataclass(frozen=True)
class MetricInfo:
    kind: MetricKind
    higher_is_better: bool = True
    description: str = ""  # how the task scores it (MetricDef.description)


def _known_tasks(tasks: Iterable[str]) -> dict[str, Any]:
    """The TaskDefs of those of `tasks` this evalkit knows (an older run, or a task from
    elsewhere, may name others)."""
    from evalkit.tasks.base import known_task

    found = {task: known_task(task) for task in sorted(set(tasks))}
    return {task: tdef for task, tdef in found.items() if tdef is not None}


def declared_metrics(tasks: Iterable[str]) -> dict[tuple[str, str], MetricInfo]:
    """(task, metric) -> what the task declares (TaskDef.metrics), in declared order, for
    the tasks this evalkit knows; a task it does not know is read from its scores alone."""
    out: dict[tuple[str, str], MetricInfo] = {}
    for task, taskdef in _known_tasks(tasks).items():
        for m in getattr(taskdef, "metrics", ()):
            out[(task, str(m.name))] = MetricInfo(
                "continuous" if m.kind == "continuous" else "binary",
                bool(getattr(m, "higher_is_better", True)), str(getattr(m, "description", "")))
    return out


def loglikelihood_tasks(tasks: Iterable[str]) -> set[str]:
    """Those of `tasks` declared as loglikelihood tasks (nothing to parse in their output)."""
    return {task for task, taskdef in _known_tasks(tasks).items()
            if getattr(taskdef, "kind", "generate") == "loglikelihood"}


def metric_info(records: Iterable[Record]) -> dict[tuple[str, str], MetricInfo]:
    """(task, metric) -> kind and direction: declared by the task where it is known, else
    read off the scores (binary when every one is 0 or 1; higher taken as better)."""
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


def row_info(rows: Iterable[SummaryRow],
             records: Iterable[Record] = ()) -> dict[tuple[str, str], MetricInfo]:
    """(task, metric) -> kind and direction for summary rows: the records' (declared or
    read off the scores), else what the rows carry with the direction the task declares
    (a summary.json alone has no scores to read)."""
    rows = list(rows)
    out = {(r.task, r.metric): MetricInfo(r.kind) for r in rows}
    declared = declared_metrics({r.task for r in rows})
    out.update({k: declared.get(k, v) for k, v in out.items() if k in declared})
    out.update(metric_info(records))
    return out


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


# ---- summaries ---------------------------------------------------------------------------

def summary_of(run_dir: Path, info: Mapping[str, Any], records: Sequence[Record]) -> RunSummary:
    """The summary of a run's run.json (`info`) and records: pure, writes nothing. The
    runner writes it as summary.json; readers compute it in memory."""
    n_ok = sum(1 for r in records if r.ok)
    n_planned = int(info.get("n_samples", len(records)))
    rows = summary_rows(records)
    return RunSummary(
        run_id=str(info.get("run_id", Path(run_dir).name)),
        status="complete" if n_ok >= n_planned else "partial",
        rows=tuple(rows),
        n_samples=n_planned, n_done=n_ok,
        n_errors=len(records) - n_ok,
        effective=tuple(effective_of(rows, records)),
    )


def effective_of(rows: Sequence[SummaryRow], records: Iterable[Record] = (),
                 threshold: float = DEFAULT_THRESHOLD) -> list[EffectiveLength]:
    """The effective lengths of a run's rows at `threshold` (evalkit.results.effective),
    metrics where lower is better left out."""
    return run_effective_lengths(rows, row_info(rows, records), threshold)


def summary_rows(records: Sequence[Record]) -> list[SummaryRow]:
    """The summary rows of records: by length cell and subset
    (evalkit.results.summary.aggregate), but for the tasks that summarize themselves
    (TaskDef.summarize: a suite's average, a mean of subjects), which do so over the
    records of every task sharing their summarize."""
    tasks = _known_tasks({r.sample.task for r in records})
    own: dict[Any, list[Record]] = {}
    plain: list[Record] = []
    for r in records:
        summarize = getattr(tasks.get(r.sample.task), "summarize", None)
        if summarize is None:
            plain.append(r)
        else:
            own.setdefault(summarize, []).append(r)
    rows = aggregate(plain, metric_kinds(plain))
    for summarize, recs in own.items():
        rows.extend(summarize(recs))
    return rows


def build_summary(run_dir: Path) -> RunSummary:
    """A run's summary computed from samples.jsonl in memory: writes nothing."""
    records = store.read_records(run_dir, prompts=False)
    return summary_of(run_dir, store.read_run(run_dir), records)


def upgrade_row(row: SummaryRow) -> SummaryRow:
    """A version-1 summary row with what version 2 carries, read off the row itself: a
    value that is k/n and whose interval is exactly Wilson's for k of n is a binary plain
    mean with k successes; any other value is tested by its interval (derived)."""
    if row.successes is not None or row.derived or row.kind != "binary":
        return row
    if row.n > 0 and not math.isnan(row.value):
        k = round(row.value * row.n)
        lo, hi = wilson(k, row.n)
        if (math.isclose(k / row.n, row.value, abs_tol=1e-9)
                and math.isclose(lo, row.ci_low, abs_tol=1e-6)
                and math.isclose(hi, row.ci_high, abs_tol=1e-6)):
            return replace(row, successes=k)
    return replace(row, kind="continuous", derived=True)


# ---- runs --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One run as the read side sees it. `records` is empty for a summary.json alone;
    `rows` are computed from the records when there are any, else summary.json's."""

    path: Path
    info: dict[str, Any]
    label: str
    records: list[Record]
    status: str
    rows: list[SummaryRow]
    n_samples: int
    n_done: int
    n_errors: int
    sessions: list[dict[str, Any]] = field(default_factory=list)  # see store.session

    @property
    def has_samples(self) -> bool:
        return bool(self.records)


def read_run(path: Path, prompts: bool = True) -> Run:
    """A run folder, or a summary.json alone (its folder's run.json is read if there is
    one). Every fault is one EvalkitError naming the file. `prompts=False`: the records'
    prompts are left empty (store.read_records): what scores, tables and gates need, in a
    fraction of the memory."""
    path = Path(path)
    if path.is_file():
        if path.name != store.SUMMARY:
            raise EvalkitError(f"{path} is neither a run folder nor a {store.SUMMARY}: pass "
                               "results/<run-id> or its summary.json")
        folder = path.parent
        info = store.read_run(folder) if (folder / store.RUN_JSON).is_file() else {}
        records: list[Record] = []
    elif path.is_dir():
        folder = path
        if not (folder / store.RUN_JSON).is_file() and (folder / store.SUMMARY).is_file():
            info, records = {}, []  # a committed baseline: summary.json alone
        else:
            info = store.read_run(folder)
            records = store.read_records(folder, prompts)
    else:
        raise EvalkitError(f"{path} does not exist: pass a run folder (results/<run-id>) or "
                           "its summary.json")
    if records:
        summary = summary_of(folder, info, records)
    else:
        saved = store.read_summary(folder)
        if saved is None:
            summary = summary_of(folder, info, records)  # a run that has no sample yet
        else:
            summary = replace(saved, rows=tuple(upgrade_row(r) for r in saved.rows))
    label = str(model_name(info) or _label_of(summary.rows) or folder.name)
    return Run(folder, dict(info), label, records, summary.status, list(summary.rows),
               summary.n_samples, summary.n_done, summary.n_errors,
               store.read_sessions(folder))


def common_errors(records: Iterable[Record], most: int = 3) -> list[tuple[str, int]]:
    """The commonest error messages of the records, most frequent first."""
    counts = Counter(r.response.error for r in records if r.response.error is not None)
    return [(str(m), n) for m, n in counts.most_common(most)]


def model_name(info: Mapping[str, Any]) -> str | None:
    """The name a run's model goes by: the label the user gave, else the name the model
    gives itself (a GGUF's general.name, a hub id) or its server gives it, else the label
    the run was made with (an alias or the file's stem)."""
    spec, backend = info.get("spec") or {}, info.get("backend") or {}
    for name in (spec.get("label"), backend.get("model_name"),
                 # what a server says it serves: an OpenAI-compatible one, TGI
                 backend.get("served_model"), backend.get("api_model"), backend.get("model_id"),
                 info.get("model_label")):
        if isinstance(name, str) and name.strip():
            return name.strip()
    return None


def _label_of(rows: Sequence[SummaryRow]) -> str | None:
    models = list(dict.fromkeys(r.model for r in rows))
    return models[0] if len(models) == 1 else None


def relabel(run: Run, label: str) -> Run:
    return replace(run, label=label, records=[replace(r, model=label) for r in run.records],
                   rows=[replace(r, model=label) for r in run.rows])


def _tasks(run: Run) -> set[str]:
    return {r.sample.task for r in run.records} | {r.task for r in run.rows}


def _joined(runs: Sequence[Run]) -> list[int]:
    """Per run, the index of the first run it shares a column with: runs of one label and
    one model file whose tasks are pairwise disjoint join; any other run stands alone."""
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault((run.label, model_file(run.info)), []).append(i)
    out = list(range(len(runs)))
    for members in groups.values():
        tasks = [_tasks(runs[i]) for i in members]
        if len(members) > 1 and sum(map(len, tasks)) == len(set().union(*tasks)):
            out = [members[0] if i in members else g for i, g in enumerate(out)]
    return out


def model_file(info: Mapping[str, Any]) -> str | None:
    """The file or folder a run's model was loaded from (its name, never a path)."""
    backend, spec = info.get("backend") or {}, info.get("spec") or {}
    for name in (backend.get("model_file"), backend.get("gguf_file"),
                 backend.get("model_folder"), spec.get("model")):
        if isinstance(name, str) and name:
            return Path(name).name
    return None


def load_runs(paths: Sequence[Path], join_disjoint: bool = False,
              prompts: bool = True) -> list[Run]:
    """Runs with display labels that tell them apart: the model, else the model with its
    file (two quantizations of one model), else model@run-folder, else a position (#2) for
    the same run given twice. `join_disjoint`: runs of one model whose tasks do not overlap
    (the long-context tasks in one run, lm-eval's in another) keep one label, so
    that a report shows them as one column. `prompts`: as read_run's."""
    runs = [read_run(p, prompts) for p in paths]
    column = _joined(runs) if join_disjoint else list(range(len(runs)))
    firsts = sorted(set(column))  # a column by its first run
    with_file = {c: f"{runs[c].label} ({model_file(runs[c].info)})" for c in firsts}
    with_folder = {c: f"{runs[c].label}@{runs[c].path.name}" for c in firsts}
    labels, files, folders = (Counter(d.values()) for d in (
        {c: runs[c].label for c in firsts}, with_file, with_folder))
    names: dict[int, str] = {}
    for c in firsts:
        names[c] = runs[c].label
        if labels[names[c]] > 1:  # another column has this label
            if model_file(runs[c].info) and files[with_file[c]] == 1:
                names[c] = with_file[c]
            else:
                names[c] = with_folder[c] + (f"#{c + 1}" if folders[with_folder[c]] > 1 else "")
    return [relabel(run, names[column[i]]) for i, run in enumerate(runs)]


# ---- frames ------------------------------------------------------------------------------

def summary_frame(rows: Iterable[SummaryRow]) -> pd.DataFrame:
    """Summary rows as a frame, a column per SummaryRow field."""
    fields = list(SummaryRow.__dataclass_fields__)
    return pd.DataFrame([[getattr(r, f) for f in fields] for r in rows], columns=fields)


RECORD_COLUMNS = [*CELL, "sample_id", "value", "prompt_sha256"]


def records_frame(records: Iterable[Record]) -> pd.DataFrame:
    """Each scored sample's value per summary cell (task, length, subset, metric): a row per
    (record, subset, metric), errored records left out (summary rows count them)."""
    data = [(r.sample.task, length_key(r), str(subset), metric, r.sample.id, float(value),
             r.prompt_sha256)
            for r in records if r.ok
            for subset in ("all", *r.sample.subsets)
            for metric, value in r.scores.items()]
    # lengths are ints (tokens) or bin names: one object column, so that a run of either
    # kind joins with a run of the other
    return pd.DataFrame(data, columns=RECORD_COLUMNS).astype({"length": object})


def by_cell(frame: pd.DataFrame) -> dict[CellKey, pd.DataFrame]:
    """A frame of records_frame or paired_frame split by cell (task, length, subset,
    metric), cells in first-seen order."""
    out: dict[CellKey, pd.DataFrame] = {}
    for key, group in frame.groupby(CELL, sort=False):
        task, length, subset, metric = key
        cell: CellKey = (str(task), length if isinstance(length, int) else str(length),
                         str(subset), str(metric))
        out[cell] = group
    return out


def paired_frame(a: Run, b: Run) -> pd.DataFrame:
    """Two runs joined by cell and sample id (see join_frames)."""
    return join_frames(records_frame(a.records), records_frame(b.records))


def join_frames(fa: pd.DataFrame, fb: pd.DataFrame) -> pd.DataFrame:
    """Two records_frames joined by cell and sample id: value_a, value_b and both prompt
    hashes, with `prompt_changed` where the same id was sent as a different prompt (a
    template change, say): such pairs are still the same test case, and readers say how
    many changed."""
    joined = fa.merge(fb, on=[*CELL, "sample_id"], suffixes=("_a", "_b"))
    joined["prompt_changed"] = joined["prompt_sha256_a"] != joined["prompt_sha256_b"]
    return joined
