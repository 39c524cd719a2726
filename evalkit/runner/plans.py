"""The run's planned samples: on disk, fitted once.

A task's samples are fitted to their lengths once for a given plan key: the task and its
parameters (with the size and time of every data file they name), seed, answer budget,
the model's window and reasoning reserve, the template (by what it renders) and the
tokenizer (by what it counts), and the code that fits them. They are kept in the plan
cache (plans/<key>/ in the response cache's folder; safe to delete: a sample not found
there is fitted again), so that a resumed run, a re-run, another model with the same
tokenizer and template, or another shard reads them instead of fitting them. With the cache off
(`cache: false`, --no-cache) they go to a temporary folder that the run removes.

A PlanStore is a folder of two files: plans.jsonl, one line per sample (its JSON, its long
texts as references), and texts.pack, those texts stored once (evalkit.results.texts).
Only one process writes a cached plan at a time (flock); another run of the same key at
the same time plans in a temporary folder of its own. A line that cannot be read back
(cut short, damaged) is passed over and the sample fitted again.

Samples run in the order that puts prompts sharing a prefix together (prefix_key), so
that a backend's prefix cache serves them.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import inspect
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import evalkit
from evalkit.backends.identity import file_identity
from evalkit.model.cache import default_cache_dir
from evalkit.prompts.templates import MessagesCounter, Template
from evalkit.results import schema, store, texts
from evalkit.types import EvalkitError, Message, Sample, TokenCounter, sample_from_json, to_jsonable

PLANS = "plans.jsonl"
COUNTS = "counts.jsonl"  # Plan.counted's counts
FORMAT = 1  # of a plan folder; part of the key


@dataclass(frozen=True)
class Planned:
    """A planned sample while the run holds it: its id, where its sample is (a PlanStore
    and its line there), and its place in the schedule (prompts that share a prefix sort
    together)."""

    id: str
    order: tuple[str, bytes]
    where: tuple[str, int, int]  # the store's key, offset and size of its line
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


def plans_folder(cache_dir: Path | None = None) -> Path:
    """The plan cache: `plans` in the response cache's folder (`cache_dir`, default
    $EVALKIT_CACHE_DIR or ~/.cache/evalkit/responses)."""
    return Path(cache_dir or default_cache_dir()) / "plans"


class PlanStore:
    """The samples of one plan key in a folder (see the module's doc): `get` one by id,
    `add` one fitted. `cached`: the folder is the plan cache's (a write it refuses is said
    as the cache's, with --no-cache as a way out); else a run's own, temporary."""

    def __init__(self, folder: Path, key: str, cached: bool) -> None:
        self.folder, self.key, self.cached = folder, key, cached
        self.texts = texts.TextStore(folder)
        self.index: dict[str, tuple[int, int]] = {}
        try:
            self._scan()
        except OSError as exc:
            raise self._error(exc) from None
        self.counts = _Counts(folder / COUNTS)

    def _error(self, exc: OSError) -> EvalkitError:
        if not self.cached:
            return store.write_error(self.folder, exc)
        return EvalkitError(f"cannot write the plan cache {self.folder}: "
                            f"{exc.strerror or exc}: free space there, or run with "
                            "--no-cache (the samples are then fitted in the run's folder)")

    def _scan(self) -> None:
        try:
            f = (self.folder / PLANS).open("rb")
        except FileNotFoundError:
            return
        with f:
            offset = 0
            for line in f:
                if not line.endswith(b"\n"):
                    break  # cut short: the next add starts a clean line
                with contextlib.suppress(ValueError, KeyError, TypeError, RecursionError):
                    self.index[json.loads(line)["id"]] = (offset, len(line))
                offset += len(line)
            if offset < f.tell():
                os.truncate(self.folder / PLANS, offset)

    def get(self, sample_id: str) -> Sample | None:
        """The sample kept for this id, None where there is none or it cannot be read
        (then it is fitted and kept again)."""
        where = self.index.get(sample_id)
        sample = None if where is None else self.read(where)
        if sample is None:
            self.index.pop(sample_id, None)
        return sample

    def read(self, where: tuple[int, int]) -> Sample | None:
        try:
            with (self.folder / PLANS).open("rb") as f:
                f.seek(where[0])
                d = json.loads(f.read(where[1]))
            body = texts.internalize_sample(d["sample"], self.texts)
            if schema.check(body, Sample, "sample") is not None:
                return None
            return sample_from_json(body)
        except (OSError, ValueError, KeyError, TypeError, RecursionError, EvalkitError,
                texts.TextError):
            return None

    def add(self, sample: Sample) -> tuple[int, int]:
        """Keep a fitted sample (one kept already, that reads back, stays as it is);
        where its line is. Not fsynced: a line a crash cuts is fitted again."""
        if sample.id in self.index and self.get(sample.id) is not None:
            return self.index[sample.id]
        try:
            self.texts.refresh(verify=True)
            body = texts.externalize_sample(to_jsonable(sample), self.texts)
            line = (json.dumps({"id": sample.id, "sample": body}, ensure_ascii=False)
                    + "\n").encode("utf-8")
            # zstandard alone: a plan is read once or twice, and written while planning
            store.write_texts(self.texts, codecs=("zstd",), sync=False)
            path = self.folder / PLANS
            offset = path.stat().st_size if path.exists() else 0
            store.append_whole(path, line, sync=False)
        except OSError as exc:
            raise self._error(exc) from None
        self.index[sample.id] = (offset, len(line))
        return offset, len(line)


class _Counts(dict[str, int]):
    """Plan.counted's counts of one plan key, a line each in a file (a line cut short or
    not a count is passed over: it is counted again)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        with contextlib.suppress(OSError):
            for line in path.read_bytes().splitlines(keepends=True):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    d = json.loads(line) if line.endswith(b"\n") else {}
                    if isinstance(d["key"], str) and type(d["tokens"]) is int:
                        super().__setitem__(d["key"], d["tokens"])

    def __setitem__(self, key: str, tokens: int) -> None:
        super().__setitem__(key, tokens)
        with contextlib.suppress(OSError), self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "tokens": tokens}, ensure_ascii=False) + "\n")


