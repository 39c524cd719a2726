"""Token counters. Lengths are counted with the evaluated model's own tokenizer, on the
rendered prompt, exactly as the model will see it: a prompt whose template already writes
the BOS token gets no second one.

Counters here: the Mistral v1 SentencePiece tokenizer (offline, from mistral_common's data
file) for MistralLite and Mistral-7B-Instruct-v0.1, and a whitespace counter for tests.
Backends provide their own counters (llama.cpp's vocabulary, a server's tokenize endpoint).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import cast

from evalkit.registry import Registry
from evalkit.types import EvalkitError, TokenCounter

CounterFactory = Callable[[], TokenCounter]


def _factory(obj: object) -> CounterFactory:
    if not callable(obj):
        raise TypeError(f"a token counter is a callable () -> TokenCounter, not "
                        f"{type(obj).__name__}")
    return cast(CounterFactory, obj)


# named counters (evalkit's own are in this module; plugins add theirs by entry point)
COUNTERS: Registry[CounterFactory] = Registry("tokenizer", "evalkit.counters", {}, _factory)


def register_counter(name: str) -> Callable[[CounterFactory], CounterFactory]:
    def deco(factory: CounterFactory) -> CounterFactory:
        return COUNTERS.register(name, factory)

    return deco


def counter_names() -> list[str]:
    return sorted(COUNTERS.names())


def get_counter(name: str) -> TokenCounter:
    """A named counter ("mistral-v1", "whitespace", or a plugin's)."""
    if name not in COUNTERS.names():
        raise EvalkitError(
            f"unknown tokenizer '{name}': use 'auto' (the backend's own) or one of "
            f"{', '.join(counter_names())}"
        )
    return COUNTERS.get(name)()


class WhitespaceCounter:
    """One token per whitespace-separated word, plus a BOS. For tests and dry runs only."""

    name = "whitespace"

    def encode(self, text: str) -> list[int]:
        return [1] + [zlib.crc32(w.encode("utf-8")) & 0xFFFF for w in text.split()]


@register_counter("whitespace")
def _whitespace() -> TokenCounter:
    return WhitespaceCounter()


class MistralV1Counter:
    """The Mistral-7B v0.1 SentencePiece tokenizer as HF's legacy LlamaTokenizer applies it.

    Special tokens written in the text are parsed, not spelled out: <s> (1), </s> (2), and
    MistralLite's added <|assistant|> (32001) and <|prompter|> (32002), which strip the
    whitespace around them. Every other segment is encoded with the SentencePiece dummy
    prefix, as the legacy tokenizer does. A BOS is added unless the text starts with <s>.
    """

    name = "mistral-v1"
    _SPECIAL = {"<s>": (1, False), "</s>": (2, False),
                "<|assistant|>": (32001, True), "<|prompter|>": (32002, True)}
    _SPLIT = re.compile("(" + "|".join(re.escape(s) for s in _SPECIAL) + ")")

    def __init__(self, model_file: Path) -> None:
        try:
            import sentencepiece as spm
        except ImportError:
            raise EvalkitError(
                "the mistral-v1 tokenizer needs sentencepiece: pip install 'evalkit[mistral]'"
            ) from None
        self._sp = spm.SentencePieceProcessor(model_file=str(model_file))

    def encode(self, text: str) -> list[int]:
        ids: list[int] = [] if text.startswith("<s>") else [1]
        parts = self._SPLIT.split(text)
        for i, part in enumerate(parts):
            special = self._SPECIAL.get(part)
            if special is not None:
                ids.append(special[0])
                continue
            if i > 0 and self._SPECIAL[parts[i - 1]][1]:
                part = part.lstrip()
            if i + 1 < len(parts) and self._SPECIAL[parts[i + 1]][1]:
                part = part.rstrip()
            if part:
                ids.extend(self._sp.encode(part))
        return ids


def mistral_v1_model_file() -> Path:
    try:
        path = Path(str(resources.files("mistral_common").joinpath("data/tokenizer.model.v1")))
    except ModuleNotFoundError:
        raise EvalkitError(
            "the mistral-v1 tokenizer needs mistral_common: pip install 'evalkit[mistral]'"
        ) from None
    if not path.exists():
        raise EvalkitError(f"mistral_common has no data/tokenizer.model.v1 at {path}: "
                           "pip install -U mistral_common")
    return path


@register_counter("mistral-v1")
def _mistral_v1() -> TokenCounter:
    return MistralV1Counter(mistral_v1_model_file())
