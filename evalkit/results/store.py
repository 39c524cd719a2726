"""The only code that reads or writes results/. Every file carries schema_version.

results/<run-id>/
  run.json        the spec (secrets redacted), versions, git sha; written first
  samples.jsonl   append-only records, flushed and fsynced per batch: the source of truth;
                  resume = the ids already here (the last record of an id wins)
  texts.pack      the records' long texts (prompts, conversations), each chunk stored once
                  and compressed; a record names its texts (evalkit.results.texts)
  summary.json    written atomically at the end, only when it changes; rebuildable from
                  samples.jsonl
  table.csv       the accuracy table of summary.json, for spreadsheets
  sessions.jsonl  one line per `evalkit run` that asked the model anything: when it started,
                  how long it took, how it ended (the report's duration)

No fault loses a sample: an append that fails is cut back whole (no half-written record),
and only the run's writer (under run_lock) writes; readers never do. Bad input is one
line: every file is checked on reading, and a damaged one is an EvalkitError naming the
file (and the line of samples.jsonl). Only a torn last line, what a crash mid-write
leaves, is passed over, and the next writer cuts it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import fcntl
import io
import json
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evalkit.results import schema, texts
from evalkit.results.schema import RunInfo
from evalkit.types import (
    SCHEMA_VERSION,
    EvalkitError,
    Record,
    Response,
    RunSummary,
    Sample,
    SummaryRow,
    record_from_json,
    to_jsonable,
)

RUN_JSON, SAMPLES, SUMMARY, TABLE = "run.json", "samples.jsonl", "summary.json", "table.csv"
SESSIONS = "sessions.jsonl"


def safe_name(text: str, most: int = 100) -> str:
    """A folder name made of a label: letters, digits, '-', '_', '.', never hidden, never
    '.' or '..', so that a label cannot put a run outside the folder it is meant for."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-._") else "-" for c in text)
    safe = safe[:most]
    if safe.startswith("."):
        safe = "_" + safe.lstrip(".")
    return safe if safe.strip("_") else "_"


def make_run_id(name: str, model_label: str, spec_hash: str) -> str:
    """Sortable and unique: 2026-11-22T10-31-05_quickstart_gemma3-270m_3f9a2c."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
    return f"{stamp}_{safe_name(f'{name}_{model_label}')}_{spec_hash[:6]}"


# ---- writing ---------------------------------------------------------------------------

PROBE_BYTES = 4096  # one page: a full disk refuses it, a writable folder takes it at once
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _advice(exc: OSError) -> str:
    """What the user does about a write the OS refused, by its cause."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space and run the same command again to resume"
    if exc.errno == errno.EFBIG:
        return "raise the file size limit (ulimit -f) and run the same command again to resume"
    if exc.errno in _READ_ONLY:
        return "make it writable (or pass another --out) and run the same command again"
    return "fix that and run the same command again to resume"


def write_error(path: Path, exc: OSError) -> EvalkitError:
    """The one line for a write into a run folder that the OS refused."""
    return EvalkitError(f"cannot write {path}: {_why(exc)}: {_advice(exc)}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write may write less than asked; each turn writes >= 1 byte or raises
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "the file system accepted no bytes")
        view = view[n:]


