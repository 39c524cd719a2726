"""The static HTML report: one folder that opens from disk, no server, no network.

reports/<name>/
  index.html         tables, plots, run metadata, the sample browser (jinja2, autoescaped)
  plots/*.png|svg    each metric by length per task (tasks with a length axis only);
                     for tasks that declare sample axes (TaskDef.axes), each metric by
                     axis x length as a heatmap
  static/            report.css, report.js (copied from evalkit/report/static)
  samples.js         sample metadata and outputs, as JSON (rendered with textContent only)
  prompts/NNNN.js    the prompts' text, each chunk once (a shared haystack is written once),
                     loaded when a sample's prompt is opened: its row names the chunks of
                     [template text before, user text, template text after]
  prompts/files.js   the number of the first chunk of each prompts/NNNN.js, and the build's
                     id (the prompt files are loaded with it: never a stale cached one)
  .evalkit-report    marks the folder as a report: the next report may replace its files

Model output and prompts are untrusted text: the page never puts them through innerHTML,
and the HTML around them is autoescaped.

Every metric the summary rows carry is reported (accuracy, acc, acc_norm, mc2, ...): tasks
with a length axis get a table per metric and a plot, tasks scored once over all their
data (tasks scored whole) get the score table. Runs are read through
evalkit.results.read: rows computed from samples.jsonl, or a summary.json alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import shutil
from collections import Counter
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from evalkit.prompts.templates import FIXED_TEMPLATES, make_template, sent_user, split_sent
from evalkit.report.plots import axis_heatmap, length_plot
from evalkit.report.tables import (
    LengthLine,
    ScoreLine,
    counted,
    effective_shown,
    fmt_effective,
    fmt_lower,
    length_tables,
    score_lines,
    split_rows,
)
from evalkit.results import store, texts
from evalkit.results.effective import DEFAULT_THRESHOLD, check_threshold
from evalkit.results.read import (
    MetricInfo,
    Run,
    common_errors,
    declared_metrics,
    effective_of,
    load_runs,
    loglikelihood_tasks,
    metric_kinds,
    model_file,
    model_name,
    primary_metrics,
)
from evalkit.results.summary import length_order
from evalkit.tasks import get_task
from evalkit.tasks.base import TASKS
from evalkit.types import EffectiveLength, EvalkitError, Record, SummaryRow

PROMPT_FILE_CHARS = 1 << 20  # characters of prompt text per lazily loaded file, about
MARK_CHARS = 20_000     # a mark longer than this is not marked (the prompt shows it whole)
OUTPUT_CHARS = 4000     # model output kept in the browser per sample (the record has it all)


def _env() -> jinja2.Environment:
    loader = jinja2.PackageLoader("evalkit.report", "templates")
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = _pct
    env.filters["value"] = _value
    env.filters["score"] = _score
    env.filters["length"] = _length_label
    env.filters["shade"] = _shade
    env.filters["counted"] = counted
    return env


def _pct(v: float | None) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.0%}"


def _value(v: float | None, like: float | None = None) -> str:
    """A by-length cell: a percentage where its value is a score in [0, 1], else the number
    itself (a mean log-probability, say); `like` is the value whose scale a bound takes."""
    ref = v if like is None else like
    if v is None or math.isnan(v) or ref is None or math.isnan(ref) or 0.0 <= ref <= 1.0:
        return _pct(v)
    return f"{v:.2f}"


def _score(v: float | None) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.4f}"


def _shade(v: float | None) -> str:
    """The cell colour class of a score in [0, 1] (none outside it: no scale to shade on)."""
    return f"h{round(v * 4)}" if v is not None and 0.0 <= v <= 1.0 else "hx"


def _length_label(length: int | str) -> str:
    if isinstance(length, int):
        return f"{length / 1024:g}k" if length % 256 == 0 else str(length)
    return str(length)


def _copy_static(out: Path) -> None:
    static = out / "static"
    static.mkdir(parents=True, exist_ok=True)
    for item in resources.files("evalkit.report").joinpath("static").iterdir():
        if item.name.endswith((".css", ".js")):
            (static / item.name).write_text(item.read_text(encoding="utf-8"), encoding="utf-8")


def _js_payload(variable: str, data: Any) -> str:
    # JSON is JS; keep "</" and U+2028/9 escaped so the file is safe wherever it is inlined
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f"{variable}={text};\n"


def _clean(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else round(v, 4)


def _outcome(r: Record, metric: str | None, kind: str, loglikelihood: bool) -> str:
    """error; scored (a continuous metric decides); correct; wrong, or unparsed (a
    generated answer nothing could be read out of)."""
    if r.response.error is not None:
        return "error"
    if metric is not None and kind == "continuous":
        return "scored"
    if metric is not None and r.scores.get(metric) == 1.0:
        return "correct"
    chose = loglikelihood or r.parsed is not None or r.response.logprob is not None
    return "wrong" if chose else "unparsed"


def _prompt_sent(r: Record, server_template: bool) -> tuple[list[str], str]:
    """The prompt as sent, as [template text before, user text, template text after], and
    how it is known (the note the page shows):
    - "exact": its sha256 is the record's prompt_sha256;
    - "server": the same, sent as one user message to a chat endpoint whose server wraps it
      in a template evalkit does not see (`server_template`);
    - "unsplit": the same, but the user text is not in it verbatim, so it is shown whole;
    - "differs": it does not hash to the record's prompt_sha256;
    - "user": a record written before the template's text was kept, with the model's own
      template: the user text alone. (A fixed template of such a record is rendered
      again, and checked like the others.)"""
    s = r.sample
    sent = r.sent
    if sent is None and s.template in FIXED_TEMPLATES:
        sent = split_sent(make_template(s.template).render(s.prompt), s.prompt)
    if sent is None:
        return ["", s.prompt, ""], "user"
    parts = [sent["before"], sent_user(s.prompt, sent), sent["after"]]
    text = "".join(parts)
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != r.prompt_sha256:
        return parts, "differs"
    if s.prompt and not parts[1]:
        return ["", text, ""], "unsplit"
    return parts, "server" if server_template else "exact"


def _marks(r: Record) -> list[list[str]]:
    """The needles and question the sample's task marks (TaskDef.marks), for the browser."""
    from evalkit.tasks.base import known_task

    task = known_task(r.sample.task)
    if task is None or task.marks is None or not r.sample.prompt:
        return []
    try:
        found = task.marks(r.sample)
    except (KeyError, IndexError, TypeError, ValueError, re.error):  # an older record's shape
        return []
    return [[kind, text] for kind, text in found if len(text) <= MARK_CHARS]


