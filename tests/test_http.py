"""What the HTTP backends share (evalkit/backends/http.py), without a server."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest
from servers import require

require("httpx", "'evalkit[http]'")

from evalkit.backends.counting import PromptCounter  # noqa: E402
from evalkit.backends.http import (  # noqa: E402
    ApiKey,
    HttpError,
    checked_options,
    parse_retry_after,
    retryable_status,
)
from evalkit.backends.tgi import parse_generated, parse_prefill, stream_event  # noqa: E402
from evalkit.model import MAX_SLEEP_S, RetryPolicy  # noqa: E402
from evalkit.types import EvalkitError, Unsupported  # noqa: E402


def test_backoff_is_full_jitter_within_a_capped_exponential() -> None:
    policy, rng = RetryPolicy(max_retries=4, backoff_s=0.5), random.Random(0)
    for attempt in range(8):
        draws = [policy.delay_s(attempt, rng) for _ in range(200)]
        ceiling = min(MAX_SLEEP_S, 0.5 * 2 ** attempt)
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling  # spread over the whole range, not a fixed step
    assert policy.delay_s(0, rng, retry_after_s=7.0) == 7.0
    assert policy.delay_s(0, rng, retry_after_s=3600.0) == MAX_SLEEP_S  # bounded
    assert policy.delay_s(0, rng, retry_after_s=-5.0) == 0.0


def test_retry_after_reads_seconds_and_dates() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after(" 1.5 ") == 1.5
    now = 1_800_000_000.0
    date = format_datetime(datetime.fromtimestamp(now + 20, tz=timezone.utc), usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(20.0)
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_which_statuses_are_retried() -> None:
    assert [s for s in (200, 400, 401, 404, 422, 424, 429, 500, 501, 502, 503, 504)
            if retryable_status(s)] == [429, 500, 502, 503, 504]


def test_options_are_checked_by_name_and_floats_take_ints() -> None:
    known = {"timeout_s": float, "concurrency": int, "base_url": str}
    assert checked_options("x", {"timeout_s": 30}, known) == {"timeout_s": 30.0}
    with pytest.raises(EvalkitError, match="unknown option 'timeout'"):
        checked_options("x", {"timeout": 30}, known)
    with pytest.raises(EvalkitError, match="'concurrency' must be positive"):
        checked_options("x", {"concurrency": 0}, known)


def test_the_api_key_is_read_at_request_time_and_redacted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EvalkitError, match="EVALKIT_TEST_NO_SUCH_KEY"):
        ApiKey("EVALKIT_TEST_NO_SUCH_KEY", "openai")
    monkeypatch.setenv("EVALKIT_TEST_KEY", "sk-first")
    key = ApiKey("EVALKIT_TEST_KEY", "openai")
    monkeypatch.setenv("EVALKIT_TEST_KEY", "sk-rotated")
    assert key.headers() == {"Authorization": "Bearer sk-rotated"}
    assert key.redact("upstream said: bad key sk-rotated") == "upstream said: bad key ***"
    assert "sk-" not in repr(vars(key))  # only the variable's name is kept


class _FakeServerTokenizer:
    """A server tokenizer that adds BOS (id 1) to everything and reads <bos> as id 1."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text: str) -> list[int]:
        self.calls += 1
        words = text.split()
        return [1] + [1 if w == "<bos>" else 10 + len(w) for w in words]


def test_server_counter_finds_the_bos_text_strips_it_and_caches() -> None:
    tokenize = _FakeServerTokenizer()
    counter = PromptCounter.from_server("fake", tokenize)
    assert counter.bos_text == "<bos>" and counter.adds_bos
    assert counter.server_text("<bos> hello world") == " hello world"
    assert counter.encode("<bos> hello world") == counter.encode("hello world") == [1, 15, 15]
    calls = tokenize.calls
    for _ in range(5):
        counter.encode("hello world")
    assert tokenize.calls == calls  # cached
    # a chat template is in charge of the BOS: no automatic one is counted
    assert counter.encode_templated("<bos> hi") == [1, 12]
    assert counter.encode_templated("hi") == [12]


def test_server_counter_without_bos() -> None:
    counter = PromptCounter.from_server("fake", lambda text: [10 + len(w) for w in text.split()])
    assert counter.bos_text is None and not counter.adds_bos
    assert counter.server_text("<s> x") == "<s> x"


def test_local_mistral_counter_reads_a_written_bos_once() -> None:
    require("mistral_common", "'evalkit[mistral]'")
    counter = PromptCounter.from_local("mistral-v1")
    assert counter.bos_text == "<s>"
    assert counter.server_text("<s>[INST] hi [/INST]") == "[INST] hi [/INST]"
    assert counter.encode("<s>[INST] hi [/INST]") == counter.encode("[INST] hi [/INST]")
    assert counter.encode("[INST] hi [/INST]")[0] == 1


def test_tgi_answers_and_stream_events() -> None:
    obj = {"generated_text": " 42.", "details": {"generated_tokens": 3, "prefill": []}}
    assert parse_generated(obj) == (" 42.", 3, None)
    assert parse_generated([obj]) == (" 42.", 3, None)  # SageMaker / compat route: a list
    prefill = {"generated_text": "", "details": {"prefill": [
        {"id": 1, "text": "<s>", "logprob": None}, {"id": 5, "text": "a", "logprob": -1.0},
        {"id": 6, "text": "b", "logprob": -0.5}]}}
    assert parse_prefill(prefill, 1) == (-0.5, 3)
    assert parse_prefill([prefill], 2) == (-1.5, 3)
    with pytest.raises(ValueError):
        parse_prefill(prefill, 3)  # would take the BOS, which has no logprob
    with pytest.raises(Unsupported):
        parse_prefill({"generated_text": "", "details": {"prefill": []}}, 1)
    assert stream_event('data:{"token": {"text": "a"}}') == {"token": {"text": "a"}}
    assert stream_event('data: {"token": {"text": "a"}}') == {"token": {"text": "a"}}
    assert stream_event(":keep-alive") is None and stream_event("") is None
    with pytest.raises(HttpError) as err:
        stream_event('data:{"error": "Model is overloaded", "error_type": "overloaded"}')
    assert err.value.retryable and "overloaded" in err.value.message
    with pytest.raises(HttpError) as err:
        stream_event('data:{"error": "CUDA OOM", "error_type": "generation"}')
    assert not err.value.retryable
