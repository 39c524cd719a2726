"""Backends: one small module per engine behind one protocol (evalkit.types.Backend).

Registered by name with @register_backend and imported lazily, so that a missing engine
costs nothing until it is asked for, and then fails with the pip command to run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from evalkit.types import Backend, EvalkitError

BackendFactory = Callable[[str, Mapping[str, Any]], Backend]
_FACTORIES: dict[str, BackendFactory] = {}
_MODULES = {
    "llamacpp": "evalkit.backends.llamacpp",
    "hf": "evalkit.backends.hf",
    "vllm": "evalkit.backends.vllm",
    "openai": "evalkit.backends.openai",
    "tgi": "evalkit.backends.tgi",
    "sagemaker": "evalkit.backends.sagemaker",
    "scripted": "evalkit.backends.scripted",
}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    def deco(factory: BackendFactory) -> BackendFactory:
        _FACTORIES[name] = factory
        return factory

    return deco


def backend_names() -> list[str]:
    return sorted(_MODULES)


def make_backend(name: str, model: str, options: Mapping[str, Any]) -> Backend:
    if name not in _MODULES:
        raise EvalkitError(f"unknown backend '{name}': use one of {', '.join(backend_names())}")
    if name not in _FACTORIES:
        importlib.import_module(_MODULES[name])
    return _FACTORIES[name](model, options)


def check_options(backend: str, options: Mapping[str, Any], known: Mapping[str, type]) -> None:
    """Refuse unknown or mistyped backend options by name."""
    for key, value in options.items():
        if key not in known:
            raise EvalkitError(f"unknown option '{key}' for backend {backend}: known are "
                               f"{', '.join(sorted(known))}")
        want = known[key]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            continue  # YAML writes 10000.0 as 10000: a whole number is a float too
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise EvalkitError(f"backend {backend}: option '{key}' must be a "
                               f"{want.__name__}, got {value!r}")
