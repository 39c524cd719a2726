"""evalkit.model: the one retry policy, the response cache, batching, continuation tokens
(lm-eval's split), capabilities, and the loglikelihood path through runner, records and
summary. Offline; the engine tests compare llama.cpp's loglikelihood with transformers'."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import random
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from servers import require

from evalkit.backends.scripted import ScriptedBackend
from evalkit.model import (
    MAX_SLEEP_S,
    TRIP_AFTER,
    Model,
    ResponseCache,
    RetryPolicy,
    make_model,
    split_continuation,
)
from evalkit.prompts.counters import WhitespaceCounter
from evalkit.results import store
from evalkit.runner.config import Overrides, build_spec
from evalkit.runner.execute import run
from evalkit.types import (
    Capabilities,
    EvalkitError,
    Interrupted,
    Request,
    Response,
    TokenCounter,
    Unsupported,
)

# -- a backend that answers from a script -------------------------------------------------

class ScriptBackend:
    """Answers each request with the next scripted outcome for its sample id (then "ok"):
    "ok", ("fail", retryable, retry_after_s), or ("slow", seconds) then ok. Records every
    batch it was sent, and the time_left_s each request carried."""

    name = "script"

    def __init__(self, script: Mapping[str, list[Any]] | None = None, *, remote: bool = False,
                 max_batch_size: int = 4) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.remote = remote
        self.max_batch_size = max_batch_size
        self.batches: list[list[str]] = []
        self.time_left: list[float | None] = []

    def capabilities(self) -> Capabilities:
        return Capabilities(generate=True, loglikelihood=True, chat=False, remote=self.remote)

    def tokenizer(self) -> TokenCounter:
        return WhitespaceCounter()

    def context_window(self) -> int | None:
        return None

    def chat_template(self) -> str | None:
        return None

    def special_tokens(self) -> Mapping[str, str]:
        return {}

    def _one(self, req: Request) -> Response:
        self.time_left.append(req.time_left_s)
        steps = self.script.get(req.sample_id) or ["ok"]
        step = steps.pop(0)
        if step == "ok":
            return Response(text=f"answer to {req.sample_id}", latency_s=0.01)
        if step[0] == "slow":
            time.sleep(step[1])
            return Response(error="too slow", retryable=True)
        _, retryable, after = step
        return Response(error=f"failed {req.sample_id}", retryable=retryable,
                        retry_after_s=after)

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        self.batches.append([r.sample_id for r in requests])
        return [self._one(r) for r in requests]

    def loglikelihood(self, requests: Sequence[Request]) -> list[Response]:
        self.batches.append([r.sample_id for r in requests])
        return [Response(logprob=-float(len(r.continuation_tokens or ())), is_greedy=True)
                for r in requests]

    def fingerprint(self) -> str:
        return "script:1"

    def describe(self) -> Mapping[str, Any]:
        return {"backend": self.name}


def _reqs(*ids: str) -> list[Request]:
    return [Request(sample_id=i, kind="generate", prompt=f"prompt {i}", max_new_tokens=4)
            for i in ids]


def _model(backend: Any, policy: RetryPolicy, **kw: Any) -> tuple[Model, list[str],
                                                                  list[float]]:
    notices: list[str] = []
    waits: list[float] = []
    model = Model(backend, retry=policy, log=notices.append, sleep=waits.append,
                  rng=random.Random(0), **kw)
    return model, notices, waits


# -- retries ----------------------------------------------------------------------------------

def test_retries_follow_the_data_and_show_on_one_line_each() -> None:
    backend = ScriptBackend({"a": [("fail", True, None), ("fail", True, None)],
                             "b": [("fail", False, None)]})
    model, notices, waits = _model(backend, RetryPolicy(max_retries=3, backoff_s=0.5))
    a, b, c = model.generate(_reqs("a", "b", "c"))
    assert a.error is None and a.text == "answer to a"  # third attempt
    assert b.error == "failed b"  # not retryable: one attempt, the error as it came
    assert c.error is None
    assert backend.batches == [["a", "b", "c"], ["a"], ["a"]]  # only the failed one again
    assert len(waits) == 2 and 0 <= waits[0] <= 0.5 and 0 <= waits[1] <= 1.0  # full jitter
    assert [n.split("failed: ")[1] for n in notices] == [
        f"failed a; attempt 1/4, retrying in {waits[0]:.2g} s",
        f"failed a; attempt 2/4, retrying in {waits[1]:.2g} s"]
    assert all(n.startswith("script: generate request (a) failed") for n in notices)


def test_retries_are_bounded_by_attempts() -> None:
    backend = ScriptBackend({"a": [("fail", True, None)] * 10})
    model, notices, waits = _model(backend, RetryPolicy(max_retries=2, backoff_s=0.01))
    [a] = model.generate(_reqs("a"))
    assert a.error == "failed a (gave up after 3 attempts)" and a.retryable
    assert len(backend.batches) == 3 and len(notices) == 2


def test_retry_after_is_honoured_and_capped() -> None:
    backend = ScriptBackend({"a": [("fail", True, 2.5)], "b": [("fail", True, 1e6)]})
    model, _, waits = _model(backend, RetryPolicy(max_retries=3, backoff_s=0.01,
                                                  total_timeout_s=None))
    model.generate(_reqs("a"))
    assert waits == [2.5]  # the server's wait, not the (much shorter) backoff
    model.generate(_reqs("b"))
    assert waits[1] == MAX_SLEEP_S  # an absurd Retry-After is capped
    # a batch waits once per round: the longest any of its failed requests needs
    backend = ScriptBackend({"a": [("fail", True, 0.2)], "b": [("fail", True, 1.5)]})
    model, notices, waits = _model(backend, RetryPolicy(max_retries=1, backoff_s=0.01))
    assert [r.error for r in model.generate(_reqs("a", "b"))] == [None, None]
    assert waits == [1.5] and all("retrying in 1.5 s" in n for n in notices)


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    policy, rng = RetryPolicy(max_retries=20, backoff_s=0.5), random.Random(1)
    for attempt in range(12):
        ceiling = min(MAX_SLEEP_S, 0.5 * 2 ** attempt)
        draws = [policy.delay_s(attempt, rng) for _ in range(300)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling and min(draws) < 0.2 * ceiling


def test_the_time_budget_ends_retries_and_each_attempt_gets_the_time_left() -> None:
    backend = ScriptBackend({"a": [("slow", 0.25)] * 10})
    model, _, _ = _model(backend, RetryPolicy(max_retries=9, backoff_s=0.001,
                                              total_timeout_s=0.4))
    [a] = model.generate(_reqs("a"))
    assert a.error == ("too slow (gave up after 2 attempts: the next could not start within "
                       "total_timeout_s=0.4 s)")
    assert len(backend.batches) == 2  # the third attempt could not start within 0.4 s
    first, second = backend.time_left
    assert first == pytest.approx(0.4, abs=0.02) and second is not None and second < 0.2


def test_a_remote_server_failing_past_retries_is_sent_nothing_more() -> None:
    script = {i: [("fail", True, None)] * 3 for i in "abcdef"}
    backend = ScriptBackend(script, remote=True, max_batch_size=1)
    model, notices, _ = _model(backend, RetryPolicy(max_retries=1, backoff_s=0.01))
    answers = model.generate(_reqs(*"abcdef"))
    assert len(backend.batches) == TRIP_AFTER * 2  # two attempts each, then nothing sent
    errors = [a.error for a in answers]
    assert errors[0] == "failed a (gave up after 2 attempts)"
    assert set(errors[1:]) == {"failed b (gave up after 2 attempts)"}  # the tripping error
    assert sum("stopped answering" in n for n in notices) == 1
    # an in-process engine failing on two prompts says nothing about the next ones
    local = ScriptBackend(script, remote=False, max_batch_size=1)
    model, notices, _ = _model(local, RetryPolicy(max_retries=1, backoff_s=0.01))
    model.generate(_reqs(*"abcdef"))
    assert len(local.batches) == 12 and not any("stopped" in n for n in notices)


def test_batches_follow_max_batch_size_and_answers_keep_their_order() -> None:
    backend = ScriptBackend(max_batch_size=3)
    model, _, _ = _model(backend, RetryPolicy())
    ids = [str(i) for i in range(8)]
    answers = model.generate(_reqs(*ids))
    assert [len(b) for b in backend.batches] == [3, 3, 2]
    assert [a.text for a in answers] == [f"answer to {i}" for i in ids]
    mixed = [*_reqs("g1"), Request(sample_id="l1", kind="loglikelihood", prompt="a b",
                                   max_new_tokens=0, continuation=" c d"), *_reqs("g2")]
    out = model.run(mixed)
    assert out[0].text == "answer to g1" and out[2].text == "answer to g2"
    assert out[1].logprob == -2.0  # " c d": two whitespace tokens


def test_policy_defaults_by_backend_and_options() -> None:
    remote = RetryPolicy.from_options({}, remote=True)
    local = RetryPolicy.from_options({}, remote=False)
    assert (remote.max_retries, remote.total_timeout_s) == (4, 600.0)
    assert (local.max_retries, local.total_timeout_s) == (2, None)  # in-process: no clock
    assert RetryPolicy.from_options({}, remote=True, retries=1).max_retries == 1
    assert RetryPolicy.from_options({"max_retries": 6}, remote=True,
                                    retries=1).max_retries == 6  # the backend's option wins


# -- capabilities -----------------------------------------------------------------------------

def test_a_backend_without_loglikelihood_is_one_line_naming_those_with_it() -> None:
    model = make_model("scripted", "m", {}, use_cache=False)
    assert not model.capabilities().loglikelihood
    with pytest.raises(Unsupported) as err:
        model.loglikelihood([Request(sample_id="x", kind="loglikelihood", prompt="a",
                                     max_new_tokens=0, continuation=" b")])
    message = str(err.value)
    assert "\n" not in message and message.startswith("backend scripted cannot score")
    for name in ("llamacpp", "hf", "vllm", "openai", "tgi", "sagemaker"):
        assert name in message


def test_the_cli_refuses_a_loglikelihood_task_on_a_generate_only_backend(
        tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from evalkit import cli

    result = CliRunner().invoke(cli.app, ["run", "--task", "passkey_ll", "--model", "m",
                                          "--backend", "scripted", "--lengths", "300",
                                          "--samples", "1", "--no-progress", "--out",
                                          str(tmp_path / "r")])
    assert isinstance(result.exception, Unsupported)
    assert "cannot score loglikelihood" in str(result.exception)
    assert not (tmp_path / "r").exists()  # refused before anything was written


# -- the response cache -----------------------------------------------------------------------

CONFIG = {"name": "cache", "model": "scripted", "backend": "scripted", "lengths": [400, 800],
          "samples": 3, "tasks": ["passkey", "lines", "passkey_ll"],
          "backend_options": {"delay_s": 0.05, "loglikelihood": "oracle"}}


class _Calls:
    """Counts the requests the scripted backend is asked."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        for name in ("generate", "loglikelihood"):
            real = getattr(ScriptedBackend, name)

            def counted(this: Any, requests: Sequence[Request], real: Any = real) -> Any:
                self.n += len(requests)
                return real(this, requests)

            monkeypatch.setattr(ScriptedBackend, name, counted)


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / store.SAMPLES).read_text().splitlines()]


