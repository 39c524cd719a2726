"""The saved files' one schema: each file is checked against the typed definition it is
written from, so that writer and reader cannot drift apart.

    run.json        RunInfo
    samples.jsonl   Record (its Sample and Response)
    summary.json    RunSummary (its SummaryRows)

A field's JSON kind is read off its type (str, int, float, bool, a list of strings, an
object of numbers, int | str, a Literal's choices, X | None); a field with a default may be
missing (files written before it existed read as that default) unless every version of the
file has written it (ALWAYS_WRITTEN); a required field that is missing is the one fault
named. `check` says the first difference in words a
user can act on, or None.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from evalkit.types import SCHEMA_VERSION


@dataclass(frozen=True)
class RunInfo:
    """run.json: what a run is (its spec and where its answers come from), written once
    when it starts. Older runs lack the fields with defaults; a merged run says which
    shards it joined (`merged_from`), a shard which run it is a slice of (`shard`)."""

    run_id: str
    spec_hash: str
    n_samples: int
    spec: Mapping[str, Any]
    schema_version: int = SCHEMA_VERSION
    spec_redacted_sha256: str | None = None
    created: str | None = None
    model_label: str | None = None
    backend: Mapping[str, Any] | None = None
    tokenizer: str | None = None
    templates: Mapping[str, Any] | None = None
    cells: Mapping[str, Any] | None = None  # task -> length cell -> samples planned
    sample_ids_sha256: str | None = None
    git_sha: str | None = None
    versions: Mapping[str, Any] | None = None
    argv: tuple[str, ...] | None = None
    shard: Mapping[str, Any] | None = None
    merged_from: tuple[str, ...] | None = None
    # samples a task left out (Plan.skip: over the window, never truncated): id -> why
    skipped: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON of run.json: fields left unset (None) are not written."""
        out: dict[str, Any] = json.loads(json.dumps(
            {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if getattr(self, f.name) is not None}))
        return out


@dataclass(frozen=True)
class Kind:
    """What JSON a field holds, said for a user."""

    name: str
    test: typing.Callable[[Any], bool]


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_sent(v: Any) -> bool:
    """A record's `sent` (evalkit.prompts.templates.split_sent): before and after texts, and where
    the user text was cut, [start, end] with 0 <= start <= end."""
    if not (isinstance(v, dict) and isinstance(v.get("before"), str)
            and isinstance(v.get("after"), str) and set(v) <= {"before", "after", "user"}):
        return False
    user = v.get("user", [0, 0])
    return (isinstance(user, list) and len(user) == 2 and all(_int(x) for x in user)
            and 0 <= user[0] <= user[1])


STR = Kind("a string", lambda v: isinstance(v, str))
INT = Kind("an integer", _int)
NUM = Kind("a number", is_number)
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
OBJECT = Kind("a JSON object", lambda v: isinstance(v, dict))
LIST = Kind("a list", lambda v: isinstance(v, list))
STRS = Kind("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str)
                                                                      for x in v))
SCORES = Kind("an object of numbers", lambda v: isinstance(v, dict) and all(
    is_number(x) for x in v.values()))
LENGTH = Kind("an integer or a string", lambda v: isinstance(v, str) or _int(v))
SENT = Kind("an object of 'before' and 'after' texts and an optional 'user' [start, end]",
            _is_sent)

# fields whose type says less than their JSON must be: (class name, field) -> kind
NARROWER = {("Record", "sent"): SENT}

# Fields with a default that every file has held since its first version: the default is
# the writer's, and a file read without one is damaged (a field added later is left out,
# so that older files read as its default).
ALWAYS_WRITTEN = {
    "RunInfo": {"schema_version"},
    "RunSummary": {"schema_version"},
    "Sample": {"meta"},
    "Record": {"parsed"},
    "Response": {"text", "logprob", "is_greedy", "input_tokens", "output_tokens",
                 "latency_s", "error"},
}
# Fields that are None in the class until set but never written as null (RunInfo.to_json
# leaves a None out): a null in the file is damage. git_sha alone is written null (no git).
NEVER_NULL = {
    "RunInfo": {"spec_redacted_sha256", "created", "model_label", "backend", "tokenizer",
                "templates", "cells", "sample_ids_sha256", "versions", "argv", "skipped"},
}
# Fields written beside a class's own: a record line carries the file's schema_version.
ENVELOPE = {"Record": ("schema_version", int)}
# Fields that only describe a run, read by code that passes over a bad value (the report's
# list of shards, merge's own check that a folder is a shard): not a fault of the file.
DESCRIPTIVE = {("RunInfo", "merged_from"), ("RunInfo", "shard")}


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    nullable: bool
    required: bool
    choices: tuple[str, ...] = field(default=())


