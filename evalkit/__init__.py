"""evalkit: how well a language model uses a long input, by input length.

The Python API; the `evalkit` command is a thin shell over it, with the same names:

    import evalkit
    spec = evalkit.build_spec(evalkit.load_config("configs/quickstart.yaml"))
    result = evalkit.run(spec, out=Path("results/qs"))   # runs or resumes: .run_dir, .summary
    run = evalkit.read_run(result.run_dir)                # records, rows, status
    frame = evalkit.summary_frame(run.rows)               # pandas: one row per cell and metric
    verdict = evalkit.run_gate(baseline_dir, result.run_dir)  # .exit_code: 0 pass, 1 failed
    evalkit.build_report([result.run_dir], Path("reports/qs"))  # the HTML report
    evalkit.register_task(task_def)                       # or by entry point (evalkit.registry)

Names are imported when first used, so `import evalkit` costs nothing of pandas, the
engines or the CLI. (The gate and the report are `run_gate` and `build_report`: the names
`gate` and `report` are evalkit's modules.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> (module, attribute)
_API: dict[str, tuple[str, str]] = {
    # configs and runs
    "load_config": ("evalkit.runner.config", "load_config_file"),
    "build_spec": ("evalkit.runner.config", "build_spec"),
    "build_specs": ("evalkit.runner.config", "build_specs"),
    "RunSpec": ("evalkit.runner.config", "RunSpec"),
    "run": ("evalkit.runner.execute", "run"),
    "RunResult": ("evalkit.runner.execute", "RunResult"),
    "merge": ("evalkit.runner.shards", "merge"),
    # reading, comparing, gating, reporting
    "read_run": ("evalkit.results.read", "read_run"),
    "summary_frame": ("evalkit.results.read", "summary_frame"),
    "records_frame": ("evalkit.results.read", "records_frame"),
    "compare_runs": ("evalkit.report.compare", "compare_runs"),
    "run_gate": ("evalkit.stats.gate", "gate"),
    "build_report": ("evalkit.report.html", "build_report"),
    "build_index": ("evalkit.report.html", "build_index"),
    # models
    "make_model": ("evalkit.model", "make_model"),
    "Model": ("evalkit.model", "Model"),
    # extending
    "register_task": ("evalkit.tasks.base", "register_task"),
    "register_backend": ("evalkit.backends", "register_backend"),
    "register_counter": ("evalkit.prompts.counters", "register_counter"),
    "TaskDef": ("evalkit.tasks.base", "TaskDef"),
    "Plan": ("evalkit.tasks.base", "Plan"),
    "Score": ("evalkit.tasks.base", "Score"),
    "Whole": ("evalkit.tasks.base", "Whole"),
    "WholeRun": ("evalkit.tasks.base", "WholeRun"),
    # the core data types
    "Message": ("evalkit.types", "Message"),
    "Log": ("evalkit.types", "Log"),
    "Sample": ("evalkit.types", "Sample"),
    "Request": ("evalkit.types", "Request"),
    "Response": ("evalkit.types", "Response"),
    "Record": ("evalkit.types", "Record"),
    "Capabilities": ("evalkit.types", "Capabilities"),
    "MetricDef": ("evalkit.types", "MetricDef"),
    "EvalkitError": ("evalkit.types", "EvalkitError"),
    "Unsupported": ("evalkit.types", "Unsupported"),
    "Interrupted": ("evalkit.types", "Interrupted"),
}

__all__ = [
    "Capabilities", "EvalkitError", "Interrupted", "Log", "Message", "MetricDef", "Model",
    "Plan", "Record", "Request", "Response", "RunResult", "RunSpec", "Sample", "Score",
    "TaskDef", "Unsupported", "Whole", "WholeRun",
    "build_index", "build_report", "build_spec", "build_specs", "compare_runs", "load_config",
    "make_model", "merge", "read_run", "records_frame", "register_backend", "register_counter",
    "register_task", "run", "run_gate", "summary_frame",
]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'evalkit' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # the same names, for type checkers
    from evalkit.backends import register_backend
    from evalkit.model import Model, make_model
    from evalkit.prompts.counters import register_counter
    from evalkit.report.compare import compare_runs
    from evalkit.report.html import build_index, build_report
    from evalkit.results.read import read_run, records_frame, summary_frame
    from evalkit.runner.config import RunSpec, build_spec, build_specs
    from evalkit.runner.config import load_config_file as load_config
    from evalkit.runner.execute import RunResult, run
    from evalkit.runner.shards import merge
    from evalkit.stats.gate import gate as run_gate
    from evalkit.tasks.base import Plan, Score, TaskDef, Whole, WholeRun, register_task
    from evalkit.types import (
        Capabilities,
        EvalkitError,
        Interrupted,
        Log,
        Message,
        MetricDef,
        Record,
        Request,
        Response,
        Sample,
        Unsupported,
    )
