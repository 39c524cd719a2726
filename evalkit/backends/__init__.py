"""Backends: one small module per engine behind one protocol (evalkit.types.Backend).

Registered by name (evalkit.registry: evalkit's own lazily, as module:attr; a plugin's by
entry point "evalkit.backends"; @register_backend in code) and imported when first asked
for, so that a missing engine costs nothing until then, and then fails with the pip
command to run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from evalkit.registry import Registry
from evalkit.types import Backend, EvalkitError

BackendFactory = Callable[[str, Mapping[str, Any]], Backend]


def _factory(obj: object) -> BackendFactory:
    if not callable(obj):
        raise TypeError(f"a backend is a callable (model, options) -> Backend, not "
                        f"{type(obj).__name__}")
    return cast(BackendFactory, obj)


# evalkit's own backends, imported when first asked for; plugins add theirs by entry point
BACKENDS: Registry[BackendFactory] = Registry("backend", "evalkit.backends", {
    "llamacpp": "evalkit.backends.llamacpp:LlamaCppBackend",
    "hf": "evalkit.backends.hf:HFBackend",
    "vllm": "evalkit.backends.vllm:VLLMBackend",
    "openai": "evalkit.backends.openai:OpenAIBackend",
    "tgi": "evalkit.backends.tgi:TgiBackend",
    "sagemaker": "evalkit.backends.sagemaker:SageMakerBackend",
    "scripted": "evalkit.backends.scripted:ScriptedBackend",
}, _factory)


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    def deco(factory: BackendFactory) -> BackendFactory:
        return BACKENDS.register(name, factory)

    return deco


def backend_names() -> list[str]:
    return sorted(BACKENDS.names())


def make_backend(name: str, model: str, options: Mapping[str, Any]) -> Backend:
    if name not in BACKENDS.names():
        raise EvalkitError(f"unknown backend '{name}': use one of {', '.join(backend_names())}")
    return BACKENDS.get(name)(model, options)


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
