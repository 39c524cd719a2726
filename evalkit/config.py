"""Run configs: YAML in, a validated, frozen RunSpec out.

Configs are untrusted input, so pydantic checks them, and every problem becomes one line
naming the file, the key and the fix. Example (configs/quickstart.yaml):

    name: quickstart
    model: gemma3-270m
    backend: llamacpp
    lengths: [1k, 2k, 4k]
    samples: 3
    tasks:
      - passkey: {depths: [0.0, 0.5, 1.0]}
      - lines
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evalkit import leaderboard
from evalkit.generators import get_task, make_params, task_names
from evalkit.models import DEFAULT_MODEL, model_label
from evalkit.redact import redact
from evalkit.store import safe_name
from evalkit.templates import TEMPLATE_NAMES
from evalkit.types import EvalkitError

DEFAULT_LENGTHS = (1024, 2048, 4096)
TASK_OVERRIDES = ("lengths", "samples", "template", "max_new_tokens")
_LENGTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kK])?\s*$")


def parse_length(text: str | int) -> int:
    """'4k' -> 4096, '1.5k' -> 1536, '3000' -> 3000."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif not isinstance(text, str):
        raise EvalkitError(f"{text!r} is not a length: write e.g. 1k,4k,16k or 3000")
    else:
        m = _LENGTH.match(text)
        if not m:
            raise EvalkitError(f"'{text}' is not a length: write e.g. 1k,4k,16k or 3000")
        value = round(float(m.group(1)) * (1024 if m.group(2) else 1))
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


def parse_lengths(text: str | int | Sequence[str | int]) -> tuple[int, ...]:
    if isinstance(text, str):
        items: list[Any] = [x for x in text.split(",") if x.strip()]
    elif isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [text]
    if not items:
        raise EvalkitError("no lengths given: write e.g. --lengths 1k,4k,16k")
    return tuple(parse_length(x) for x in items)


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
    # the model gives itself, analysis.model_name)
    label: str | None = None
    cache: bool = True  # answer from the response cache where it can (evalkit.model)
    limit: int | None = None  # leaderboard tasks: the first N documents (per MMLU subject)
    shard: tuple[int, int] | None = None  # (i, n): this run is slice i of n (evalkit.shards)

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
            d.pop("limit")  # runs made before the leaderboard tasks keep their hash
        if d["shard"] is None:
            d.pop("shard")  # a whole run keeps the hash it had before shards
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
    tasks: list[str | dict[str, Any]] = ["passkey", "lines", "topics", "longqa"]
    models: list[_ModelEntry] | None = None


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
    package = Path(__file__).resolve().parent
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


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A config file's mapping; whatever is wrong with the file itself (missing, a folder,
    not UTF-8, not YAML, not a mapping) is one line naming the file and the fix."""
    p = Path(path)
    if p.is_dir():
        raise EvalkitError(f"{p} is a directory: pass a config file (YAML), e.g. in configs/")
    if not p.is_file():
        raise EvalkitError(f"config file not found: {p} (see configs/ for examples)")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise EvalkitError(f"{p}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise EvalkitError(f"{p}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}): save the "
                           "config file as UTF-8") from None
    try:
        data: Any = yaml.safe_load(text)
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


def build_specs(data: Mapping[str, Any], overrides: Overrides | None = None,
                source: str = "config") -> list[RunSpec]:
    """One RunSpec per model of the config (`model:`, or a `models:` list); refuses what
    is wrong, naming the key and the fix."""
    ov = overrides or Overrides()
    try:
        cfg = _ConfigFile.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "extra_forbidden":
            known = ", ".join(_ConfigFile.model_fields)
            where = ".".join(str(x) for x in err["loc"][:-1])
            raise EvalkitError(f"{source}: unknown key '{err['loc'][-1]}'"
                               + (f" in {where}" if where else "") + f" (known keys: {known})"
                               ) from None
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


def _spec_for(cfg: _ConfigFile, entry: _ModelEntry, ov: Overrides, source: str) -> RunSpec:
    template = ov.template or entry.template or cfg.template
    _check_template(template, source)
    lengths = parse_lengths(ov.lengths) if ov.lengths else parse_lengths(cfg.lengths)
    samples = ov.samples if ov.samples is not None else cfg.samples
    check_int(samples, f"{source}: samples", 1, MAX_SAMPLES)
    if ov.seed is not None:
        check_int(ov.seed, f"{source}: seed", 0, MAX_SEED)

    entries = _task_entries(cfg.tasks, source)
    if ov.tasks:
        by_name = dict(entries)
        entries = [(t, by_name.get(t, {})) for t in dict.fromkeys(ov.tasks)]
    entries += [(t, {}) for t in dict.fromkeys(ov.extra_tasks) if t not in dict(entries)]
    tasks = []
    for name, raw in entries:
        raw = dict(raw)
        raw.update(ov.task_params.get(name, {}))
        if leaderboard.is_leaderboard_task(name):
            tasks.append(_leaderboard_task(name, raw, source))
            continue
        task = _task_def(name)
        over = {k: raw.pop(k) for k in TASK_OVERRIDES if k in raw}
        params = make_params(task, raw)
        t_template = ov.template or over.get("template", template)
        _check_template(t_template, source)
        t_lengths = lengths if ov.lengths or "lengths" not in over else parse_lengths(
            over["lengths"])
        t_samples = samples if ov.samples is not None or "samples" not in over else check_int(
            over["samples"], f"{source}: tasks.{name}.samples", 1, MAX_SAMPLES)
        tasks.append(TaskSpec(
            name=name, params=json.loads(json.dumps(params.__dict__)),
            lengths=t_lengths if task.fitted(params) else (),
            samples=t_samples, template=t_template,
            max_new_tokens=check_int(over.get("max_new_tokens", task.max_new_tokens),
                                     f"{source}: tasks.{name}.max_new_tokens", 1, MAX_NEW_TOKENS),
        ))
    if not tasks:
        raise EvalkitError(f"{source}: no tasks: list some under tasks: or pass --task")
    options = entry.backend_options if entry.backend_options is not None else cfg.backend_options
    return RunSpec(
        name=ov.name or cfg.name, model=entry.model,
        backend=ov.backend or entry.backend or cfg.backend, backend_options=dict(options),
        tokenizer=ov.tokenizer or entry.tokenizer or cfg.tokenizer,
        seed=ov.seed if ov.seed is not None else cfg.seed, temperature=cfg.temperature,
        tasks=tuple(tasks), retries=cfg.retries, label=entry.label,
        cache=cfg.cache if ov.cache is None else ov.cache,
        limit=_limit(ov.limit, cfg.limit, tasks, source), shard=ov.shard,
    )


def _task_def(name: str) -> Any:
    """A long-context task's definition; an unknown name lists every task there is."""
    if name not in task_names():
        names = ", ".join([*task_names(), *leaderboard.TASKS])
        raise EvalkitError(f"unknown task '{name}': use one of {names} (see `evalkit tasks`)")
    return get_task(name)


