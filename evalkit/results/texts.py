"""Long texts of a run's records, stored once: texts.pack beside samples.jsonl.

The haystacks of long-context tasks are almost all shared text (the same filler, essays,
conversation turns), so a 128K-token run would repeat most of its bytes in every record.
A record's long texts (its prompt, the turns of its conversation, the template's text
around them as sent) are written as references instead:

    {"stored": "<sha256 of the whole text>", "chunks": ["<chunk id>", ...]}

A text is cut into chunks where its own content says (content-defined: after a line or
sentence whose CRC is the least of the CUT_WINDOW before it, past MIN_CHUNK characters, at
most MAX_CHUNK), so
that a needle put into a haystack changes the chunks around it only and every other chunk
is the one the other records have. A chunk is named by its sha256 and stored once; the
chunks new to a batch of records are compressed together, in frames of up to FRAME_BYTES
(zstandard; bz2 where its Burrows-Wheeler transform does clearly better, as on random
records: bench/storage.py has the figures), and appended to texts.pack before the records
that name them. texts.pack is a sequence of entries, each a JSON header line

    {"codec": "zstd" | "bz2", "size": <bytes of the frame>, "crc": <CRC-32 of the frame>,
     "chunks": [[id, bytes], ...]}

and its frame. Reading a reference joins its chunks and checks the sha256 of the text: a
missing chunk, a frame that does not decompress or a text that does not match is one
TextError naming the chunk, never a wrong text. A crash mid-write leaves a torn last entry,
which the next writer cuts (repair); chunks that no record names (the records of a batch
whose append failed) are harmless and used again. Damage in the middle of the file costs
the chunks it hits, never those after it: the reader finds the next entry, and the writer
checks every frame's CRC, so that a damaged chunk is written again, not named again.
"""

from __future__ import annotations

import bz2
import collections
import hashlib
import json
import os
import re
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

TEXTS = "texts.pack"
RECORD_VERSION = 3  # the schema_version of a record line that names stored texts
STORE_MIN = 4096  # characters: shorter strings stay in the record itself
MIN_CHUNK, MAX_CHUNK = 4096, 65536  # characters of a chunk (the last one may be shorter)
CUT_WINDOW = 16  # units a cut's unit is compared with
FRAME_BYTES = 4 << 20  # raw bytes of new chunks compressed together, at most
ID_CHARS = 24  # hex characters of a chunk id (96 bits of its sha256)
ZSTD_LEVEL = 3
BZ2_GAIN = 0.8  # bz2 is kept only where it is this much smaller (it decompresses slower)
CACHE_BYTES = 64 << 20  # decompressed frames kept for reading
PROBE_BYTES = 1 << 18  # of a frame, compressed both ways to choose the codec
_MARK = b'{"codec":'  # how every entry's header starts

_UNIT_END = re.compile(r"\n|\. ")
_REF_KEYS = frozenset({"stored", "chunks"})


class TextError(Exception):
    """A stored text that cannot be read back whole (store.py names the record)."""


def chunk_text(text: str) -> list[str]:
    """The text cut where its own content says (see the module's doc); the pieces join to
    the text. Units are lines and sentences; a text without their ends is cut every
    MAX_CHUNK characters."""
    pieces: list[str] = []
    start = unit = 0
    recent: collections.deque[int] = collections.deque(maxlen=CUT_WINDOW)
    for m in _UNIT_END.finditer(text):
        end = m.end()
        h = zlib.crc32(text[unit:end].encode("utf-8"))
        # a cut after a unit whose CRC is the least of the units before it: content-defined,
        # and a repeated filler (a few sentences over and over) is cut at the same sentence
        if end - start >= MAX_CHUNK or (end - start >= MIN_CHUNK and recent
                                         and h <= min(recent)):
            pieces.append(text[start:end])
            start = end
        recent.append(h)
        unit = end
    if start < len(text):
        pieces.append(text[start:])
    out: list[str] = []
    for piece in pieces:  # a unit longer than a chunk (no line or sentence ends in it)
        out.extend(piece[i:i + MAX_CHUNK] for i in range(0, len(piece), MAX_CHUNK))
    return out


def chunk_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:ID_CHARS]


def is_ref(value: Any) -> bool:
    """Whether a JSON value is a reference to a stored text."""
    return isinstance(value, dict) and value.keys() == _REF_KEYS


CODECS = ("zstd", "bz2")


