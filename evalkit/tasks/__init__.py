"""Task generators: passkey, lines, topics, longqa (+ importers of published test cases)."""

from evalkit.tasks.base import Plan, Score, TaskDef, get_task, make_params, task_names

__all__ = ["Plan", "Score", "TaskDef", "get_task", "make_params", "task_names"]