def _fsync_dir(folder: Path) -> None:
    # the rename itself must reach the disk too; some file systems cannot fsync a folder
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` at once: a temporary file beside it, fsynced, then renamed,
    so a reader never sees half a file. The file gets the mode any new file gets
    (0666 & ~umask), like samples.jsonl beside it. A refused write is one EvalkitError."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        try:
            _write_all(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
    _fsync_dir(path.parent)


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=True) + "\n"


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, _json_text(data))


def refuse_bad_link(path: Path, option: str | None = None, file_ok: bool = False) -> None:
    """One line when `path`, or a folder above it, is a symbolic link that leads nowhere: a
    loop (`ln -s a b; ln -s b a`) or a link to nothing. Asked to create such a folder the
    OS says only "File exists" or "Too many levels of symbolic links". `option` names how
    the user gives another path (`--out`); `file_ok`: `path` is a file to write, which a
    link to nothing creates."""
    path = Path(path)
    instead = f"another {option or 'folder'}"
    for p in [*reversed(path.parents), path]:  # the outermost link is the one to fix
        if not p.is_symlink():
            continue
        try:
            os.stat(p)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise EvalkitError(f"{p} is a symbolic link loop (it leads back to itself): "
                                   f"remove or repoint it, or pass {instead}"
                                   ) from None
            if exc.errno == errno.ENOENT and not (file_ok and p == path):
                try:
                    target = f"to {os.readlink(p)}, which does not exist"
                except OSError:
                    target = "to nothing"
                raise EvalkitError(f"{p} is a symbolic link {target}: create that or remove "
                                   f"the link, or pass {instead}") from None


# the temporary files evalkit's own writes make (write_text_atomic's, prepare_run_dir's)
_OWN_TEMPORARY = re.compile(r"\.probe-\d+-[0-9a-f]{8}\.tmp|\..+\.[0-9a-f]{8}\.tmp")


def _leftover(folder: Path, name: str) -> bool:
    """A file evalkit leaves in a folder that holds nothing else of it: the (empty) lock of
    a start that failed before run.json, a temporary file of a write cut short. Only these
    names: a user's notes.tmp or .lock with something in it is theirs."""
    if name == ".lock":
        with contextlib.suppress(OSError):
            return (folder / name).stat().st_size == 0
        return False
    return bool(_OWN_TEMPORARY.fullmatch(name))


def foreign_names(folder: Path) -> list[str]:
    """The names in `folder` other than evalkit's leftovers, sorted, a folder's with a '/';
    [] when `folder` does not exist. A folder that cannot be listed is one line."""
    try:
        with os.scandir(folder) as it:
            return sorted(e.name + ("/" if e.is_dir(follow_symlinks=False) else "")
                          for e in it if not _leftover(Path(folder), e.name))
    except (FileNotFoundError, NotADirectoryError):  # creating it will say what is wrong
        return []
    except OSError as exc:
        raise EvalkitError(f"cannot read the folder {folder}: {_why(exc)}: pass another "
                           "folder") from None


def listed(names: Sequence[str], most: int = 6) -> str:
    """'a, b, c' or 'a, b, c and 4 more': the names of a folder within one line."""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


_OWN_RUN_KEYS = ("schema_version", "spec_hash", "run_id", "spec")


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` holds evalkit's run.json, whole or damaged. Another tool's is a JSON
    object with none of the keys evalkit's has (schema_version, spec_hash, run_id, spec);
    anything else by that name (not JSON, not an object, an object short of a field) is
    taken as evalkit's, damaged, and reading it (read_run) names the fault and the fix."""
    try:
        data = json.loads((Path(folder) / RUN_JSON).read_bytes())
    except FileNotFoundError:
        return False
    except (OSError, ValueError, RecursionError):
        return (Path(folder) / RUN_JSON).is_file()
    return not isinstance(data, dict) or any(k in data for k in _OWN_RUN_KEYS)


def check_run_folder(run_dir: Path, option: str | None = "--out") -> None:
    """A run writes only into a folder that does not exist, an empty one (evalkit's own
    leftovers aside: an empty .lock, its temporary files) or its own run folder
    (is_run_folder): anything else, such as another tool's summary.json and table.csv, is
    refused with one line naming what the folder holds. Reads only, so the refusal comes
    before any file is written there. `option` names how the user gives the folder
    (`--out`), None when it was derived."""
    run_dir = Path(run_dir)
    refuse_bad_link(run_dir, option)
    as_option = f" as {option}" if option else ""
    if run_dir.exists() and not run_dir.is_dir():
        raise EvalkitError(f"{run_dir} is a file, not a folder: pass a folder (new or a run's)"
                           f"{as_option}")
    names = foreign_names(run_dir)
    if names and not is_run_folder(run_dir):
        raise EvalkitError(f"{run_dir} holds files evalkit did not write ({listed(names)}): "
                           f"pass an empty or new folder{as_option}")