def compress(data: bytes, codecs: tuple[str, ...] = CODECS) -> tuple[str, bytes]:
    """The frame of a batch's new chunks: zstandard; bz2 (where allowed) where it is
    clearly smaller, as on random records, tried on a probe first (it is ~20 times
    slower), and only where zstandard leaves over a tenth."""
    frame = _zstd(data)
    if "bz2" in codecs and len(frame) > 0.1 * len(data):
        probe = data[:PROBE_BYTES]
        if len(bz2.compress(probe, 9)) < BZ2_GAIN * len(_zstd(probe)):
            other = bz2.compress(data, 9)
            if len(other) < BZ2_GAIN * len(frame):
                return "bz2", other
    return "zstd", frame


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(data)


def decompress(codec: str, frame: bytes, size: int) -> bytes:
    """A frame's `size` bytes (its header's chunks): more is damage, never an allocation."""
    if codec == "zstd":
        if zstandard.frame_content_size(frame) > size:  # -1: not given (then capped)
            raise ValueError("a zstd frame holds more than its header says")
        return zstandard.ZstdDecompressor().decompress(frame, max_output_size=size)
    if codec == "bz2":
        out = bz2.BZ2Decompressor().decompress(frame, max_length=size + 1)
        if len(out) > size:
            raise ValueError("a bz2 frame holds more than its header says")
        return out
    raise ValueError(f"unknown codec {codec!r}")


