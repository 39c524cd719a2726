"""Run configs: YAML in, a validated, frozen RunSpec out.

Configs are untrusted input, so pydantic checks them, and every problem becomes one line
naming the file, the key and the fix. configs/quickstart.yaml is an example; README.md
lists every key. Each task entry is checked by its task (TaskDef.parse, TaskDef.options).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evalkit.model.files import DEFAULT_MODEL, model_label
from evalkit.prompts.templates import TEMPLATE_NAMES
from evalkit.redact import redact
from evalkit.results.store import safe_name
from evalkit.tasks import get_task, make_params, task_names
from evalkit.tasks.base import DEFAULT_TASKS, SAMPLE_OPTIONS, TASKS, TaskDef
from evalkit.types import EvalkitError

DEFAULT_LENGTHS = (1024, 2048, 4096)
TASK_OVERRIDES = SAMPLE_OPTIONS  # what a task entry may set for itself
_LENGTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM])?\s*$")
_UNIT = {"k": 1024, "m": 1024 * 1024}


def parse_length(text: str | int) -> int:
    """'4k' -> 4096, '1.5k' -> 1536, '1m' -> 1048576 (1024k), '3000' -> 3000."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif not isinstance(text, str):
        raise EvalkitError(f"{text!r} is not a length: write e.g. 1k,4k,16k or 3000")
    else:
        m = _LENGTH.match(text)
        if not m:
            raise EvalkitError(f"'{text}' is not a length: write e.g. 1k,4k,16k or 3000")
        value = round(float(m.group(1)) * _UNIT.get((m.group(2) or "").lower(), 1))
    if value <= 0:
        raise EvalkitError(f"length {text} must be positive")
    if value > MAX_LENGTH:
        raise EvalkitError(f"length {text} is over {MAX_LENGTH // 1024}k tokens: write a "
                           "shorter one")
    return value


def check_int(value: Any, what: str, low: int, high: int) -> int:
    """A whole number in [low, high] (not a bool, not a string), or one clear line."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise EvalkitError(f"{what} must be a whole number from {low} to {high}, got {value!r}")
    return value


def parse_shard(text: str) -> tuple[int, int]:
    """`--shard i/n`: slice i (1-based) of n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)) <= 10_000:
        raise EvalkitError(f"--shard {text}: give i/n with 1 <= i <= n <= 10000, e.g. --shard 1/4")
    return int(m.group(1)), int(m.group(2))


def parse_lengths(text: str | int | Sequence[str | int], where: str = "lengths"
                  ) -> tuple[int, ...]:
    """Lengths in tokens, each once: a repeated length (1k,1k or 1k,1024) would plan the
    same samples twice, so it is refused here, by name. `where` names the list in errors."""
    if isinstance(text, str):
        items: list[Any] = [x for x in text.split(",") if x.strip()]
    elif isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [text]
    if not items:
        example = f"{where} 1k,4k,16k" if where.startswith("--") else "[1k, 4k, 16k]"
        raise EvalkitError(f"{where}: no lengths given: write e.g. {example}")
    lengths: dict[int, Any] = {}
    for item in items:
        try:
            value = parse_length(item)
        except EvalkitError as exc:
            raise EvalkitError(f"{where}: {exc}") from None
        if value in lengths:
            first, again = str(lengths[value]).strip(), str(item).strip()
            same = f"'{again}'" if first == again else f"'{first}' and '{again}' ({value} tokens)"
            raise EvalkitError(f"{where}: {same} given twice: list each length once")
        lengths[value] = item
    return tuple(lengths)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    params: Mapping[str, Any]
    lengths: tuple[int, ...]
    samples: int
    template: str
    max_new_tokens: int


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides a run's samples and answers. Its hash names the run."""

    name: str
    model: str
    backend: str
    backend_options: Mapping[str, Any]
    tokenizer: str
    seed: int
    temperature: float
    tasks: tuple[TaskSpec, ...]
    retries: int | None = None  # None: the backend's default (evalkit.model.RetryPolicy)
    # the model's name in tables; default: its alias or file stem (reports use the name
    # the model gives itself, evalkit.results.read.model_name)
    label: str | None = None
    cache: bool = True  # answer from the response cache where it can (evalkit.model)
    limit: int | None = None  # tasks scored whole: the first N documents (TaskDef.limited)
    shard: tuple[int, int] | None = None  # (i, n): this run is slice i of n (evalkit.runner.shards)
    # a thinking model's settings (evalkit.model.reasoning.Thinking), as the config gives them
    thinking: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        plain: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return plain

    def redacted(self) -> dict[str, Any]:
        """The spec as written to run.json: every secret masked (see evalkit/redact.py)."""
        out: dict[str, Any] = redact(self.to_json())
        return out

    def spec_hash(self) -> str:
        d = self.to_json()
        # how the answers are got, not which: a run resumes whatever these say
        d.pop("name")
        d.pop("retries")
        d.pop("cache")
        if d["limit"] is None:
            d.pop("limit")  # runs made before --limit existed keep their hash
        if d["shard"] is None:
            d.pop("shard")  # a whole run keeps the hash it had before shards
        if d["thinking"] is None:
            d.pop("thinking")  # as a run made before thinking models
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def whole(self) -> RunSpec:
        """The run this one is a shard of (itself when it is whole)."""
        return replace(self, shard=None)


