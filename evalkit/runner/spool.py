"""The run's planned samples while it runs: on disk (Spool), in the order that puts prompts
sharing a prefix together (prefix_key), so that 10,000 long prompts are not held in
memory and a backend's prefix cache serves them."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from evalkit.results import store
from evalkit.types import (
    Sample,
    sample_from_json,
    to_jsonable,
)


@dataclass(frozen=True)
class Planned:
    """A planned sample while the run holds it: its id, where its sample is in the spool,
    and its place in the schedule (prompts that share a prefix sort together)."""

    id: str
    order: tuple[str, bytes]
    where: tuple[int, int]  # offset and size in the spool
    cell: int | str  # the length cell (Sample.cell)


PREFIX_BLOCK = 1024  # characters per prefix digest: the grain of the schedule


def prefix_key(text: str) -> bytes:
    """8-byte digests of the text's prefixes at every PREFIX_BLOCK characters, joined:
    sorting by it puts texts that share the longest prefix next to each other (the order
    of a trie walk), in about 1/128 of the text's size."""
    h = hashlib.blake2b(digest_size=8)
    out = bytearray()
    for start in range(0, len(text), PREFIX_BLOCK):
        h.update(text[start:start + PREFIX_BLOCK].encode("utf-8"))
        out += h.copy().digest()
    return bytes(out)


class Spool:
    """The run's planned samples on disk, so that planning 10,000 long prompts does not hold
    them in memory: each sample's JSON, compressed (a fraction of samples.jsonl), in an
    unnamed temporary file in the run folder (in the system's temporary folder when the run
    folder takes no writes: a finished run, read-only), gone when closed or when the process
    dies. A refused write is one line naming the folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            self._f = tempfile.TemporaryFile(dir=folder)
        except OSError:
            self._f = tempfile.TemporaryFile()
            self.folder = Path(tempfile.gettempdir())

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def add(self, sample: Sample) -> tuple[int, int]:
        data = zlib.compress(json.dumps(to_jsonable(sample)).encode("utf-8"), 1)
        try:
            offset = self._f.seek(0, os.SEEK_END)
            self._f.write(data)
            self._f.flush()
        except OSError as exc:
            raise store.write_error(self.folder, exc) from None
        return offset, len(data)

    def get(self, where: tuple[int, int]) -> Sample:
        self._f.seek(where[0])
        return sample_from_json(json.loads(zlib.decompress(self._f.read(where[1]))))