class _PromptFiles:
    """The report's prompt texts, each chunk once (cut as evalkit.results.texts cuts the
    run's texts, so that a haystack the samples share is written once): prompts/NNNN.js
    files of about PROMPT_FILE_CHARS characters each, chunks numbered in order, chunk n in
    the last file f with starts[f] <= n."""

    def __init__(self, folder: Path) -> None:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        self.folder = folder
        self.numbers: dict[str, int] = {}
        self.starts = [0]
        self._pending: list[str] = []
        self._chars = 0

    def add(self, text: str) -> list[int]:
        """The numbers of the text's chunks, in order (new chunks wait for their file)."""
        out = []
        for piece in texts.chunk_text(text):
            key = texts.chunk_id(piece.encode("utf-8"))
            n = self.numbers.get(key)
            if n is None:
                n = self.numbers[key] = len(self.numbers)
                self._pending.append(piece)
                self._chars += len(piece)
                if self._chars >= PROMPT_FILE_CHARS:
                    self._write()
            out.append(n)
        return out

    def _write(self) -> None:
        file = len(self.starts) - 1
        body = _js_payload(f"window.EVALKIT_CHUNKS[{file}]", self._pending)
        (self.folder / f"{file:04d}.js").write_text(
            "window.EVALKIT_CHUNKS=window.EVALKIT_CHUNKS||{};" + body, encoding="utf-8")
        self.starts.append(len(self.numbers))
        self._pending, self._chars = [], 0

    def close(self) -> list[int]:
        """Write the last file; the first chunk number of each file."""
        if self._pending:
            self._write()
        return self.starts[:-1]


