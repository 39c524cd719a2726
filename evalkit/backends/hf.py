"""Hugging Face transformers in process (torch), on a local HF folder, a GGUF file or an
embedded model alias.

A GGUF file is loaded through transformers' `gguf_file=` and dequantized (to fp32 unless
`dtype` says otherwise), so its answers are close to, not identical with, llama.cpp's on
the quantized weights. The tokenizer and config load first (seconds) so that samples can
be fitted before the weights are read; the model loads on the first request. Requests
run in batches of up to `max_batch_size`, left-padded, so that every row's last prompt
token sits at the same position and generation appends after it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from evalkit.backends import check_options
from evalkit.backends.hf_common import (
    HFCounter,
    apply_overrides,
    import_transformers,
    load_tokenizer,
    model_name,
    resolve_hf_model,
    token_pairs,
)
from evalkit.backends.identity import weights_identity
from evalkit.types import Capabilities, EvalkitError, Request, Response, TokenCounter

OPTIONS: dict[str, type] = {"dtype": str, "device_map": str, "attn_implementation": str,
                            "rope_theta": float, "rope_scaling": dict, "sliding_window": int,
                            "max_batch_size": int, "trust_remote_code": bool}


class HFBackend:
    name = "hf"

    def __init__(self, model: str, options: Mapping[str, Any]) -> None:
        opts = dict(options)
        if isinstance(opts.get("rope_theta"), int) and not isinstance(opts["rope_theta"], bool):
            opts["rope_theta"] = float(opts["rope_theta"])  # YAML writes 1000000 as an int
        check_options(self.name, opts, OPTIONS)
        self._torch, self._tf = import_transformers()
        self.model, self.options = model, opts
        self.folder, self.gguf_file = resolve_hf_model(model)
        self.max_batch_size = int(opts.get("max_batch_size", 4))
        self._load_kw: dict[str, Any] = {"local_files_only": True, "gguf_file": self.gguf_file,
                                         "trust_remote_code": opts.get("trust_remote_code",
                                                                       False)}
        try:
            self._tok = load_tokenizer(self._tf, self.folder, **self._load_kw)
            self._config = self._tf.AutoConfig.from_pretrained(str(self.folder), **self._load_kw)
        except (OSError, ValueError, ImportError) as exc:
            raise EvalkitError(f"hf: cannot load the tokenizer/config of {model}: "
                               f"{str(exc).splitlines()[0]}") from None
        apply_overrides(self._config, opts)
        self._counter = HFCounter(self._tok)
        eos = self._config.eos_token_id if self._tok.eos_token_id is None \
            else self._tok.eos_token_id
        self._eos_ids: list[int] = [e for e in (eos if isinstance(eos, list) else [eos])
                                    if e is not None]
        pad = self._tok.pad_token_id
        self._pad_id: int = pad if pad is not None else (self._eos_ids or [0])[0]
        self._model: Any = None

    def capabilities(self) -> Capabilities:
        return Capabilities(generate=True, loglikelihood=True,
                            chat=self.chat_template() is not None)

    def tokenizer(self) -> TokenCounter:
        return self._counter

    def context_window(self) -> int | None:
        n = getattr(self._config, "max_position_embeddings", None)
        return int(n) if n else None

    def chat_template(self) -> str | None:
        template = getattr(self._tok, "chat_template", None)
        return template if isinstance(template, str) else None

    def special_tokens(self) -> Mapping[str, str]:
        return {"bos_token": self._tok.bos_token or "", "eos_token": self._tok.eos_token or ""}

    def _ensure_model(self) -> Any:
        if self._model is not None:
            return self._model
        device_map = self.options.get("device_map") or (
            "cuda" if self._torch.cuda.is_available() else "cpu")
        kw = dict(self._load_kw, config=self._config, device_map=device_map,
                  dtype=self.options.get("dtype", "auto"))
        if "attn_implementation" in self.options:
            kw["attn_implementation"] = self.options["attn_implementation"]
        try:
            model = self._tf.AutoModelForCausalLM.from_pretrained(str(self.folder), **kw)
        except (OSError, ValueError, ImportError) as exc:  # e.g. flash_attention_2 missing
            raise EvalkitError(f"hf: cannot load {self.model}: "
                               f"{str(exc).splitlines()[0]}") from None
        self._model = model.eval()
        return self._model

    def _batch(self, rows: Sequence[list[int]]) -> tuple[Any, Any]:
        """Token rows padded on the left to one width, and their attention mask."""
        torch, width = self._torch, max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        device = self._ensure_model().device
        return ids.to(device), mask.to(device)

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        """Batched generation; requests that share decoding params run together. Each
        response's latency_s is its batch's wall time (when its answer was ready)."""
        out: list[Response | None] = [None] * len(requests)
        groups: dict[tuple[float, int, tuple[str, ...]], list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault((req.temperature, req.seed, req.stop), []).append(i)
        for (temperature, seed, stop), idx in groups.items():
            for start in range(0, len(idx), self.max_batch_size):
                chunk = idx[start:start + self.max_batch_size]
                for i, resp in zip(chunk, self._generate_batch(
                        [requests[i] for i in chunk], temperature, seed, stop), strict=True):
                    out[i] = resp
        return [r if r is not None else Response(error="not run") for r in out]

    def _generate_batch(self, reqs: Sequence[Request], temperature: float, seed: int,
                        stop: tuple[str, ...]) -> list[Response]:
        torch = self._torch
        rows = [self._counter.encode(r.prompt) for r in reqs]
        start = time.perf_counter()
        try:
            ids, mask = self._batch(rows)
            sampling = {"do_sample": True, "temperature": temperature, "top_k": 0,
                        "top_p": 1.0} if temperature > 0 else {"do_sample": False}
            gen = self._tf.GenerationConfig(
                max_new_tokens=max(r.max_new_tokens for r in reqs), pad_token_id=self._pad_id,
                eos_token_id=self._eos_ids or None, stop_strings=list(stop) or None, **sampling)
            torch.manual_seed(seed)
            with torch.inference_mode():
                result = self._ensure_model().generate(
                    input_ids=ids, attention_mask=mask, generation_config=gen,
                    tokenizer=self._tok if stop else None)
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory, bad parameters
            # out of memory (a RuntimeError) may pass; bad parameters will not
            return [Response(error=f"{type(exc).__name__}: {exc}", input_tokens=len(r),
                             latency_s=time.perf_counter() - start,
                             retryable=isinstance(exc, RuntimeError)) for r in rows]
        latency = time.perf_counter() - start
        out = []
        for req, row, new in zip(reqs, rows, result[:, ids.shape[1]:].tolist(), strict=True):
            new = new[:req.max_new_tokens]
            # a row that ended early is padded while the others go on: cut at EOS or pad
            ends = [k for k, t in enumerate(new) if t in self._eos_ids or t == self._pad_id]
            new = new[:ends[0]] if ends else new
            text = self._tok.decode(new, skip_special_tokens=True)
            cuts = [text.find(s) for s in stop if s in text]
            out.append(Response(text=text[:min(cuts)] if cuts else text, input_tokens=len(row),
                                output_tokens=len(new), latency_s=latency))
        return out

    def loglikelihood(self, requests: Sequence[Request]) -> list[Response]:
        """log P(continuation | context) summed over the continuation's tokens, and whether
        greedy decoding would have produced it, over the token ids the Model split.

        The forward pass reads context + continuation without its last token (the last
        token is predicted, never a predictor), so requests that differ only in their last
        token share one row: a multiple-choice question's one-token answers cost one pass,
        as in lm-eval."""
        pairs = token_pairs(self.name, requests)
        rows: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, cont) in enumerate(pairs):
            rows.setdefault((*ctx, *cont[:-1]), []).append(i)
        out: list[Response | None] = [None] * len(requests)
        keys = list(rows)
        for start in range(0, len(keys), self.max_batch_size):
            chunk = keys[start:start + self.max_batch_size]
            for key, scored in zip(chunk, self._score_rows(
                    chunk, [[pairs[i][1] for i in rows[key]] for key in chunk]), strict=True):
                for i, resp in zip(rows[key], scored, strict=True):
                    out[i] = resp
        return [r if r is not None else Response(error="not run") for r in out]

    def _score_rows(self, rows: Sequence[tuple[int, ...]],
                    conts: Sequence[Sequence[list[int]]]) -> list[list[Response]]:
        """One forward pass over `rows`; per row, the responses of its continuations."""
        torch = self._torch
        start = time.perf_counter()
        keep = max(len(c) for cs in conts for c in cs)
        try:
            # Left padding, as in generation: every row ends at the last column, so only the
            # last `keep` positions' logits are computed (not width x vocab).
            ids, mask = self._batch([list(r) for r in rows])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self._ensure_model()(input_ids=ids, attention_mask=mask,
                                              position_ids=positions,
                                              logits_to_keep=keep).logits
                logprobs = torch.log_softmax(logits.float(), dim=-1)
        except (RuntimeError, ValueError) as exc:
            error = Response(error=f"{type(exc).__name__}: {exc}",
                             latency_s=time.perf_counter() - start,
                             retryable=isinstance(exc, RuntimeError))
            return [[error] * len(cs) for cs in conts]
        latency = time.perf_counter() - start
        out = []
        for i, (row, cs) in enumerate(zip(rows, conts, strict=True)):
            scored = []
            for cont in cs:
                # the last len(cont) columns predict the continuation's tokens
                preds = logprobs[i, keep - len(cont):]
                target = torch.tensor(cont, device=preds.device)
                scored.append(Response(
                    logprob=float(preds.gather(1, target[:, None]).sum()),
                    is_greedy=bool((preds.argmax(-1) == target).all()),
                    input_tokens=len(row) + 1, output_tokens=0, latency_s=latency))
            out.append(scored)
        return out

    def fingerprint(self) -> str:
        weights = self.folder / self.gguf_file if self.gguf_file else self.folder
        ident = json.dumps([weights_identity(weights), self._tf.__version__,
                            self._torch.__version__,
                            {k: v for k, v in sorted(self.options.items())
                             if k not in ("max_batch_size", "device_map")}], default=str)
        return "hf:" + hashlib.sha256(ident.encode()).hexdigest()[:16]

    def describe(self) -> Mapping[str, Any]:
        return {"backend": self.name, "model": self.model, "model_folder": self.folder.name,
                "model_name": model_name(self.folder, self.gguf_file),
                "gguf_file": self.gguf_file, "model_type": self._config.model_type,
                "context_window": self.context_window(),
                "engine_version": f"transformers {self._tf.__version__}, "
                                  f"torch {self._torch.__version__}",
                "options": self.options}
