"""convert-gguf: a GGUF file -> a plain Hugging Face folder, on SmolLM2 (real engine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from servers import require

from evalkit.backends import make_backend
from evalkit.model import Model
from evalkit.types import Request

pytestmark = pytest.mark.engine
require("transformers", "'evalkit[hf]'")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evalkit.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("convert")
    res = _cli("convert-gguf", "smollm2-135m", "smol-hf", cwd=cwd)
    assert res.returncode == 0, res.stderr
    folder = cwd / "smol-hf"
    assert res.stdout.strip().splitlines()[-1] == "smol-hf"
    return folder


def test_folder_is_plain_hf_and_loads(converted: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    assert (converted / "model.safetensors").is_file()
    assert not list(converted.parent.glob(".smol-hf.*"))  # no temporary folder left
    model = AutoModelForCausalLM.from_pretrained(str(converted), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(converted), local_files_only=True)
    assert model.dtype == torch.float32 and tok.chat_template
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_folder_answers_as_the_gguf_does(converted: Path) -> None:
    """Same weights, same tokenizer: the folder and the GGUF give the same ids and scores."""
    folder = make_backend("hf", str(converted), {})
    gguf = make_backend("hf", "smollm2-135m", {})
    prompt = "<|im_start|>user\nName the capital of France.<|im_end|>\n<|im_start|>assistant\n"
    assert folder.tokenizer().encode(prompt) == gguf.tokenizer().encode(prompt)
    assert folder.chat_template() == gguf.chat_template()
    req = Request(sample_id="p", kind="loglikelihood", prompt=prompt, max_new_tokens=0,
                  continuation="The capital of France is Paris.")
    [a], [b] = Model(folder).loglikelihood([req]), Model(gguf).loglikelihood([req])
    assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    res = _cli("convert-gguf", str(tmp_path / "missing.gguf"), "out", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert "model file not found" in res.stderr and not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    res = _cli("convert-gguf", "smollm2-135m", "full", cwd=tmp_path)
    assert res.returncode == 2 and "already exists and is not empty" in res.stderr
