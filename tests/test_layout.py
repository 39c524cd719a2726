"""The layout keeps the architecture: generic code names no task.

Every task (its name, its parameters, its branches) lives in the tasks package; runner,
results, stats, report, cli, model and backends iterate over what tasks declare. These tests
read the source: a task's name written outside evalkit/tasks is a task-specific branch
waiting to happen.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

from conftest import ROOT

from evalkit.tasks import task_names

PACKAGE = ROOT / "evalkit"
TASKS_PACKAGE = PACKAGE / "tasks"

# names that say a task (or its benchmark) wherever they stand, any case, in code, strings
# and comments alike
DISTINCT = ("passkey", "longqa", "mmlu", "hellaswag", "truthfulqa", "arc_challenge",
            "arc_easy", "niah", "ruler", "longeval", "leaderboard", "babilong", "longbench",
            "mrcr")


def _outside_tasks() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if TASKS_PACKAGE not in p.parents)


def _tokens(path: Path) -> list[tokenize.TokenInfo]:
    return list(tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline))


def test_no_module_outside_the_tasks_package_names_a_task() -> None:
    names = set(task_names())
    # a name that is also a plain word ("lines", "topics") counts where it stands alone as
    # a string: a key, a comparison, a default
    plain_words = {n for n in names if not any(d in n for d in DISTINCT)}
    distinct = re.compile(r"(?i)" + "|".join(DISTINCT))
    found = []
    for path in _outside_tasks():
        for tok in _tokens(path):
            where = f"{path.relative_to(ROOT)}:{tok.start[0]}: {tok.string.strip()[:60]}"
            if tok.type in (tokenize.NAME, tokenize.STRING, tokenize.COMMENT) and \
                    distinct.search(tok.string):
                found.append(where)
            elif tok.type == tokenize.STRING and tok.string.strip("\"'rbf") in plain_words:
                found.append(where)
    assert not found, "task names outside evalkit/tasks:\n" + "\n".join(found)


def test_the_grep_finds_a_task_name_where_one_is_written(tmp_path: Path) -> None:
    """The check above can fail: the same scan over a line that names a task finds it."""
    source = tmp_path / "generic.py"
    source.write_text('if task == "mmlu":\n    pass\nx = "lines"\n', encoding="utf-8")
    strings = [t.string for t in _tokens(source) if t.type == tokenize.STRING]
    assert strings == ['"mmlu"', '"lines"']
    assert "lines" in task_names() and re.search("(?i)mmlu", strings[0])


def test_every_task_is_registered_from_the_tasks_package() -> None:
    from evalkit.tasks.base import TASKS

    own = [name for name in task_names() if TASKS.origin(name) == "evalkit"]
    assert len(own) >= 11
    for name in own:
        task = TASKS.get(name)
        made = task.generate if task.generate is not None else task.whole.run  # type: ignore[union-attr]
        module = getattr(made, "func", made).__module__  # a functools.partial's function
        assert module.startswith("evalkit.tasks."), (name, module)


def test_the_top_level_holds_only_what_every_package_shares() -> None:
    """Packages by concern; at the top only the core types, the registry, interrupts,
    redaction and the entry points."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "interrupts.py", "redact.py", "registry.py",
                   "types.py"]
    packages = sorted(p.name for p in PACKAGE.iterdir()
                      if p.is_dir() and (p / "__init__.py").is_file())
    assert packages == ["backends", "cli", "model", "prompts", "report", "results", "runner",
                        "stats", "tasks"]
