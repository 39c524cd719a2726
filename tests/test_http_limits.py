"""What the HTTP backends read and say, against a real local server that records what it
is asked and answers what a broken or hostile one sends (tests/floodserver.py): a
base_url's query goes with every request and its key nowhere; an answer is read no
further than its cap (a multiple of the token budget), and a record says when it was cut;
messages about unusable answers say what was wrong and show the body's start; a give-up
for want of time says why."""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import require

require("httpx", "'evalkit[http]'")

from floodserver import FloodServer  # noqa: E402

from evalkit.model import RetryableError, RetryPolicy, make_model, retry_call  # noqa: E402
from evalkit.runner.config import build_spec  # noqa: E402
from evalkit.runner.execute import run  # noqa: E402
from evalkit.types import EvalkitError, Request, Response  # noqa: E402

KEY_ENV = "EVALKIT_TEST_LIMITS_KEY"
KEY = "sk-limits-query-5e0c7a11"  # made up: the tests grep every output for it
QUERY_KEY = "qk-in-the-url-8d2f4b60"
MIB = 1024 * 1024
FLOOD_BYTES = 50 * MIB
# The caps of a request of 10 new tokens (evalkit/backends/http.py's docstring).
CAP_BYTES = 1 * MIB
CAP_CHARS = 1024
# What a server can write before the client's hang-up shows: the loopback's socket buffers.
SENT_BOUND = 16 * MIB


@pytest.fixture
def server() -> Iterator[FloodServer]:
    with FloodServer() as srv:
        yield srv


def _openai(srv: FloodServer, **options: Any) -> Any:
    """The openai backend inside a Model (which retries), counting locally."""
    return make_model("openai", "tiny", {"base_url": f"{srv.url}/v1", "tokenizer": "whitespace",
                                         "context_window": 4096, "backoff_s": 0.01,
                                         "max_retries": 2, **options}, use_cache=False)


def _tgi(srv: FloodServer, **options: Any) -> Any:
    return make_model("tgi", "tiny", {"base_url": srv.url, "tokenizer": "whitespace",
                                      "context_window": 4096, "backoff_s": 0.01,
                                      "max_retries": 2, **options}, use_cache=False)


def _req(max_new_tokens: int = 10) -> Request:
    return Request(sample_id="s", kind="generate", max_new_tokens=max_new_tokens,
                   prompt="Some filler. The pass key is 4242. What is the pass key?")


def _generate_measured(model: Any, req: Request) -> tuple[Response, int, float]:
    """(the answer, the peak of Python's memory while it was read, seconds)."""
    tracemalloc.start()
    start = time.monotonic()
    try:
        [resp] = model.generate([req])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return resp, peak, time.monotonic() - start


def _asked(srv: FloodServer, path: str) -> int:
    return sum(1 for _, p, _, _ in srv.requests if p == path)


# -- 1. a base_url with a query string ------------------------------------------------------

def test_a_base_url_query_goes_with_every_request_and_its_key_nowhere(
        server: FloodServer, tmp_path: Path) -> None:
    """Azure's api-version and a key given in the query reach the server on every request
    (tokenize, metadata, completions), on the right routes; a gateway error that echoes
    the request line (query and all) is masked in the retry notice; no file of the run
    folder or the response cache, and no line the command printed, holds the key."""
    server.script = [("echo",)]  # the first completion: a 500 that shows the request line
    query = [("api-version", "2024-06-01"), ("api_key", QUERY_KEY)]
    config = {"name": "query", "model": "tiny", "backend": "openai", "tasks": ["passkey"],
              "lengths": [200], "samples": 2,
              "backend_options": {"base_url": f"{server.url}/v1/?api-version=2024-06-01"
                                              f"&api_key={QUERY_KEY}",
                                  "api_key_env": KEY_ENV, "backoff_s": 0.05}}
    cfg = tmp_path / "query.yaml"
    cfg.write_text(json.dumps(config))
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-m", "evalkit.cli", "run", str(cfg), "--out",
                           str(out), "--no-progress"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300,
                          env={**os.environ, KEY_ENV: KEY, "EVALKIT_CACHE_DIR": str(cache)})
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    paths = {path for _, path, _, _ in server.requests}
    assert {"/v1/models", "/tokenize", "/v1/completions"} <= paths, paths
    assert not [p for p in paths if "?" in p or "api" in p or p.count("/v1") > 1], paths
    assert all(q == query for _, _, q, _ in server.requests), server.requests[:3]
    assert _asked(server, "/v1/completions") == 3  # two samples, one retried
    records = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["scores"]["accuracy"] for r in records] == [1.0, 1.0]
    # the echo showed in the retry notice, its key masked
    assert "upstream failed: POST /v1/completions?api-version=2024-06-01&api_key=***" \
        in proc.stderr, proc.stderr
    found = [f"{p}" for p in [*out.rglob("*"), *cache.rglob("*")] if p.is_file()
             and any(s in p.read_text(errors="replace") for s in (KEY, QUERY_KEY))]
    assert found == []
    assert QUERY_KEY not in proc.stdout + proc.stderr and KEY not in proc.stdout + proc.stderr
    assert "api-version=2024-06-01" in (out / "run.json").read_text()  # not a secret