def _write_samples(out: Path, runs: list[Run], build: str) -> int:
    """samples.js (a row per record) and prompts/ (the prompts as sent, each row naming
    its chunks). The runs' records carry no prompts: each run's are read here one record
    at a time, so that a report of long prompts holds one in memory, not all."""
    rows: list[dict[str, Any]] = []
    row_of: dict[tuple[int, str], dict[str, Any]] = {}
    for i, run in enumerate(runs):
        primary = primary_metrics(run.rows, run.records)
        kinds = metric_kinds(run.records)
        by_loglikelihood = loglikelihood_tasks({r.sample.task for r in run.records})
        for r in run.records:
            s, resp = r.sample, r.response
            metric = primary.get(s.task)
            outcome = _outcome(r, metric, kinds.get((s.task, metric or ""), "binary"),
                               s.task in by_loglikelihood)
            row = row_of[(i, s.id)] = {
                "model": run.label, "task": s.task, "length": _length_label(s.cell),
                "id": s.id, "outcome": outcome, "expected": " | ".join(s.targets),
                "output": resp.text[:OUTPUT_CHARS], "output_cut": len(resp.text) > OUTPUT_CHARS,
                "parsed": r.parsed, "error": resp.error, "input_tokens": s.input_tokens,
                "target_tokens": s.target_tokens, "output_tokens": resp.output_tokens,
                "latency_s": round(resp.latency_s, 3), "cached": resp.cached,
                "template": s.template,
                "depth": s.meta.get("depth"), "metric": metric,
                "scores": {k: _clean(v) for k, v in r.scores.items()},
                "sha256": r.prompt_sha256, "sent": "user", "framed": False, "marks": [],
                "pc": [[], [], []],  # the chunks of the prompt's three parts (see below)
                "reasoning": None if resp.reasoning is None else resp.reasoning[:OUTPUT_CHARS],
                "reasoning_tokens": resp.reasoning_tokens,
                "exhausted": bool(resp.reasoning_exhausted),
            }
            rows.append(row)
    files = _PromptFiles(out / "prompts")
    for i, run in enumerate(runs):
        if not run.records:
            continue
        server_template = (run.info.get("backend") or {}).get("endpoint") == "chat"
        for r in store.iter_records(run.path):  # a sample recorded twice: the last counts
            found = row_of.get((i, r.sample.id))
            if found is None:
                continue
            parts, sent = _prompt_sent(r, server_template)
            found.update(sent=sent, framed=bool(parts[0] or parts[2]), marks=_marks(r),
                       pc=[files.add(part) for part in parts])
    (out / "prompts" / "files.js").write_text(
        _js_payload("window.EVALKIT_CHUNK_FILES", files.close())
        + _js_payload("window.EVALKIT_BUILD", build), encoding="utf-8")
    (out / "samples.js").write_text(_js_payload("window.EVALKIT_SAMPLES", rows),
                                    encoding="utf-8")
    return len(rows)


def _cached_note(records: list[Record]) -> str | None:
    """"12 of 20 answers from the response cache" where any of `records` was answered
    from the cache, else None (so is a record written before answers were marked)."""
    hits = sum(r.response.cached for r in records)
    return f"{hits} of {counted(len(records), 'answer')} from the response cache" if hits else None


CacheKey = tuple[str, str, int | str, str]  # (model, task, length cell, subset)


