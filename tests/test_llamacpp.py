"""The llamacpp backend against the real engine on the embedded tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import reference_data
from servers import require

from evalkit.backends import make_backend
from evalkit.runner.config import build_spec
from evalkit.runner.execute import plan_samples, resolve_template, run
from evalkit.types import EvalkitError, Request

pytestmark = pytest.mark.engine
require("llama_cpp", "'evalkit[llamacpp]'")


@pytest.fixture(scope="module")
def gemma():
    return make_backend("llamacpp", "gemma3-270m", {})


@pytest.fixture(scope="module")
def smollm2():
    return make_backend("llamacpp", "smollm2-135m", {})


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evalkit.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_gemma_facts(gemma) -> None:
    assert gemma.context_window() == 32768
    ids = gemma.tokenizer().encode("hello")
    assert ids[0] == 2 and ids.count(2) == 1  # <bos> once
    assert gemma.tokenizer().encode("<bos>hello") == ids  # written BOS is not doubled


def test_passkey_run_lengths_within_one_percent_and_answers(tmp_path: Path) -> None:
    """`evalkit run --task passkey --lengths ... --samples N --out DIR` on Gemma 3 270M:
    every record within 1% of its target; the model reads short keys back."""
    out = tmp_path / "pk"
    res = _cli("run", "--task", "passkey", "--lengths", "1k,4k", "--samples", "2",
               "--out", str(out), "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 4
    for r in recs:
        s = r["sample"]
        assert abs(s["input_tokens"] - s["target_tokens"]) <= 0.01 * s["target_tokens"]
        assert r["response"]["input_tokens"] == s["input_tokens"]  # what the engine read
        assert r["response"]["error"] is None and r["response"]["latency_s"] > 0
    assert sum(r["scores"]["accuracy"] for r in recs) >= 3  # measured: right at 1K-9K
    assert "passkey" in res.stdout and "4k" in res.stdout


def test_long_targets_fit_with_gemmas_tokenizer(gemma) -> None:
    spec = build_spec({"model": "gemma3-270m", "samples": 2, "lengths": ["16k", "31k"],
                       "tasks": ["passkey"]})
    for s in plan_samples(spec, gemma, gemma.tokenizer()):
        assert abs(s.input_tokens - s.target_tokens) <= 0.01 * s.target_tokens


def test_length_over_the_window_is_refused_before_running(tmp_path: Path) -> None:
    res = _cli("run", "--task", "passkey", "--lengths", "32k", "--out", str(tmp_path / "x"),
               cwd=tmp_path)
    assert res.returncode == 2
    assert "over the context window of gemma3-270m (32768 tokens)" in res.stderr
    assert not (tmp_path / "x").exists()


def test_smollm2_chat_template_has_one_bos_and_runs(smollm2, tmp_path: Path) -> None:
    spec = build_spec({"model": "smollm2-135m", "samples": 2, "lengths": ["1k"],
                       "tasks": ["lines", "longqa"]})
    template = resolve_template(spec.tasks[0], smollm2)
    assert template.name == "chat"
    rendered = template.render("What is 2+2?")
    assert "<|im_start|>user" in rendered and rendered.endswith("<|im_start|>assistant\n")
    result = run(spec, out=tmp_path / "s", progress=False, log=lambda m: None)
    assert result.summary.status == "complete" and result.summary.n_done == 4
    assert {r.task for r in result.summary.rows} == {"lines", "longqa"}


def test_generate_reports_token_counts(smollm2) -> None:
    [resp] = smollm2.generate([Request(sample_id="x", kind="generate",
                                       prompt="The capital of France is", max_new_tokens=5)])
    assert resp.error is None and resp.output_tokens and resp.output_tokens <= 5
    assert resp.input_tokens == len(smollm2.tokenizer().encode("The capital of France is"))


def test_unknown_backend_option_is_named() -> None:
    with pytest.raises(EvalkitError, match="unknown option 'n_thread'"):
        make_backend("llamacpp", "smollm2-135m", {"n_thread": 2})


def test_longeval_published_rows_import_and_run(tmp_path: Path) -> None:
    lines = reference_data("longeval", "lines_200_first3.jsonl")
    topics = reference_data("longeval", "topics_5_first3.jsonl")
    out = tmp_path / "le"
    res = _cli("run", "--cases", str(lines), "--cases", str(topics), "--model", "smollm2-135m",
               "--out", str(out), "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted({r["sample"]["task"] for r in recs}) == ["lines", "topics"]
    assert len(recs) == 6
    assert "200 lines" in res.stdout and "5 topics" in res.stdout
    dry = _cli("run", "--cases", str(lines), "--cases", str(topics), "--model", "smollm2-135m",
               "--tokenizer", "mistral-v1", "--template", "mistrallite", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "mistral-v1" in dry.stdout and "200 lines" in dry.stdout


def test_rope_base_and_chat_template_options_reach_the_engine(gemma, tmp_path: Path) -> None:
    """The serving knobs a regression comes from: RoPE's frequency base (what MistralLite
    changed) and a replaced chat template. Both change the answers, so the base changes the
    fingerprint (the response cache must not answer for the model with its own base)."""
    tpl = tmp_path / "cut.jinja"
    tpl.write_text("{{ messages[0]['content'][:10] }}")
    be = make_backend("llamacpp", "gemma3-270m", {"rope_freq_base": 10000,
                                                  "chat_template": str(tpl)})
    assert be.chat_template() == tpl.read_text()
    assert be.fingerprint() != gemma.fingerprint()
    assert make_backend("llamacpp", "gemma3-270m", {}).fingerprint() == gemma.fingerprint()
    llm = be._ensure_context(64)
    assert llm.context_params.rope_freq_base == 10000.0
    assert gemma._ensure_context(64).context_params.rope_freq_base == 0.0  # the GGUF's own
    with pytest.raises(EvalkitError, match="fixed template"):
        make_backend("llamacpp", "gemma3-270m", {"chat_template": "raw"})