# Bounds of the numbers a config may set: wide enough for any real run, narrow enough that a
# typo (retries: 1000000, samples: true, temperature: nan) is refused instead of run.
MAX_SAMPLES = 1_000_000
MAX_RETRIES = 10
MAX_TEMPERATURE = 10.0
MAX_NEW_TOKENS = 32_768
MAX_LENGTH = 4 * 1024 * 1024
MAX_SEED = 2**63 - 1

_Name = Annotated[str, Field(strict=True, min_length=1, max_length=200)]
_Seed = Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)]
_Samples = Annotated[int, Field(strict=True, ge=1, le=MAX_SAMPLES)]
_Temperature = Annotated[float, Field(strict=True, ge=0.0, le=MAX_TEMPERATURE,
                                      allow_inf_nan=False)]
_Retries = Annotated[int, Field(strict=True, ge=0, le=MAX_RETRIES)]
_Limit = Annotated[int, Field(strict=True, ge=1, le=MAX_SAMPLES)]


class _ModelEntry(BaseModel):
    """One model of a multi-model config; unset fields take the config's top-level value."""

    model_config = ConfigDict(extra="forbid")

    model: _Name
    label: _Name | None = None
    backend: _Name | None = None
    backend_options: dict[str, Any] | None = None
    template: _Name | None = None
    tokenizer: _Name | None = None
    thinking: dict[str, Any] | None = None


class _ConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    name: _Name = "run"
    model: _Name = DEFAULT_MODEL
    backend: _Name = "llamacpp"
    backend_options: dict[str, Any] = {}
    tokenizer: _Name = "auto"
    template: _Name = "auto"
    seed: _Seed = 0
    samples: _Samples = 5
    temperature: _Temperature = 0.0
    retries: _Retries | None = None
    cache: Annotated[bool, Field(strict=True)] = True
    limit: _Limit | None = None
    lengths: list[str | int] = list(DEFAULT_LENGTHS)
    tasks: list[str | dict[str, Any]] = list(DEFAULT_TASKS)
    models: list[_ModelEntry] | None = None
    thinking: dict[str, Any] | None = None  # evalkit.model.reasoning: checked there


@dataclass
class Overrides:
    """What the command line says on top of a config file."""

    tasks: list[str] = field(default_factory=list)
    extra_tasks: list[str] = field(default_factory=list)  # added to the config's if missing
    lengths: str | None = None
    samples: int | None = None
    seed: int | None = None
    model: str | None = None
    backend: str | None = None
    template: str | None = None
    tokenizer: str | None = None
    name: str | None = None
    cache: bool | None = None  # False: --no-cache
    limit: int | None = None
    shard: tuple[int, int] | None = None  # --shard i/n
    task_params: dict[str, dict[str, Any]] = field(default_factory=dict)


def _where(source: str, loc: Sequence[Any]) -> str:
    return f"{source}: " + (".".join(str(x) for x in loc) + ": " if loc else "")


