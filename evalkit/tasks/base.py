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
import re
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.registry import Registry
from evalkit.tasks.fitting import Fitter, Measure
from evalkit.types import (
    EvalkitError,
    Log,
    MetricDef,
    Record,
    RequestKind,
    Response,
    Sample,
    SummaryRow,
    TokenCounter,
)


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
    window: int | None = None  # the model's context window in tokens, where known
    on_skip: Callable[[str, str], None] | None = None  # (sample id, why): see skip
    reserve: int = 0  # tokens the model may write beyond max_new_tokens (a reasoning budget)
    # counts kept across runs of this plan (the plan cache's; None: kept for this run only)
    memo: MutableMapping[str, int] | None = None

    def wants(self, sample_id: str, haystack: str | None = None) -> bool:
        """Whether this run makes the sample (a shard makes a slice): asked before a sample
        is fitted, with the haystack its questions share, if any."""
        return self.select is None or self.select(sample_id, haystack)

    def fits(self, input_tokens: int) -> bool:
        """Whether a prompt of `input_tokens` and what the model may write (the answer
        budget and any reasoning budget) fit the model's window (True where it is not
        known)."""
        return not self.window or input_tokens + self.max_new_tokens + self.reserve <= \
            self.window

    def skip(self, sample_id: str, why: str) -> None:
        """Leave a sample out of the run, saying why: a case read as published that does
        not fit the window is skipped, counted and listed in run.json (`skipped`), never
        truncated. Said before `wants`, so that every shard skips the same samples."""
        if self.on_skip is not None:
            self.on_skip(sample_id, why)

    def counted(self, key: str, count: Callable[[], int]) -> int:
        """A count this plan makes again and again (a data row's tokens, to bin it), made
        once and kept in the plan cache by `key`, which names what is counted (a row by its
        file and place: the files' sizes and times are in the cache's key)."""
        if self.memo is None:
            return count()
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = count()
        return found

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
class WholeRun:
    """What a task planned whole gets to plan, describe or run with. `model` (an evalkit
    Model) is None while planning and describing; `counter` is the model's tokenizer where a
    task's data are sized with it (None: the task needs none, or a dry run without it)."""

    params: Any
    lengths: tuple[int, ...]  # the length cells asked for (empty: all, or the task has none)
    limit: int | None  # --limit: the first N documents (of each unit, of each length cell)
    counter: TokenCounter | None = None
    model: Any = None
    label: str = ""
    done: frozenset[str] = frozenset()  # sample ids already recorded: not recorded again
    log: Log = print
    progress: bool = False


@dataclass(frozen=True)
class Whole:
    """How a task scored as a whole by its own harness (lm-eval, which scores a task over
    all its documents at once) plans and runs, instead of one request a sample.

    plan: every sample id the task will record, with its length cell (loads its data,
      asks no model), for run.json's counts before the model is made;
    run: the records of the samples not in `done`, a unit (one lm-eval task) at a time, the
      Model asked through the harness; the runner appends each unit's records as they come;
    describe: the rows of its dry run's table: what runs (a task, a task at a length), its
      cell (the shots a leaderboard task is scored with, a RULER length), its documents."""

    plan: Callable[[WholeRun], Mapping[str, int | str]]
    run: Callable[[WholeRun], Iterator[Sequence[Record]]]
    describe: Callable[[WholeRun], list[tuple[str, str, int]]]


# the options of a config's task entry that set how samples are made (TaskSpec's fields)
SAMPLE_OPTIONS: tuple[str, ...] = ("lengths", "samples", "template", "max_new_tokens")