class Plans:
    """The plan stores of a run, by key: the plan cache's (`root`; None: off), each
    locked while the run holds it, or temporary ones in `scratch` (the run's folder;
    None: the system's temporary folder), removed when the run ends."""

    def __init__(self, root: Path | None, scratch: Path | None = None) -> None:
        self.root, self.scratch = root, scratch
        self.stores: dict[str, PlanStore] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Plans:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def open(self, key: str) -> PlanStore:
        found = self.stores.get(key)
        if found is None:
            cached = self._cached(key)
            found = self.stores[key] = PlanStore(cached or self._temporary(), key,
                                                 cached is not None)
        return found

    def _cached(self, key: str) -> Path | None:
        """The cache's folder of this key, locked; None where there is no cache, its
        folder cannot be made, or another run holds it (this run then plans apart)."""
        if self.root is None:
            return None
        folder = self.root / key
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        self._stack.callback(os.close, fd)
        return folder

    def _temporary(self) -> Path:
        """A folder of the run's own: `.plans.<hex>.tmp` in its folder (a leftover of a
        killed run is removed by the next one, store.remove_stale_temporaries), else in
        the system's temporary folder."""
        for parent in (self.scratch, None):
            try:
                if parent is None:
                    folder = Path(tempfile.mkdtemp(prefix="evalkit-plans-"))
                else:
                    folder = parent / f".plans.{secrets.token_hex(4)}.tmp"
                    folder.mkdir()
            except OSError as exc:
                if parent is None:
                    raise EvalkitError(f"cannot make a temporary folder for the plan: "
                                       f"{exc.strerror or exc}: free space in "
                                       f"{tempfile.gettempdir()}") from None
                continue
            self._stack.callback(shutil.rmtree, folder, True)
            return folder
        raise AssertionError("unreachable")  # pragma: no cover

    def read(self, where: tuple[str, int, int]) -> Sample:
        sample = self.stores[where[0]].read((where[1], where[2]))
        if sample is None:
            raise EvalkitError(f"a planned sample in {self.stores[where[0]].folder} cannot "
                               "be read back (it was changed or removed while the run went "
                               "on): run the same command again")
        return sample


# ---- the key -----------------------------------------------------------------------------