def _by_cell(records: list[Record]) -> dict[CacheKey, list[Record]]:
    """Records by (model, task, length cell, subset): the cells of the by-length tables."""
    cells: dict[CacheKey, list[Record]] = {}
    for r in records:
        for subset in ("all", *r.sample.subsets):
            cells.setdefault((r.model, r.sample.task, r.sample.cell, subset), []).append(r)
    return cells


def _cached_notes(records: list[Record]) -> tuple[dict[CacheKey, str],
                                                   dict[tuple[str, str, str], str]]:
    """Where answers came from the response cache: by (model, task, length, subset) for the
    by-length tables, by (model, task, subset) for the score table (its rows may name a
    number of shots, not their records' length cells). Cells of none are left out."""
    cells = _by_cell(records)
    once: dict[tuple[str, str, str], list[Record]] = {}
    for (model, task, _, subset), recs in cells.items():
        once.setdefault((model, task, subset), []).extend(recs)
    return ({k: note for k, recs in cells.items() if (note := _cached_note(recs))},
            {k: note for k, recs in once.items() if (note := _cached_note(recs))})


def _reasoning_note(records: list[Record]) -> str | None:
    """"reasoning: 412 tokens on average, 3 out of budget" where a thinking model's records
    kept their reasoning, else None."""
    tokens = [r.response.reasoning_tokens for r in records
              if r.response.reasoning_tokens is not None]
    if not tokens:
        return None
    out = sum(1 for r in records if r.response.reasoning_exhausted)
    return (f"reasoning: {sum(tokens) / len(tokens):.0f} tokens on average"
            + (f", {out} out of budget (no answer)" if out else ""))


def _reasoning_notes(records: list[Record]) -> dict[CacheKey, str]:
    """The reasoning note of each (model, task, length, subset) cell that has one."""
    return {k: note for k, recs in _by_cell(records).items() if (note := _reasoning_note(recs))}


def _results(rows: list[SummaryRow]) -> tuple[list[tuple[str, list[LengthLine]]],
                                              list[ScoreLine]]:
    """(by-length tables per metric, score table lines) of every run's rows."""
    by_length, once = split_rows(rows)
    return length_tables(by_length), score_lines(once)


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _task_counts(run: Run) -> list[dict[str, Any]]:
    """Per task: samples planned (per length cell, as run.json records them), scored and
    errored; a run made before run.json kept its cells shows what its records hold."""
    planned = store.run_cells(run.info) or {}
    done = Counter(r.sample.task for r in run.records if r.ok)
    errors = Counter(r.sample.task for r in run.records if not r.ok)
    seen: dict[str, Counter[str]] = {}
    for r in run.records:
        seen.setdefault(r.sample.task, Counter())[str(r.sample.cell)] += 1
    out = []
    for task in sorted(set(planned) | set(seen)):
        counts: dict[str, int] = dict(planned[task] if task in planned else seen[task])
        cells = {int(c) if c.isdecimal() else c: n for c, n in counts.items()}
        out.append({
            "task": task, "planned": sum(planned[task].values()) if task in planned else None,
            "done": done[task], "errors": errors[task],
            "cells": " · ".join(f"{_length_label(c)}: {cells[c]}"
                                for c in sorted(cells, key=length_order)),
        })
    return out