@dataclass(frozen=True, kw_only=True)
class TaskDef:
    """A task: how its samples are made, which request each becomes, how it is scored.

    Planned per sample (`generate`, `score`): samples are made here, fitted to lengths, and
    `kind` is the request every sample becomes: "generate" (the model writes up to
    max_new_tokens) or "loglikelihood" (the model scores the continuation
    `sample.targets[0]` after the rendered prompt). The scorer receives the whole Response
    (text, or logprob and is_greedy) and returns scores named as `metrics` declares, which
    reports and comparisons iterate over.

    Planned whole (`whole`): the task's harness makes, asks and scores its samples (see
    Whole); `kind` is what it asks the model for.

    What else a task may declare, so that no generic module names it:
    - parse: its parameters from a config entry (default: `params_type`'s fields, typed);
      spec_params: those parameters as the run's spec records them;
    - options: which of SAMPLE_OPTIONS a config entry may set (`fixed` says why the others
      are not: the protocol sets them); limited: --limit applies to it;
    - summarize: its summary rows from its records (default: a mean per length cell and
      subset); tasks sharing one summarize are summarized together (a suite's average);
    - axes: sample fields (Sample.axis) the report plots against length as heatmaps;
    - details: more lines for `evalkit tasks`;
    - marks: where a task knows its needles, the texts the report marks in a sample's
      prompt and can jump to: (kind, text) pairs, kind "needle" or "question" (found_marks);
    - budget_in_length: its lengths count the prompt and the generation budget together
      (RULER's max_seq_length), so a length is fitted with max_new_tokens taken off and
      fits a context window of that length."""

    name: str
    description: str
    params_type: type
    kind: RequestKind
    metrics: tuple[MetricDef, ...]
    default_template: str = "raw"  # "raw" or "chat": the protocol's choice
    max_new_tokens: int = 0
    generate: Generate | None = None
    score: Scorer | None = None
    fitted: Callable[[Any], bool] = lambda params: True  # whether params fit to lengths
    whole: Whole | None = None
    parse: Callable[[Mapping[str, Any]], Any] | None = None
    spec_params: Callable[[Any], Mapping[str, Any]] | None = None
    options: frozenset[str] = frozenset(SAMPLE_OPTIONS)
    fixed: str = ""
    limited: bool = False
    summarize: Callable[[Sequence[Record]], list[SummaryRow]] | None = None
    axes: tuple[str, ...] = ()
    details: tuple[str, ...] = ()
    budget_in_length: bool = False  # a length counts the prompt and max_new_tokens (RULER)
    marks: Callable[[Sample], Sequence[tuple[str, str]]] | None = None

    def __post_init__(self) -> None:
        if self.whole is None and (self.generate is None or self.score is None):
            raise TypeError(f"task {self.name}: give generate and score (planned per sample) "
                            "or whole (planned whole)")


def _task_def(obj: object) -> TaskDef:
    if not isinstance(obj, TaskDef):
        raise TypeError(f"a task is an evalkit TaskDef, not {type(obj).__name__}")
    return obj


# evalkit's own tasks, loaded when first asked for; plugins add theirs by entry point
TASKS: Registry[TaskDef] = Registry("task", "evalkit.tasks", {
    "lines": "evalkit.tasks.lines:TASK",
    "lines_shared": "evalkit.tasks.lines:TASK_SHARED",
    "longqa": "evalkit.tasks.longqa:TASK",
    "passkey": "evalkit.tasks.passkey:TASK",
    "passkey_ll": "evalkit.tasks.passkey:TASK_LL",
    "passkey_shared": "evalkit.tasks.passkey:TASK_SHARED",
    "topics": "evalkit.tasks.topics:TASK",
    "arc_challenge": "evalkit.tasks.lm_eval.leaderboard:ARC_CHALLENGE",
    "hellaswag": "evalkit.tasks.lm_eval.leaderboard:HELLASWAG",
    "truthfulqa_mc2": "evalkit.tasks.lm_eval.leaderboard:TRUTHFULQA_MC2",
    "mmlu": "evalkit.tasks.lm_eval.leaderboard:MMLU",
    **{name: f"evalkit.tasks.ruler.niah:{name.upper()}" for name in (
        "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
        "niah_multikey_3", "niah_multivalue", "niah_multiquery")},
    "cwe": "evalkit.tasks.ruler.extraction:CWE",
    "fwe": "evalkit.tasks.ruler.extraction:FWE",
    "vt": "evalkit.tasks.ruler.vt:VT",
    "qa_1": "evalkit.tasks.ruler.qa:QA_1",
    "qa_2": "evalkit.tasks.ruler.qa:QA_2",
    "mrcr": "evalkit.tasks.mrcr:TASK",
}, _task_def, families={"lm_eval:": (
    "evalkit.tasks.lm_eval.catalogue:make_task",
    "any task or group of lm-eval's catalogue by its name (`lm_eval ls tasks` lists them): "
    "lm_eval:arc_easy, lm_eval:niah_single_1 (RULER: --lengths are its max_seq_lengths), "
    "lm_eval:ruler; --limit N: first N documents (per length)")})


