"""The run command's file options, and which task each one feeds: the CLI names options,
the tasks package knows what they are for.

    --corpus FILE   topics: a LongEval-style corpus (conversations.jsonl)
    --quality FILE  longqa: a QuALITY JSONL file
    --cases FILE    LongEval's published lines or topics cases (the file says which)
    --data T=PATH   the `data` parameter of task T: mrcr's files or folder, qa_1's SQuAD
                    file, qa_2's HotpotQA file (repeat; repeated for one task, a list)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalkit.tasks.importers import detect_longeval_kind
from evalkit.types import EvalkitError

CORPUS_HELP = "topics: a LongEval-style corpus (conversations.jsonl)"
QUALITY_HELP = "longqa: QuALITY JSONL file"
CASES_HELP = "LongEval published lines/topics test-case file (repeat)"
DATA_HELP = ("a task's data files, TASK=PATH (repeat): mrcr=FOLDER (OpenAI MRCR's parquet or "
             "JSONL files), qa_1=SQuAD.json, qa_2=HotpotQA.json")
LIMIT_HELP = ("tasks scored whole (the leaderboard suite, lm_eval:NAME): the first N documents "
              "of each (of each MMLU subject, of each length cell)")


def apply_file_options(task_params: dict[str, dict[str, Any]], tasks: list[str],
                       extra_tasks: list[str], asked: Sequence[str], from_config: bool, *,
                       corpus: Path | None, quality: Path | None,
                       cases: Sequence[Path], data: Sequence[str] = ()) -> None:
    """Put the files given on the command line into the parameters of their tasks.
    A file for a task that `--task` (`asked`) leaves out is refused, else it would be
    dropped in silence. Case files add their task: to the config's tasks (`extra_tasks`),
    or, without a config, as the run's tasks (`tasks`)."""
    for option, path, kind, param in (("--corpus", corpus, "topics", "corpus"),
                                      ("--quality", quality, "longqa", "quality")):
        if path is None:
            continue
        if asked and kind not in asked:
            raise EvalkitError(f"{option} {path} is for the {kind} task, but --task asks for "
                               f"{', '.join(asked)} only: add --task {kind}, or drop {option}")
        task_params.setdefault(kind, {})[param] = str(path)
    _apply_data(task_params, tasks, extra_tasks, asked, from_config, data)
    given: dict[Path, Path] = {}
    for path in cases:
        key = path.expanduser().resolve()
        if key in given:
            raise EvalkitError(f"--cases {path} is given twice"
                               + (f" (also as {given[key]})" if given[key] != path else "")
                               + ": give each case file once")
        given[key] = path
        kind = detect_longeval_kind(path)  # checks the whole file, before any model loads
        if asked and kind not in asked:
            raise EvalkitError(f"--cases {path} holds LongEval {kind} cases, but --task asks "
                               f"for {', '.join(asked)} only: add --task {kind}, or drop the file")
        task_params.setdefault(kind, {}).setdefault("cases", []).append(str(path))
        if not asked:  # without a config, just these cases; with one, added to its tasks
            (extra_tasks if from_config else tasks).append(kind)


def _apply_data(task_params: dict[str, dict[str, Any]], tasks: list[str],
                extra_tasks: list[str], asked: Sequence[str], from_config: bool,
                data: Sequence[str]) -> None:
    """--data TASK=PATH: the task's `data` parameter (a list where given more than once);
    the task is added to the run as a case file's is."""
    paths: dict[str, list[str]] = {}
    for item in data:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise EvalkitError(f"--data {item}: write TASK=PATH, e.g. --data mrcr=data/mrcr/")
        name = name.strip()
        if asked and name not in asked:
            raise EvalkitError(f"--data {item} is for the {name} task, but --task asks for "
                               f"{', '.join(asked)} only: add --task {name}, or drop it")
        paths.setdefault(name, []).append(path.strip())
    for name, given in paths.items():
        task_params.setdefault(name, {})["data"] = given if len(given) > 1 else given[0]
        if not asked and name not in (extra_tasks if from_config else tasks):
            (extra_tasks if from_config else tasks).append(name)