def _run_meta(run: Run) -> dict[str, Any]:
    """A run at a glance (the top of the report) and its details."""
    info = run.info
    spec = info.get("spec", {})
    backend = info.get("backend", {})
    versions = info.get("versions", {})
    common = common_errors(run.records, 1)
    name = model_name(info) or run.label
    seconds = sum(float(x["seconds"]) for x in run.sessions)
    merged = info.get("merged_from")
    merged = [str(m) for m in merged] if isinstance(merged, list) else []
    duration = None
    if run.sessions:
        duration = _duration(seconds) + (
            f" in {len(run.sessions)} sessions" if len(run.sessions) > 1 else "") + (
            f" (summed over {counted(len(merged), 'shard')})" if merged else "")
    engine = backend.get("engine_version") or backend.get("tgi_version")
    return {
        "label": run.label, "run_id": info.get("run_id", run.path.name), "status": run.status,
        "model": name, "model_file": model_file(info),
        "column": run.label if run.label != name else None,
        "backend": spec.get("backend", backend.get("backend")), "engine": engine,
        "tokenizer": info.get("tokenizer"), "templates": info.get("templates", {}),
        "tasks": _task_counts(run), "n_samples": run.n_samples, "n_done": run.n_done,
        "n_errors": run.n_errors, "cached": _cached_note(run.records),
        "top_error": f"{common[0][0][:300]} ({common[0][1]}x)" if common else None,
        "duration": duration, "evalkit": versions.get("evalkit"),
        "seed": spec.get("seed"), "temperature": spec.get("temperature"),
        "created": info.get("created"), "git_sha": (info.get("git_sha") or "")[:12],
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "merged_from": ", ".join(merged),
        "skipped": _skipped(info),
    }


def _skipped(info: dict[str, Any]) -> list[tuple[str, str]]:
    """The samples a task left out (run.json's `skipped`: over the window), with why."""
    skipped = info.get("skipped")
    if not isinstance(skipped, dict):
        return []
    return [(str(k), str(v)) for k, v in skipped.items()]


REPORT_MARK = ".evalkit-report"


def _is_report(out: Path) -> bool:
    """Whether `out` holds a report evalkit wrote: its mark, or (a report made before the
    mark) an index.html with evalkit's title beside static/report.css."""
    if (out / REPORT_MARK).is_file():
        return True
    try:
        with (out / "index.html").open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"<title>evalkit" in head and (out / "static" / "report.css").is_file()


def check_out(out: Path) -> None:
    """Refuse, with one EvalkitError line and before anything is written, a report folder
    that is a file, a run folder (a report never writes into a run), a folder of other
    files (another tool's: a report would replace its index.html, plots/ ...) or a
    symbolic link loop. Reads only."""
    store.refuse_bad_link(out, "--out")
    if out.exists() and not out.is_dir():
        raise EvalkitError(f"--out {out} is a file, not a folder: pass a folder for the report "
                           "(it is created if missing)")
    if (out / store.RUN_JSON).exists():
        raise EvalkitError(f"--out {out} is a run folder: pass another folder for the report "
                           "(a report never writes into a run)")
    names = store.foreign_names(out)
    if names and not _is_report(out):
        raise EvalkitError(f"{out} holds files evalkit did not write ({store.listed(names)}): "
                           "pass an empty or new folder, or an evalkit report's, as --out")


def prepare_out(out: Path) -> None:
    """Create the report folder, marked as a report, once check_out lets it be: a place that
    cannot be written is one EvalkitError line too."""
    check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / REPORT_MARK).is_file():
            (out / REPORT_MARK).write_text("made by evalkit report: the next report into this "
                                           "folder replaces its files\n", encoding="utf-8")
    except OSError as exc:
        raise EvalkitError(f"cannot create the report folder {out}: {exc.strerror or exc}: "
                           "pass another --out") from None


def build_report(run_dirs: list[Path], out: Path, title: str | None = None,
                 threshold: float = DEFAULT_THRESHOLD) -> Path:
    """Render the report of one or more runs into `out`; returns index.html. `threshold`:
    the score a task's effective length must stay at or above."""
    if not run_dirs:
        raise EvalkitError("report needs at least one run folder (results/<run-id>)")
    check_threshold(threshold)
    prepare_out(out)
    return _render_report(load_runs(run_dirs, join_disjoint=True, prompts=False), out, title,
                          threshold)


