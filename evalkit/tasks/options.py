"""The run command's file options, and which task each one feeds: the CLI names options,
the tasks package knows what they are for.

    --corpus FILE   topics: a LongEval-style corpus (conversations.jsonl)
    --quality FILE  longqa: a QuALITY JSONL file
    --cases FILE    LongEval's published lines or topics cases (the file says which)
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
LIMIT_HELP = ("tasks scored whole (the leaderboard suite, lm_eval:NAME): the first N documents "
              "of each (of each MMLU subject, of each length cell)")


def apply_file_options(task_params: dict[str, dict[str, Any]], tasks: list[str],
                       extra_tasks: list[str], asked: Sequence[str], from_config: bool, *,
                       corpus: Path | None, quality: Path | None,
                       cases: Sequence[Path]) -> None:
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