def test_a_rerun_of_the_same_prompts_asks_the_backend_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        ) -> None:
    calls = _Calls(monkeypatch)
    spec = build_spec(CONFIG)
    start = time.perf_counter()
    first = run(spec, out=tmp_path / "first", progress=False, log=lambda m: None)
    first_s = time.perf_counter() - start
    assert calls.n == 18 and first.summary.status == "complete"
    start = time.perf_counter()
    second = run(spec, out=tmp_path / "second", progress=False, log=lambda m: None)
    second_s = time.perf_counter() - start
    assert calls.n == 18  # zero backend calls
    first_records, second_records = _records(tmp_path / "first"), _records(tmp_path / "second")
    # the same records, but that each answer of the second says it came from the cache
    assert [r["response"].pop("cached") for r in first_records] == [False] * 18
    assert [r["response"].pop("cached") for r in second_records] == [True] * 18
    assert first_records == second_records
    assert first.summary.rows == second.summary.rows
    with capsys.disabled():
        print(f"\n[cache] first run {first_s:.2f} s, cached re-run {second_s:.2f} s "
              f"(18 samples, 0.05 s per request)")
    assert second_s < first_s / 2
    # --no-cache (cache: false) asks again, and records the same
    third = run(build_spec(CONFIG, Overrides(cache=False)), out=tmp_path / "third",
                progress=False, log=lambda m: None)
    assert calls.n == 36 and third.summary.rows == first.summary.rows