def _render_report(runs: list[Run], out: Path, title: str | None,
                   threshold: float = DEFAULT_THRESHOLD) -> Path:
    try:
        return _write_report(runs, out, title, threshold)
    except OSError as exc:
        raise EvalkitError(f"cannot write the report in {out}: {exc.strerror or exc}: free "
                           "space or pass another --out") from None


def _write_report(runs: list[Run], out: Path, title: str | None, threshold: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    records = [r for run in runs for r in run.records]
    rows = [r for run in runs for r in run.rows]
    labels = list(dict.fromkeys(run.label for run in runs))  # joined runs share a column
    tasks = sorted({r.sample.task for r in records})
    by_length, score_table = _results(rows)
    rules = _rules(by_length, declared_metrics({*tasks, *(r.task for r in rows)}))
    effective = [e for run in runs for e in effective_of(run.rows, run.records, threshold)]
    plots = (_length_plots(rows, by_length, out, effective)
             + _axis_heatmaps(runs, records, out))
    cached, cached_once = _cached_notes(records)
    build = secrets.token_hex(4)  # in every file's address: a browser cache never mixes builds
    n = _write_samples(out, runs, build)
    _copy_static(out)
    html = _env().get_template("report.html.j2").render(
        build=build,
        title=title or " vs ".join(labels), runs=[_run_meta(r) for r in runs], labels=labels,
        length_tables=by_length, rules=rules, score_table=score_table, plots=plots,
        effective=_effective_table(effective), threshold=threshold,
        n_samples=n, filters=_filters(labels, tasks, records), cached=cached,
        cached_once=cached_once, reasoning=_reasoning_notes(records),
    )
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index


def _rules(by_length: list[tuple[str, list[LengthLine]]],
           declared: dict[tuple[str, str], MetricInfo]) -> dict[str, list[tuple[str, str]]]:
    """Per metric of the by-length tables, how each of its tasks scores it (the tasks that
    say), in table order."""
    return {metric: [(task, d.description)
                     for task in dict.fromkeys(line.task for line in lines)
                     if (d := declared.get((task, metric))) and d.description]
            for metric, lines in by_length}


Plot = dict[str, str]  # a plot's title and its files' names


def _plot(title: str, paths: list[Path]) -> Plot:
    """A plot's entry in the page: its title, its PNG and its SVG."""
    return {"title": title, "png": paths[0].name, "svg": paths[1].name}


def _effective_table(effective: list[EffectiveLength]
                     ) -> list[tuple[str, str, dict[str, tuple[str, str]]]]:
    """(task, metric, label -> (by the scores, by the lower bounds)) of the tasks measured
    at two lengths or more, in first-seen order."""
    cells: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
    for e in effective_shown(effective):
        cells.setdefault((e.task, e.metric), {})[e.model] = (
            fmt_effective(e.by_value, e), fmt_lower(e))
    return [(task, metric, by_label) for (task, metric), by_label in cells.items()]


def _length_plots(rows: list[SummaryRow], by_length: list[tuple[str, list[LengthLine]]],
                  out: Path, effective: list[EffectiveLength]) -> list[Plot]:
    """Each metric against length, per task of its table, its effective lengths marked:
    plots/METRIC_TASK."""
    plots = []
    for metric, lines in by_length:
        for task in dict.fromkeys(line.task for line in lines):
            paths = length_plot(rows, task, metric, out / "plots" / store.safe_name(
                f"{metric}_{task}"), effective=effective)
            if paths:
                plots.append(_plot(f"{task}: {metric} by input length", paths))
    return plots


def _axis_heatmaps(runs: list[Run], records: list[Record], out: Path) -> list[Plot]:
    """For each task that declares sample axes, in task order: per axis, run and metric, the
    metric by axis x length (plots/TASK_AXIS_I, I the run's place, with _METRIC where the
    task's samples carry several metrics)."""
    metrics_of: dict[str, set[str]] = {}
    for r in records:
        metrics_of.setdefault(r.sample.task, set()).update(r.scores)
    plots = []
    for task in sorted(metrics_of):
        metrics = sorted(metrics_of[task])
        for axis in _axes_of(task):
            for i, run in enumerate(runs):
                plots += _run_heatmaps(run, f"{task}_{axis}_{i}", task, axis, metrics, out)
    return plots


def _axes_of(task: str) -> tuple[str, ...]:
    """The sample axes a task declares; none for a task this installation does not know (a
    run made elsewhere, a plugin not installed here) or whose definition does not load."""
    if not TASKS.knows(task):
        return ()
    try:
        return get_task(task).axes
    except EvalkitError:
        return ()


def _run_heatmaps(run: Run, name: str, task: str, axis: str, metrics: list[str],
                  out: Path) -> list[Plot]:
    """One run's heatmaps of a task's axis, a metric each."""
    plots = []
    for metric in metrics:
        suffix = "" if len(metrics) == 1 else f"_{metric}"
        paths = axis_heatmap(run.records, run.label, task, axis, metric,
                             out / "plots" / store.safe_name(name + suffix))
        if paths:
            plots.append(_plot(f"{task} {metric}, {axis} x length: {run.label}", paths))
    return plots


def _filters(labels: list[str], tasks: list[str], records: list[Record]) -> dict[str, list[str]]:
    """The sample browser's choices: models, tasks and length cells."""
    return {
        "models": labels,
        "tasks": tasks,
        "lengths": sorted({_length_label(r.sample.cell) for r in records},
                          key=lambda x: (not x[:-1].replace(".", "").isdigit(), x)),
    }


def _task_scores(run: Run) -> dict[str, float]:
    """"task metric" -> one number per task and metric for the index: the mean over all
    samples for a task with a length axis, the task's own row for one scored once (which
    may be a mean of subset means)."""
    by_length, once = split_rows(run.rows)
    pooled: dict[str, list[float]] = {}
    with_axis = {r.task for r in by_length}
    for r in run.records:
        if r.ok and r.sample.task in with_axis:
            for metric, value in r.scores.items():
                pooled.setdefault(f"{r.sample.task} {metric}", []).append(value)
    scores = {k: sum(v) / len(v) for k, v in sorted(pooled.items())}
    scores.update({f"{line.task} {line.metric}": row.value for line in score_lines(once)
                   for row in line.cells.values()})
    return scores


def _looks_like_run(d: Path) -> bool:
    return d.is_dir() and ((d / store.RUN_JSON).exists() or (d / store.SAMPLES).exists())


def build_index(results_root: Path, out: Path,
                log: Callable[[str], None] | None = None) -> Path:
    """An index page of every run under `results_root`, each linked to its own report.

    A run folder that cannot be read (a damaged run.json, a bad line in samples.jsonl, ...)
    does not stop the index: the good runs are reported, and each bad one is listed on the
    page with its one-line reason, which also goes to `log`."""
    runs = sorted((d for d in results_root.iterdir() if _looks_like_run(d)),
                  reverse=True) if results_root.is_dir() else []
    if not runs:
        raise EvalkitError(f"no runs under {results_root}: run `evalkit run` first")
    prepare_out(out)
    entries, bad = [], []
    for d in runs:
        try:
            run = load_runs([d], prompts=False)[0]
        except EvalkitError as exc:
            bad.append({"run_id": d.name, "reason": str(exc)})
            if log is not None:
                log(f"skipped {d}: {exc}")
            continue
        report = _render_report([run], out / "runs" / d.name, None)
        entries.append({**_run_meta(run), "href": report.relative_to(out).as_posix(),
                        "scores": _task_scores(run)})
    html = _env().get_template("index.html.j2").render(entries=entries, bad=bad,
                                                        root=str(results_root))
    try:
        _copy_static(out)
        index = out / "index.html"
        index.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise EvalkitError(f"cannot write the index in {out}: {exc.strerror or exc}: free "
                           "space or pass another --out") from None
    return index