def remove_leftovers(folder: Path) -> None:
    """Remove evalkit's leftovers (_leftover) from a folder, e.g. before it is replaced."""
    for name in os.listdir(folder):
        if _leftover(Path(folder), name):
            with contextlib.suppress(FileNotFoundError):
                (Path(folder) / name).unlink()


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run folder and prove that it takes a write (a probe file, fsynced, then
    removed): an unwritable folder or a full disk is then one line before any model work,
    not a failure after planning and model load. A folder that holds another tool's files
    is refused first (check_run_folder), with nothing written into it."""
    run_dir = Path(run_dir)
    check_run_folder(run_dir, None)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvalkitError(f"cannot create the run folder {run_dir}: {_why(exc)}: "
                           f"{_advice(exc)}") from None
    probe = run_dir / f".probe-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            _write_all(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise EvalkitError(f"cannot write into the run folder {run_dir}: {_why(exc)}: "
                           f"{_advice(exc)}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def discard_if_unused(run_dir: Path) -> None:
    """Remove a run folder that holds nothing but its lock: a run that failed before it
    wrote run.json leaves no empty folder under results/."""
    with contextlib.suppress(OSError):
        if {p.name for p in Path(run_dir).iterdir()} <= {".lock"}:
            (Path(run_dir) / ".lock").unlink(missing_ok=True)
            Path(run_dir).rmdir()


def remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files (and a run's temporary plan folders) that a killed writer left
    behind. Call it holding run_lock: then no other writer can own them."""
    for p in Path(run_dir).glob(".*.tmp"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def write_run(run_dir: Path, info: RunInfo | Mapping[str, Any]) -> None:
    """Write run.json from its typed definition (a mapping, such as a merged run's, is
    checked against it first: a wrong one is a bug, said as one)."""
    data = info.to_json() if isinstance(info, RunInfo) else dict(info)
    data.setdefault("schema_version", SCHEMA_VERSION)
    problem = schema.check(data, RunInfo, "run.json")
    if problem:
        raise ValueError(f"run.json to write: {problem}")
    write_json_atomic(Path(run_dir) / RUN_JSON, data)


@contextlib.contextmanager
def session(run_dir: Path, started: float) -> Iterator[None]:
    """Time the work inside as one session of the run (it began at `started`, time.time()),
    appended to sessions.jsonl however the work ends."""
    ended = "failed"
    try:
        yield
        ended = "finished"
    except KeyboardInterrupt:
        ended = "interrupted"
        raise
    finally:
        append_sessions(run_dir, [{
            "schema_version": SCHEMA_VERSION,
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 3), "ended": ended}])


def append_sessions(run_dir: Path, sessions: Sequence[Mapping[str, Any]]) -> None:
    """Append session lines to sessions.jsonl. Timing is a nicety: lines that cannot be
    written are left out rather than hiding the outcome of the work they time."""
    if sessions:
        with contextlib.suppress(OSError), (Path(run_dir) / SESSIONS).open("a") as f:
            f.write("".join(json.dumps(s) + "\n" for s in sessions))


def read_sessions(run_dir: Path) -> list[dict[str, Any]]:
    """The sessions of a run (see `session`); lines that are not a session are passed over:
    they only time the run, its results never depend on them."""
    try:
        lines = (Path(run_dir) / SESSIONS).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        with contextlib.suppress(ValueError, OverflowError, RecursionError):
            d = json.loads(line)
            if (isinstance(d, dict) and schema.is_number(d.get("seconds"))
                    and isinstance(d.get("started"), str)
                    and math.isfinite(float(d["seconds"])) and d["seconds"] >= 0):
                out.append(d)
    return out


