"""What every task shares: the plan a generator fills, the task registry, the data folder.

A generator is pure and seeded: `generate(params, plan) -> Iterator[Sample]`; it reads no
files (loaders in importers.py do, before it runs) and draws every random choice from a
per-sample `random.Random` seeded by the sample's id, so adding samples or lengths never
changes the samples already made.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.fitting import Measure
from evalkit.types import EvalkitError, Sample


@dataclass(frozen=True)
class Plan:
    """How many samples at which lengths, measured how."""

    task: str
    lengths: tuple[int, ...]
    samples: int
    seed: int
    template: str
    max_new_tokens: int
    measure: Measure


@dataclass(frozen=True)
class Score:
    scores: Mapping[str, float]
    parsed: str | None


Generate = Callable[[Any, Plan], Iterator[Sample]]
Scorer = Callable[[Sample, str], Score]


@dataclass(frozen=True)
class TaskDef:
    name: str
    description: str
    params_type: type
    default_template: str  # "raw" or "chat": the protocol's choice
    max_new_tokens: int
    generate: Generate
    score: Scorer
    fitted: Callable[[Any], bool]  # whether these params fit samples to lengths


_TASKS: dict[str, TaskDef] = {}


def register_task(task: TaskDef) -> TaskDef:
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> TaskDef:
    _load_builtin()
    try:
        return _TASKS[name]
    except KeyError:
        raise EvalkitError(
            f"unknown task '{name}': use one of {', '.join(task_names())} (see `evalkit tasks`)"
        ) from None


def task_names() -> list[str]:
    _load_builtin()
    return list(_TASKS)


def _load_builtin() -> None:
    # importing registers; modules import once, so this is cheap after the first call
    from evalkit.generators import lines, longqa, passkey, topics  # noqa: F401


def make_params(task: TaskDef, values: Mapping[str, Any]) -> Any:
    """Task parameters from a config mapping; unknown keys are refused by name."""
    fields = {f.name: f for f in dataclasses.fields(task.params_type)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise EvalkitError(
            f"unknown parameter '{unknown[0]}' for task {task.name}: known are "
            f"{', '.join(fields) or 'none'}"
        )
    try:
        return task.params_type(**values)
    except (TypeError, ValueError) as exc:
        raise EvalkitError(f"task {task.name}: {exc}") from None


def sample_rng(*parts: object) -> random.Random:
    """A generator seeded by a sample's identity (str seeds hash stably across runs)."""
    return random.Random("/".join(str(p) for p in parts))


def tasks_dir() -> Path:
    """The project's tasks/ folder (task data we wrote: word lists, topic corpus)."""
    return Path(__file__).resolve().parents[2] / "tasks"


def read_words(name: str) -> list[str]:
    path = tasks_dir() / "data" / "words" / f"{name}.txt"
    try:
        return [w for w in path.read_text(encoding="utf-8").splitlines() if w]
    except FileNotFoundError:
        raise EvalkitError(f"task data file {path} is missing: reinstall evalkit from a "
                           "full checkout (pip install -e .)") from None
