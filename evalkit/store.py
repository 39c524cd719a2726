"""The only code that reads or writes results/. Every file carries schema_version.

results/<run-id>/
  run.json        the spec (secrets redacted), versions, git sha; written first
  samples.jsonl   append-only records, flushed and fsynced per batch: the source of truth;
                  resume = the ids already here (the last record of an id wins)
  summary.json    written atomically at the end; rebuildable from samples.jsonl
  table.csv       the accuracy table of summary.json, for spreadsheets
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evalkit.types import (
    SCHEMA_VERSION,
    EvalkitError,
    Record,
    RunSummary,
    SummaryRow,
    record_from_json,
    to_jsonable,
)

RUN_JSON, SAMPLES, SUMMARY, TABLE = "run.json", "samples.jsonl", "summary.json", "table.csv"


def make_run_id(name: str, model_label: str, spec_hash: str) -> str:
    """Sortable and unique: 2026-11-22T10-31-05_quickstart_gemma3-270m_3f9a2c."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
    safe = "".join(c if c.isalnum() or c in "-._" else "-" for c in f"{name}_{model_label}")
    return f"{stamp}_{safe}_{spec_hash[:6]}"


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False, allow_nan=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_run(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise EvalkitError(f"{run_dir} is not an evalkit run (no {RUN_JSON})")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if data.get("schema_version", 0) > SCHEMA_VERSION:
        raise EvalkitError(f"{path} has schema_version {data['schema_version']}, newer than this "
                           f"evalkit reads ({SCHEMA_VERSION}): upgrade evalkit")
    return data


def write_run(run_dir: Path, data: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / RUN_JSON, {"schema_version": SCHEMA_VERSION, **data})


def find_run(results_root: Path, spec_hash: str) -> Path | None:
    """The newest run of this spec that has not finished, to resume it."""
    if not results_root.is_dir():
        return None
    for d in sorted(results_root.glob(f"*_{spec_hash[:6]}"), reverse=True):
        try:
            run = read_run(d)
        except (EvalkitError, json.JSONDecodeError):
            continue
        if run.get("spec_hash") != spec_hash:
            continue
        summary = d / SUMMARY
        if summary.is_file():
            try:
                if json.loads(summary.read_text(encoding="utf-8")).get("status") == "complete":
                    continue
            except json.JSONDecodeError:
                pass
        return d
    return None


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One writer per run: a second process on the same run folder is refused. The lock
    is the kernel's (flock), so a killed process never leaves it behind."""
    with (Path(run_dir) / ".lock").open("a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EvalkitError(f"another evalkit process is running {run_dir}: wait for it to "
                               "finish or stop it, then run again") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def repair_tail(run_dir: Path) -> int:
    """Cut a record that a crash left half-written at the end of samples.jsonl, so that
    appends start on a clean line. Returns the bytes removed."""
    path = Path(run_dir) / SAMPLES
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        return len(data) - keep


def append_records(run_dir: Path, records: Iterable[Record]) -> None:
    lines = "".join(json.dumps({"schema_version": SCHEMA_VERSION, **to_jsonable(r)},
                               ensure_ascii=False) + "\n" for r in records)
    with (Path(run_dir) / SAMPLES).open("a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


def read_records(run_dir: Path) -> list[Record]:
    """The records of a run, the last one of each id, in first-seen order. A line that a
    crash cut short is skipped."""
    path = Path(run_dir) / SAMPLES
    latest: dict[str, Record] = {}
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # the torn tail of an interrupted write
            d = json.loads(line)
            if d.get("schema_version", 0) > SCHEMA_VERSION:
                raise EvalkitError(f"{path}: schema_version {d['schema_version']} is newer than "
                                   "this evalkit reads: upgrade evalkit")
            rec = record_from_json(d)
            latest[rec.sample.id] = rec
    return list(latest.values())


def write_summary(run_dir: Path, summary: RunSummary) -> None:
    write_json_atomic(Path(run_dir) / SUMMARY, to_jsonable(summary))
    write_table_csv(Path(run_dir) / TABLE, summary.rows)


def read_summary(run_dir: Path) -> RunSummary | None:
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return None
    d = json.loads(path.read_text(encoding="utf-8"))
    return RunSummary(run_id=d["run_id"], status=d["status"],
                      rows=tuple(SummaryRow(**r) for r in d["rows"]), n_samples=d["n_samples"],
                      n_done=d["n_done"], n_errors=d["n_errors"],
                      schema_version=d["schema_version"])


def write_table_csv(path: Path, rows: Iterable[SummaryRow]) -> None:
    rows = list(rows)
    fields = list(SummaryRow.__dataclass_fields__)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in rows:
            w.writerow([getattr(r, k) for k in fields])
    os.replace(tmp, path)