def run_cells(info: Mapping[str, Any]) -> dict[str, dict[str, int]] | None:
    """run.json's `cells` (task -> length cell -> samples planned) when it is whole and well
    formed, else None (a run made before it was kept, or a damaged value)."""
    cells = info.get("cells")
    if not isinstance(cells, dict):
        return None
    for counts in cells.values():
        if not (isinstance(counts, dict) and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0
                for n in counts.values())):
            return None
    return cells


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One writer per run: a second process on the same run folder is refused. The lock
    is the kernel's (flock), so a killed process never leaves it behind. In a folder that
    cannot be written the lock is taken on the existing .lock opened read-only, or not at
    all when there is none (no one can write there, so no writer needs excluding)."""
    path = Path(run_dir) / ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if exc.errno not in _READ_ONLY:
            raise write_error(path, exc) from None
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield
            return
        except OSError as exc2:
            raise write_error(path, exc2) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EvalkitError(f"another evalkit process is running {run_dir}: wait for it to "
                               "finish or stop it, then run again") from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _tail_length(f: io.BufferedReader, size: int) -> int:
    """Bytes after the last newline of an open file of `size` bytes, read backwards."""
    pos = size
    while pos > 0:  # ends: pos falls by at least one byte each turn
        step = min(1 << 16, pos)
        f.seek(pos - step)
        i = f.read(step).rfind(b"\n")
        if i >= 0:
            return size - (pos - step + i + 1)
        pos -= step
    return size


def torn_tail(run_dir: Path) -> int:
    """Bytes of a record that a crash left half-written at the end of samples.jsonl."""
    path = Path(run_dir) / SAMPLES
    try:
        with path.open("rb") as f:
            return _tail_length(f, os.fstat(f.fileno()).st_size)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise EvalkitError(f"cannot read {path}: {_why(exc)}") from None


def repair_tail(run_dir: Path) -> int:
    """Cut a record that a crash left half-written at the end of samples.jsonl, so that
    appends start on a clean line. Returns the bytes removed; writes nothing when there
    is nothing to cut (a finished run in a read-only folder stays readable)."""
    path = Path(run_dir) / SAMPLES
    cut = torn_tail(run_dir)
    torn_texts = texts.store_of(run_dir).torn()
    for where, n in ((path, cut), (Path(run_dir) / texts.TEXTS, torn_texts)):
        if n:
            try:
                os.truncate(where, where.stat().st_size - n)
            except OSError as exc:
                raise write_error(where, exc) from None
    return cut


def append_records(run_dir: Path, records: Iterable[Record]) -> None:
    """Append records to samples.jsonl, fsynced, their long texts to texts.pack first
    (evalkit.results.texts). All or nothing: when the write or the fsync fails (a full
    disk, a size limit, an interrupt) the file is cut back to its size before the write,
    so no record is ever half-written, and an OSError becomes one line."""
    store = texts.store_of(run_dir)
    store.refresh(verify=True)
    lines = []
    for r in records:
        d = texts.externalize_record({"schema_version": SCHEMA_VERSION, **to_jsonable(r)},
                                     store)
        if texts.has_refs(d):
            d["schema_version"] = texts.RECORD_VERSION
        lines.append(json.dumps(d, ensure_ascii=False) + "\n")
    data = "".join(lines).encode("utf-8")
    if not data:
        return
    try:
        write_texts(store)
    except OSError as exc:
        raise _append_error(run_dir, exc, texts.TEXTS) from None
    try:
        append_whole(Path(run_dir) / SAMPLES, data)
    except OSError as exc:
        raise _append_error(run_dir, exc) from None


def write_texts(store: texts.TextStore, codecs: tuple[str, ...] = texts.CODECS,
                sync: bool = True) -> None:
    """Append the texts waiting in `store` to its texts.pack, after cutting a torn entry a
    crash left (the caller is the folder's writer). An OSError leaves the file whole.
    `sync`: fsynced (a cache's need not be)."""
    chunks = store.pending(codecs)
    if not chunks:
        return
    try:
        torn = store.torn()
        if torn:
            os.truncate(store.path, store.path.stat().st_size - torn)
        append_whole(store.path, chunks, sync)
    except BaseException:
        store.discard()
        raise
    store.written()


def append_whole(path: Path, data: bytes, sync: bool = True) -> None:
    """Append `data` to the file, fsynced (`sync`), or leave the file as it was (see
    append_records). A file this makes is fsynced into its folder too."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.fstat(fd).st_size
        written = False
        try:
            _write_all(fd, data)
            written = True
            if sync:
                os.fsync(fd)
                if not start:
                    _fsync_dir(path.parent)
        except BaseException as exc:
            # A refused write or fsync is undone. An interrupt (Ctrl-C) undoes only a write
            # it cut short: whole lines already in the file are as good as fsynced ones
            # for a process that stops, and dropping them would lose finished samples.
            if isinstance(exc, OSError) or not written:
                with contextlib.suppress(OSError):  # cutting back frees space: it succeeds
                    os.ftruncate(fd, start)
                    os.fsync(fd)
            raise
    finally:
        os.close(fd)


def _append_error(run_dir: Path, exc: OSError, name: str = SAMPLES) -> EvalkitError:
    return EvalkitError(f"cannot append to {name} in {run_dir}: {_why(exc)}; the batch in "
                        f"flight was rolled back, every earlier sample is kept: {_advice(exc)}")


def _row_fields(rows: Sequence[SummaryRow]) -> list[str]:
    """SummaryRow's fields, without `clusters` where no row has any: a run without
    shared-context tasks writes the files it wrote before they existed."""
    fields = list(SummaryRow.__dataclass_fields__)
    return fields if any(r.clusters is not None for r in rows) else [
        f for f in fields if f != "clusters"]


def table_csv_text(rows: Iterable[SummaryRow]) -> str:
    rows = list(rows)
    fields = _row_fields(rows)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(fields)
    for r in rows:
        w.writerow([getattr(r, k) for k in fields])
    return buf.getvalue()


def write_table_csv(path: Path, rows: Iterable[SummaryRow]) -> None:
    write_text_atomic(Path(path), table_csv_text(rows))


def _summary_files(run_dir: Path, summary: RunSummary,
                   effective: bool = True) -> list[tuple[Path, bytes]]:
    data = to_jsonable(summary)
    if not effective:
        data.pop("effective")
    fields = _row_fields(summary.rows)
    data["rows"] = [{k: row[k] for k in fields} for row in data["rows"]]
    return [(Path(run_dir) / SUMMARY, _json_text(data).encode("utf-8")),
            (Path(run_dir) / TABLE, table_csv_text(summary.rows).encode("utf-8"))]


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def summary_is_current(run_dir: Path, summary: RunSummary) -> bool:
    """summary.json and table.csv already hold exactly this summary (or, for a run
    summarized before effective lengths were written, all of it but those, which readers
    derive from the rows: such a run is not rewritten)."""
    return any(all(_same_bytes(p, data) for p, data in _summary_files(run_dir, summary, e))
               for e in (True, False))


def write_summary(run_dir: Path, summary: RunSummary) -> bool:
    """Write summary.json and table.csv, each only when its content changes: a run that is
    already summarized is never rewritten (its folder may be read-only). True if written."""
    wrote = False
    for path, data in _summary_files(run_dir, summary):
        if not _same_bytes(path, data):
            write_text_atomic(path, data.decode("utf-8"))
            wrote = True
    return wrote


# ---- reading: every file checked; a fault is one line naming the file (and line) ------

_RECORD_FIX = ("remove or restore that line (a removed sample runs again when the run is "
               "resumed)")
_RUN_FIX = ("restore it from a copy, or start the run afresh with another --out (run.json "
            "is written once, when a run starts)")
_SUMMARY_FIX = ("delete it: a run rebuilds it from samples.jsonl (a summary.json kept alone, "
                "such as a committed baseline, is restored from a copy instead)")


def _load_json(path: Path, fix: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EvalkitError(f"{path}: not UTF-8 text (byte {exc.start}): {fix}") from None
    except OSError as exc:
        raise EvalkitError(f"cannot read {path}: {_why(exc)}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalkitError(f"{path} line {exc.lineno} column {exc.colno}: not valid JSON "
                           f"({exc.msg}): {fix}") from None
    except RecursionError:
        raise EvalkitError(f"{path}: nested too deeply to be an evalkit file: {fix}") from None


def _check_version(d: Any, where: str, newest: int = SCHEMA_VERSION) -> None:
    if isinstance(d, dict):
        v = d.get("schema_version")
        if isinstance(v, int) and not isinstance(v, bool) and v > newest:
            raise EvalkitError(f"{where} has schema_version {v}, newer than this evalkit reads "
                               f"({newest}): upgrade evalkit")


def read_run(run_dir: Path) -> dict[str, Any]:
    """run.json, checked: a fault is one EvalkitError naming the file."""
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise EvalkitError(f"{run_dir} is not an evalkit run (no {RUN_JSON})")
    data = _load_json(path, _RUN_FIX)
    _check_version(data, str(path))
    problem = schema.check(data, RunInfo, "the file")
    if problem:
        raise EvalkitError(f"{path}: {problem}: {_RUN_FIX}")
    out: dict[str, Any] = data
    return out


def find_run(results_root: Path, spec_hash: str) -> Path | None:
    """The newest run of this spec that has not finished, to resume it. A folder named for
    this spec whose run.json is damaged is one EvalkitError: starting afresh beside it
    would leave its samples behind in silence. (A folder with no run.json at all is a
    start that was killed before it wrote one: it holds no samples and is passed over.)"""
    if not results_root.is_dir():
        return None
    for d in sorted(results_root.glob(f"*_{spec_hash[:6]}"), reverse=True):
        if not (d / RUN_JSON).is_file():
            continue
        run = read_run(d)
        if run.get("spec_hash") != spec_hash:
            continue
        try:
            summary = read_summary(d)
        except EvalkitError:
            summary = None  # a damaged summary is rebuilt by the resume
        if summary is not None and summary.status == "complete":
            continue
        return d
    return None


def read_summary(run_dir: Path) -> RunSummary | None:
    """summary.json, checked (None if there is none): a fault is one line naming it."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return None
    d = _load_json(path, _SUMMARY_FIX)
    _check_version(d, str(path))
    problem = schema.check(d, RunSummary, "the file")
    for i, row in enumerate(d["rows"] if problem is None else []):
        problem = schema.check(row, SummaryRow, f"rows[{i}]", prefix=f"rows[{i}].")
        if problem:
            break
    if problem:
        raise EvalkitError(f"{path}: {problem}: {_SUMMARY_FIX}")
    rows = tuple(SummaryRow(**schema.known(r, SummaryRow)) for r in d["rows"])
    # the effective lengths are derived from the rows: the read side computes them again
    # (at any threshold), so that what is saved is never read as the truth
    return RunSummary(**{**schema.known(d, RunSummary), "rows": rows, "effective": ()})


def _parse_record(raw: bytes, path: Path, lineno: int, prompts: bool = True,
                  store: texts.TextStore | None = None) -> Record:
    where = f"{path} line {lineno}"
    try:
        d = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise EvalkitError(f"{where}: not UTF-8 text (byte {exc.start}): {_RECORD_FIX}") from None
    except json.JSONDecodeError as exc:
        raise EvalkitError(f"{where}: not a JSON record ({exc.msg}, column {exc.colno}): "
                           f"{_RECORD_FIX}") from None
    except RecursionError:
        raise EvalkitError(f"{where}: nested too deeply to be a record: {_RECORD_FIX}") from None
    _check_version(d, where, texts.RECORD_VERSION)
    if isinstance(d, dict) and d.get("schema_version") == texts.RECORD_VERSION:
        d = _read_texts(d, texts.store_of(path.parent) if store is None else store, where,
                        prompts)
    problem = schema.check(d, Record, "the line")
    if problem is None:
        problem = (schema.check(d["sample"], Sample, "sample", prefix="sample.")
                   or schema.check(d["response"], Response, "response", prefix="response.",
                                   closed=True))
    if problem:
        raise EvalkitError(f"{where}: {problem}: {_RECORD_FIX}")
    try:
        record = record_from_json(d)
    except (EvalkitError, KeyError, TypeError, ValueError) as exc:  # a damaged conversation
        raise EvalkitError(f"{where}: {exc}: {_RECORD_FIX}") from None
    if prompts:
        return record
    return dataclasses.replace(
        record, sample=dataclasses.replace(record.sample, prompt="", messages=None), sent=None)


_TEXT_FIX = (f"restore {texts.TEXTS} from a copy, or remove that line (a removed sample runs "
             "again when the run is resumed)")


def _read_texts(d: dict[str, Any], store: texts.TextStore, where: str,
                prompts: bool) -> dict[str, Any]:
    """A record line's stored texts read back from texts.pack beside it; without
    `prompts`, the prompt's (its text, its turns, the prompt as sent) are left out, and
    texts.pack is not read at all. The line is checked as a whole after either."""
    if not prompts:
        d = texts.without_texts(d)
    try:
        out = texts.internalize_record(d, store)
    except texts.TextError as exc:
        raise EvalkitError(f"{where}: {exc}: {_TEXT_FIX}") from None
    return out


def read_records(run_dir: Path, prompts: bool = True) -> list[Record]:
    """The records of a run, the last one of each id, in first-seen order. Only a torn
    last line (a crash mid-write, no newline yet) is skipped; any other line that is not
    a whole record is one EvalkitError naming the file and line: a sample is never
    dropped in silence. `prompts=False` leaves every prompt empty (summaries and resume
    need none; a long run's prompts would fill memory)."""
    latest: dict[str, Record] = {}
    for rec in iter_records(run_dir, prompts):
        latest[rec.sample.id] = rec
    return list(latest.values())


def iter_records(run_dir: Path, prompts: bool = True) -> Iterator[Record]:
    """Every record line of a run, in file order, one at a time (a sample recorded twice
    comes twice: the last one counts), checked as read_records checks them."""
    path = Path(run_dir) / SAMPLES
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise EvalkitError(f"cannot read {path}: {_why(exc)}") from None
    store = texts.store_of(run_dir)
    with f:
        for lineno, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break  # the torn tail of an interrupted write
            if raw.strip():
                yield _parse_record(raw, path, lineno, prompts, store)