# what a template renders and a tokenizer counts is probed with this text: every script,
# digits, whitespace runs, markup and the special-token look-alikes templates hold
_PROBE = "\n".join([
    "Plan probe: Zürich 東京 ½ — 0123456789 \t tabs,  spaces\n\nnew lines; "
    "<s>[INST] {braces} $ \\u00e9 ' \" end.",
    "The grass is green. The sky is blue. 12345678901234567890 3.14159 -42 1e-9 0x1F",
    "line righteous-ostrich: REGISTER_CONTENT is <24325>\nOne of the special magic uuids "
    "for 0f8c3a8e-1b2d-4c5e-9f00-abcdefabcdef is: 7d3e9b1c-2a4f-4e6d-8c0b-123456789abc.",
    "Привет мир. مرحبا بالعالم. नमस्ते दुनिया. こんにちは世界。 안녕하세요 세계. 🙂🚀✨",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code\n\t\tindented\r\nwindows line",
    "<|im_start|>user\n<|im_end|><start_of_turn>model\n<|eot_id|></s><unk>[/INST]",
    " leading space,   three spaces,\u00a0nbsp,\u2009thin, trailing space ",
]) * 3


@functools.cache
def _code_digest(extra: str | None) -> str:
    """The code and data that make and fit samples: every file of the evalkit package
    (its tasks, their data files, templates, types), and a plugin task's own package."""
    root = Path(evalkit.__file__).parent
    h = hashlib.sha256()
    files = _files_under(root)
    if extra:
        module = Path(extra)
        if (module.parent / "__init__.py").is_file():
            package = module.parent
            while (package.parent / "__init__.py").is_file():
                package = package.parent  # the plugin's top package
            if not package.is_relative_to(root):
                files += _files_under(package)
        else:  # a module of its own (a script, a one-file plugin): that file only
            files.append((module.name, module))
    for name, path in files:
        with contextlib.suppress(OSError):
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _files_under(folder: Path) -> list[tuple[str, Path]]:
    return [(str(path.relative_to(folder)), path) for path in sorted(folder.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts]


def _files(value: Any) -> Any:
    """The data files a parameter names, by their content (identity.file_identity: read
    once, remembered by path, size and time)."""
    if isinstance(value, (str, Path)) and 0 < len(str(value)) < 4096:
        path = Path(value).expanduser()
        with contextlib.suppress(OSError, ValueError):
            if path.is_file():
                return [str(value), file_identity(path)]
            if path.is_dir():
                return [str(value), sorted((str(p.relative_to(path)), file_identity(p))
                                           for p in path.rglob("*") if p.is_file())]
        return value
    if isinstance(value, Mapping):
        return {str(k): _files(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_files(v) for v in value]
    return value


def template_digest(template: Template, source: Mapping[str, Any]) -> str:
    """A template by what it renders and where it comes from (`source`: the model's chat
    template, special tokens and template options, for the model's own)."""
    h = hashlib.sha256(json.dumps({"name": template.name, **source}, sort_keys=True,
                                  default=str).encode())
    h.update(template.render(_PROBE).encode())
    with contextlib.suppress(EvalkitError):
        h.update(template.render_conversation((
            Message("system", _PROBE), Message("user", _PROBE),
            Message("assistant", _PROBE), Message("user", _PROBE))).encode())
    return h.hexdigest()


def counter_digest(counter: TokenCounter) -> str:
    """A tokenizer by its name and what it counts of the probe, token by token."""
    h = hashlib.sha256(counter.name.encode())
    h.update(json.dumps(counter.encode(_PROBE)).encode())
    if isinstance(counter, MessagesCounter):
        h.update(json.dumps(counter.encode_messages((Message("user", _PROBE),))).encode())
    return h.hexdigest()


def plan_key(task: str, params: Any, generate: Any, *, seed: int,
             max_new_tokens: int, window: int | None, reserve: int, template: Template,
             template_source: Mapping[str, Any], counter: TokenCounter) -> str | None:
    """The key of a task's samples (see the module's doc). `generate`: the task's
    generator, whose module (a plugin's package, or its own file) is part of the code
    digested. None (the task's samples are not kept) for a generator whose code is in no
    file (a notebook's, an interactive session's): an edit would not change the key."""
    while isinstance(generate, functools.partial):
        generate = generate.func
    module = getattr(inspect.getmodule(generate), "__file__", None)
    if module is None or not Path(module).is_file():
        return None
    data = {"format": FORMAT, "code": _code_digest(module),
            "task": task, "params": _files(to_jsonable(params)), "seed": seed,
            "max_new_tokens": max_new_tokens, "window": window, "reserve": reserve,
            "template": template_digest(template, template_source),
            "tokenizer": counter_digest(counter)}
    text = json.dumps(data, sort_keys=True, default=str)
    return f"{task.replace('/', '-')[:40]}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"
