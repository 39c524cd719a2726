"""The openai backend against llama-cpp-python's real server on the embedded tiny models,
directly and through a fault-injecting proxy (tests/faultproxy.py). Servers run on
127.0.0.1, on ports chosen at run time, started and stopped here."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servers import llama_server, require

require("httpx", "'evalkit[http]'")
require("llama_cpp.server.app", "'llama-cpp-python[server]==0.3.36'")

from faultproxy import FAULTS, FaultProxy  # noqa: E402

from evalkit.backends import make_backend  # noqa: E402
from evalkit.model import Model  # noqa: E402
from evalkit.model.files import resolve_gguf  # noqa: E402
from evalkit.results import store  # noqa: E402
from evalkit.runner.config import build_spec  # noqa: E402
from evalkit.runner.execute import run  # noqa: E402
from evalkit.types import EvalkitError, Request, Unsupported  # noqa: E402

pytestmark = pytest.mark.engine

KEY_ENV = "EVALKIT_TEST_OPENAI_KEY"
KEY = "sk-evalkit-test-7f3a9c1e5b"  # a made-up key: the tests grep the results for it
TEXTS = ["hello", "The pass key is 4242. Remember it.", " leading space", "line\nbreak\n\n",
         "<|im_start|>user\nhi<|im_end|>\n", "naïve café – 東京", ""]


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SmolLM2 behind an API key. logits_all stays off: its echoed logprobs are unusable
    (see test_smollm2_loglikelihood_is_refused) and off, prefill is several times faster."""
    os.environ[KEY_ENV] = KEY
    log = tmp_path_factory.mktemp("srv") / "smol.log"
    with llama_server(resolve_gguf("smollm2-135m"), log, n_ctx=8192, api_key=KEY,
                      logits_all=False) as url:
        yield url
    os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Gemma 3 270M (a BOS model) with --logits_all true; a small n_ctx, because the
    server turns all n_ctx x 262K logits into logprobs on every echo request."""
    log = tmp_path_factory.mktemp("srv") / "gemma.log"
    with llama_server(resolve_gguf("gemma3-270m"), log, n_ctx=512) as url:
        yield url


def _opts(url: str, **extra: Any) -> dict[str, Any]:
    return {"base_url": f"{url}/v1", "api_key_env": KEY_ENV, **extra}


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]


def _spec(model: str, options: dict[str, Any], lengths: list[str], samples: int,
          tasks: list[Any] | None = None) -> Any:
    return build_spec({"model": model, "backend": "openai", "backend_options": options,
                       "lengths": lengths, "samples": samples, "tasks": tasks or ["passkey"]})


def test_server_counts_equal_the_in_process_tokenizer(smol: str, gemma: str) -> None:
    for model, opts in (("smollm2-135m", _opts(smol)), ("gemma3-270m", {"base_url": gemma})):
        local = make_backend("llamacpp", model, {}).tokenizer()
        remote = make_backend("openai", model, opts).tokenizer()
        for text in TEXTS + ["<bos>hello"]:
            assert remote.encode(text) == local.encode(text), (model, text)
    gemma_counter = make_backend("openai", "gemma3-270m", {"base_url": gemma}).tokenizer()
    assert getattr(gemma_counter, "bos_text", None) == "<bos>"  # found by asking the server


def test_prompt_with_written_bos_reaches_the_server_with_one_bos(gemma: str) -> None:
    """llama.cpp's server adds a BOS to every prompt, also to one starting with <bos>:
    the backend sends that prompt without it, and counts it the same way."""
    backend = make_backend("openai", "gemma3-270m", {"base_url": gemma})
    counter = backend.tokenizer()
    prompts = ["The capital of France is", "<bos>The capital of France is"]
    answers = backend.generate([Request(sample_id=str(i), kind="generate", prompt=p,
                                        max_new_tokens=3) for i, p in enumerate(prompts)])
    assert [a.error for a in answers] == [None, None]
    assert [a.input_tokens for a in answers] == [len(counter.encode(p)) for p in prompts] == [6, 6]
    assert answers[0].text == answers[1].text


def test_passkey_run_at_1k_with_the_key_from_the_environment(smol: str, tmp_path: Path) -> None:
    spec = _spec("smollm2-135m", _opts(smol, concurrency=3), ["1k"], samples=3)
    out = tmp_path / "pk"
    result = run(spec, out=out, progress=False, log=lambda m: None)
    assert result.summary.status == "complete" and result.summary.n_done == 3
    recs = _records(out)
    for r in recs:
        assert r["response"]["error"] is None
        assert r["sample"]["input_tokens"] == r["sample"]["target_tokens"] == 1024
        assert r["response"]["input_tokens"] == 1024  # the server's usage: counts agree
    assert sum(r["scores"]["accuracy"] for r in recs) >= 2  # SmolLM2 reads keys back at 1K
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["backend"]["backend"] == "openai"
    assert run_json["backend"]["options"]["api_key_env"] == KEY_ENV
    for name in ("run.json", "samples.jsonl", "summary.json"):
        assert KEY not in (out / name).read_text(), name


def test_a_wrong_key_fails_at_once_and_is_not_echoed(smol: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALKIT_TEST_WRONG_KEY", "sk-wrong-0000")
    backend = make_backend("openai", "smollm2-135m", {
        "base_url": smol, "api_key_env": "EVALKIT_TEST_WRONG_KEY", "tokenizer": "whitespace"})
    start = time.monotonic()
    [resp] = backend.generate([Request(sample_id="x", kind="generate", prompt="Hi",
                                       max_new_tokens=2)])
    assert resp.error is not None and "HTTP 401" in resp.error
    assert "sk-wrong-0000" not in resp.error
    assert time.monotonic() - start < 5  # 401 is not retried
    with pytest.raises(EvalkitError, match="refused the request .*HTTP 401.*api_key_env"):
        make_backend("openai", "smollm2-135m", {
            "base_url": smol, "api_key_env": "EVALKIT_TEST_WRONG_KEY"}).tokenizer()
    with pytest.raises(EvalkitError, match="EVALKIT_TEST_UNSET_KEY"):
        make_backend("openai", "smollm2-135m", {"base_url": smol,
                                                "api_key_env": "EVALKIT_TEST_UNSET_KEY"})


def _reference(model: str, cases: list[tuple[str, str]]) -> list[tuple[float, bool, float]]:
    """(log P(continuation | context), greedy, the smallest margin between a continuation
    token and the best other token) per case, in process (llama.cpp, logits_all)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(resolve_gguf(model)), logits_all=True, n_ctx=512,
                          verbose=False)
    out = []
    for context, continuation in cases:
        ctx = llm.tokenize(context.encode(), add_bos=True, special=True)
        full = llm.tokenize((context + continuation).encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(full)
        scores = np.asarray(llm.scores[:len(full)], dtype=np.float64)
        logz = np.log(np.exp(scores - scores.max(1, keepdims=True)).sum(1)) + scores.max(1)
        positions = range(len(ctx), len(full))
        margins = [scores[j - 1, full[j]] - np.delete(scores[j - 1], full[j]).max()
                   for j in positions]
        out.append((float(sum(scores[j - 1, full[j]] - logz[j - 1] for j in positions)),
                    bool(min(margins) > 0), float(min(abs(m) for m in margins))))
    return out


def test_loglikelihood_through_echo_matches_the_in_process_reference(gemma: str) -> None:
    backend = Model(make_backend("openai", "gemma3-270m", {"base_url": gemma}))
    cases = [("The capital of France is", " Paris"), ("The capital of France is", " banana"),
             ("One, two, three,", " four, five")]
    answers = backend.loglikelihood([
        Request(sample_id=str(i), kind="loglikelihood", prompt=c, max_new_tokens=0,
                continuation=x) for i, (c, x) in enumerate(cases)])
    for case, ans, (ref, greedy, margin) in zip(cases, answers, _reference("gemma3-270m", cases),
                                                strict=True):
        assert ans.error is None and ans.logprob is not None
        # The server reuses the prompt prefix it has cached and evaluates only the rest, and
        # llama.cpp's quantized kernels round differently by batch split: a few hundredths
        # of a nat. A misplaced continuation is off by nats.
        assert ans.logprob == pytest.approx(ref, abs=0.15), case
        if margin > 0.2:
            assert ans.is_greedy is greedy, case
    assert answers[0].logprob is not None and answers[1].logprob is not None
    assert answers[0].logprob > answers[1].logprob + 5  # Paris over banana


def test_smollm2_loglikelihood_is_refused(smol: str, gemma: str, tmp_path: Path) -> None:
    """Without --logits_all the server refuses logprobs: Unsupported names the flag. And
    llama-cpp-python 0.3.36 pairs each echoed token with the logits after it when the
    prompt starts with no BOS (SmolLM2 has none): refused rather than scored wrong."""
    req = Request(sample_id="x", kind="loglikelihood", prompt="The capital of France is",
                  max_new_tokens=0, continuation=" Paris")
    with pytest.raises(Unsupported, match="--logits_all"):
        Model(make_backend("openai", "smollm2-135m", _opts(smol))).loglikelihood([req])
    log = tmp_path / "smol-logits.log"
    with llama_server(resolve_gguf("smollm2-135m"), log, n_ctx=512) as url:
        with pytest.raises(Unsupported, match="misaligns"):
            Model(make_backend("openai", "smollm2-135m", {"base_url": url})).loglikelihood(
                [req])
    chat = Model(make_backend("openai", "gemma3-270m", {
        "base_url": gemma, "endpoint": "chat", "chat_template": "mistral-instruct"}))
    with pytest.raises(Unsupported, match="cannot score loglikelihood.*endpoint completions"):
        chat.loglikelihood([req])


def test_chat_endpoint_counts_with_the_models_template(smol: str, tmp_path: Path) -> None:
    template = tmp_path / "smollm2.jinja"
    template.write_text(make_backend("llamacpp", "smollm2-135m", {}).chat_template() or "")
    spec = _spec("smollm2-135m", _opts(smol, endpoint="chat", chat_template=str(template),
                                       concurrency=2), ["512"], samples=2)
    out = tmp_path / "chat"
    result = run(spec, out=out, progress=False, log=lambda m: None)
    assert result.summary.status == "complete"
    for r in _records(out):
        assert r["sample"]["input_tokens"] == 512
        # the server rendered the template itself and counted the same tokens
        assert r["response"]["input_tokens"] == 512
        assert r["response"]["text"].strip()


def _faulty_spec(port: int, samples: int, **extra: Any) -> Any:
    # Whitespace counts (no tokenize traffic) and a given window: every request is a
    # generation, so that the faults land on those.
    options = _opts(f"http://127.0.0.1:{port}", tokenizer="whitespace", context_window=8192,
                    concurrency=2, backoff_s=0.05, **extra)
    return _spec("smollm2-135m", options, ["256"], samples=samples)


def test_run_through_a_faulty_proxy_scores_every_sample_once(smol: str, tmp_path: Path) -> None:
    """30% of requests (seeded) get a 500, a dropped connection or a stall past the
    timeout: retries absorb them all, and every sample is recorded once, scored."""
    # The timeout leaves room for queueing on a busy 2-core machine: a request that times
    # out although the server was only slow still runs there, and slows the next ones.
    proxy = FaultProxy(int(smol.rsplit(":", 1)[1]), fault_rate=0.3, seed=4, stall_s=16.0)
    port = proxy.start()
    try:
        out = tmp_path / "faulty"
        result = run(_faulty_spec(port, 6, timeout_s=15.0, max_retries=6), out=out,
                     progress=False, log=lambda m: None)
    finally:
        proxy.close()
    recs = _records(out)
    ids = [r["sample"]["id"] for r in recs]
    assert len(ids) == len(set(ids)) == 6 and result.summary.status == "complete"
    assert all(r["response"]["error"] is None and "accuracy" in r["scores"] for r in recs)
    assert all(proxy.outcomes[f] >= 1 for f in FAULTS), proxy.outcomes
    assert proxy.outcomes["pass"] >= 6  # one good answer per sample, at least


def test_counting_through_a_faulty_proxy_gives_the_direct_counts(smol: str) -> None:
    proxy = FaultProxy(int(smol.rsplit(":", 1)[1]), fault_rate=0.3, seed=4, stall_s=5.0)
    port = proxy.start()
    try:
        faulty = make_backend("openai", "smollm2-135m", _opts(
            f"http://127.0.0.1:{port}", timeout_s=3.0, max_retries=6, backoff_s=0.05))
        counts = [len(faulty.tokenizer().encode(t)) for t in TEXTS]
    finally:
        proxy.close()
    direct = make_backend("openai", "smollm2-135m", _opts(smol)).tokenizer()
    assert counts == [len(direct.encode(t)) for t in TEXTS]
    assert sum(proxy.outcomes[f] for f in FAULTS) >= 3


def test_server_down_ends_each_sample_with_an_error_and_keeps_the_done_ones(
        smol: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run partially (the server goes away after the first batch is recorded), then run
    again with nothing listening: bounded time, one clear error per sample, and the
    records done before stay."""
    proxy = FaultProxy(int(smol.rsplit(":", 1)[1]), fault_rate=0.0)
    port = proxy.start()
    spec = _faulty_spec(port, 8, timeout_s=30.0, max_retries=2)
    append = store.append_records

    def append_then_stop(run_dir: Path, records: Any) -> None:
        append(run_dir, records)
        proxy.stop()  # nothing listens on the port from here on

    monkeypatch.setattr(store, "append_records", append_then_stop)
    out = tmp_path / "down"
    try:
        start = time.monotonic()
        first = run(spec, out=out, progress=False, log=lambda m: None)
        first_s = time.monotonic() - start
        monkeypatch.setattr(store, "append_records", append)
        start = time.monotonic()
        again = run(spec, out=out, progress=False, log=lambda m: None)
        again_s = time.monotonic() - start
    finally:
        proxy.close()
    assert first.summary.n_done == 2 and first.summary.status == "partial"
    assert first_s < 60 and again_s < 60, (first_s, again_s)
    recs = _records(out)
    done = [r for r in recs if r["response"]["error"] is None]
    failed = [r for r in recs if r["response"]["error"] is not None]
    assert len(done) == 2 and len(failed) == 12  # 6 samples failed in each of the 2 runs
    assert {r["sample"]["id"] for r in done}.isdisjoint({r["sample"]["id"] for r in failed})
    for r in failed:
        assert "connection failed" in r["response"]["error"]
        assert "gave up after 3 attempts" in r["response"]["error"]
    assert again.resumed_from == 2 and again.summary.n_done == 2
    assert again.summary.n_errors == 6 and again.summary.status == "partial"  # latest per id
