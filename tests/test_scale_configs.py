"""The example configs of docs/scale.md (configs/scale/*.yaml) parse into runs of the backend
they show, name only options that backend declares, and fit their model's window. No
backend is constructed and no model loads: each backend module's OPTIONS is read as it is."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from evalkit.backends import check_options
from evalkit.runner.config import RunSpec, build_specs, load_config_file

ROOT = Path(__file__).resolve().parent.parent
SCALE = ROOT / "configs" / "scale"
DOC = ROOT / "docs" / "scale.md"

# each example config and the backend it is an example of
EXPECTED_BACKEND = {
    "one-gpu": "vllm",
    "multi-gpu": "vllm",
    "ray-cluster": "vllm",
    "sharded": "vllm",
    "many-servers": "openai",
}
CONFIGS = sorted(SCALE.glob("*.yaml"))


def _spec(path: Path) -> RunSpec:
    specs = build_specs(load_config_file(path), source=str(path))
    assert len(specs) == 1, f"{path.name}: one model per example config"
    return specs[0]


def _declared_options(backend: str) -> dict[str, type]:
    """The backend's OPTIONS, read from its module without constructing it."""
    options: dict[str, type] = importlib.import_module(f"evalkit.backends.{backend}").OPTIONS
    return options


def test_every_example_config_is_expected_and_documented() -> None:
    assert {p.stem for p in CONFIGS} == set(EXPECTED_BACKEND)
    doc = DOC.read_text(encoding="utf-8")
    for name in EXPECTED_BACKEND:
        assert f"configs/scale/{name}.yaml" in doc, f"docs/scale.md does not show {name}.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_parses_with_the_expected_backend_and_declared_options(path: Path) -> None:
    spec = _spec(path)
    assert spec.backend == EXPECTED_BACKEND[path.stem]
    declared = _declared_options(spec.backend)
    unknown = sorted(set(spec.backend_options) - set(declared))
    assert not unknown, f"{path.name}: options {unknown} are not in {spec.backend}'s OPTIONS"
    check_options(spec.backend, spec.backend_options, declared)  # and of the declared types


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_runs_the_shared_context_suite_within_the_window(path: Path) -> None:
    spec = _spec(path)
    tasks = {t.name: t for t in spec.tasks}
    assert {"passkey", "lines_shared", "lines", "topics", "longqa"} <= set(tasks)
    assert tasks["lines_shared"].params.get("questions") == 10
    opts: dict[str, Any] = dict(spec.backend_options)
    window = opts["max_model_len"] if spec.backend == "vllm" else opts["context_window"]
    for task in spec.tasks:
        assert task.lengths, f"{path.name}: {task.name} has no lengths"
        assert max(task.lengths) + task.max_new_tokens <= window, (
            f"{path.name}: {task.name} at {max(task.lengths)} tokens does not fit {window}")


def test_the_configs_set_what_their_section_is_about() -> None:
    opts = {p.stem: dict(_spec(p).backend_options) for p in CONFIGS}
    for name, backend in EXPECTED_BACKEND.items():
        if backend == "vllm":
            assert opts[name]["enable_prefix_caching"] is True
            assert {"max_num_seqs", "gpu_memory_utilization", "max_model_len"} <= set(opts[name])
    assert opts["multi-gpu"]["tensor_parallel_size"] > 1
    assert opts["sharded"].get("tensor_parallel_size", 1) == 1  # one GPU per shard
    ray = opts["ray-cluster"]
    assert ray["distributed_executor_backend"] == "ray"
    assert ray["tensor_parallel_size"] * ray["pipeline_parallel_size"] > 1
    served = opts["many-servers"]
    assert served["base_url"].startswith("http") and served["concurrency"] > 8
    assert served["api_key_env"].isupper()  # the variable's name: the key is never in a file