def _leaderboard_task(name: str, raw: dict[str, Any], source: str) -> TaskSpec:
    """A leaderboard-v1 task: scored over its data by lm-eval with the protocol's shots and
    metrics, so lengths, samples, templates and new tokens do not apply (--limit does)."""
    fixed = [k for k in TASK_OVERRIDES if k in raw]
    if fixed:
        raise EvalkitError(f"{source}: tasks.{name}.{fixed[0]}: {name} runs as the leaderboard "
                           "protocol sets it (its shots, no chat template, over all its data): "
                           "drop it, and use --limit N to run the first N documents")
    params = leaderboard.parse_params(name, raw)
    plain: dict[str, Any] = {}
    if params.data is not None:
        plain["data"] = params.data
    if name == "mmlu" and params.subjects != leaderboard.MMLU_SUBJECTS:
        plain["subjects"] = list(params.subjects)
    return TaskSpec(name=name, params=json.loads(json.dumps(plain)), lengths=(), samples=1,
                    template="raw", max_new_tokens=0)


def _limit(given: int | None, configured: int | None, tasks: Sequence[TaskSpec],
           source: str) -> int | None:
    """--limit (else the config's): None where no leaderboard task runs, so that the
    config's limit does not split the runs of `--task passkey` by a value it never uses."""
    if not any(leaderboard.is_leaderboard_task(t.name) for t in tasks):
        if given is None:
            return None
        raise EvalkitError(f"{source}: limit applies to the leaderboard tasks "
                           f"({', '.join(leaderboard.TASKS)}) and none is run: use samples "
                           "for the long-context tasks")
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
                                   f"{{depths: [0.5]}}, got {params!r}")
            out.append((str(name), dict(params or {})))
        else:
            raise EvalkitError(f"{source}: each entry of tasks is a task name or "
                               f"{{name: {{params}}}} (tasks: {', '.join(task_names())})")
    return out


def with_name(spec: RunSpec, name: str) -> RunSpec:
    return replace(spec, name=name)