# what a config without `tasks:` runs: the long-context tasks of the headline comparison
DEFAULT_TASKS: tuple[str, ...] = ("passkey", "lines", "topics", "longqa")


def register_task(task: TaskDef) -> TaskDef:
    return TASKS.register(task.name, task)


def get_task(name: str) -> TaskDef:
    if not TASKS.knows(name):
        raise EvalkitError(
            f"unknown task '{name}': use one of {', '.join(task_names())} (see `evalkit tasks`)"
        )
    return TASKS.get(name)


def task_names() -> list[str]:
    return TASKS.names()


def known_task(name: str) -> TaskDef | None:
    """The definition of a task this installation knows, else None (a run made elsewhere,
    a plugin not installed here, lm-eval not installed for an lm_eval:NAME task)."""
    try:
        return TASKS.get(name) if TASKS.knows(name) else None
    except EvalkitError:
        return None


def has_length_axis(name: str) -> bool:
    """Whether a task's samples are made at lengths asked for (TaskDef.options)."""
    task = known_task(name)
    return task is not None and "lengths" in task.options


def make_params(task: TaskDef, values: Mapping[str, Any]) -> Any:
    """Task parameters from a config mapping, checked against the dataclass's annotations
    (pydantic: configs are untrusted input); unknown keys and wrong types are refused by name."""
    if task.parse is not None:
        return task.parse(values)
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


def data_dir() -> Path:
    """The task data we wrote (word lists, topic corpus, TruthfulQA-format questions):
    evalkit/tasks/data, inside the package wherever it is installed."""
    folder = Path(__file__).resolve().parent / "data"
    if not folder.is_dir():
        raise EvalkitError(f"evalkit's task data is missing ({folder}): reinstall evalkit "
                           "(pip install evalkit)")
    return folder


def read_words(name: str) -> list[str]:
    path = data_dir() / "words" / f"{name}.txt"
    try:
        return [w for w in path.read_text(encoding="utf-8").splitlines() if w]
    except FileNotFoundError:
        raise EvalkitError(f"task data file {path} is missing: reinstall evalkit "
                           "(pip install evalkit)") from None


def found_marks(sample: Sample, needles: Iterable[str] = (), question: str | None = None,
                patterns: Iterable[str] = ()) -> list[tuple[str, str]]:
    """A task's `marks`: the needles (texts, or regular expressions in `patterns` whose
    matches are the texts) and the question, each kept only where the sample's prompt (its
    text, or its conversation's messages) holds it, needles first, each text once."""
    text = sample.prompt if sample.messages is None else "\n".join(
        m.content for m in sample.messages)
    found = [n for n in needles if n and n in text]
    found += [m.group(0) for p in patterns for m in re.finditer(p, text)]
    out = [("needle", n) for n in dict.fromkeys(found)]
    if question and question in text:
        out.append(("question", question))
    return out


def last_match(pattern: str, text: str) -> str | None:
    """The last match of a regular expression in `text` (a task's question, after any
    in-context example's), or None."""
    found = [m.group(0) for m in re.finditer(pattern, text)]
    return found[-1] if found else None