def bundled_configs() -> dict[str, Path]:
    """The run configs that ship with evalkit (configs/ in the checkout, evalkit/_configs
    in a wheel), by name: quickstart, smollm2, ..."""
    package = Path(__file__).resolve().parents[1]  # evalkit/
    for folder in (package / "_configs", package.parent / "configs"):
        if folder.is_dir():
            return {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    return {}


def find_config(arg: str | Path) -> Path:
    """A config file: the path as given, else the bundled config of that name, so that
    `evalkit run quickstart` and `evalkit run configs/quickstart.yaml` work from any folder."""
    path = Path(arg).expanduser()
    if path.exists():
        return path
    bundled = bundled_configs()
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if name in bundled and (path.suffix in ("", ".yaml", ".yml")):
        return bundled[name]
    raise EvalkitError(f"config file not found: {arg} (bundled configs: "
                       f"{', '.join(bundled) or 'none'}; or a path to a YAML file)")


# Bounds of a config file, which is untrusted input. The bundled configs are under 2 KB and
# 100 values; these bounds leave room for any real run config while keeping the (pure
# Python, about 5 s a MB) YAML parser near a second and its memory small, whatever a file
# holds.
MAX_CONFIG_BYTES = 256 * 1024
MAX_CONFIG_VALUES = 10_000  # scalars, lists and mappings, counted after aliases expand
MAX_CONFIG_TEXT = 4 * MAX_CONFIG_BYTES  # characters of scalars, counted after aliases expand
MAX_CONFIG_DEPTH = 64  # lists and mappings inside each other
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """A config file beyond the bounds: the message says what and where, not which file."""


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, bounded: nesting and the number of values are counted while the
    node graph is composed, and what the aliases expand to is counted over that graph
    (where an alias is one shared node) before any Python object is built; mappings refuse
    a key given twice (`<<` merges may still be overridden, as YAML means them to be)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803 (yaml's name)
        # The scanner reads up to 1024 characters ahead over `[[[[...` (each may start a
        # key), in time quadratic in the nesting, before the composer sees the first node.
        if self.flow_level >= MAX_CONFIG_DEPTH:
            raise _Refused(f"nested over {MAX_CONFIG_DEPTH} levels deep at line {self.line + 1}:"
                           " a run config nests a few levels; flatten it")
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        line = self.peek_event().start_mark.line + 1  # type: ignore[no-untyped-call]
        self._values += 1
        if self._values > MAX_CONFIG_VALUES:
            raise _Refused(f"over {MAX_CONFIG_VALUES} values (at line {line}): a run config "
                           "is far smaller; is this the right file?")
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise _Refused(f"nested over {MAX_CONFIG_DEPTH} levels deep at line {line}: "
                               "a run config nests a few levels; flatten it")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: the base class says so, with its line
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                lines = f"line {line}" if first == line else f"lines {first} and {line}"
                raise _Refused(f"key {_short(key)} is given twice ({lines}): keep one (YAML "
                               "would silently use the last)")
            seen[key] = line
        out: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return out


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose aliases expand past the bounds (a "billion laughs": nine
    aliases of nine aliases ... are a few lines that expand to 10**9 values), or that
    holds itself (`a: &a [*a]`). Each distinct node is visited once (memoized), so this
    takes time in the size of the file, not of the expansion."""
    sizes: dict[int, tuple[int, int, int]] = {}  # id(node) -> (values, text, depth)
    open_ids: set[int] = set()

    def size(node: yaml.Node, depth: int) -> tuple[int, int, int]:
        key = id(node)
        line = node.start_mark.line + 1
        if key in open_ids:
            raise _Refused(f"the value at line {line} holds an alias (*name) of itself: "
                           "write the value out")
        known = sizes.get(key)
        if known is None:
            if depth > MAX_CONFIG_DEPTH:
                raise _Refused(f"nested over {MAX_CONFIG_DEPTH} levels deep once its aliases "
                               f"expand (line {line}): flatten it")
            values, text, height = 1, 0, 1
            if isinstance(node, yaml.ScalarNode):
                text = len(node.value)
            else:
                open_ids.add(key)
                children: list[yaml.Node] = (
                    [n for pair in node.value for n in pair]
                    if isinstance(node, yaml.MappingNode) else list(node.value))
                for child in children:
                    v, t, h = size(child, depth + 1)
                    values, text, height = values + v, text + t, max(height, h + 1)
                    if values > MAX_CONFIG_VALUES or text > MAX_CONFIG_TEXT:
                        what = (f"{MAX_CONFIG_VALUES} values" if values > MAX_CONFIG_VALUES
                                else f"{MAX_CONFIG_TEXT // 1024} KB of text")
                        raise _Refused(f"the value at line {line} expands to over {what} "
                                       "through its aliases (*name): a run config is far "
                                       "smaller; write it without repeated aliases")
                open_ids.discard(key)
            known = sizes[key] = (values, text, height)
        if depth - 1 + known[2] > MAX_CONFIG_DEPTH:
            raise _Refused(f"nested over {MAX_CONFIG_DEPTH} levels deep once its aliases "
                           f"expand (line {line}): flatten it")
        return known

    size(root, 1)


def _load_yaml(text: str) -> Any:
    """A YAML document, bounded (see _ConfigLoader, _check_expansion); None when empty."""
    loader = _ConfigLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_expansion(root)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A config file's mapping; whatever is wrong with the file itself (missing, a folder,
    too large, not UTF-8, not YAML, nested or aliased past the bounds, a key given twice,
    not a mapping) is one line naming the file and the fix."""
    p = Path(path)
    if p.is_dir():
        raise EvalkitError(f"{p} is a directory: pass a config file (YAML), e.g. in configs/")
    if not p.is_file():
        raise EvalkitError(f"config file not found: {p} (see configs/ for examples)")
    too_big = EvalkitError(f"{p}: over {MAX_CONFIG_BYTES // 1024} KB, far larger than a run "
                           "config: is this the right file?")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise too_big
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # the file may have grown since
    except OSError as exc:
        raise EvalkitError(f"{p}: cannot read the config file ({exc.strerror or exc})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise too_big
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise EvalkitError(f"{p}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}): save the "
                           "config file as UTF-8") from None
    try:
        data: Any = _load_yaml(text)
    except _Refused as exc:
        raise EvalkitError(f"{p}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise EvalkitError(f"{p}: malformed YAML{at}: fix the syntax") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. 2024-02-30, 5000 digits
        what = (str(exc).splitlines() or [type(exc).__name__])[0][:100]
        raise EvalkitError(f"{p}: a value YAML cannot read ({what}): fix it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EvalkitError(f"{p}: a config is a mapping of keys (name, model, tasks, ...), "
                           f"not a {type(data).__name__}")
    return dict(data)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_plain(data: Any, source: str) -> None:
    """Refuse a config value that is not plain data (mappings, lists, strings, numbers,
    true/false, null), or that is past the bounds of a config file, before anything copies,
    expands or hashes it: shared or self-holding lists given through the Python API are
    counted as often as they would be expanded, and the walk stops at the first bound."""
    budget = [MAX_CONFIG_VALUES, MAX_CONFIG_TEXT]

    def walk(value: Any, loc: list[str]) -> None:
        where = _where(source, loc if len(loc) <= 4 else [*loc[:3], f"{loc[3]}..."])
        budget[0] -= 1
        if budget[0] < 0 or budget[1] < 0:
            what = (f"{MAX_CONFIG_VALUES} values" if budget[0] < 0
                    else f"{MAX_CONFIG_TEXT // 1024} KB of text")
            raise EvalkitError(f"{where}over {what} once its shared values expand: a run "
                               "config is far smaller")
        if len(loc) > MAX_CONFIG_DEPTH:
            raise EvalkitError(f"{where}nested over {MAX_CONFIG_DEPTH} levels deep: flatten it")
        if isinstance(value, str):
            budget[1] -= len(value)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, [*loc, str(i)])
        elif isinstance(value, Mapping):
            as_json: set[str] = set()
            for k, item in value.items():
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise EvalkitError(f"{where}the key {_short(k)} is not a name (a "
                                       f"{type(k).__name__}): quote it")
                if str(k) in as_json:  # 1 and '1' are one key in run.json
                    raise EvalkitError(f"{where}the key {_short(k)} is given twice: keep one")
                as_json.add(str(k))
                walk(item, [*loc, str(k)])
        elif value is not None and not isinstance(value, (bool, int, float)):
            raise EvalkitError(f"{where}{_short(value)} is a {type(value).__name__}, not a "
                               "config value (a string, number, true/false, null, list or "
                               "mapping): quote it")

    walk(data, [])


def build_specs(data: Mapping[str, Any], overrides: Overrides | None = None,
                source: str = "config") -> list[RunSpec]:
    """One RunSpec per model of the config (`model:`, or a `models:` list); refuses what
    is wrong, naming the key and the fix."""
    ov = overrides or Overrides()
    check_plain(data, source)
    try:
        cfg = _ConfigFile.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "extra_forbidden":
            where = ".".join(str(x) for x in err["loc"][:-1])
            fields = _ModelEntry.model_fields if where.startswith("models") else \
                _ConfigFile.model_fields
            raise EvalkitError(f"{source}: unknown key '{err['loc'][-1]}'"
                               + (f" in {where}" if where else "")
                               + f" ({_did_you_mean(err['loc'][-1], fields)}known keys: "
                               f"{', '.join(fields)})") from None
        raise EvalkitError(f"{_where(source, err['loc'])}{err['msg'].lower()}") from None
    if ov.model or not cfg.models:
        entries = [_ModelEntry(model=ov.model or cfg.model)]
    else:
        entries = cfg.models
    specs = [_spec_for(cfg, entry, ov, source) for entry in entries]
    labels = [safe_name(s.label or model_label(s.model)) for s in specs]
    if len(set(labels)) != len(labels):
        raise EvalkitError(f"{source}: two models share a label: give each a distinct label")
    return specs


def build_spec(data: Mapping[str, Any], overrides: Overrides | None = None,
               source: str = "config") -> RunSpec:
    """The RunSpec of a single-model config."""
    specs = build_specs(data, overrides, source)
    if len(specs) != 1:
        raise EvalkitError(f"{source}: lists {len(specs)} models; run it with `evalkit run`")
    return specs[0]


@dataclass(frozen=True)
class _Defaults:
    """The run-wide settings a task entry may override (TASK_OVERRIDES)."""

    template: str
    lengths: tuple[int, ...]
    samples: int


def _spec_for(cfg: _ConfigFile, entry: _ModelEntry, ov: Overrides, source: str) -> RunSpec:
    defaults = _run_defaults(cfg, entry, ov, source)
    entries = _task_entries(cfg.tasks, source)
    from_config = {name for name, _ in entries}
    if ov.tasks:
        by_name = dict(entries)
        entries = [(t, by_name.get(t, {})) for t in dict.fromkeys(ov.tasks)]
    entries += [(t, {}) for t in dict.fromkeys(ov.extra_tasks) if t not in dict(entries)]
    tasks = [_task_spec(name, {**raw, **ov.task_params.get(name, {})}, defaults, ov,
                        source if name in from_config else "--task", source)
             for name, raw in entries]
    if not tasks:
        raise EvalkitError(f"{source}: no tasks: list some under tasks: or pass --task")
    options = entry.backend_options if entry.backend_options is not None else cfg.backend_options
    thinking = entry.thinking if entry.thinking is not None else cfg.thinking
    whole = [t.name for t in tasks if _task_def(t.name, source).whole is not None]
    if thinking is not None and whole:
        raise EvalkitError(f"{source}: thinking: applies to the tasks evalkit asks sample by "
                           f"sample; {whole[0]} is scored whole by lm-eval: run it without "
                           "thinking:")
    return RunSpec(
        name=ov.name or cfg.name, model=entry.model,
        backend=ov.backend or entry.backend or cfg.backend, backend_options=dict(options),
        tokenizer=ov.tokenizer or entry.tokenizer or cfg.tokenizer,
        seed=ov.seed if ov.seed is not None else cfg.seed, temperature=cfg.temperature,
        tasks=tuple(tasks), retries=cfg.retries, label=entry.label,
        cache=cfg.cache if ov.cache is None else ov.cache,
        limit=_limit(ov.limit, cfg.limit, tasks, source), shard=ov.shard,
        thinking=_thinking(thinking, source),
    )


def _thinking(raw: dict[str, Any] | None, source: str) -> dict[str, Any] | None:
    from evalkit.model.reasoning import check_thinking

    return None if raw is None else check_thinking(raw, f"{source}: thinking")


def _run_defaults(cfg: _ConfigFile, entry: _ModelEntry, ov: Overrides,
                  source: str) -> _Defaults:
    template = ov.template or entry.template or cfg.template
    _check_template(template, source)
    lengths = (parse_lengths(ov.lengths, "--lengths") if ov.lengths
               else parse_lengths(cfg.lengths, f"{source}: lengths"))
    samples = ov.samples if ov.samples is not None else cfg.samples
    check_int(samples, f"{source}: samples", 1, MAX_SAMPLES)
    if ov.seed is not None:
        check_int(ov.seed, f"{source}: seed", 0, MAX_SEED)
    return _Defaults(template=template, lengths=lengths, samples=samples)


def _task_spec(name: str, raw: Mapping[str, Any], defaults: _Defaults, ov: Overrides,
               where: str, source: str) -> TaskSpec:
    """One task of the run: its parameters checked by the task, the run's settings with
    the entry's overrides, those the task's protocol fixes refused (TaskDef.options)."""
    task = _task_def(name, where)
    raw = dict(raw)
    over = {k: raw.pop(k) for k in TASK_OVERRIDES if k in raw}
    fixed = [k for k in over if k not in task.options]
    if fixed:
        raise EvalkitError(f"{source}: tasks.{name}.{fixed[0]}: {name} {task.fixed}")
    params = _task_params(task, name, raw, source)
    plain = task.spec_params(params) if task.spec_params else params.__dict__
    if "template" in task.options:
        template = ov.template or over.get("template", defaults.template)
        _check_template(template, source)
    else:
        template = "raw"
    lengths: tuple[int, ...] = ()
    if "lengths" in task.options:  # checked even where the task's cases are not fitted
        lengths = defaults.lengths if ov.lengths or "lengths" not in over else parse_lengths(
            over["lengths"], f"{source}: tasks.{name}.lengths")
        lengths = lengths if task.fitted(params) else ()
    samples, max_new = 1, 0
    if "samples" in task.options:
        samples = defaults.samples if ov.samples is not None or "samples" not in over else \
            check_int(over["samples"], f"{source}: tasks.{name}.samples", 1, MAX_SAMPLES)
    if "max_new_tokens" in task.options:
        max_new = check_int(over.get("max_new_tokens", task.max_new_tokens),
                            f"{source}: tasks.{name}.max_new_tokens", 1, MAX_NEW_TOKENS)
    return TaskSpec(name=name, params=json.loads(json.dumps(plain)), lengths=lengths,
                    samples=samples, template=template, max_new_tokens=max_new)


def _did_you_mean(word: object, known: Iterable[str]) -> str:
    """"did you mean 'depths'? " for a misspelled name, else ""."""
    close = difflib.get_close_matches(str(word), list(known), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def _task_def(name: str, source: str) -> TaskDef:
    """A task's definition; an unknown name lists every task there is."""
    if not TASKS.knows(name):
        names = task_names()
        raise EvalkitError(f"{source}: unknown task '{name}' ({_did_you_mean(name, names)}"
                           f"tasks: {', '.join(names)}; see `evalkit tasks`)")
    try:
        return get_task(name)
    except EvalkitError as exc:  # a family's name its family does not hold
        raise EvalkitError(f"{source}: {exc}") from None


def _task_params(task: TaskDef, name: str, raw: Mapping[str, Any], source: str) -> Any:
    """A task's parameters from its config entry (make_params checks them); an error names
    the config file and the entry, and a misspelled name gets the closest known one."""
    if task.parse is None:
        known = [f.name for f in dataclasses.fields(task.params_type)] + list(TASK_OVERRIDES)
        for key in raw:
            if key not in known:
                raise EvalkitError(f"{source}: tasks.{name}: unknown parameter '{key}' "
                                   f"({_did_you_mean(key, known)}known are {', '.join(known)})")
    try:
        return make_params(task, raw)
    except EvalkitError as exc:
        rest = str(exc).removeprefix(f"task {name}: ").removeprefix(f"{name}: ")
        raise EvalkitError(f"{source}: tasks.{name}: {rest}") from None


def _limit(given: int | None, configured: int | None, tasks: Sequence[TaskSpec],
           source: str) -> int | None:
    """--limit (else the config's): None where no task it applies to runs
    (TaskDef.limited), so that the config's limit does not split the runs of other tasks
    by a value it never uses."""
    if not any(get_task(t.name).limited for t in tasks):
        if given is None:
            return None
        limited = [n for n in task_names() if get_task(n).limited]
        raise EvalkitError(f"{source}: limit applies to the tasks scored whole by lm-eval "
                           f"({', '.join(limited)}, lm_eval:NAME) and none is run: use "
                           "samples for the others")
    limit = given if given is not None else configured
    if limit is not None:
        check_int(limit, f"{source}: limit", 1, MAX_SAMPLES)
    return limit


def _check_template(name: str, source: str) -> None:
    if name not in TEMPLATE_NAMES:
        raise EvalkitError(f"{source}: unknown template '{name}': use one of "
                           f"{', '.join(TEMPLATE_NAMES)}")


def _task_entries(items: list[str | dict[str, Any]],
                  source: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        if isinstance(item, str):
            out.append((item, {}))
        elif isinstance(item, dict) and len(item) == 1:
            name, params = next(iter(item.items()))
            if params is not None and not isinstance(params, dict):
                raise EvalkitError(f"{source}: tasks.{name}: parameters are a mapping, e.g. "
                                   f"{{depths: [0.5]}}, got {_short(params)}")
            out.append((str(name), dict(params or {})))
        else:
            raise EvalkitError(f"{source}: each entry of tasks is a task name or "
                               f"{{name: {{params}}}} (tasks: {', '.join(task_names())})")
        if out[-1][0] in (name for name, _ in out[:-1]):
            raise EvalkitError(f"{source}: tasks: '{out[-1][0]}' is listed twice: list each "
                               "task once (one entry holds all its parameters, e.g. depths: "
                               "[0.0, 0.5])")
    return out


def with_name(spec: RunSpec, name: str) -> RunSpec:
    return replace(spec, name=name)


def recorded_spec_sha256(recorded: Mapping[str, Any]) -> str:
    """The sha256 of a spec as run.json records it (redacted, RunSpec.redacted), kept there
    as `spec_redacted_sha256`. spec_hash cannot be checked against the record: it is made
    of the spec before redaction, and without the fields that do not change answers."""
    return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()


def check_recorded_spec(run_json: Path, run: Mapping[str, Any], spec: RunSpec) -> None:
    """Refuse to resume a run whose recorded spec was edited by hand, naming the fields that
    differ from `spec` (the spec being resumed, whose spec_hash the run's matches). A run
    written before `spec_redacted_sha256` was recorded is taken as it is."""
    kept = run.get("spec_redacted_sha256")
    recorded = run.get("spec")
    if kept is None or (isinstance(recorded, dict) and isinstance(kept, str)
                        and recorded_spec_sha256(recorded) == kept):
        return
    made = spec.redacted()
    plain = recorded if isinstance(recorded, dict) else {}
    unhashed = ("name", "retries", "cache")  # outside spec_hash: a resume may change them
    fields = (_differences({k: v for k, v in plain.items() if k not in unhashed},
                           {k: v for k, v in made.items() if k not in unhashed}, "")
              or _differences(plain, made, "") or ["spec_redacted_sha256"])
    said = ", ".join(f"'{f}'" for f in fields[:3]) + (" ..." if len(fields) > 3 else "")
    raise EvalkitError(f"{run_json}: its spec was edited (field{'s' if len(fields) > 1 else ''} "
                       f"{said} differ{'' if len(fields) > 1 else 's'} from what spec_hash was "
                       "made of): restore it, or start a new run with --out")


def _differences(recorded: Any, made: Any, at: str) -> list[str]:
    """The dotted paths (seed, tasks.0.params.depths) at which `recorded` differs from
    `made`, in order; a key only one of them has is a difference too."""
    if isinstance(recorded, dict) and isinstance(made, dict):
        return [path for key in sorted({*recorded, *made}, key=str)
                for path in _differences(recorded.get(key, _MISSING), made.get(key, _MISSING),
                                         f"{at}{key}" if not at else f"{at}.{key}")]
    if (isinstance(recorded, list) and isinstance(made, list) and len(recorded) == len(made)
            and any(isinstance(x, dict) for x in recorded)):  # tasks: say which; else the list
        return [path for i, (r, m) in enumerate(zip(recorded, made, strict=True))
                for path in _differences(r, m, f"{at}.{i}" if at else str(i))]
    return [] if recorded == made and type(recorded) is type(made) else [at or "spec"]


_MISSING = object()
