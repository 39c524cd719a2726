"""The tgi backend against an in-test server that speaks TGI 1.1's documented API
(tests/faketgi.py): generate, streaming, /info, tokenize, errors, retries, concurrency."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import require

require("httpx", "'evalkit[http]'")

from faketgi import FakeTgi, word_logprob  # noqa: E402

from evalkit.backends import make_backend  # noqa: E402
from evalkit.model import make_model  # noqa: E402
from evalkit.runner.config import build_spec  # noqa: E402
from evalkit.runner.execute import run  # noqa: E402
from evalkit.types import EvalkitError, Request, Response, Unsupported  # noqa: E402

PROMPT = "Some filler text. The pass key is 4242. Remember it. What is the pass key?"


@pytest.fixture
def tgi() -> Iterator[FakeTgi]:
    with FakeTgi() as server:
        yield server


def _backend(server: FakeTgi, **options: Any) -> Any:
    """The tgi backend as runs use it: inside a Model, which retries (no response cache)."""
    return make_model("tgi", "fake", {"base_url": server.url, "tokenizer": "whitespace",
                                      "backoff_s": 0.01, **options}, use_cache=False)


def _req(prompt: str = PROMPT, **kw: Any) -> Request:
    return Request(sample_id=kw.pop("sample_id", "s"), kind="generate", prompt=prompt,
                   max_new_tokens=kw.pop("max_new_tokens", 10), **kw)


def _generate(backend: Any, *reqs: Request) -> list[Response]:
    return list(backend.generate(list(reqs) or [_req()]))


def test_generate_sends_tgis_payload_and_reads_its_answer(tgi: FakeTgi) -> None:
    backend = _backend(tgi)
    [greedy] = _generate(backend)
    [sampled] = _generate(backend, _req(temperature=0.7, seed=3, stop=("\n",)))
    bodies = [body for path, body in tgi.requests if path == "/generate"]
    assert bodies[0] == {"inputs": PROMPT, "parameters": {
        "max_new_tokens": 10, "details": True, "decoder_input_details": False,
        "do_sample": False}}  # TGI refuses temperature 0: greedy is do_sample false
    assert bodies[1]["parameters"] == {
        "max_new_tokens": 10, "details": True, "decoder_input_details": False,
        "do_sample": True, "temperature": 0.7, "seed": 3, "stop": ["\n"]}
    for resp in (greedy, sampled):
        assert resp.error is None and resp.text == " 4242."
        assert resp.output_tokens == 2  # " 4242." and </s>, from details.generated_tokens
        assert resp.input_tokens == len(PROMPT.split()) + 1  # counted: TGI 1.1 reports none


def test_info_gives_the_window_and_the_description(tgi: FakeTgi) -> None:
    backend = _backend(tgi)
    assert backend.context_window() == 2048
    described = backend.describe()
    assert described["max_input_length"] == 1024 and described["tgi_version"] == "1.1.0"
    assert _backend(tgi, context_window=4096).context_window() == 4096


@pytest.mark.parametrize("stream", [False, True])
def test_a_passkey_run_through_the_runner(tgi: FakeTgi, tmp_path: Path, stream: bool) -> None:
    spec = build_spec({"model": "fake", "backend": "tgi", "lengths": [300], "samples": 5,
                       "tasks": ["passkey"], "backend_options": {
                           "base_url": tgi.url, "tokenizer": "whitespace", "stream": stream,
                           "concurrency": 2}})
    result = run(spec, out=tmp_path / "run", progress=False, log=lambda m: None)
    assert result.summary.status == "complete" and result.summary.n_done == 5
    recs = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert all(r["scores"]["accuracy"] == 1.0 for r in recs)
    path = "/generate_stream" if stream else "/generate"
    assert sum(1 for p, _ in tgi.requests if p == path) == 5


@pytest.mark.parametrize("final_text", [True, False])
def test_streaming_assembles_the_token_events(final_text: bool) -> None:
    with FakeTgi(final_text=final_text) as server:
        [resp] = _generate(_backend(server, stream=True))
    assert resp.error is None and resp.text == " 4242."  # the special </s> is left out
    assert resp.output_tokens == 2


def test_validation_and_generation_errors_are_not_retried(tgi: FakeTgi) -> None:
    backend = _backend(tgi)
    [too_long] = _generate(backend, _req(" word" * 1100))
    assert too_long.error is not None and "HTTP 422" in too_long.error
    assert "must have less than 1024 tokens" in too_long.error and "(validation)" in too_long.error
    tgi.script.append((424, "generation", {}))
    [failed] = _generate(backend)
    assert failed.error is not None and "HTTP 424" in failed.error
    assert sum(1 for p, _ in tgi.requests if p == "/generate") == 2  # one try each


def test_overload_is_retried_after_retry_after(tgi: FakeTgi) -> None:
    tgi.script += [(429, "overloaded", {"Retry-After": "1"}), (503, "unhealthy", {})]
    start = time.monotonic()
    [resp] = _generate(_backend(tgi))
    assert resp.error is None and resp.text == " 4242."
    assert time.monotonic() - start >= 0.9  # Retry-After: 1 was honoured
    assert sum(1 for p, _ in tgi.requests if p == "/generate") == 3


def test_retries_are_bounded_and_the_error_names_the_status(tgi: FakeTgi) -> None:
    tgi.script += [(503, "unhealthy", {})] * 5
    [resp] = _generate(_backend(tgi, max_retries=2))
    assert resp.error is not None
    assert "HTTP 503" in resp.error and "gave up after 3 attempts" in resp.error
    assert sum(1 for p, _ in tgi.requests if p == "/generate") == 3


def test_a_stalled_request_times_out_and_is_retried(tgi: FakeTgi) -> None:
    tgi.script.append("stall")  # 2 s without a byte
    start = time.monotonic()
    [resp] = _generate(_backend(tgi, timeout_s=0.5))
    assert resp.error is None and resp.text == " 4242."
    assert time.monotonic() - start < 2.0


def test_stream_errors_and_cut_streams(tgi: FakeTgi) -> None:
    backend = _backend(tgi, stream=True)
    tgi.script += [("stream_error", "overloaded"), "stream_cut"]
    [recovered] = _generate(backend)
    assert recovered.error is None and recovered.text == " 4242."
    tgi.script.append(("stream_error", "generation"))
    [failed] = _generate(backend)
    assert failed.error is not None and "stream error (generation)" in failed.error
    assert sum(1 for p, _ in tgi.requests if p == "/generate_stream") == 4


def test_concurrency_is_bounded_and_used() -> None:
    with FakeTgi(delay_s=0.3) as server:
        backend = _backend(server, concurrency=3)
        assert backend.max_batch_size == 3
        start = time.monotonic()
        answers = _generate(backend, *[_req(sample_id=str(i)) for i in range(7)])
        elapsed = time.monotonic() - start
    assert all(a.error is None for a in answers)
    assert server.max_inflight == 3
    assert 0.85 <= elapsed < 2.0  # three waves of 0.3 s, not seven


def test_counting_through_tokenize_and_the_bos_written_by_a_template() -> None:
    with FakeTgi() as old:
        with pytest.raises(EvalkitError, match="tokenizer"):
            make_backend("tgi", "fake", {"base_url": old.url}).tokenizer()
    with FakeTgi(tokenize=True) as server:
        backend = make_backend("tgi", "fake", {"base_url": server.url})
        counter = backend.tokenizer()
        assert counter.encode("<s>[INST] hi [/INST]") == counter.encode("[INST] hi [/INST]")
        assert len(counter.encode("[INST] hi [/INST]")) == 4
        assert backend.special_tokens()["bos_token"] == "<s>"
        [resp] = _generate(backend, _req("<s>[INST] hi [/INST]"))
        sent = [body["inputs"] for path, body in server.requests if path == "/generate"]
    assert resp.error is None and sent == ["[INST] hi [/INST]"]  # TGI adds the BOS itself


def test_loglikelihood_from_decoder_input_details(tgi: FakeTgi) -> None:
    backend = _backend(tgi)
    [ans] = backend.loglikelihood([Request(sample_id="x", kind="loglikelihood",
                                           prompt="The capital of France is",
                                           max_new_tokens=0, continuation=" Paris, really")])
    assert ans.error is None
    assert ans.logprob == pytest.approx(word_logprob("Paris,") + word_logprob("really"))
    params = [b for p, b in tgi.requests if p == "/generate"][0]["parameters"]
    assert params["decoder_input_details"] is True and params["max_new_tokens"] == 1
    with FakeTgi(prefill=False) as ignoring:
        with pytest.raises(Unsupported, match="decoder_input_details"):
            _backend(ignoring).loglikelihood([Request(
                sample_id="x", kind="loglikelihood", prompt="a", max_new_tokens=0,
                continuation=" b")])


def test_the_api_key_is_sent_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALKIT_TEST_TGI_KEY", "tgi-secret-123")
    with FakeTgi(api_key="tgi-secret-123") as server:
        [ok] = _generate(_backend(server, api_key_env="EVALKIT_TEST_TGI_KEY"))
        assert ok.error is None
        server.api_key = "another-key"  # the gateway now rejects ours and echoes it
        backend = _backend(server, api_key_env="EVALKIT_TEST_TGI_KEY")
        [denied] = _generate(backend)
    assert denied.error is not None and "HTTP 401" in denied.error
    assert "tgi-secret-123" not in denied.error and "***" in denied.error
    assert "tgi-secret-123" not in json.dumps(backend.describe())
