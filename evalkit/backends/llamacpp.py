"""llama.cpp in process (llama-cpp-python), on any GGUF file or an embedded model alias.

The vocabulary loads first (vocab_only, under a second) so that samples can be fitted
before the weights are read; the full model is created on the first request with a
context just large enough for the longest request so far (and re-created, rarely, when a
longer one comes). Consecutive prompts that share a prefix reuse llama.cpp's KV cache.

Loglikelihood evaluates context + continuation and reads the logits of the positions that
predict the continuation only (llama.cpp computes logits for the positions a batch marks):
logits_all=True would keep n_ctx x vocabulary floats (2 GB for Gemma's 262K vocabulary at
2K tokens). It shares the KV cache with generation, so scoring several continuations of
one context evaluates the context once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from evalkit.backends import check_options
from evalkit.backends.identity import weights_identity
from evalkit.model.files import resolve_gguf
from evalkit.prompts.templates import chat_template_source
from evalkit.types import Capabilities, EvalkitError, Request, Response, TokenCounter

# rope_freq_base / rope_freq_scale override the GGUF's RoPE settings (llama.cpp's
# --rope-freq-base / --rope-freq-scale); chat_template is a jinja file that replaces the
# GGUF's own (llama.cpp server's --chat-template-file)
OPTIONS: dict[str, type] = {"n_threads": int, "n_ctx": int, "n_batch": int,
                            "n_gpu_layers": int, "flash_attn": bool, "rope_freq_base": float,
                            "rope_freq_scale": float, "chat_template": str}
# Options that change answers (the rest change speed only); chat_template's text is in the
# prompt itself.
_ANSWER_OPTIONS = ("rope_freq_base", "rope_freq_scale", "flash_attn", "n_gpu_layers")


def _import_llama() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise EvalkitError("the llamacpp backend needs llama-cpp-python: "
                           "pip install 'evalkit[llamacpp]'") from None
    return llama_cpp


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C library's own stderr writes (Python's stderr is untouched)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class LlamaCppCounter:
    """llama.cpp's own tokenizer; a BOS is added only when the text does not start with it."""

    def __init__(self, vocab: Any, bos_text: str, add_bos: bool) -> None:
        self.name = "llamacpp"
        self._vocab = vocab
        self._bos_text = bos_text
        self._add_bos = add_bos

    def encode(self, text: str) -> list[int]:
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return list(self._vocab.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))


