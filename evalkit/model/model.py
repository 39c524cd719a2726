"""One backend wrapped: what every backend shares, done once.

- batching: requests go to the backend in batches of its `max_batch_size`;
- the one retry policy (`RetryPolicy`): a failed request is retried from data the backend
  returns (`Response.error`, `.retryable`, `.retry_after_s`), with capped exponential
  backoff and full jitter, bounded in attempts and in time, one line on stderr per retry;
  for a remote backend, requests failing past their retries one after another mean the
  server is down (`ServerHealth`): the rest of the run is not sent, every sample it failed
  carries one shared line, and the next run retries them;
- the response cache (`ResponseCache`): a successful answer is kept on disk under its
  request's cache key, so that a re-run of the same prompts on the same backend costs
  nothing. "The same backend" is the backend's fingerprint: the model's identity and
  everything that changes its answers, a server's address and what it says about itself
  included (each backend's `fingerprint`), so that the cache never answers for another
  server or a redeployed one. A cached answer is marked (`Response.cached`);
  `--no-cache` (or `cache: false`) bypasses the cache;
- interrupts (Ctrl-C, SIGTERM, SIGHUP): the answers that had arrived are cached and
  carried up on the `Interrupted` exception, so that the runner records them;
- continuation tokenization for loglikelihood (`split_continuation`), lm-eval's way, so
  that every backend scores the same tokens (the in-process ones and vllm/openai are fed
  those ids; TGI and SageMaker take text only: the whole text is sent and its last as many
  tokens as the continuation has are scored);
- capabilities: asking a backend for what it cannot do is one `Unsupported` line naming
  the backends that can.

Backends keep their engine calls only (see evalkit.types.Backend).
"""


from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from evalkit import interrupts
from evalkit.model.cache import ResponseCache
from evalkit.model.continuations import prefix_token_id, split_continuation
from evalkit.model.retry import (
    RetryPolicy,
    ServerHealth,
    gave_up_message,
    notify_stderr,
    waited_past,
)
from evalkit.types import (
    Backend,
    Capabilities,
    EvalkitError,
    Interrupted,
    Log,
    Request,
    RequestKind,
    Response,
    TokenCounter,
    Unsupported,
)

T = TypeVar("T")


# Which backends can do what (for the one line an Unsupported names them in).
_CAN = {
    "generate": "llamacpp, hf, vllm, openai, tgi, sagemaker, scripted",
    "loglikelihood": ("llamacpp, hf, vllm, openai (endpoint completions, on a server that "
                      "returns prompt logprobs: vLLM, llama.cpp), tgi, sagemaker, scripted "
                      "(option loglikelihood: oracle)"),
}


# -- the Model -------------------------------------------------------------------------------