# -- 2. answers past their cap ----------------------------------------------------------------

@pytest.mark.parametrize("backend", ["openai", "tgi"])
def test_a_50_mb_json_answer_to_10_tokens_is_read_no_further_than_its_cap(
        server: FloodServer, backend: str) -> None:
    """The read stops at 1 MiB (the server could write little more before it saw the
    hang-up: the socket buffers), Python's memory stays far below 50 MB, and the request
    fails once, not retried, saying why, with the body's start; the answer is marked cut."""
    server.script = [("flood_json", FLOOD_BYTES, backend == "tgi")]
    model = _openai(server) if backend == "openai" else _tgi(server)
    resp, peak, elapsed = _generate_measured(model, _req())
    assert resp.error is not None and resp.truncated and not resp.retryable and resp.text == ""
    assert "the server sent more than 1 MiB for a request of 10 new tokens: not read further " \
           "(it starts '{" in resp.error, resp.error
    assert server.floods()[0] < SENT_BOUND and server.flood_finished == [False]
    assert peak < SENT_BOUND, peak
    assert len(server.script) == 0 and elapsed < 10
    assert _asked(server, "/v1/completions" if backend == "openai" else "/generate") == 1


@pytest.mark.parametrize("backend", ["openai", "tgi"])
def test_an_answer_longer_than_max_new_tokens_allows_is_cut_and_marked(
        server: FloodServer, backend: str) -> None:
    """A JSON body that fits its cap, whose text is far longer than 10 tokens can be: the
    text is kept, cut to 1024 characters, and marked."""
    long_text = "b" * 200_000
    body = ({"choices": [{"index": 0, "text": long_text}]} if backend == "openai"
            else {"generated_text": long_text})
    server.script = [("json", 200, body), ("json", 200, body)]
    model = _openai(server) if backend == "openai" else _tgi(server)
    [cut] = model.generate([_req()])
    assert cut.error is None and cut.truncated and cut.text == "b" * CAP_CHARS
    [long_budget] = model.generate([_req(max_new_tokens=10_000)])  # 320,000 characters
    assert long_budget.error is None and not long_budget.truncated
    assert long_budget.text == long_text
    [normal] = model.generate([_req()])
    assert normal.text == " 4242." and not normal.truncated


def test_a_flooding_tgi_stream_is_cut_and_recorded_as_cut(server: FloodServer,
                                                           tmp_path: Path) -> None:
    """TGI's stream from a server that never stops sending tokens (50 MB of them), through
    a run: the read stops once the text passes its cap, the record keeps the text read
    (at most 1024 characters for passkey's 10 new tokens) and says it was cut; the other
    sample is untouched."""
    server.script = [("flood_stream", FLOOD_BYTES)]
    spec = build_spec({"model": "tiny", "backend": "tgi", "lengths": [200], "samples": 2,
                       "tasks": ["passkey"], "backend_options": {
                           "base_url": server.url, "tokenizer": "whitespace", "stream": True,
                           "concurrency": 1, "context_window": 4096}})
    tracemalloc.start()
    try:
        result = run(spec, out=tmp_path / "run", progress=False, log=lambda m: None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.summary.status == "complete"
    records = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text()
               .splitlines()]
    cut = [r for r in records if r["response"]["truncated"]]
    whole = [r for r in records if not r["response"]["truncated"]]
    assert len(cut) == len(whole) == 1
    text = cut[0]["response"]["text"]
    assert cut[0]["response"]["error"] is None and 0 < len(text) <= CAP_CHARS
    assert set(text) == {"a"}
    assert whole[0]["scores"]["accuracy"] == 1.0 and whole[0]["response"]["error"] is None
    assert server.floods()[0] < SENT_BOUND and server.flood_finished == [False]
    assert peak < SENT_BOUND, peak


