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
import hashlib
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from evalkit import interrupts
from evalkit.types import (
    Backend,
    Capabilities,
    EvalkitError,
    Interrupted,
    Request,
    RequestKind,
    Response,
    TokenCounter,
    Unsupported,
    to_jsonable,
)

T = TypeVar("T")
Log = Callable[[str], None]

DEFAULT_MAX_RETRIES = 4  # remote backends: 429s, 5xx and dropped connections are common
DEFAULT_LOCAL_RETRIES = 2  # in-process engines: a transient fault (memory) is rare
DEFAULT_BACKOFF_S = 0.5
DEFAULT_TOTAL_TIMEOUT_S = 600.0  # one remote request, all attempts and waits
MAX_SLEEP_S = 30.0  # no single backoff or Retry-After wait is longer than this
TRIP_AFTER = 2  # requests in a row that failed past their retries: the server is down
CACHE_ENV = "EVALKIT_CACHE_DIR"
CACHE_FILE = "responses.jsonl"
CACHE_VERSION = 1

# Which backends can do what (for the one line an Unsupported names them in).
_CAN = {
    "generate": "llamacpp, hf, vllm, openai, tgi, sagemaker, scripted",
    "loglikelihood": ("llamacpp, hf, vllm, openai (endpoint completions, on a server that "
                      "returns prompt logprobs: vLLM, llama.cpp), tgi, sagemaker, scripted "
                      "(option loglikelihood: oracle)"),
}


def notify_stderr(message: str) -> None:
    """One line on stderr, written above a tqdm progress bar when one is showing."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


# -- the retry policy ----------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries, decided from data alone. At most `max_retries` retries, and no
    retry starts once a request has taken `total_timeout_s` in all (None: no time limit;
    the Model also hands each attempt the time left, Request.time_left_s). The n-th retry
    waits the server's Retry-After, or else uniformly in [0, backoff_s * 2**n] (full
    jitter, so that many clients do not retry in step); every wait is capped at MAX_SLEEP_S."""

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    total_timeout_s: float | None = DEFAULT_TOTAL_TIMEOUT_S

    @property
    def attempts(self) -> int:
        return self.max_retries + 1

    def delay_s(self, attempt: int, rng: random.Random,
                retry_after_s: float | None = None) -> float:
        if retry_after_s is not None:
            return min(max(0.0, retry_after_s), MAX_SLEEP_S)
        return rng.uniform(0.0, min(MAX_SLEEP_S, self.backoff_s * 2 ** attempt))

    def next_delay_s(self, *, retryable: bool, retry_after_s: float | None, attempt: int,
                     elapsed_s: float, rng: random.Random) -> float | None:
        """The wait before the next attempt after attempt number `attempt` (0-based) failed,
        or None to give up: the failure is not worth another try, the attempts are used up,
        or the next attempt could not start within total_timeout_s."""
        if not retryable or attempt + 1 >= self.attempts:
            return None
        delay = self.delay_s(attempt, rng, retry_after_s)
        return delay if self.in_budget(elapsed_s + delay) else None

    def in_budget(self, elapsed_s: float) -> bool:
        return self.total_timeout_s is None or elapsed_s < self.total_timeout_s

    def time_left_s(self, elapsed_s: float) -> float | None:
        return None if self.total_timeout_s is None else self.total_timeout_s - elapsed_s

    def with_budget(self, total_timeout_s: float) -> RetryPolicy:
        total = (total_timeout_s if self.total_timeout_s is None
                 else min(self.total_timeout_s, total_timeout_s))
        return RetryPolicy(self.max_retries, self.backoff_s, total)

    def budget_text(self) -> str:
        return ("no time limit" if self.total_timeout_s is None
                else f"total_timeout_s={self.total_timeout_s:g} s")

    def out_of_time(self, elapsed_s: float, wait_s: float, retry_after_s: float | None,
                    budget: str | None = None) -> str:
        """Why no attempt follows one that ended `elapsed_s` into the request when the next
        would wait `wait_s` (see next_delay_s), the time limit named `budget`."""
        budget = budget or self.budget_text()
        if not self.in_budget(elapsed_s):
            return f"{budget} used up"
        if retry_after_s is not None:
            return waited_past(retry_after_s, budget)
        return f"the wait before the next ({wait_s:.1f} s) would pass {budget}"

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, remote: bool,
                     retries: int | None = None) -> RetryPolicy:
        """The policy of a backend: its options max_retries, backoff_s, total_timeout_s
        where given, else `retries` (the run config's), else the defaults (remote backends
        retry more, and within DEFAULT_TOTAL_TIMEOUT_S; an in-process attempt cannot be
        cut short, so those have no time limit)."""
        default = retries if retries is not None else (
            DEFAULT_MAX_RETRIES if remote else DEFAULT_LOCAL_RETRIES)
        total = options.get("total_timeout_s", DEFAULT_TOTAL_TIMEOUT_S if remote else None)
        return cls(int(options.get("max_retries", default)),
                   float(options.get("backoff_s", DEFAULT_BACKOFF_S)),
                   None if total is None else float(total))