class TextStore:
    """The texts of one run folder: an index of texts.pack (chunk id -> its frame and its
    place there), read as the file grows, and the chunks waiting to be written."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / TEXTS
        # id -> (offset of its entry's frame, frame size, codec, start, end in the frame,
        # the frame's bytes once decompressed)
        self._where: dict[str, tuple[int, int, str, int, int, int]] = {}
        self._verified = False  # the index was made checking every frame
        self._scanned = 0  # bytes of texts.pack indexed
        self._torn = 0  # bytes of a torn last entry past _scanned
        self._identity: tuple[int, int] | None = None
        self._pending: dict[str, bytes] = {}
        self._suspects: set[str] = set()  # chunks to write again (see suspect)

    # ---- the index ---------------------------------------------------------------------

    def refresh(self, verify: bool = False) -> None:
        """Index the entries written since the last look (another process's, a resumed
        run's). A file replaced or cut shorter is indexed again from its start. `verify`
        (the writer): each frame's bytes are checked against its header's CRC first, and a
        damaged frame's chunks are left out, so that they are written again rather than
        named again. The last copy of a chunk is the one read."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._reset(None)
            return
        identity = (st.st_dev, st.st_ino)
        if (identity != self._identity or st.st_size < self._scanned
                or (verify and not self._verified)):
            self._reset(identity)
            self._verified = verify
        if st.st_size == self._scanned:
            self._torn = 0
            return
        with self.path.open("rb") as f:
            self._torn = 0
            for offset, frame_at, header in _entries(f, self._scanned, st.st_size):
                if header is None:  # a crash mid-write left this last entry torn
                    self._torn = st.st_size - offset
                    break
                codec, size, crc, chunks = header
                if not (verify and crc is not None and not _crc_ok(f, frame_at, size, crc)):
                    start = 0
                    total = sum(n for _, n in chunks)
                    for cid, n in chunks:
                        self._where[cid] = (frame_at, size, codec, start, start + n, total)
                        start += n
                self._scanned = frame_at + size

    def _reset(self, identity: tuple[int, int] | None) -> None:
        self._where.clear()
        self._scanned = self._torn = 0
        self._identity = identity
        self._verified = False

    def torn(self) -> int:
        """Bytes at the end of texts.pack that are not a whole entry."""
        self.refresh()
        return self._torn

    def suspect(self, chunks: list[str]) -> None:
        """Chunks of a text that could not be read back: put() writes them again (the
        new copy, last in the file, is then the one read)."""
        self._suspects.update(chunks)

    # ---- writing -----------------------------------------------------------------------

    def put(self, text: str) -> dict[str, Any]:
        """The reference to `text`; its chunks not stored yet wait for flush()."""
        ids = []
        for piece in chunk_text(text):
            data = piece.encode("utf-8")
            cid = chunk_id(data)
            if cid not in self._where or cid in self._suspects:
                self._pending.setdefault(cid, data)
            ids.append(cid)
        return {"stored": hashlib.sha256(text.encode("utf-8")).hexdigest(), "chunks": ids}

    def pending(self, codecs: tuple[str, ...] = CODECS) -> bytes:
        """The entries that write the chunks waiting (nothing when none are), compressed
        with one of `codecs`."""
        out = bytearray()
        batch: list[tuple[str, bytes]] = []
        size = 0
        for cid, data in self._pending.items():
            batch.append((cid, data))
            size += len(data)
            if size >= FRAME_BYTES:
                out += _entry(batch, codecs)
                batch, size = [], 0
        if batch:
            out += _entry(batch, codecs)
        return bytes(out)

    def written(self) -> None:
        """The pending entries are in the file: index them."""
        self._suspects.difference_update(self._pending)
        self._pending.clear()
        self.refresh()

    def discard(self) -> None:
        """The pending entries were not written."""
        self._pending.clear()

    # ---- reading -----------------------------------------------------------------------

    def get(self, ref: Mapping[str, Any]) -> str:
        """The text a reference names, checked against its sha256 (TextError if not; its
        chunks are then suspects, which a writer stores again)."""
        chunks, want = ref["chunks"], ref["stored"]
        if not (isinstance(chunks, list) and all(isinstance(c, str) for c in chunks)
                and isinstance(want, str)):
            raise TextError("a stored-text reference should be {stored: sha256, chunks: "
                            "[chunk ids]}")
        try:
            data = b"".join(self._chunk(c) for c in chunks)
            if hashlib.sha256(data).hexdigest() != want:
                raise TextError(f"the text stored in {TEXTS} does not match its sha256 "
                                f"({TEXTS} is damaged)")
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:  # only a sha256 collision gets here
                raise TextError(f"the text stored in {TEXTS} is not UTF-8") from None
        except TextError:
            self.suspect(chunks)
            raise

    def _chunk(self, cid: str) -> bytes:
        if cid not in self._where:
            self.refresh()  # written since (a run that is going on)
        if cid not in self._where:
            raise TextError(f"its text's chunk {cid} is not in {TEXTS} (missing or damaged)")
        frame_at, size, codec, start, end, total = self._where[cid]
        data = self._frame(frame_at, size, codec, total)
        if end > len(data):
            raise TextError(f"chunk {cid} runs past its frame in {TEXTS} (damaged)")
        return data[start:end]

    def _frame(self, at: int, size: int, codec: str, total: int) -> bytes:
        key = (self.path, self._identity, at)
        data = _FRAMES.get(key)
        if data is not None:
            return data
        try:
            with self.path.open("rb") as f:
                f.seek(at)
                raw = f.read(size)
            data = decompress(codec, raw, total)
        except (OSError, ValueError, EOFError, MemoryError, zstandard.ZstdError) as exc:
            raise TextError(f"a frame of {TEXTS} at byte {at} cannot be read ({exc})") from None
        if len(data) != total:
            raise TextError(f"a frame of {TEXTS} at byte {at} holds {len(data)} bytes, not "
                            f"{total} (damaged)")
        _FRAMES.keep(key, data)
        return data


class _Frames:
    """Decompressed frames of every store, the most recently read kept up to CACHE_BYTES."""

    def __init__(self) -> None:
        self.kept: OrderedDict[tuple[Path, Any, int], bytes] = OrderedDict()
        self.size = 0

    def get(self, key: tuple[Path, Any, int]) -> bytes | None:
        data = self.kept.get(key)
        if data is not None:
            self.kept.move_to_end(key)
        return data

    def keep(self, key: tuple[Path, Any, int], data: bytes) -> None:
        self.kept[key] = data
        self.size += len(data)
        while self.size > CACHE_BYTES and len(self.kept) > 1:
            _, old = self.kept.popitem(last=False)
            self.size -= len(old)


_FRAMES = _Frames()


def _entry(batch: list[tuple[str, bytes]], codecs: tuple[str, ...]) -> bytes:
    codec, frame = compress(b"".join(data for _, data in batch), codecs)
    header = {"codec": codec, "size": len(frame), "crc": zlib.crc32(frame),
              "chunks": [[cid, len(data)] for cid, data in batch]}
    return json.dumps(header, separators=(",", ":")).encode("ascii") + b"\n" + frame


HeaderT = tuple[str, int, int | None, list[tuple[str, int]]]


def _entries(f: BinaryIO, offset: int, size: int) -> Iterator[tuple[int, int, HeaderT | None]]:
    """(offset, offset of its frame, header) of each entry from `offset` on, the file
    `size` bytes long. An entry that a crash cut short (at the end of the file) comes as
    (offset, -1, None), last. One damaged in the middle (a header that does not parse, a
    size past the end with entries after it) is passed over to the next header found."""
    while offset < size:
        f.seek(offset)
        line = f.readline()
        header = _header(line)
        frame_at = offset + len(line)
        if header is not None and frame_at + header[1] <= size:
            yield offset, frame_at, header
            offset = frame_at + header[1]
            continue
        later = _next_mark(f, offset + 1, size)
        if later is None:
            yield offset, -1, None
            return
        offset = later


def _next_mark(f: BinaryIO, offset: int, size: int) -> int | None:
    """Where the next entry's header starts after `offset` (None: none does)."""
    f.seek(offset)
    carry = b""
    while offset < size:
        block = f.read(1 << 20)
        if not block:
            return None
        found = (carry + block).find(_MARK)  # right after a frame: no newline before it
        if found >= 0:
            return offset - len(carry) + found
        carry = block[-len(_MARK):]
        offset += len(block)
    return None


def _crc_ok(f: BinaryIO, at: int, size: int, crc: int) -> bool:
    f.seek(at)
    value = 0
    left = size
    while left > 0:
        block = f.read(min(left, 1 << 20))
        if not block:
            return False
        value = zlib.crc32(block, value)
        left -= len(block)
    return value == crc


def _header(line: bytes) -> HeaderT | None:
    if not (line.startswith(_MARK) and line.endswith(b"\n")):
        return None
    try:
        d = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not (isinstance(d, dict) and d.get("codec") in ("zstd", "bz2")
            and type(d.get("size")) is int and d["size"] >= 0
            and (d.get("crc") is None or type(d["crc"]) is int)
            and isinstance(d.get("chunks"), list)):
        return None
    chunks = []
    for c in d["chunks"]:
        if not (isinstance(c, list) and len(c) == 2 and isinstance(c[0], str)
                and type(c[1]) is int and c[1] >= 0):
            return None
        chunks.append((c[0], c[1]))
    return d["codec"], d["size"], d.get("crc"), chunks


# ---- the records' side: long strings out, references in ----------------------------------

# A record's texts that may be stored: its sample's prompt and turns, and the template's
# text around them as sent. Only these are written as references and read as ones, so that
# a reader without prompts (store.read_records(prompts=False)) never needs texts.pack,
# and no other value of a record (a task's meta) is ever taken for a reference.

def _sample_texts(sample: Mapping[str, Any], fn: Callable[[Any], Any]) -> dict[str, Any]:
    out = {k: fn(v) if k == "prompt" else v for k, v in sample.items()}
    if isinstance(sample.get("messages"), list):
        out["messages"] = [{k: fn(v) if k == "content" else v for k, v in m.items()}
                           if isinstance(m, dict) else m for m in sample["messages"]]
    return out


def _record_texts(record: Mapping[str, Any], fn: Callable[[Any], Any]) -> dict[str, Any]:
    out = dict(record)
    if isinstance(record.get("sample"), dict):
        out["sample"] = _sample_texts(record["sample"], fn)
    if isinstance(record.get("sent"), dict):
        out["sent"] = {k: fn(v) if k in ("before", "after") else v
                       for k, v in record["sent"].items()}
    return out


def _storing(store: TextStore) -> Callable[[Any], Any]:
    return lambda v: store.put(v) if isinstance(v, str) and len(v) >= STORE_MIN else v


def _reading(store: TextStore) -> Callable[[Any], Any]:
    return lambda v: store.get(v) if is_ref(v) else v


def externalize_sample(sample: Mapping[str, Any], store: TextStore) -> dict[str, Any]:
    """A sample's JSON with its long texts (its prompt, its turns) replaced by references
    (their chunks wait in `store` for the write)."""
    return _sample_texts(sample, _storing(store))


def externalize_record(record: Mapping[str, Any], store: TextStore) -> dict[str, Any]:
    """A record's JSON with its sample's long texts and the prompt as sent stored."""
    return _record_texts(record, _storing(store))


def internalize_sample(sample: Mapping[str, Any], store: TextStore) -> dict[str, Any]:
    """A sample's JSON with its references read back (TextError if one cannot be)."""
    return _sample_texts(sample, _reading(store))


def internalize_record(record: Mapping[str, Any], store: TextStore) -> dict[str, Any]:
    """A record's JSON with its references read back (TextError if one cannot be)."""
    return _record_texts(record, _reading(store))


def without_texts(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record's JSON with its references read as "" (a reader that needs no prompt);
    everything else as it is, to be checked."""
    return _record_texts(record, lambda v: "" if is_ref(v) else v)


def has_refs(record: Mapping[str, Any]) -> bool:
    """Whether a record's JSON names stored texts."""
    found: list[bool] = []
    _record_texts(record, lambda v: found.append(is_ref(v)))
    return any(found)


_open: dict[Path, TextStore] = {}


def store_of(run_dir: Path) -> TextStore:
    """The run folder's TextStore, one per folder and process (its index is kept)."""
    key = Path(run_dir).resolve()
    found = _open.get(key)
    if found is None:
        found = _open[key] = TextStore(key)
    return found

