"""Every task, and the only package that names one.

    base.py       the task model: TaskDef (planned per sample, or whole), Plan, Whole, the
                  registry TASKS (lazy entries, entry points, the lm_eval:NAME family)
    fitting.py    fits a haystack to a token budget, tokenizing about once
    parsers.py    answer parsers: what a scorer reads out of an output
    options.py    the run command's file options and the tasks they feed
    importers.py  readers of published test cases and corpora
    passkey.py lines.py topics.py longqa.py   the long-context tasks, fitted to lengths
    lm_eval/      lm-eval: the adapter, the leaderboard-v1 suite, any task of its catalogue
    data/         the data evalkit wrote (word lists, topic corpus, TruthfulQA-format fixtures)
"""

from evalkit.tasks.base import TASKS, Plan, Score, TaskDef, get_task, make_params, task_names

__all__ = ["TASKS", "Plan", "Score", "TaskDef", "get_task", "make_params", "task_names"]