def waited_past(retry_after_s: float, budget: str) -> str:
    """Why a request was given up when the server's Retry-After outlasts its time."""
    return f"the server asked to wait {round(retry_after_s, 1):g} s (Retry-After), past {budget}"


def gave_up_message(last: str, attempts: int, budget: str | None, *,
                    why: str | None = None, elapsed_s: float | None = None) -> str:
    """The error of a request that failed after `attempts` attempts (`budget`: the time
    limit, when that ended it rather than max_retries). A time limit ends retries before
    it is used up when the wait before the next attempt (the server's Retry-After, which
    the HTTP backends' errors name, or a backoff) would pass it, so the line says that the
    next attempt could not start within it, not that the time was used up. A caller that
    knows it says `why` (RetryPolicy.out_of_time) and the seconds taken; the Model's lines
    carry neither, so that the requests of one batch failed alike read the same."""
    if not budget and attempts <= 1:
        return last  # retries were off: nothing was given up
    how = f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}"
    if elapsed_s is not None:
        how += f" in {elapsed_s:.1f} s"
    if budget:
        how += f": {why or f'the next could not start within {budget}'}"
    return f"{last} ({how})"


class ServerHealth:
    """Whether a server is still worth sending requests to (thread-safe).

    A request that failed past its retries on a server fault (no answer, 429, 5xx) counts;
    an answered request resets the count. After TRIP_AFTER such requests in a row, or one
    failure marked `at_once` (a metadata call that got no answer: those answer at once on a
    live server), the server is taken as down: every later request fails at once, without
    being sent, with the error that tripped it. So a server that died or hangs ends a run in
    bounded time, its failed samples are recorded with one shared line and retried by the
    next run; a single prompt that fails alone (a server bug on one input) stops nothing.
    """

    def __init__(self, backend: str, where: str, notify: Log) -> None:
        self.backend = backend
        self.where = where
        self.notify = notify
        self._lock = threading.Lock()
        self._in_a_row = 0
        self.down: str | None = None  # the error every later request fails with

    def answered(self) -> None:
        with self._lock:
            self._in_a_row = 0

    def failed(self, message: str, *, at_once: bool = False) -> str:
        """Count a request that gave up; returns the error to record for it (the tripping
        error, once the server is down, so that all of them read the same)."""
        with self._lock:
            if self.down is not None:
                return self.down
            self._in_a_row += 1
            if not at_once and self._in_a_row < TRIP_AFTER:
                return message
            self.down = message
        self.notify(f"{self.backend}: {self.where} stopped answering: this run sends it "
                    "nothing more, every later request fails at once. Check the server (a "
                    "slow one needs larger timeout_s and total_timeout_s), then run the same "
                    "command again: finished samples are kept, failed ones retried")
        return message


