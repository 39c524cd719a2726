"""What every task shares: the plan a generator fills, the task registry, the data folder.

A generator is pure and seeded: `generate(params, plan) -> Iterator[Sample]`; it reads no
files (loaders in importers.py do, before it runs) and draws every random choice from a
per-sample `random.Random` seeded by the sample's id, so adding samples or lengths never
changes the samples already made.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.fitting import Fitter, Measure
from evalkit.registry import Registry
from evalkit.types import EvalkitError, MetricDef, RequestKind, Response, Sample


@dataclass(frozen=True)
class Plan:
    """How many samples at which lengths, measured how: `measure` counts a prompt as the
    model sees it (rendered); `count` counts raw text (no template), for the fitter's
    estimates (None: `measure`, whose wrapping cancels out of differences). Generators ask
    `wants` before fitting a sample, so that a shard fits only its own."""

    task: str
    lengths: tuple[int, ...]
    samples: int
    seed: int
    template: str
    max_new_tokens: int
    measure: Measure
    count: Measure | None = None
    select: Callable[[str, str | None], bool] | None = None  # (sample id, haystack) -> make it?

    def wants(self, sample_id: str, haystack: str | None = None) -> bool:
        """Whether this run makes the sample (a shard makes a slice): asked before a sample
        is fitted, with the haystack its questions share, if any."""
        return self.select is None or self.select(sample_id, haystack)

    @functools.cached_property
    def fitter(self) -> Fitter:
        return Fitter(self.measure, self.count or self.measure)


@dataclass(frozen=True)
class Score:
    scores: Mapping[str, float]
    parsed: str | None


Generate = Callable[[Any, Plan], Iterator[Sample]]
Scorer = Callable[[Sample, Response], Score]


def accuracy(rule: str) -> MetricDef:
    """The binary accuracy metric, scored by `rule` (said for the report's reader)."""
    return MetricDef("accuracy", "binary", description=rule)


@dataclass(frozen=True)
class TaskDef:
    """A task: how its samples are made, which request each becomes, how it is scored.

    `kind` is the request every sample becomes: "generate" (the model writes up to
    max_new_tokens) or "loglikelihood" (the model scores the continuation
    `sample.targets[0]` after the rendered prompt). The scorer receives the whole Response
    (text, or logprob and is_greedy) and returns scores named as `metrics` declares, which
    reports and comparisons iterate over."""

    name: str
    description: str
    params_type: type
    default_template: str  # "raw" or "chat": the protocol's choice
    max_new_tokens: int
    generate: Generate
    score: Scorer
    fitted: Callable[[Any], bool]  # whether these params fit samples to lengths
    kind: RequestKind
    metrics: tuple[MetricDef, ...]


def _task_def(obj: object) -> TaskDef:
    if not isinstance(obj, TaskDef):
        raise TypeError(f"a task is an evalkit TaskDef, not {type(obj).__name__}")
    return obj


# evalkit's own tasks, loaded when first asked for; plugins add theirs by entry point
TASKS: Registry[TaskDef] = Registry("task", "evalkit.tasks", {
    "lines": "evalkit.generators.lines:TASK",
    "lines_shared": "evalkit.generators.lines:TASK_SHARED",
    "longqa": "evalkit.generators.longqa:TASK",
    "passkey": "evalkit.generators.passkey:TASK",
    "passkey_ll": "evalkit.generators.passkey:TASK_LL",
    "passkey_shared": "evalkit.generators.passkey:TASK_SHARED",
    "topics": "evalkit.generators.topics:TASK",
}, _task_def)


def register_task(task: TaskDef) -> TaskDef:
    return TASKS.register(task.name, task)


def get_task(name: str) -> TaskDef:
    if name not in TASKS.names():
        raise EvalkitError(
            f"unknown task '{name}': use one of {', '.join(task_names())} (see `evalkit tasks`)"
        )
    return TASKS.get(name)


def task_names() -> list[str]:
    return TASKS.names()


def make_params(task: TaskDef, values: Mapping[str, Any]) -> Any:
    """Task parameters from a config mapping, checked against the dataclass's annotations
    (pydantic: configs are untrusted input); unknown keys and wrong types are refused by name."""
    from pydantic import TypeAdapter, ValidationError

    fields = {f.name: f for f in dataclasses.fields(task.params_type)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise EvalkitError(
            f"unknown parameter '{unknown[0]}' for task {task.name}: known are "
            f"{', '.join(fields) or 'none'}"
        )
    hints = typing.get_type_hints(task.params_type)
    checked: dict[str, Any] = {}
    for key, value in values.items():
        # a single value where a list is asked for is that list of one (`num_lines: 200`)
        if _takes_list(hints[key]) and value is not None and not isinstance(value, list):
            value = [value]
        try:
            checked[key] = TypeAdapter(hints[key]).validate_python(value, strict=True)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in (key, *err["loc"][1:]))
            raise EvalkitError(f"task {task.name}: {where}: {str(err['msg']).lower()}, "
                               f"got {_short(value)}") from None
    try:
        return task.params_type(**checked)
    except (TypeError, ValueError) as exc:
        raise EvalkitError(f"task {task.name}: {exc}") from None


def _takes_list(hint: Any) -> bool:
    return any(typing.get_origin(h) is list for h in (hint, *typing.get_args(hint)))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def sample_rng(*parts: object) -> random.Random:
    """A generator seeded by a sample's identity (str seeds hash stably across runs)."""
    return random.Random("/".join(str(p) for p in parts))


def tasks_dir() -> Path:
    """The task data we wrote (word lists, topic corpus): inside the installed package
    (evalkit/_tasks, from a wheel) or the checkout's tasks/ (source tree, editable install)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "_tasks", package.parent / "tasks"):
        if (candidate / "data").is_dir():
            return candidate
    raise EvalkitError(f"evalkit's task data is missing (neither {package / '_tasks'} nor "
                       f"{package.parent / 'tasks'}): reinstall evalkit (pip install evalkit)")


def read_words(name: str) -> list[str]:
    path = tasks_dir() / "data" / "words" / f"{name}.txt"
    try:
        return [w for w in path.read_text(encoding="utf-8").splitlines() if w]
    except FileNotFoundError:
        raise EvalkitError(f"task data file {path} is missing: reinstall evalkit "
                           "(pip install evalkit)") from None
