"""The static HTML report: one folder that opens from disk, no server, no network.

reports/<name>/
  index.html         tables, plots, run metadata, the sample browser (jinja2, autoescaped)
  plots/*.png|svg    accuracy by length per task; passkey depth x length heatmaps
  static/            report.css, report.js (copied from evalkit/report/static)
  samples.js         sample metadata and outputs, as JSON (rendered with textContent only)
  prompts/NNN.js     prompts in chunks, loaded when a sample's prompt is opened

Model output and prompts are untrusted text: the page never puts them through innerHTML,
and the HTML around them is autoescaped.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from evalkit import store
from evalkit.report.plots import accuracy_plot, depth_heatmap
from evalkit.runner import summary_of
from evalkit.scoring import aggregate, length_key
from evalkit.types import EvalkitError, Record, SummaryRow

PROMPT_CHUNK = 50       # prompts per lazily loaded file
OUTPUT_CHARS = 4000     # model output kept in the browser per sample (the record has it all)


@dataclass(frozen=True)
class RunData:
    run_dir: Path
    info: dict[str, Any]
    label: str
    records: list[Record]
    status: str


def load_runs(run_dirs: list[Path]) -> list[RunData]:
    """Runs with display labels that tell them apart (the model, or model@run-id). Reads
    only: the status comes from the records, in memory; nothing is written into a run."""
    raw = []
    for d in run_dirs:
        info = store.read_run(d)
        records = store.read_records(d)
        raw.append((d, info, records, summary_of(d, info, records).status))
    labels = [str(info.get("model_label", d.name)) for d, info, _, _ in raw]
    out = []
    for (d, info, records, status), label in zip(raw, labels, strict=True):
        if labels.count(label) > 1:
            label = f"{label}@{d.name}"
        out.append(RunData(d, info, label, [replace(r, model=label) for r in records], status))
    return out


def _env() -> jinja2.Environment:
    loader = jinja2.PackageLoader("evalkit.report", "templates")
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = _pct
    env.filters["length"] = _length_label
    return env


def _pct(v: float | None) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.0%}"


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


def _clean(v: float) -> float | None:
    return None if v is None or math.isnan(v) else round(v, 4)


def _write_samples(out: Path, runs: list[RunData]) -> int:
    rows: list[dict[str, Any]] = []
    prompts: list[str] = []
    for run in runs:
        for r in run.records:
            s, resp = r.sample, r.response
            outcome = ("error" if resp.error is not None else
                       "correct" if r.scores.get("accuracy") == 1.0 else
                       "unparsed" if r.parsed is None else "wrong")
            rows.append({
                "model": run.label, "task": s.task, "length": _length_label(length_key(r)),
                "id": s.id, "outcome": outcome, "expected": " | ".join(s.targets),
                "output": resp.text[:OUTPUT_CHARS], "output_cut": len(resp.text) > OUTPUT_CHARS,
                "parsed": r.parsed, "error": resp.error, "input_tokens": s.input_tokens,
                "target_tokens": s.target_tokens, "output_tokens": resp.output_tokens,
                "latency_s": round(resp.latency_s, 3), "template": s.template,
                "depth": s.meta.get("depth"), "p": len(prompts),
            })
            prompts.append(s.prompt)
    (out / "samples.js").write_text(_js_payload("window.EVALKIT_SAMPLES", rows), encoding="utf-8")
    pdir = out / "prompts"
    if pdir.exists():
        shutil.rmtree(pdir)
    pdir.mkdir()
    for c in range(0, len(prompts), PROMPT_CHUNK):
        body = _js_payload(f"window.EVALKIT_PROMPTS[{c // PROMPT_CHUNK}]",
                           prompts[c:c + PROMPT_CHUNK])
        (pdir / f"{c // PROMPT_CHUNK:04d}.js").write_text(
            "window.EVALKIT_PROMPTS=window.EVALKIT_PROMPTS||{};" + body, encoding="utf-8")
    return len(rows)


def _table(rows: list[SummaryRow], labels: list[str]) -> list[dict[str, Any]]:
    """Rows of (task, subset, length) with one cell per model."""
    keyed: dict[tuple[str, str, int | str], dict[str, Any]] = {}
    for r in rows:
        if r.metric != "accuracy":
            continue
        key = (r.task, r.subset, r.length)
        row = keyed.setdefault(key, {"task": r.task, "subset": r.subset, "length": r.length,
                                     "tokens": 0.0, "cells": {}})
        row["tokens"] = max(row["tokens"], r.input_tokens_mean)
        row["cells"][r.model] = r
    return [keyed[k] for k in sorted(keyed, key=_cell_order)]


def _cell_order(key: tuple[str, str, int | str]) -> tuple[Any, ...]:
    task, subset, length = key
    return (task, subset != "all", subset,
            (0, length, "") if isinstance(length, int) else (1, 0, str(length)))


def _run_meta(run: RunData) -> dict[str, Any]:
    info = run.info
    spec = info.get("spec", {})
    backend = info.get("backend", {})
    return {
        "label": run.label, "run_id": info.get("run_id"), "status": run.status,
        "model": spec.get("model"), "model_name": backend.get("model_name"),
        "backend": spec.get("backend"), "tokenizer": info.get("tokenizer"),
        "templates": ", ".join(f"{k}: {v}" for k, v in info.get("templates", {}).items()),
        "seed": spec.get("seed"), "temperature": spec.get("temperature"),
        "n": f"{sum(1 for r in run.records if r.ok)}/{info.get('n_samples')}",
        "created": info.get("created"), "git_sha": (info.get("git_sha") or "")[:12],
        "versions": ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items()),
    }


def prepare_out(out: Path) -> None:
    """Create the report folder. An existing file there, a run folder (a report never writes
    into a run) or a place that cannot be written is one EvalkitError line."""
    if out.exists() and not out.is_dir():
        raise EvalkitError(f"--out {out} is a file, not a folder: pass a folder for the report "
                           "(it is created if missing)")
    if (out / store.RUN_JSON).exists():
        raise EvalkitError(f"--out {out} is a run folder: pass another folder for the report "
                           "(a report never writes into a run)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvalkitError(f"cannot create the report folder {out}: {exc.strerror or exc}: "
                           "pass another --out") from None


def build_report(run_dirs: list[Path], out: Path, title: str | None = None) -> Path:
    """Render the report of one or more runs into `out`; returns index.html."""
    if not run_dirs:
        raise EvalkitError("report needs at least one run folder (results/<run-id>)")
    prepare_out(out)
    return _render_report(load_runs(run_dirs), out, title)


def _render_report(runs: list[RunData], out: Path, title: str | None) -> Path:
    try:
        return _write_report(runs, out, title)
    except OSError as exc:
        raise EvalkitError(f"cannot write the report in {out}: {exc.strerror or exc}: free "
                           "space or pass another --out") from None


def _write_report(runs: list[RunData], out: Path, title: str | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    records = [r for run in runs for r in run.records]
    rows = aggregate(records)
    labels = [run.label for run in runs]
    tasks = sorted({r.task for r in rows})
    plots = []
    for task in tasks:
        paths = accuracy_plot(rows, task, out / "plots" / f"accuracy_{task}")
        plots.append({"title": f"{task}: accuracy by input length", "png": paths[0].name,
                      "svg": paths[1].name})
    for i, run in enumerate(runs):
        paths_h = depth_heatmap(run.records, run.label, out / "plots" / f"passkey_depth_{i}")
        if paths_h:
            plots.append({"title": f"passkey depth x length: {run.label}",
                          "png": paths_h[0].name, "svg": paths_h[1].name})
    n = _write_samples(out, runs)
    _copy_static(out)
    filters = {
        "models": labels,
        "tasks": tasks,
        "lengths": sorted({_length_label(length_key(r)) for r in records},
                          key=lambda x: (not x[:-1].replace(".", "").isdigit(), x)),
    }
    html = _env().get_template("report.html.j2").render(
        title=title or " vs ".join(labels), runs=[_run_meta(r) for r in runs], labels=labels,
        table=_table(rows, labels), plots=plots, n_samples=n, filters=filters,
    )
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index


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
            run = load_runs([d])[0]
        except EvalkitError as exc:
            bad.append({"run_id": d.name, "reason": str(exc)})
            if log is not None:
                log(f"skipped {d}: {exc}")
            continue
        report = _render_report([run], out / "runs" / d.name, None)
        by_task: dict[str, list[float]] = {}
        for r in run.records:
            if r.ok and "accuracy" in r.scores:
                by_task.setdefault(r.sample.task, []).append(r.scores["accuracy"])
        entries.append({**_run_meta(run), "href": report.relative_to(out).as_posix(),
                        "tasks": {t: sum(v) / len(v) for t, v in sorted(by_task.items())}})
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