def _kind(hint: Any) -> tuple[Kind, tuple[str, ...]]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is str:
        return STR, ()
    if hint is bool:
        return BOOL, ()
    if hint is int:
        return INT, ()
    if hint is float:
        return NUM, ()
    if origin is Literal:
        return STR, tuple(str(a) for a in args)
    if origin in (typing.Union, types.UnionType) and set(args) == {int, str}:
        return LENGTH, ()
    if origin in (tuple, list):
        return (STRS if args and args[0] is str else LIST), ()
    if origin in (Mapping, dict) or origin is getattr(typing, "Mapping", None):
        return (SCORES if len(args) == 2 and args[1] is float else OBJECT), ()
    if dataclasses.is_dataclass(hint):
        return OBJECT, ()
    raise TypeError(f"no JSON kind for {hint!r}")


@functools.cache
def fields_of(cls: type) -> tuple[Field, ...]:
    """The saved fields of a dataclass, with their JSON kinds."""
    hints = typing.get_type_hints(cls)
    always = ALWAYS_WRITTEN.get(cls.__name__, set())
    never_null = NEVER_NULL.get(cls.__name__, set())
    out = []
    for f in dataclasses.fields(cls):
        if (cls.__name__, f.name) in DESCRIPTIVE:
            continue
        hint = hints[f.name]
        args = typing.get_args(hint)
        nullable = type(None) in args and f.name not in never_null
        if type(None) in args:
            rest = tuple(a for a in args if a is not type(None))
            hint = rest[0] if len(rest) == 1 else typing.Union[rest]  # noqa: UP007
        kind, choices = _kind(hint)
        kind = NARROWER.get((cls.__name__, f.name), kind)
        required = f.name in always or (f.default is dataclasses.MISSING
                                         and f.default_factory is dataclasses.MISSING)
        out.append(Field(f.name, kind, nullable, required, choices))
    if cls.__name__ in ENVELOPE:
        name, hint = ENVELOPE[cls.__name__]
        out.append(Field(name, _kind(hint)[0], False, True))
    return tuple(out)


def _describe(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind_of(v: Any) -> str:
    if isinstance(v, dict):
        return "a JSON object"
    if isinstance(v, list):
        return "a list"
    return _describe(v)


def check(d: Any, cls: type, what: str, prefix: str = "", *,
          closed: bool = False) -> str | None:
    """The first way `d` differs from `cls`'s saved shape, said for a user, or None.
    `closed`: a field `cls` does not have is a fault too."""
    if not isinstance(d, dict):
        return f"{what} should be a JSON object, got {_kind_of(d)}"
    for f in fields_of(cls):
        if f.name not in d:
            if f.required:
                return f"field '{prefix}{f.name}' is missing"
            continue
        value = d[f.name]
        if value is None and f.nullable:
            continue
        if not f.kind.test(value):
            null = " or null" if f.nullable else ""
            return f"field '{prefix}{f.name}' should be {f.kind.name}{null}, got {_describe(value)}"
        if f.choices and value not in f.choices:
            said = " or ".join(f'"{c}"' for c in f.choices)
            return f"field '{prefix}{f.name}' should be {said}, got {_describe(value)}"
    if closed:
        extra = sorted(set(d) - {f.name for f in fields_of(cls)})
        if extra:
            return f"unknown field '{prefix}{extra[0]}'"
    return None


def known(d: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """Those of `d`'s fields that `cls` has (a newer writer's extra fields left out)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}