class LlamaCppBackend:
    name = "llamacpp"
    max_batch_size = 1  # llama-cpp-python runs one sequence at a time

    def __init__(self, model: str, options: Mapping[str, Any]) -> None:
        check_options(self.name, options, OPTIONS)
        self.path: Path = resolve_gguf(model)  # a wrong path is named before a missing engine
        self._llama_cpp = _import_llama()
        self.model = model
        self.options = dict(options)
        with _quiet_stderr():  # llama.cpp warns about the context of a vocab-only load
            self._vocab = self._llama_cpp.Llama(model_path=str(self.path), vocab_only=True,
                                                verbose=False)
        md: dict[str, str] = dict(self._vocab.metadata)
        self._metadata = md
        arch = md.get("general.architecture", "")
        self._ctx_train = int(md.get(f"{arch}.context_length", "0")) or None
        bos, eos = self._vocab.token_bos(), self._vocab.token_eos()
        self._bos_text = self._token_text(bos) if bos >= 0 else ""
        self._eos_text = self._token_text(eos) if eos >= 0 else ""
        add_bos = md.get("tokenizer.ggml.add_bos_token", "true") != "false" and bos >= 0
        self._counter = LlamaCppCounter(self._vocab, self._bos_text, add_bos)
        self._llm: Any = None
        self._n_ctx = 0
        fixed, self._chat_template = chat_template_source(self.options.get("chat_template"))
        if fixed:
            raise EvalkitError(f"llamacpp: chat_template {fixed} is a fixed template: set "
                               f"template: {fixed} instead (chat_template takes a jinja file)")

    def capabilities(self) -> Capabilities:
        return Capabilities(generate=True, loglikelihood=True,
                            chat=self.chat_template() is not None)

    def _token_text(self, token: int) -> str:
        return bytes(self._vocab.detokenize([token], special=True)).decode("utf-8", "replace")

    def tokenizer(self) -> TokenCounter:
        return self._counter

    def context_window(self) -> int | None:
        cap = self.options.get("n_ctx")
        if cap and self._ctx_train:
            return min(int(cap), self._ctx_train)
        return int(cap) if cap else self._ctx_train

    def chat_template(self) -> str | None:
        return self._chat_template or self._metadata.get("tokenizer.chat_template")

    def special_tokens(self) -> dict[str, str]:
        return {"bos_token": self._bos_text, "eos_token": self._eos_text}

    def _ensure_context(self, n_tokens: int) -> Any:
        if self._llm is not None and n_tokens <= self._n_ctx:
            return self._llm
        window = self.context_window() or n_tokens
        n_ctx = min(window, max(2048, -(-n_tokens // 1024) * 1024))
        self._llm = None  # free the old context before allocating the new one
        with _quiet_stderr():  # llama.cpp's notes on cache layout; failures still raise
            self._llm = self._llama_cpp.Llama(
                model_path=str(self.path), n_ctx=n_ctx, verbose=False,
                n_threads=self.options.get("n_threads", os.cpu_count() or 1),
                n_batch=self.options.get("n_batch", 512),
                n_gpu_layers=self.options.get("n_gpu_layers", 0),
                flash_attn=self.options.get("flash_attn", False),
                rope_freq_base=self.options.get("rope_freq_base", 0.0),  # 0: the GGUF's
                rope_freq_scale=self.options.get("rope_freq_scale", 0.0),
            )
        self._n_ctx = n_ctx
        return self._llm

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        out: list[Response] = []
        for req in requests:
            tokens = self._counter.encode(req.prompt)
            start = time.perf_counter()
            try:
                llm = self._ensure_context(len(tokens) + req.max_new_tokens)
                result = llm.create_completion(
                    prompt=tokens, max_tokens=req.max_new_tokens, temperature=req.temperature,
                    seed=req.seed, stop=list(req.stop) or None,
                )
            except (RuntimeError, ValueError, OSError) as exc:
                # a failed decode or allocation (RuntimeError, OSError) may pass; a bad
                # parameter (ValueError) will not
                out.append(Response(error=f"{type(exc).__name__}: {exc}",
                                    latency_s=time.perf_counter() - start,
                                    input_tokens=len(tokens),
                                    retryable=not isinstance(exc, ValueError)))
                continue
            usage = result.get("usage", {})
            out.append(Response(
                text=result["choices"][0]["text"], input_tokens=len(tokens),
                output_tokens=int(usage.get("completion_tokens", 0)),
                latency_s=time.perf_counter() - start,
            ))
        return out

    def loglikelihood(self, requests: Sequence[Request]) -> list[Response]:
        """log P(continuation | context) over the token ids the Model split, and whether
        greedy decoding would have produced the continuation."""
        out: list[Response] = []
        for req in requests:
            ctx, cont = req.context_tokens, req.continuation_tokens
            if ctx is None or cont is None:
                raise EvalkitError("llamacpp: loglikelihood requests come through "
                                   "evalkit.model.Model, which fills in their tokens")
            if not ctx or not cont:
                raise EvalkitError(f"llamacpp: request {req.sample_id} has no context token "
                                   "(not even a BOS) or nothing to score")
            start = time.perf_counter()
            try:
                logprob, greedy = self._score(list(ctx), list(cont))
            except (RuntimeError, OSError, ValueError) as exc:  # ValueError: no context
                out.append(Response(error=f"{type(exc).__name__}: {exc}",
                                    retryable=not isinstance(exc, ValueError),
                                    latency_s=time.perf_counter() - start))
                continue
            out.append(Response(logprob=logprob, is_greedy=greedy,
                                input_tokens=len(ctx) + len(cont), output_tokens=0,
                                latency_s=time.perf_counter() - start))
        return out

    def _score(self, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        """Evaluate ctx + cont after the longest prefix already in the KV cache (but at
        least the last context token, whose logits predict the first continuation token),
        marking for logits only the positions that predict a continuation token."""
        import numpy as np

        tokens = ctx + cont
        llm = self._ensure_context(len(tokens))
        first = len(ctx) - 1  # the position whose logits predict cont[0]
        cached = llm.input_ids[:llm.n_tokens].tolist()
        keep = 0
        for a, b in zip(cached, tokens[:first], strict=False):
            if a != b:
                break
            keep += 1
        if not llm._ctx.kv_cache_seq_rm(-1, keep, -1):  # a cache that cannot drop a tail
            keep = 0
            llm._ctx.kv_cache_clear()
        llm.n_tokens = keep
        n_vocab = llm.n_vocab()
        total, greedy = 0.0, True
        for at in range(keep, len(tokens), llm.n_batch):
            chunk = tokens[at:at + llm.n_batch]
            batch = llm._batch
            batch.set_batch(batch=chunk, n_past=at, logits_all=False)
            wanted = [i for i in range(len(chunk)) if first <= at + i < len(tokens) - 1]
            for i in range(len(chunk)):
                batch.batch.logits[i] = i in wanted
            if wanted:
                llm._ctx.decode(batch)
            else:
                batch.batch.logits[len(chunk) - 1] = True  # llama.cpp wants one output
                llm._ctx.decode(batch)
            for i in wanted:
                row = np.ctypeslib.as_array(llm._ctx.get_logits_ith(i), shape=(n_vocab,))
                row = row.astype(np.float64)
                target = tokens[at + i + 1]
                top = float(row.max())
                lse = top + float(np.log(np.exp(row - top).sum()))
                total += float(row[target]) - lse
                greedy = greedy and int(row.argmax()) == target
            llm.input_ids[at:at + len(chunk)] = chunk
            llm.n_tokens = at + len(chunk)
        return total, greedy

    def fingerprint(self) -> str:
        # the file by its content, the engine's version, and the options that change what
        # the model answers (a cached answer of the model with its own RoPE settings must
        # not stand for one with others; flash attention and GPU layers change the sums)
        ident = [weights_identity(self.path), getattr(self._llama_cpp, "__version__", "?"),
                 {k: self.options[k] for k in _ANSWER_OPTIONS if k in self.options}]
        return "llamacpp:" + hashlib.sha256(repr(ident).encode()).hexdigest()[:16]

    def describe(self) -> Mapping[str, Any]:
        return {"backend": self.name, "model": self.model, "model_file": self.path.name,
                "model_name": self._metadata.get("general.name"),
                "context_window": self._ctx_train,
                "engine_version": getattr(self._llama_cpp, "__version__", "?"),
                "options": self.options}