def test_a_stream_line_that_never_ends_is_an_error_past_the_byte_cap(
        server: FloodServer) -> None:
    server.script = [("flood_line", FLOOD_BYTES)]
    resp, peak, _ = _generate_measured(_tgi(server, stream=True), _req())
    assert resp.error is not None and resp.truncated and not resp.retryable
    assert "the server sent more than 1 MiB for a request of 10 new tokens" in resp.error
    # the excerpt ends between words: a secret in it stays whole, for redaction
    assert resp.error.endswith("(it starts 'data:{\"token\": {\"id\": 7, \"text\": ...')")
    assert server.floods()[0] < SENT_BOUND and peak < SENT_BOUND


def test_counting_tokens_reads_no_further_than_its_cap(server: FloodServer) -> None:
    """The server's tokenize answer: the probe passes, then an answer of 50 MB to a short
    text ends the count with one line that says why."""
    model = make_model("openai", "tiny", {"base_url": f"{server.url}/v1",
                                          "backoff_s": 0.01}, use_cache=False)
    counter = model.tokenizer()  # the probe, answered
    server.scripts["/tokenize"] = [("flood_json", FLOOD_BYTES)]
    with pytest.raises(EvalkitError) as err:
        counter.encode("one two three")
    assert "counting tokens with /tokenize failed" in str(err.value)
    assert "the server sent more than 1 MiB for tokenizing a text of 13 characters" \
        in str(err.value)
    assert server.floods()[0] < SENT_BOUND


def test_a_50_mb_sagemaker_answer_is_read_no_further_than_its_cap(
        aws_test_credentials: None) -> None:
    require("boto3", "'evalkit[sagemaker]'")
    from botocore.response import StreamingBody
    from botocore.stub import ANY, Stubber

    model = make_model("sagemaker", "m", {"endpoint_name": "e", "region": "eu-west-1",
                                          "tokenizer": "whitespace", "max_retries": 2,
                                          "backoff_s": 0.01}, use_cache=False)
    flood = _Counted(b'[{"generated_text": "' + b"a" * FLOOD_BYTES + b'"}]')
    long = json.dumps([{"generated_text": "c" * 100_000}]).encode()
    with Stubber(model.backend.client) as stub:
        for body in (flood, _Counted(long)):
            stub.add_response("invoke_endpoint", {
                "Body": StreamingBody(body, len(body.getvalue())),
                "ContentType": "application/json"},
                {"EndpointName": "e", "ContentType": "application/json",
                 "Accept": "application/json", "Body": ANY})
        [too_large] = model.generate([_req()])
        [cut] = model.generate([_req()])
    assert too_large.error is not None and too_large.truncated and not too_large.retryable
    assert "more than 1 MiB for a request of 10 new tokens" in too_large.error
    assert flood.n_read <= CAP_BYTES + 1  # read no further
    assert cut.error is None and cut.truncated and cut.text == "c" * CAP_CHARS


class _Counted(io.BytesIO):
    """An answer body that counts the bytes read out of it."""

    n_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.n_read += len(data)
        return data


# -- 3. messages ------------------------------------------------------------------------------