class Model:
    """One backend, with batching, the retry policy, the response cache and continuation
    tokenization (see the module docstring). Not thread-safe: one caller at a time."""

    def __init__(self, backend: Backend, *, cache: ResponseCache | None = None,
                 retry: RetryPolicy | None = None, log: Log = notify_stderr,
                 label: str | None = None, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.backend = backend
        self.label = label or str(getattr(backend, "model", backend.name))
        self.cache = cache
        self.log = log
        self._caps = backend.capabilities()
        self.retry = retry or RetryPolicy.from_options({}, remote=self._caps.remote)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._fingerprint: str | None = None
        self._prefix: int | None = None
        # A remote server that keeps failing is stopped asking; an in-process engine failing
        # on one prompt (memory at one length) says nothing about the next.
        self.health = (ServerHealth(backend.name, "the server", log) if self._caps.remote
                       else None)
        self.backend_calls = 0  # batches sent to the backend (tests, benchmarks)

    # -- what the backend is --------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        return self._caps

    def tokenizer(self) -> TokenCounter:
        return self.backend.tokenizer()

    def context_window(self) -> int | None:
        return self.backend.context_window()

    def chat_template(self) -> str | None:
        return self.backend.chat_template()

    def special_tokens(self) -> Mapping[str, str]:
        return self.backend.special_tokens()

    def describe(self) -> Mapping[str, Any]:
        return self.backend.describe()

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def max_batch_size(self) -> int:
        return max(1, int(self.backend.max_batch_size))

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.backend.fingerprint()
        return self._fingerprint

    def cache_key(self, request: Request) -> str:
        """The request's key in the response cache (and on its record). A loglikelihood
        answer also depends on the context window, which cuts a context too long for it."""
        fingerprint = self.fingerprint()
        if request.kind == "loglikelihood":
            fingerprint += f"/window={self.context_window()}"
        return request.cache_key(fingerprint)

    def require(self, kind: RequestKind) -> None:
        """Unsupported (one line naming the backends that can) unless the backend does `kind`."""
        self._check(kind, [])

    # -- requests ---------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[Response]:
        self._check("generate", requests)
        return self._answer(requests, self.backend.generate)

    def loglikelihood(self, requests: Sequence[Request]) -> list[Response]:
        """log P(continuation | prompt) of each request (Response.logprob, .is_greedy).
        Requests without token ids get them here (split_continuation), once, for every
        backend alike; contexts longer than the context window lose their oldest tokens."""
        self._check("loglikelihood", requests)
        return self._answer(requests, self.backend.loglikelihood, self._with_tokens)

    def loglikelihood_tokens(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                             ) -> list[Response]:
        """loglikelihood of token ids as they are (lm-eval's rolling windows)."""
        return self.loglikelihood([
            Request(sample_id=f"tokens/{i}", kind="loglikelihood", prompt="",
                    max_new_tokens=0, context_tokens=tuple(ctx),
                    continuation_tokens=tuple(cont))
            for i, (ctx, cont) in enumerate(pairs)])

    def run(self, requests: Sequence[Request]) -> list[Response]:
        """Each request by its kind, answers in the requests' order."""
        out: list[Response | None] = [None] * len(requests)
        for kind, call in (("generate", self.generate), ("loglikelihood", self.loglikelihood)):
            idx = [i for i, r in enumerate(requests) if r.kind == kind]
            if idx:
                with _passing_answers(out, idx):
                    for i, resp in zip(idx, call([requests[i] for i in idx]), strict=True):
                        out[i] = resp
        missing = [requests[i].kind for i, r in enumerate(out) if r is None]
        if missing:
            raise EvalkitError(f"unknown request kind {missing[0]!r}: generate or loglikelihood")
        return [r for r in out if r is not None]

    def split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """The context and continuation tokens of a loglikelihood request (lm-eval's split)."""
        return split_continuation(self.tokenizer(), context, continuation, self.prefix_token)

    # -- inside ---------------------------------------------------------------------------------
    def _check(self, kind: RequestKind, requests: Sequence[Request]) -> None:
        able = {"generate": self._caps.generate, "loglikelihood": self._caps.loglikelihood}
        if not able[kind]:
            what = "score loglikelihood" if kind == "loglikelihood" else "generate"
            raise Unsupported(f"backend {self.backend.name} cannot {what} as configured: use "
                              f"one of {_CAN[kind]}")
        wrong = [r for r in requests if r.kind != kind]
        if wrong:
            raise EvalkitError(f"request {wrong[0].sample_id} is a {wrong[0].kind} request, "
                               f"not {kind}: use Model.run to mix kinds")

    def prefix_token(self) -> int:
        """lm-eval's prefix token (BOS, else EOS): what an empty context is."""
        if self._prefix is None:
            self._prefix = prefix_token_id(self.tokenizer(), self.backend.special_tokens())
        return self._prefix

    def _with_tokens(self, req: Request) -> Request:
        if req.context_tokens is not None and req.continuation_tokens is not None:
            ctx, cont = list(req.context_tokens), list(req.continuation_tokens)
        else:
            ctx, cont = self.split(req.prompt, req.continuation)
        if not cont:
            raise EvalkitError(f"loglikelihood request {req.sample_id}: the continuation "
                               f"{req.continuation!r} has no tokens to score")
        window = self.context_window()
        if window and len(ctx) + len(cont) > window:
            # lm-eval keeps the last tokens that fit; the continuation must stay whole
            cut = len(ctx) + len(cont) - window
            if cut >= len(ctx):
                raise EvalkitError(f"loglikelihood request {req.sample_id}: its continuation "
                                   f"({len(cont)} tokens) does not fit the context window "
                                   f"({window} tokens) with any context")
            ctx = ctx[cut:]
        if not ctx:
            ctx = [self.prefix_token()]
        return dataclasses.replace(req, context_tokens=tuple(ctx),
                                   continuation_tokens=tuple(cont))

    def _answer(self, requests: Sequence[Request],
                call: Callable[[Sequence[Request]], list[Response]],
                prepare: Callable[[Request], Request] | None = None) -> list[Response]:
        """Cache lookups, then the misses in batches through the retry policy (answers in
        the requests' order)."""
        out: list[Response | None] = [None] * len(requests)
        keys, misses = self._from_cache(requests, out)
        ready = {i: prepare(requests[i]) if prepare else requests[i] for i in misses}
        if prepare is not None:
            misses = _in_context_order(misses, ready)
        for batch in chunks(misses, self.max_batch_size):
            self._answer_batch(call, batch, ready, keys, out)
        return [r if r is not None else Response(error="not run") for r in out]

    def _from_cache(self, requests: Sequence[Request],
                    out: list[Response | None]) -> tuple[list[str], list[int]]:
        """The requests' cache keys (none without a cache) and the indices of those the
        cache does not answer; the cached answers are put in `out`, marked cached."""
        keys: list[str] = []
        misses = list(range(len(requests)))
        if self.cache is not None and requests:
            fingerprint = self.fingerprint()
            keys = [self.cache_key(r) for r in requests]
            misses = []
            for i, key in enumerate(keys):
                hit = self.cache.get(fingerprint, key)
                if hit is None:
                    misses.append(i)
                else:
                    out[i] = dataclasses.replace(hit, cached=True)
        return keys, misses

    def _answer_batch(self, call: Callable[[Sequence[Request]], list[Response]],
                      batch: Sequence[int], ready: Mapping[int, Request], keys: Sequence[str],
                      out: list[Response | None]) -> None:
        """One batch (indices into `out`) through the retry policy, its answers put in `out`
        and the cache; an interrupt caches what had arrived and carries every answer up."""
        todo = [ready[i] for i in batch]
        try:
            answers = self._with_retries(call, todo)
        except Interrupted as exc:  # keep what had arrived, then pass the interrupt on
            answers_in = {batch[j]: resp for j, resp in exc.answered.items()}
            if self.cache is not None:
                self.cache.put(self.fingerprint(),
                               [(keys[i], r) for i, r in answers_in.items()])
            raise Interrupted.of(exc, {**_final(out), **answers_in}) from None
        except KeyboardInterrupt as exc:
            raise Interrupted.of(exc, _final(out)) from None
        for i, resp in zip(batch, answers, strict=True):
            out[i] = resp
        if self.cache is not None:
            self.cache.put(self.fingerprint(), [(keys[i], resp) for i, resp
                                                in zip(batch, answers, strict=True)])

    def _send(self, call: Callable[[Sequence[Request]], list[Response]],
              requests: Sequence[Request]) -> list[Response]:
        self.backend_calls += 1
        answers = list(call(requests))
        if len(answers) != len(requests):
            raise RuntimeError(f"backend {self.backend.name} answered {len(answers)} of "
                               f"{len(requests)} requests")
        return answers

    def _with_retries(self, call: Callable[[Sequence[Request]], list[Response]],
                      requests: Sequence[Request]) -> list[Response]:
        """One batch, its failed requests retried together (one wait per round: the longest
        any of them needs), each request within its own attempts and time budget."""
        policy = self.retry
        out: list[Response | None] = [None] * len(requests)
        attempt = [0] * len(requests)
        start = time.monotonic()
        pending = list(range(len(requests)))
        while pending:
            if self._failed_server_down(pending, out):
                break
            answers = self._send_round(call, requests, pending, out, policy, start)
            elapsed = time.monotonic() - start
            again = self._settle_round(pending, answers, attempt, elapsed, out, policy)
            if not again:
                break
            wait = max(d for _, d, _ in again)
            pending = self._next_round(again, wait, attempt, elapsed, requests, out, policy)
            if pending:
                self._wait_to_retry(wait, out)
        return [r if r is not None else Response(error="not run") for r in out]

    def _failed_server_down(self, pending: Sequence[int], out: list[Response | None]) -> bool:
        """Whether the server is down: then every pending request fails at once, unsent."""
        down = self.health.down if self.health is not None else None
        if down is None:
            return False
        for i in pending:
            out[i] = Response(error=down, retryable=True)
        return True

    def _send_round(self, call: Callable[[Sequence[Request]], list[Response]],
                    requests: Sequence[Request], pending: Sequence[int],
                    out: Sequence[Response | None], policy: RetryPolicy,
                    start: float) -> list[Response]:
        """The pending requests sent once, each with the time its budget has left; an
        interrupt carries up the answers final so far and those that arrived."""
        elapsed = time.monotonic() - start
        sent = [dataclasses.replace(requests[i], time_left_s=policy.time_left_s(elapsed))
                for i in pending]
        try:
            with interrupts.allowed():
                return self._send(call, sent)
        except KeyboardInterrupt as exc:  # the answers that arrived are final ones
            arrived = {pending[j]: r for j, r in getattr(exc, "answered", {}).items()
                       if r.error is None}
            raise Interrupted.of(exc, {**_final(out), **arrived}) from None

    def _settle_round(self, pending: Sequence[int], answers: Sequence[Response],
                      attempt: Sequence[int], elapsed: float, out: list[Response | None],
                      policy: RetryPolicy) -> list[tuple[int, float, Response]]:
        """A round's answers: the final ones (answered, not retryable, or out of attempts
        or time) put in `out`; the others returned with the delay each asks for."""
        again: list[tuple[int, float, Response]] = []
        for i, resp in zip(pending, answers, strict=True):
            if resp.error is None or not resp.retryable:
                if self.health is not None:
                    # answered (or a fault of this request alone): the server is fine
                    self.health.answered()
                out[i] = resp
                continue
            delay = policy.next_delay_s(retryable=True, retry_after_s=resp.retry_after_s,
                                        attempt=attempt[i], elapsed_s=elapsed,
                                        rng=self._rng)
            if delay is None:
                out[i] = self._gave_up(resp, attempt[i])
            else:
                again.append((i, delay, resp))
        return again

    def _next_round(self, again: Sequence[tuple[int, float, Response]], wait: float,
                    attempt: list[int], elapsed: float, requests: Sequence[Request],
                    out: list[Response | None], policy: RetryPolicy) -> list[int]:
        """The requests to retry after `wait` (one line each), their attempts counted; one
        whose time that wait would end has given up (in `out`)."""
        pending: list[int] = []
        for i, _, resp in again:
            if not policy.in_budget(elapsed + wait):  # another's longer wait ends its time
                out[i] = self._gave_up(resp, attempt[i])
                continue
            attempt[i] += 1
            pending.append(i)
            self.log(f"{self.backend.name}: {requests[i].kind} request "
                     f"({requests[i].sample_id}) failed: {resp.error}; attempt "
                     f"{attempt[i]}/{policy.attempts}, retrying in {wait:.2g} s")
        return pending

    def _wait_to_retry(self, wait: float, out: Sequence[Response | None]) -> None:
        """The wait before a retry; an interrupt carries up the answers final so far."""
        try:
            with interrupts.allowed():
                self._sleep(wait)
        except KeyboardInterrupt as exc:
            raise Interrupted.of(exc, _final(out)) from None

    def _gave_up(self, resp: Response, attempt: int) -> Response:
        out_of_time = attempt + 1 < self.retry.attempts
        budget = self.retry.budget_text()
        why = (waited_past(resp.retry_after_s, budget)
               if out_of_time and resp.retry_after_s is not None else None)
        message = gave_up_message(str(resp.error), attempt + 1,
                                  budget if out_of_time else None, why=why)
        if self.health is not None:
            message = self.health.failed(message)
        return dataclasses.replace(resp, error=message, retryable=True)


def _final(out: Sequence[Response | None]) -> dict[int, Response]:
    """The successful answers among `out`, by index (what an interrupt carries up)."""
    return {i: r for i, r in enumerate(out) if r is not None and r.error is None}


def _in_context_order(misses: Sequence[int], ready: Mapping[int, Request]) -> list[int]:
    """Longest contexts first, as lm-eval orders them: a batch's rows are about one length
    (little padding), and the requests of one context stay side by side (an engine that
    keeps its last prefix, llama.cpp, computes that context once)."""
    return sorted(misses, key=lambda i: (-len(ready[i].context_tokens or ()),
                                         ready[i].context_tokens or ()))


@contextlib.contextmanager
def _passing_answers(out: list[Response | None], idx: Sequence[int]) -> Iterator[None]:
    """Re-raise an interrupt of a call over the requests `idx` (of `out`'s) with the
    answers it carried placed at their indices in `out`, beside those `out` holds."""
    try:
        yield
    except KeyboardInterrupt as exc:
        arrived = {idx[j]: r for j, r in getattr(exc, "answered", {}).items()}
        raise Interrupted.of(exc, {**_final(out), **arrived}) from None


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def make_model(backend: str, model: str, options: Mapping[str, Any], *,
               cache_dir: Path | None = None, use_cache: bool = True,
               retries: int | None = None, log: Log = notify_stderr,
               label: str | None = None) -> Model:
    """The backend `backend` on `model` with its options, wrapped: the retry policy from the
    options max_retries / backoff_s / total_timeout_s (else `retries`, else the defaults),
    the response cache under `cache_dir` (default: $EVALKIT_CACHE_DIR or
    ~/.cache/evalkit/responses) unless use_cache is False."""
    from evalkit.backends import make_backend

    be = make_backend(backend, model, options)
    policy = RetryPolicy.from_options(options, remote=be.capabilities().remote, retries=retries)
    cache = ResponseCache(cache_dir, log=log) if use_cache else None
    return Model(be, cache=cache, retry=policy, log=log, label=label)
