"""The response cache: successful answers on disk by request key, per backend fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalkit.model.retry import notify_stderr
from evalkit.types import (
    Log,
    Response,
    to_jsonable,
)

CACHE_ENV = "EVALKIT_CACHE_DIR"
CACHE_FILE = "responses.jsonl"
CACHE_VERSION = 1


# -- the response cache ----------------------------------------------------------------------

def default_cache_dir() -> Path:
    """$EVALKIT_CACHE_DIR, else ~/.cache/evalkit/responses."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/evalkit/responses").expanduser()


_RESPONSE_FIELDS = {f.name for f in dataclasses.fields(Response)}


def _response_of(d: Any) -> Response | None:
    if not isinstance(d, dict) or not set(d) <= _RESPONSE_FIELDS:
        return None
    try:
        resp = Response(**d)
    except TypeError:
        return None
    return resp if resp.error is None else None


class ResponseCache:
    """Successful responses on disk, by Request.cache_key, one folder per backend
    fingerprint (`<root>/<sha256(fingerprint)[:16]>/responses.jsonl`).

    The file is append-only JSON lines, each written whole by one write() on a file opened
    for appending, so that concurrent runs on the same backend can share it (readers skip
    what is not a whole line). A torn tail (a crash mid-write) is ignored when read, and
    the next write starts on a new line, leaving it as one unreadable line that is skipped.
    An unreadable or unwritable cache never fails a run: it is used as far as it works, and
    one line says when it cannot be written. Errors are never cached: a re-run retries them.
    """

    def __init__(self, root: Path | None = None, log: Log = notify_stderr) -> None:
        self.root = root if root is not None else default_cache_dir()
        self.log = log
        self._entries: dict[str, dict[str, Response]] = {}  # folder -> key -> response
        self._broken = False
        self.hits = 0
        self.misses = 0
        self.skipped_lines = 0

    def folder(self, fingerprint: str) -> Path:
        return self.root / hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:16]

    def _load(self, fingerprint: str) -> dict[str, Response]:
        folder = self.folder(fingerprint)
        key = str(folder)
        if key in self._entries:
            return self._entries[key]
        entries: dict[str, Response] = {}
        try:
            data = (folder / CACHE_FILE).read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # nothing cached there (yet)
            data = b""
        except OSError as exc:
            self.log(f"response cache: cannot read {folder / CACHE_FILE} "
                     f"({exc.strerror or exc}): running without it")
            data = b""
        for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                resp = _response_of(d["response"])
                if d.get("v") != CACHE_VERSION or resp is None:
                    raise ValueError("not a cached response")
                entries[str(d["key"])] = resp
            except (ValueError, KeyError, TypeError, RecursionError):
                self.skipped_lines += 1
        self._entries[key] = entries
        return entries

    def get(self, fingerprint: str, key: str) -> Response | None:
        found = self._load(fingerprint).get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, fingerprint: str, items: Sequence[tuple[str, Response]]) -> None:
        """Keep the successful responses among `items` (key, response): in memory at once,
        on disk by one append."""
        entries = self._load(fingerprint)
        fresh = [(k, r) for k, r in items if r.error is None and k not in entries]
        if not fresh:
            return
        for k, r in fresh:
            entries[k] = dataclasses.replace(r, retryable=False, retry_after_s=None, cached=False)
        if self._broken:
            return
        lines = b"".join(json.dumps({"v": CACHE_VERSION, "key": k,
                                     "response": to_jsonable(entries[k])},
                                    ensure_ascii=False).encode("utf-8") + b"\n"
                         for k, _ in fresh)
        folder = self.folder(fingerprint)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            info = folder / "fingerprint.txt"
            if not info.exists():  # for a person looking in the folder: whose answers these are
                info.write_text(fingerprint + "\n", encoding="utf-8")
            path = folder / CACHE_FILE
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if _ends_torn(fd):
                    lines = b"\n" + lines
                os.write(fd, lines)
            finally:
                os.close(fd)
        except OSError as exc:
            self._broken = True
            self.log(f"response cache: cannot write under {self.root} "
                     f"({exc.strerror or exc}): this run caches nothing more (set "
                     f"{CACHE_ENV} to a writable folder, or pass --no-cache)")


def _ends_torn(fd: int) -> bool:
    """Whether the file ends without a newline (a torn last line)."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


