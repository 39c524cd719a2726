"""Token counts for the HTTP backends, exactly as the server will see the prompt.

`PromptCounter` counts through the server's tokenize endpoint (cached per text: fitting
measures the same texts again and again) or a local counter, with the BOS handled as the
server handles it; `ChatCounter` counts a user message inside the model's chat template,
for servers that apply the template themselves; `server_tokenize` is the HTTP call, whose
failures (a server that died while samples were being planned) end in one EvalkitError line.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Literal

from evalkit.backends.http import BodyLimit, HttpClient, HttpError, excerpt
from evalkit.prompts.counters import get_counter
from evalkit.types import EvalkitError, TokenCounter

# BOS texts a prompt may start with (written by a template); see PromptCounter.
_BOS_CANDIDATES = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "<|endoftext|>",
                   "[BOS]", "<｜begin▁of▁sentence｜>", "<|im_start|>")
_LOCAL_BOS = {"mistral-v1": "<s>"}  # the BOS text local counters read as the BOS itself
_MAX_CACHED_TOKENS = 4_000_000  # about 16 MB of cached token ids


class _IdCache:
    """Token ids per text (keyed by sha256), bounded by the total number of cached ids:
    fitting measures the same texts again and again."""

    def __init__(self) -> None:
        self._ids: OrderedDict[bytes, array[int]] = OrderedDict()
        self._total = 0

    def get(self, key: bytes) -> list[int] | None:
        ids = self._ids.get(key)
        if ids is None:
            return None
        self._ids.move_to_end(key)
        return ids.tolist()

    def put(self, key: bytes, ids: Sequence[int]) -> None:
        if key in self._ids:
            return
        self._ids[key] = array("l", ids)
        self._total += len(ids)
        while self._total > _MAX_CACHED_TOKENS and len(self._ids) > 1:
            _, old = self._ids.popitem(last=False)
            self._total -= len(old)


class PromptCounter:
    """Counts tokens exactly as the server will see what the backend sends.

    Servers add the BOS themselves and add it again to a prompt that already starts with
    its text (llama.cpp's server, vLLM and TGI all do). So a prompt whose template wrote the
    BOS text is sent without it (`server_text`) and counted the same way: one BOS, always.
    With the server's tokenize endpoint, the BOS text is found by asking the server (a text
    tokenizes to two BOS ids when it is the BOS text); with a local counter, it is the one
    that counter reads as the BOS (mistral-v1: <s>), and the server is taken to add its own.
    """

    def __init__(self, name: str, tokenize: Callable[[str], list[int]], bos_text: str | None,
                 auto_bos: Literal["never", "always", "unless_written"]) -> None:
        self.name = name
        self._tokenize = tokenize
        self.bos_text = bos_text
        self._auto_bos = auto_bos  # when `tokenize` itself puts a BOS first
        self._cache = _IdCache()

    @classmethod
    def from_server(cls, name: str, tokenize: Callable[[str], list[int]]) -> PromptCounter:
        empty = tokenize("")
        if not empty:
            return cls(name, tokenize, None, "never")
        bos = empty[0]
        found = next((c for c in _BOS_CANDIDATES if tokenize(c) == [bos, bos]), None)
        return cls(name, tokenize, found, "always")

    @classmethod
    def from_local(cls, name: str) -> PromptCounter:
        local: TokenCounter = get_counter(name)
        bos = _LOCAL_BOS.get(name)
        return cls(name, local.encode, bos, "unless_written" if bos else "never")

    @property
    def adds_bos(self) -> bool:
        """Whether the server puts a BOS before every prompt (known only for server counters)."""
        return self._auto_bos == "always"

    def server_text(self, text: str) -> str:
        """The prompt to send: without a written BOS, since the server adds its own."""
        if self.bos_text and text.startswith(self.bos_text):
            return text[len(self.bos_text):]
        return text

    def _cached(self, tag: bytes, text: str) -> list[int]:
        key = hashlib.sha256(tag + text.encode("utf-8")).digest()
        ids = self._cache.get(key)
        if ids is None:
            ids = list(self._tokenize(text))
            self._cache.put(key, ids)
        return ids

    def encode(self, text: str) -> list[int]:
        return self._cached(b"p", self.server_text(text))

    def encode_templated(self, text: str) -> list[int]:
        """Ids of a text a chat template rendered on the server: the template writes any
        BOS itself and the server adds none (HF's, vLLM's and llama.cpp's chat paths)."""
        ids = self._cached(b"t", text)
        written = bool(self.bos_text) and text.startswith(self.bos_text or "")
        if ids and (self._auto_bos == "always"
                    or (self._auto_bos == "unless_written" and not written)):
            return ids[1:]
        return ids


def server_tokenize(http: HttpClient, path: str, body: Callable[[str], Any],
                    ids: Callable[[Any], list[int]]) -> Callable[[str], list[int]]:
    """The server's tokenize endpoint as a function of the text. It runs while samples are
    planned, before anything is recorded: a failure there (after the client's retries) is
    one EvalkitError line naming the server, what failed and what to do, never a traceback."""

    def tokenize(text: str) -> list[int]:
        try:
            answer = http.post_json(path, body(text), label="counting tokens",
                                    limit=BodyLimit.tokenize(len(text)))
        except HttpError as exc:
            raise EvalkitError(f"{http.backend} backend: counting tokens with {path} failed: "
                               f"{exc.message}: check that the server is up (or set backend "
                               "option tokenizer to count locally), then run the same "
                               "command again") from None
        try:
            return list(ids(answer))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EvalkitError(http.redact(
                f"{http.backend} backend: {http.where}{path} answered without token ids "
                f"({type(exc).__name__}: {exc}; it answered {excerpt(answer)}): set backend "
                "option tokenizer to count locally")) from None

    return tokenize


class ChatCounter:
    """Counts a user message as the server's chat endpoint will: the model's template
    rendered around it, tokenized with the template in charge of the BOS."""

    def __init__(self, base: PromptCounter, render: Callable[[str], str]) -> None:
        self.name = f"{base.name}+chat"
        self._base = base
        self._render = render

    def encode(self, text: str) -> list[int]:
        return self._base.encode_templated(self._render(text))