def test_unusable_answers_say_what_was_wrong_and_show_the_body(
        server: FloodServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    html = b"<html><head><title>Sign in</title></head><body>Proxy login</body></html>"
    server.script = [("json", 200, {"id": "cmpl-9", "choices": []}),
                     ("raw", 200, "text/html", html),
                     ("raw", 502, "text/html", html),
                     ("raw", 200, "text/plain", f"bad key {KEY} given".encode()),
                     ("json", 200, {"choices": [{"index": 0}]})]
    model = _openai(server, api_key_env=KEY_ENV, max_retries=0)
    errors = [model.generate([_req()])[0].error for _ in range(5)]
    assert errors[0] == ("unexpected answer from /v1/completions: no choices "
                         "(body: '{\"id\": \"cmpl-9\", \"choices\": []}')")
    assert errors[1] == (f"{server.url}: the server answered 200 with a body that is not "
                         f"JSON (it starts {html.decode()!r})")
    assert errors[2] == f"{server.url}: HTTP 502 Bad Gateway: {html.decode()}"
    assert errors[3] == (f"{server.url}: the server answered 200 with a body that is not "
                         "JSON (it starts 'bad key *** given')")
    assert errors[4] == ("unexpected answer from /v1/completions: a choice without text "
                         "(body: '{\"choices\": [{\"index\": 0}]}')")
    # TGI: a body without generated_text, a non-JSON one
    server.script = [("json", 200, {"details": None}), ("raw", 200, "text/html", html)]
    tgi = _tgi(server, max_retries=0)
    errors = [tgi.generate([_req()])[0].error for _ in range(2)]
    assert errors[0] == ("unexpected answer from TGI: KeyError: 'generated_text' "
                         "(body: '{\"details\": null}')")
    assert errors[1] == (f"{server.url}: the server answered 200 with a body that is not "
                         f"JSON (it starts {html.decode()!r})")


def test_a_retry_after_past_the_time_limit_says_so_not_used_up(server: FloodServer) -> None:
    """A 429 asking to wait 30 s, with total_timeout_s 20: the request gives up at once
    (waiting would pass the limit), and its line says what happened."""
    server.script = [("json", 429, {"error": {"message": "slow down"}}, {"Retry-After": "30"})]
    start = time.monotonic()
    [resp] = _openai(server, total_timeout_s=20).generate([_req()])
    assert time.monotonic() - start < 5
    assert resp.error == (f"{server.url}: HTTP 429 Too Many Requests: slow down (gave up "
                          "after 1 attempt: the server asked to wait 30 s (Retry-After), past "
                          "total_timeout_s=20 s)")


def test_retry_call_says_why_it_stopped_before_the_time_limit() -> None:
    """The client's own calls (metadata, tokenize): the Retry-After, a backoff that would
    pass the limit, and a limit really used up, each said as it was, with the time taken."""
    policy = RetryPolicy(max_retries=4, backoff_s=0.5, total_timeout_s=20.0)
    notices: list[str] = []

    def failing(retry_after_s: float | None) -> Any:
        def call(time_left_s: float | None) -> Any:
            raise RetryableError("HTTP 429", retryable=True, retry_after_s=retry_after_s)
        return call

    with pytest.raises(RetryableError) as err:
        retry_call(failing(30.0), policy, what="GET /v1/models", notify=notices.append,
                   rng=random.Random(0), sleep=lambda s: None)
    # the seconds taken are the machine's (a loaded one takes longer): read as a number
    assert re.fullmatch(r"HTTP 429 \(gave up after 1 attempt in \d+\.\d s: the server asked "
                        r"to wait 30 s \(Retry-After\), past total_timeout_s=20 s\)",
                        err.value.message), err.value.message
    rng = random.Random(0)
    assert RetryPolicy(backoff_s=100.0).delay_s(0, random.Random(0)) > 20  # this seed's draw
    with pytest.raises(RetryableError) as err:
        retry_call(failing(None), RetryPolicy(backoff_s=100.0, total_timeout_s=20.0),
                   what="POST /tokenize", notify=notices.append, rng=rng, sleep=lambda s: None)
    assert re.match(r"HTTP 429 \(gave up after 1 attempt in \d+\.\d s: the wait before the "
                    r"next \(2", err.value.message), err.value.message
    assert err.value.message.endswith(" s) would pass total_timeout_s=20 s)")

    def slow(time_left_s: float | None) -> Any:
        time.sleep(0.06)
        raise RetryableError("too slow", retryable=True)

    with pytest.raises(RetryableError) as err:
        retry_call(slow, RetryPolicy(backoff_s=0.001, total_timeout_s=0.1), what="GET /info",
                   notify=notices.append, budget="the 0.1 s a metadata call gets")
    # two attempts of 0.06 s pass the 0.1 s (one, on a machine slow enough)
    found = re.fullmatch(r"too slow \(gave up after ([12]) attempts? in (\d+\.\d) s: the 0\.1 s "
                         r"a metadata call gets used up\)", err.value.message)
    assert found and float(found[2]) >= 0.1, err.value.message
    assert len(notices) == int(found[1]) - 1  # each retry announced