class RetryableError(Exception):
    """A failed call, as data for the retry policy (see retry_call)."""

    def __init__(self, message: str, *, retryable: bool,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def retry_call(call: Callable[[float | None], T], policy: RetryPolicy, *, what: str,
               notify: Log, rng: random.Random | None = None, budget: str | None = None,
               sleep: Callable[[float], None] = time.sleep) -> T:
    """One call that is not a Request (a backend's metadata or tokenize call), retried by
    the same policy as requests: `call(time_left_s)` returns, or raises RetryableError.
    Each retry is one line (`what` failed: why; attempt k/n, the wait). Raises the last
    RetryableError, its message saying why it gave up when that was the policy (`budget`
    names the time limit, default total_timeout_s)."""
    rng = rng or random.Random()
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return call(policy.time_left_s(time.monotonic() - start))
        except RetryableError as exc:
            if not exc.retryable:
                raise
            elapsed = time.monotonic() - start
            if attempt + 1 >= policy.attempts:
                exc.message = gave_up_message(exc.message, attempt + 1, None)
                raise
            # as next_delay_s decides, keeping the wait to say why it gave up
            delay = policy.delay_s(attempt, rng, exc.retry_after_s)
            if not policy.in_budget(elapsed + delay):
                budget = budget or policy.budget_text()
                exc.message = gave_up_message(
                    exc.message, attempt + 1, budget, elapsed_s=elapsed,
                    why=policy.out_of_time(elapsed, delay, exc.retry_after_s, budget))
                raise
            attempt += 1
            notify(f"{what} failed: {exc.message}; attempt {attempt}/{policy.attempts}, "
                   f"retrying in {delay:.2g} s")
            sleep(delay)


# -- the response cache ----------------------------------------------------------------------

def default_cache_dir() -> Path:
    """$EVALKIT_CACHE_DIR, else ~/.cache/evalkit/responses."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/evalkit/responses").expanduser()


_RESPONSE_FIELDS = {f.name for f in dataclasses.fields(Response)}


def _response_of(d: Any) -> Response | None:
    if not isinstance(d, dict) or not set(d) <= _RESPONSE_FIELDS:
        return None
    try:
        resp = Response(**d)
    except TypeError:
        return None
    return resp if resp.error is None else None


class ResponseCache:
    """Successful responses on disk, by Request.cache_key, one folder per backend
    fingerprint (`<root>/<sha256(fingerprint)[:16]>/responses.jsonl`).

    The file is append-only JSON lines, each written whole by one write() on a file opened
    for appending, so that concurrent runs on the same backend can share it (readers skip
    what is not a whole line). A torn tail (a crash mid-write) is ignored when read, and
    the next write starts on a new line, leaving it as one unreadable line that is skipped.
    An unreadable or unwritable cache never fails a run: it is used as far as it works, and
    one line says when it cannot be written. Errors are never cached: a re-run retries them.
    """

    def __init__(self, root: Path | None = None, log: Log = notify_stderr) -> None:
        self.root = root if root is not None else default_cache_dir()
        self.log = log
        self._entries: dict[str, dict[str, Response]] = {}  # folder -> key -> response
        self._broken = False
        self.hits = 0
        self.misses = 0
        self.skipped_lines = 0

    def folder(self, fingerprint: str) -> Path:
        return self.root / hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:16]

    def _load(self, fingerprint: str) -> dict[str, Response]:
        folder = self.folder(fingerprint)
        key = str(folder)
        if key in self._entries:
            return self._entries[key]
        entries: dict[str, Response] = {}
        try:
            data = (folder / CACHE_FILE).read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # nothing cached there (yet)
            data = b""
        except OSError as exc:
            self.log(f"response cache: cannot read {folder / CACHE_FILE} "
                     f"({exc.strerror or exc}): running without it")
            data = b""
        for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                resp = _response_of(d["response"])
                if d.get("v") != CACHE_VERSION or resp is None:
                    raise ValueError("not a cached response")
                entries[str(d["key"])] = resp
            except (ValueError, KeyError, TypeError, RecursionError):
                self.skipped_lines += 1
        self._entries[key] = entries
        return entries

    def get(self, fingerprint: str, key: str) -> Response | None:
        found = self._load(fingerprint).get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, fingerprint: str, items: Sequence[tuple[str, Response]]) -> None:
        """Keep the successful responses among `items` (key, response): in memory at once,
        on disk by one append."""
        entries = self._load(fingerprint)
        fresh = [(k, r) for k, r in items if r.error is None and k not in entries]
        if not fresh:
            return
        for k, r in fresh:
            entries[k] = dataclasses.replace(r, retryable=False, retry_after_s=None, cached=False)
        if self._broken:
            return
        lines = b"".join(json.dumps({"v": CACHE_VERSION, "key": k,
                                     "response": to_jsonable(entries[k])},
                                    ensure_ascii=False).encode("utf-8") + b"\n"
                         for k, _ in fresh)
        folder = self.folder(fingerprint)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            info = folder / "fingerprint.txt"
            if not info.exists():  # for a person looking in the folder: whose answers these are
                info.write_text(fingerprint + "\n", encoding="utf-8")
            path = folder / CACHE_FILE
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if _ends_torn(fd):
                    lines = b"\n" + lines
                os.write(fd, lines)
            finally:
                os.close(fd)
        except OSError as exc:
            self._broken = True
            self.log(f"response cache: cannot write under {self.root} "
                     f"({exc.strerror or exc}): this run caches nothing more (set "
                     f"{CACHE_ENV} to a writable folder, or pass --no-cache)")


def _ends_torn(fd: int) -> bool:
    """Whether the file ends without a newline (a torn last line)."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


# -- continuation tokens -----------------------------------------------------------------------

def split_continuation(counter: TokenCounter, context: str, continuation: str,
                       prefix_token: Callable[[], int]) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens), split as lm-eval's LM.loglikelihood does.

    Trailing whitespace of the context moves to the continuation (" Paris" after "is",
    never "Paris" after "is "); then context + continuation is encoded whole and the
    context alone, and the continuation is the whole's tokens after the context's, so that
    it is tokenized as the model reads it in context. An empty context is the prefix token
    (the BOS, else the EOS) and the continuation encoded without special tokens; when the
    continuation itself starts with that token, its first token is the context instead.
    `counter` encodes as the model reads a text (a BOS first where the model adds one)."""
    if context == "":
        cont = without_auto_tokens(counter, continuation)
        prefix = prefix_token()
        if cont and cont[0] == prefix:
            return cont[:1], cont[1:]
        return [prefix], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = counter.encode(context + continuation)
    ctx = counter.encode(context)
    return ctx, whole[len(ctx):]


def without_auto_tokens(counter: TokenCounter, text: str) -> list[int]:
    """`text` encoded without the tokens the counter puts before every text (a BOS)."""
    auto = counter.encode("")
    ids = counter.encode(text)
    return ids[len(auto):] if auto and ids[:len(auto)] == auto else ids


def prefix_token_id(counter: TokenCounter, special_tokens: Mapping[str, str]) -> int:
    """lm-eval's prefix_token_id: the BOS token, else the EOS token (by their texts)."""
    for name in ("bos_token", "eos_token"):
        text = special_tokens.get(name) or ""
        if text:
            ids = without_auto_tokens(counter, text) or counter.encode(text)
            if len(ids) == 1:
                return ids[0]
    auto = counter.encode("")
    if len(auto) == 1:
        return auto[0]
    raise EvalkitError("loglikelihood with an empty context needs a BOS or EOS token to "
                       "condition on, and this model's tokenizer names neither")


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
        ready = {i: prepare(requests[i]) if prepare else requests[i] for i in misses}
        if prepare is not None:
            # longest contexts first, as lm-eval orders them: a batch's rows are about one
            # length (little padding), and the requests of one context stay side by side
            # (an engine that keeps its last prefix, llama.cpp, computes that context once)
            misses.sort(key=lambda i: (-len(ready[i].context_tokens or ()),
                                       ready[i].context_tokens or ()))
        for batch in chunks(misses, self.max_batch_size):
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
        return [r if r is not None else Response(error="not run") for r in out]

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
            down = self.health.down if self.health is not None else None
            if down is not None:  # the server is down: fail at once, send nothing
                for i in pending:
                    out[i] = Response(error=down, retryable=True)
                break
            elapsed = time.monotonic() - start
            sent = [dataclasses.replace(requests[i], time_left_s=policy.time_left_s(elapsed))
                    for i in pending]
            try:
                with interrupts.allowed():
                    answers = self._send(call, sent)
            except KeyboardInterrupt as exc:  # the answers that arrived are final ones
                arrived = {pending[j]: r for j, r in getattr(exc, "answered", {}).items()
                           if r.error is None}
                raise Interrupted.of(exc, {**_final(out), **arrived}) from None
            elapsed = time.monotonic() - start
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
            if not again:
                break
            wait = max(d for _, d, _ in again)
            pending = []
            for i, _, resp in again:
                if not policy.in_budget(elapsed + wait):  # another's longer wait ends its time
                    out[i] = self._gave_up(resp, attempt[i])
                    continue
                attempt[i] += 1
                pending.append(i)
                self.log(f"{self.backend.name}: {requests[i].kind} request "
                         f"({requests[i].sample_id}) failed: {resp.error}; attempt "
                         f"{attempt[i]}/{policy.attempts}, retrying in {wait:.2g} s")
            if pending:
                try:
                    with interrupts.allowed():
                        self._sleep(wait)
                except KeyboardInterrupt as exc:
                    raise Interrupted.of(exc, _final(out)) from None
        return [r if r is not None else Response(error="not run") for r in out]

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