def test_the_no_cache_option_reaches_the_run(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from evalkit import cli

    calls = _Calls(monkeypatch)
    args = ["run", "--task", "passkey", "--model", "m", "--backend", "scripted",
            "--lengths", "300", "--samples", "2", "--no-progress"]
    for out, expected in (("a", 2), ("b", 2), ("c", 4)):
        extra = ["--no-cache"] if out == "c" else []
        result = CliRunner().invoke(cli.app, [*args, *extra, "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
        assert calls.n == expected, out  # b: from the cache; c: asked again


def test_errors_are_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _Calls(monkeypatch)
    data = {**CONFIG, "retries": 0, "tasks": ["passkey"],
            "backend_options": {"fail_every": 2}}
    first = run(build_spec(data), out=tmp_path / "a", progress=False, log=lambda m: None)
    assert first.summary.n_errors == 3 and calls.n == 6
    # another run of the same prompts on the same backend (now healthy): the 3 answered
    # come from the cache, the 3 that failed are asked again
    second = run(build_spec({**data, "backend_options": {}}), out=tmp_path / "b",
                 progress=False, log=lambda m: None)
    assert calls.n == 9 and second.summary.n_errors == 0


def test_a_loglikelihood_answer_is_cached_for_its_context_window(tmp_path: Path) -> None:
    """A context too long for the window loses its oldest tokens, so the same request under
    another window is another answer: its key differs; a generation's does not."""
    cache = ResponseCache(tmp_path / "cache")

    def model(window: int) -> Model:
        return Model(ScriptedBackend("m", {"loglikelihood": "oracle",
                                           "context_window": window}), cache=cache)

    long_ctx = " ".join(f"w{i}" for i in range(20)) + " The pass key is 7. The pass key is"
    ll = Request(sample_id="a", kind="loglikelihood", prompt=long_ctx, continuation=" 7",
                 max_new_tokens=0)
    gen = Request(sample_id="b", kind="generate", prompt=long_ctx, max_new_tokens=4)
    wide, narrow = model(64), model(8)
    assert wide.cache_key(ll) != narrow.cache_key(ll)
    assert wide.cache_key(gen) == narrow.cache_key(gen)
    [first] = wide.loglikelihood([ll])
    [second] = narrow.loglikelihood([ll])
    assert narrow.backend_calls == 1 and cache.hits == 0  # asked, not served from the cache
    assert first.input_tokens != second.input_tokens


def test_loglikelihood_batches_go_longest_context_first_one_context_together() -> None:
    backend = ScriptedBackend("m", {"loglikelihood": "oracle"})
    backend.max_batch_size = 3
    sent: list[list[str]] = []
    inner = backend.loglikelihood

    def spy(requests: Sequence[Request]) -> list[Response]:
        sent.append([r.sample_id for r in requests])
        return inner(requests)

    backend.loglikelihood = spy  # type: ignore[method-assign]
    short, long = "The pass key is 7. The pass key is", "a b c d e f. The pass key is 9. " \
        "The pass key is"
    reqs = [Request(sample_id=f"{name}{k}", kind="loglikelihood", prompt=ctx,
                    continuation=f" {k}", max_new_tokens=0)
            for k in (7, 9, 12) for name, ctx in (("s", short), ("l", long))]
    out = Model(backend).loglikelihood(reqs)
    assert [r.sample_id for r in reqs] == ["s7", "l7", "s9", "l9", "s12", "l12"]
    assert sent == [["l7", "l9", "l12"], ["s7", "s9", "s12"]]
    # answers still in the requests' order: the oracle knows each context's key
    assert [r.is_greedy for r in out] == [True, False, False, True, False, False]


def _response(i: int) -> Response:
    return Response(text=f"answer {i}", input_tokens=i, output_tokens=2, latency_s=0.5)


def test_a_torn_cache_file_is_ignored_and_repaired(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    cache.put("fp", [(f"k{i}", _response(i)) for i in range(3)])
    path = cache.folder("fp") / "responses.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + whole.splitlines(keepends=True)[0][:40])  # a crash mid-write
    reader = ResponseCache(tmp_path)
    assert [reader.get("fp", f"k{i}") for i in range(3)] == [_response(i) for i in range(3)]
    reader.put("fp", [("k3", _response(3))])
    again = ResponseCache(tmp_path)
    assert [again.get("fp", f"k{i}") for i in range(4)] == [_response(i) for i in range(4)]
    assert again.skipped_lines == 1  # the torn line, now a line of its own, is skipped
    assert ResponseCache(tmp_path).get("other fingerprint", "k0") is None
    path.write_bytes(b"\x00\xff garbage\n{\"v\": 1}\n" + path.read_bytes())
    assert ResponseCache(tmp_path).get("fp", "k3") == _response(3)


def test_only_successful_responses_are_kept(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    cache.put("fp", [("bad", Response(error="HTTP 503", retryable=True)),
                     ("good", _response(1))])
    fresh = ResponseCache(tmp_path)
    assert fresh.get("fp", "bad") is None and fresh.get("fp", "good") == _response(1)


def _append(root: str, worker: int, n: int) -> None:
    cache = ResponseCache(Path(root))
    for i in range(n):
        cache.put("fp", [(f"w{worker}-{i}", _response(i))])


def test_concurrent_writers_and_readers_share_one_cache(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append, args=(str(tmp_path), w, 150)) for w in range(3)]
    for p in procs:
        p.start()
    while any(p.is_alive() for p in procs):  # reading while they write: whole lines only
        reader = ResponseCache(tmp_path)
        reader.get("fp", "w0-0")
        assert reader.skipped_lines == 0
        time.sleep(0.01)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    final = ResponseCache(tmp_path)
    assert all(final.get("fp", f"w{w}-{i}") == _response(i) for w in range(3) for i in range(150))
    assert final.skipped_lines == 0


def test_an_unwritable_cache_never_fails_a_run(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    notices: list[str] = []
    model = Model(ScriptBackend(), cache=ResponseCache(blocked / "cache", log=notices.append),
                  log=notices.append)
    assert [r.error for r in model.generate(_reqs("a", "b"))] == [None, None]
    model.generate(_reqs("c"))
    assert len(notices) == 1 and "response cache: cannot write" in notices[0]


# -- continuation tokens: lm-eval's split -----------------------------------------------------

class _Vocab:
    """A llama.cpp vocabulary as an HF-like tokenizer for lm-eval's TemplateLM: its default
    adds the BOS where the model does, as HFLM.tok_encode's does."""

    def __init__(self, alias: str) -> None:
        from evalkit.backends.llamacpp import LlamaCppBackend

        self.backend = LlamaCppBackend(alias, {})
        self.llama = self.backend._vocab
        self.add_bos = bool(self.backend._counter._add_bos)
        self.bos_text = self.backend.special_tokens()["bos_token"]

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.llama.tokenize(text.encode(), add_bos=add_special_tokens,
                                        special=True))


def _split_by(lm: Any, pairs: Sequence[tuple[str, str]]) -> list[Any]:
    """(context ids, continuation ids) of each pair, as lm-eval's LM.loglikelihood hands
    them to `lm._loglikelihood_tokens`."""
    from lm_eval.api.instance import Instance

    seen: list[tuple[list[int], list[int]]] = []

    def capture(requests: Any, **kw: Any) -> list[tuple[float, bool]]:
        seen.extend((list(c), list(x)) for _, c, x in requests)
        return [(0.0, True)] * len(requests)

    lm._loglikelihood_tokens = capture
    lm.loglikelihood([Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i)
                      for i, p in enumerate(pairs)], disable_tqdm=True)
    return seen


def _lm_eval_split(vocab: _Vocab, pairs: Sequence[tuple[str, str]]) -> list[Any]:
    """(context ids, continuation ids) of each pair, by lm-eval's own LM.loglikelihood."""
    from lm_eval.api.model import TemplateLM

    class Reference(TemplateLM):  # type: ignore[misc]
        @property
        def eot_token_id(self) -> int:
            return int(vocab.llama.token_eos())

        @property
        def prefix_token_id(self) -> int:  # HFLM's: the BOS, else the EOS
            bos = int(vocab.llama.token_bos())
            return bos if bos >= 0 else self.eot_token_id

        def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                       **kw: Any) -> list[int]:
            if add_special_tokens is None:  # HFLM.tok_encode: no BOS before a written one
                add_special_tokens = vocab.add_bos and not (
                    vocab.bos_text and string.startswith(vocab.bos_text))
            return vocab.encode(string, add_special_tokens)

        def _loglikelihood_tokens(self, requests: Any, **kw: Any) -> list[tuple[float, bool]]:
            raise NotImplementedError  # replaced by _split_by

        def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
            raise NotImplementedError

        def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
            raise NotImplementedError

    return _split_by(Reference(), pairs)


TRICKY = [("The capital of France is", " Paris"),
          ("The capital of France is ", "Paris"),  # a trailing space moves over
          ("Question: 2+2?\nAnswer:\n\n", "4"),  # so does all trailing whitespace
          ("", "Hello world"),  # empty context: the prefix token
          ("", " leading space"),
          ("One, two,", " three, four, five"),
          ("naïve café ", "– 東京 ✓"),
          ("Q: is it? A:", " yes.\n")]


@pytest.mark.parametrize("alias", ["gemma3-270m", "smollm2-135m"])
def test_continuation_tokens_are_lm_evals_split(alias: str) -> None:
    """Gemma adds a BOS to every text, SmolLM2 none (its prefix token is still its BOS)."""
    require("llama_cpp", "'evalkit[llamacpp]'")
    require("lm_eval", "'evalkit[lmeval]'")
    vocab = _Vocab(alias)
    pairs = [*TRICKY]
    if vocab.add_bos:  # a continuation or a context that writes the BOS itself
        pairs += [("", f"{vocab.bos_text}Hello"), (f"{vocab.bos_text}Question:", " yes")]
    model = Model(vocab.backend, log=lambda m: None)
    ours = [model.split(c, x) for c, x in pairs]
    assert ours == _lm_eval_split(vocab, pairs)
    if vocab.add_bos:
        assert ours[3][0] == [vocab.llama.token_bos()]
        assert ours[-2] == ([vocab.llama.token_bos()], vocab.encode("Hello", False))
        assert ours[-1][0].count(vocab.llama.token_bos()) == 1  # no doubled BOS


def test_split_on_a_counter_and_long_contexts_lose_their_oldest_tokens() -> None:
    counter = WhitespaceCounter()  # BOS 1 before every text
    ctx, cont = split_continuation(counter, "a b c ", "d e", lambda: 1)
    assert len(ctx) == 4 and len(cont) == 2  # BOS a b c | d e
    assert split_continuation(counter, "", "x y", lambda: 7)[0] == [7]

    class Windowed(ScriptBackend):
        def context_window(self) -> int | None:
            return 5

    backend = Windowed()
    seen: list[Request] = []
    backend.loglikelihood = lambda reqs: seen.extend(reqs) or [  # type: ignore[method-assign]
        Response(logprob=-1.0) for _ in reqs]
    model = Model(backend, log=lambda m: None)
    model.loglikelihood([Request(sample_id="x", kind="loglikelihood",
                                 prompt="one two three four five six", max_new_tokens=0,
                                 continuation=" seven eight")])
    [req] = seen
    assert req.continuation_tokens is not None and len(req.continuation_tokens) == 2
    assert req.context_tokens == tuple(counter.encode("one two three four five six")[-3:])
    with pytest.raises(EvalkitError, match="does not fit"):
        model.loglikelihood([Request(sample_id="y", kind="loglikelihood", prompt="a",
                                     max_new_tokens=0, continuation=" 1 2 3 4 5 6")])


# -- the loglikelihood path end to end --------------------------------------------------------

def test_oracle_loglikelihood_through_runner_records_and_summary(tmp_path: Path) -> None:
    data = {**CONFIG, "tasks": ["passkey_ll"], "backend_options": {"loglikelihood": "oracle"}}
    result = run(build_spec(data), out=tmp_path / "ll", progress=False, log=lambda m: None)
    recs = _records(tmp_path / "ll")
    assert len(recs) == 6 and result.summary.status == "complete"
    for r in recs:
        assert r["sample"]["id"].startswith("passkey_ll/") and r["response"]["text"] == ""
        key = r["sample"]["targets"][0]
        assert key.strip() == str(r["sample"]["meta"]["key"]) and key.startswith(" ")
        assert r["response"]["is_greedy"] is True and r["response"]["logprob"] < 0
        assert r["scores"] == {"accuracy": 1.0, "logprob": r["response"]["logprob"]}
        assert r["parsed"] == key.strip()
    rows = {(row.metric, row.length): row for row in result.summary.rows}
    assert rows[("accuracy", 400)].value == 1.0 and rows[("accuracy", 400)].n == 3
    lp = rows[("logprob", 800)]
    assert lp.value < 0 and lp.ci_low <= lp.value <= lp.ci_high  # a continuous metric
    # an oracle that looks for another answer: every key is wrong, and scores low
    wrong = run(build_spec({**data, "backend_options": {"loglikelihood": "oracle",
                                                        "reply": "7"}}),
                out=tmp_path / "wrong", progress=False, log=lambda m: None)
    acc = {row.length: row.value for row in wrong.summary.rows if row.metric == "accuracy"}
    assert acc == {400: 0.0, 800: 0.0}
    worse = {row.length: row.value for row in wrong.summary.rows if row.metric == "logprob"}
    assert all(worse[n] < rows[("logprob", n)].value for n in (400, 800))


# -- engines: llama.cpp's loglikelihood against transformers' ---------------------------------

ENGINE_CASES = [("The capital of France is", " Paris"), ("The capital of France is", " Berlin"),
                ("The capital of France is", " banana"),
                ("One, two, three, four,", " five, six"), ("One, two, three, four,", " seven"),
                ("Water freezes at zero degrees ", "Celsius"),
                ("", "The quick brown fox"), ("def add(a, b):\n    return", " a + b")]


@pytest.mark.engine
def test_llamacpp_loglikelihood_agrees_with_hf_on_smollm2() -> None:
    """The same requests through the same Model split on both engines: llama.cpp on the
    Q4_1 GGUF, transformers on its fp32 dequantization. Same tokens, close values, the
    same ranking of the continuations of each context."""
    require("llama_cpp", "'evalkit[llamacpp]'")
    require("transformers", "'evalkit[hf]'")
    reqs = [Request(sample_id=str(i), kind="loglikelihood", prompt=c, continuation=x,
                    max_new_tokens=0) for i, (c, x) in enumerate(ENGINE_CASES)]
    llama = make_model("llamacpp", "smollm2-135m", {}, use_cache=False)
    hf = make_model("hf", "smollm2-135m", {}, use_cache=False)
    splits = [hf.split(c, x) for c, x in ENGINE_CASES]
    assert [llama.split(c, x) for c, x in ENGINE_CASES] == splits  # one tokenizer, two engines
    if importlib.util.find_spec("lm_eval") is not None:
        # lm-eval's HFLM itself (its tok_encode, prefix token and split) on the HF tokenizer
        from lm_eval.models.huggingface import HFLM

        lm = object.__new__(HFLM)  # the tokenizer is all its split needs: no model load
        lm.tokenizer, lm.add_bos_token, lm.custom_prefix_token_id = hf.backend._tok, None, None
        lm.backend, lm.enable_thinking = "causal", False
        assert _split_by(lm, ENGINE_CASES + TRICKY) == [
            hf.split(c, x) for c, x in ENGINE_CASES + TRICKY]
    a, b = llama.loglikelihood(reqs), hf.loglikelihood(reqs)
    assert all(r.error is None and r.logprob is not None for r in a + b)
    diffs = []
    for case, x, y in zip(ENGINE_CASES, a, b, strict=True):
        assert x.logprob is not None and y.logprob is not None
        diffs.append(abs(x.logprob - y.logprob))
        # quantization moves a log-probability a little, never by nats
        assert abs(x.logprob - y.logprob) <= 0.1 * abs(y.logprob) + 0.5, (case, x, y)
    print(f"\n[llamacpp vs hf] |diff| max {max(diffs):.3f} mean {sum(diffs)/len(diffs):.3f} nats")
    for group in ((0, 1, 2), (3, 4)):
        rank_a = sorted(group, key=lambda i: -(a[i].logprob or 0))
        rank_b = sorted(group, key=lambda i: -(b[i].logprob or 0))
        assert rank_a == rank_b
    assert a[0].is_greedy and b[0].is_greedy  # " Paris" is what both would write
    assert not a[2].is_greedy and not b[2].is_greedy


# -- interrupts --------------------------------------------------------------------------------

def test_an_interrupt_carries_every_answer_that_arrived_to_the_callers_index(
        tmp_path: Path) -> None:
    """Model.run over interleaved kinds, in batches, some answers from the cache: an
    interrupt in the middle of the third generate batch, after the backend had one of its
    two answers, carries exactly the answers that arrived, each at its index in the call, and
    leaves them cached."""

    class Cut(ScriptBackend):
        def generate(self, requests: Sequence[Request]) -> list[Response]:
            answers = super().generate(requests)
            if len(self.batches) == 3:  # the third batch: one arrived, then SIGTERM
                raise Interrupted(signal.SIGTERM, dict(enumerate(answers[:1])))
            return answers

    gen = _reqs(*(f"g{i}" for i in range(10)))
    ll = [Request(sample_id=f"l{i}", kind="loglikelihood", prompt=f"context {i}",
                  continuation=" yes", max_new_tokens=0) for i in range(3)]
    mixed = [gen[0], ll[0], gen[1], gen[2], ll[1], *gen[3:8], ll[2], *gen[8:]]
    cache = ResponseCache(tmp_path)
    warm = Model(ScriptBackend(max_batch_size=3), cache=cache)
    warm.generate([gen[1], gen[4]])  # answered before: from the cache this time
    backend = Cut(max_batch_size=3)
    model = Model(backend, cache=ResponseCache(tmp_path), retry=RetryPolicy(max_retries=0))
    with pytest.raises(Interrupted) as caught:
        model.run(mixed)
    exc = caught.value
    assert exc.signum == signal.SIGTERM
    # the 8 misses in batches of 3 (g1, g4 were cached): g8 of the third arrived, g9 not
    assert backend.batches == [["g0", "g2", "g3"], ["g5", "g6", "g7"], ["g8", "g9"]]
    arrived = {mixed[i].sample_id: r for i, r in exc.answered.items()}
    assert set(arrived) == {"g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8"}
    assert all(r.text == f"answer to {sid}" for sid, r in arrived.items())
    assert {sid for sid, r in arrived.items() if r.cached} == {"g1", "g4"}
    assert not any(r.sample_id.startswith("l") for r in (mixed[i] for i in exc.answered))
    again = Model(ScriptBackend(max_batch_size=3), cache=ResponseCache(tmp_path))
    assert [r.cached for r in again.generate(gen)] == [True] * 9 + [False]  # g9 never came
