"""What the HTTP backends (openai, tgi, sagemaker) share.

- `HttpClient`: one httpx.AsyncClient on an event loop of its own (a daemon thread), so
  that the synchronous Backend methods can run a batch of requests concurrently, at most
  `concurrency` at a time, whatever thread or event loop the caller is in. `call` makes
  ONE attempt and fails with an HttpError that says, as data, whether to retry (no answer,
  429, 5xx) and what Retry-After asked; the backends turn it into Response(error=...,
  retryable=..., retry_after_s=...), and the Model's one retry policy decides
  (evalkit.model: RetryPolicy, ServerHealth). The client's own metadata and tokenize
  calls, which are no Requests, go through the same policy (evalkit.model.retry_call).
- `ApiKey` and `Secrets`: the key is read from the environment variable the config names,
  at request time; it is never stored. Every message (errors, retry notices) is redacted
  of it, of a password in base_url and of secret-named values in the options (extra_body).

Timeouts and their trade-off (the defaults below; every one is a backend option):
- connect_timeout_s (10 s): a server that is up accepts a connection in milliseconds.
- timeout_s (300 s): the longest the server may stay silent within one attempt. A
  non-streamed answer arrives whole after prefill and generation, so this bounds the
  slowest request: a 32K-token prefill on a GPU takes seconds, on a CPU server minutes.
  Raise it (with total_timeout_s) for long prompts on a slow server.
- total_timeout_s (600 s): one request across all its attempts and backoff sleeps (the
  Model hands each attempt the time left, Request.time_left_s). A server that accepts
  connections but never answers costs at most this much per request; after two requests
  in a row failed that way (or one cheap metadata call), the Model (ServerHealth) stops
  the run's traffic, so such a server ends a run in about total_timeout_s with defaults
  (about METADATA_TIMEOUT_S when the backend asks it for metadata first), not
  max_retries x timeout_s per batch. Every retry prints one line on stderr as it happens.
  Measured with the defaults against a server that accepts and never answers: 64 s to
  exit 2 when it is asked for tokens or metadata first (the usual start), 603 s to exit 3
  when it answers metadata but no generation (previously 5 x 600 s per batch).

A base_url's query parameters (Azure's api-version, a key given as ?api_key=...) are sent
with every request, metadata and tokenize calls included; the secret ones are masked
wherever the URL shows (messages name the server by its URL without the query).

How much of an answer is read (`BodyLimit`): a body is read as it streams in, and reading
stops once it passes a cap derived from the request, so that a server that ignores
max_new_tokens (or sends garbage) costs bounded memory and time:
- generation: max(1 MiB, 1 KiB x max_new_tokens) of body (TGI's details and stream events
  take about 200 bytes a token, and JSON may escape a character into 6 or 12 bytes), and
  max(1024, 32 x max_new_tokens) characters of answer text (no tokenizer makes tokens
  that long on average);
- scoring (echoed or prefill logprobs, which scale with the prompt): max(1 MiB, 1 KiB per
  prompt token + 32 bytes per prompt character);
- tokenizing a text: max(1 MiB, 512 bytes per character); metadata: 8 MiB; an error body:
  64 KiB, of which the message shows the start.
What is done with an answer past its cap: a JSON body cut short cannot be parsed, so the
request fails, not retried (the server would send as much again), its error saying "the
server sent more than N for a request of M new tokens" with the start of the body, and
Response.truncated set. Where the text can be kept, it is, cut to the characters cap, with
Response.truncated set: an answer whose JSON body fit but whose text is longer than the
request allows, and a stream (TGI's) that passes a cap, whose token events read so far
make the text.

Every message about an answer that cannot be used (not JSON, no choices, a missing field,
too large) shows a short excerpt of the body, redacted like every other message.

Token counting for these backends is in evalkit/backends/counting.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from evalkit.backends import check_options
from evalkit.model import (
    RetryableError,
    RetryPolicy,
    ServerHealth,
    notify_stderr,
    retry_call,
)
from evalkit.redact import MASK, is_secret_key, redact_text, redact_url
from evalkit.types import EvalkitError, Interrupted, Response

T = TypeVar("T")
Notify = Callable[[str], None]

DEFAULT_CONCURRENCY = 8
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_TIMEOUT_S = 300.0  # silence allowed within one attempt: prefill + generation
# Metadata and probes (/v1/models, /info, /props, tokenizing "Hello world") answer at once
# on any live server: a longer silence means a hung one. Each attempt gets a third of it.
METADATA_TIMEOUT_S = 60.0
PROBE_S = 5.0  # a route asked for in passing (HttpClient.probe_json)
UNAVAILABLE = "unavailable"  # what a probe that got no answer found
SLOW_NOTICE_S = 60.0  # one line when a request has waited this long (once per client)
MIN_SECRET_CHARS = 4  # see secret_values

# Options every HTTP backend takes (float options also accept ints: YAML writes 30, not 30.0).
RETRY_OPTIONS: dict[str, type] = {"concurrency": int, "connect_timeout_s": float,
                                  "timeout_s": float, "total_timeout_s": float,
                                  "max_retries": int, "backoff_s": float}
HTTP_OPTIONS: dict[str, type] = {"base_url": str, "api_key_env": str, **RETRY_OPTIONS}


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise EvalkitError("the HTTP backends need httpx: pip install 'evalkit[http]'") from None
    return httpx


def checked_options(backend: str, options: Mapping[str, Any],
                    known: Mapping[str, type]) -> dict[str, Any]:
    """check_options, after turning ints into floats where a float is asked for."""
    out = {k: (float(v) if known.get(k) is float and isinstance(v, int)
               and not isinstance(v, bool) else v) for k, v in options.items()}
    check_options(backend, out, known)
    for key in ("concurrency", "max_retries", "backoff_s"):
        low = 1 if key == "concurrency" else 0
        if key in out and out[key] < low:
            raise EvalkitError(f"backend {backend}: option '{key}' must be "
                               f"{'positive' if key == 'concurrency' else 'zero or more'}")
    for key in ("connect_timeout_s", "timeout_s", "total_timeout_s"):
        if key in out and not 0 < out[key] < float("inf"):
            raise EvalkitError(f"backend {backend}: option '{key}' must be a positive number "
                               "of seconds")
    return out


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (RFC 9110: delay-seconds or an HTTP-date); None if absent or
    unreadable. The caller caps it."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retryable_status(status: int) -> bool:
    """429 and 5xx are worth another try (501 Not Implemented never changes)."""
    return status == 429 or (500 <= status < 600 and status != 501)


class HttpError(Exception):
    """A request that failed. `status` is None when no response came (connection, timeout).
    The message is already redacted of the API key."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = False,
                 retry_after_s: float | None = None, truncated: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.truncated = truncated  # the answer passed its BodyLimit and was not read whole

    def __str__(self) -> str:
        return self.message  # redacted later, in place, where the key is known

    def response(self, start: float) -> Response:
        """This failure as the Response of a request that began at perf_counter `start`."""
        return Response(error=self.message, retryable=self.retryable,
                        retry_after_s=self.retry_after_s, truncated=self.truncated,
                        latency_s=time.perf_counter() - start)


class ApiKey:
    """An API key that lives only in the environment: read at request time, never kept."""

    def __init__(self, env: str | None, backend: str) -> None:
        self.env = env
        if env is not None and not os.environ.get(env):
            raise EvalkitError(f"backend {backend}: api_key_env names {env}, which is not set: "
                               f"export {env}=<your key>")

    def headers(self) -> dict[str, str]:
        key = os.environ.get(self.env) if self.env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def redact(self, text: str) -> str:
        key = os.environ.get(self.env) if self.env else None
        return text.replace(key, MASK) if key else text


def secret_values(value: Any, secret: bool = False) -> set[str]:
    """Every secret string inside backend options: values under secret-named keys (at any
    depth, e.g. extra_body.api_key) and the password (or token user name) and secret-named
    query values of URLs, each also as percent-decoded."""
    found: set[str] = set()
    if isinstance(value, Mapping):
        for k, v in value.items():
            found |= secret_values(v, secret or (isinstance(k, str) and is_secret_key(k)))
    elif isinstance(value, (list, tuple)):
        for v in value:
            found |= secret_values(v, secret)
    elif isinstance(value, str) and secret:
        found.add(value)
    if isinstance(value, str) and "://" in value:
        try:
            parts = urlsplit(value)
            if parts.password:
                found.add(parts.password)
                # the Basic credentials httpx sends for it, should a gateway echo the header
                found.add(base64.b64encode(f"{unquote(parts.username or '')}:"
                                           f"{unquote(parts.password)}".encode()).decode())
            elif "@" in parts.netloc:
                found.add(parts.netloc.rsplit("@", 1)[0])
            found |= {v for k, v in parse_qsl(parts.query) if is_secret_key(k)}
        except ValueError:
            pass
    # Shorter ones are masked where they stand (URLs, secret keys) but not wherever their
    # letters occur: masking every "ab" would garble every message and hide nothing.
    return {s for x in found for s in (x, unquote(x)) if len(s) >= MIN_SECRET_CHARS}


class Secrets:
    """Redacts every message a backend shows or records: the API key (read now, as it may
    rotate), the literal secrets of the options, and any URL's password or secret query."""

    def __init__(self, key: ApiKey, options: Mapping[str, Any]) -> None:
        self.key = key
        # longest first: a secret that contains another is masked whole
        self._literals = sorted(secret_values(dict(options)), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = self.key.redact(text)
        for literal in self._literals:
            text = text.replace(literal, MASK)
        return redact_text(text)


MAX_DETAIL_CHARS = 500
EXCERPT_CHARS = 200  # of a body that cannot be used, in its message


def error_detail(body: Any, text: str, max_chars: int = MAX_DETAIL_CHARS) -> str:
    """The human part of an error body, on one line and capped: OpenAI's
    {"error": {"message"}}, TGI's {"error"}, FastAPI's {"detail"}, or the start of the
    text. The cap falls between words, so that a secret in it stays whole for redaction."""
    detail = " ".join(text[:4 * max_chars].split())
    if isinstance(body, Mapping):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, Mapping):
            err = err.get("message", err)
        if err is not None:
            kind = body.get("error_type")
            detail = " ".join((f"{err} ({kind})" if kind else str(err)).split())
    if len(detail) <= max_chars:
        return detail
    cut = detail[:max_chars + 1]
    return ((cut[:cut.rindex(" ")] if " " in cut else "") + " ...").lstrip()


def excerpt(body: Any) -> str:
    """The start of a body (bytes, text, or parsed JSON), on one line, for a message about
    an answer that cannot be used. Not yet redacted: the caller redacts its message."""
    if isinstance(body, (bytes, bytearray)):
        text = bytes(body[:16 * EXCERPT_CHARS]).decode("utf-8", errors="replace")
    elif isinstance(body, str):
        text = body
    else:
        text = json.dumps(body, ensure_ascii=False, default=str)
    return repr(error_detail(None, text, EXCERPT_CHARS) or "(empty)")


# -- how much of an answer is read (see the module docstring) -----------------------------
KIB, MIB = 1024, 1024 * 1024
MIN_BODY_BYTES = 1 * MIB
BODY_BYTES_PER_TOKEN = 1 * KIB  # of a generation's body, per new token
CHARS_PER_TOKEN = 32  # of a generation's text, per new token
MIN_TEXT_CHARS = 1024
PROMPT_BYTES_PER_TOKEN = 1 * KIB  # of a scoring answer (logprobs), per prompt token
PROMPT_BYTES_PER_CHAR = 32  # ... and per prompt character (echoed, escaped, in tokens)
TOKENIZE_BYTES_PER_CHAR = 512  # up to 4 byte tokens a character, each an object
METADATA_MAX_BYTES = 8 * MIB  # /v1/models of a gateway lists hundreds of models
ERROR_MAX_BYTES = 64 * KIB


def _size(n_bytes: int) -> str:
    for unit, size in (("MiB", MIB), ("KiB", KIB)):
        if n_bytes >= size and n_bytes % size == 0:
            return f"{n_bytes // size} {unit}"
    return f"{n_bytes} bytes"


@dataclass(frozen=True)
class BodyLimit:
    """How much of one answer is read: `max_bytes` of its body (as decoded: a compressed
    body counts as it unpacks), and `max_chars` of its text where it has one (None: no
    text). `what` names the request in the message of an answer cut short."""

    max_bytes: int
    what: str
    max_chars: int | None = None

    @classmethod
    def generation(cls, max_new_tokens: int) -> BodyLimit:
        n = max(1, max_new_tokens)
        return cls(max(MIN_BODY_BYTES, BODY_BYTES_PER_TOKEN * n),
                   f"a request of {max_new_tokens} new tokens",
                   max(MIN_TEXT_CHARS, CHARS_PER_TOKEN * n))

    @classmethod
    def prompt(cls, n_tokens: int, n_chars: int) -> BodyLimit:
        """Scoring a prompt of `n_tokens` tokens (`n_chars` characters): the answer holds a
        logprob for each, with the token's text."""
        return cls(max(MIN_BODY_BYTES, PROMPT_BYTES_PER_TOKEN * n_tokens
                       + PROMPT_BYTES_PER_CHAR * n_chars),
                   f"scoring a prompt of {n_tokens} tokens")

    @classmethod
    def tokenize(cls, n_chars: int) -> BodyLimit:
        return cls(max(MIN_BODY_BYTES, TOKENIZE_BYTES_PER_CHAR * n_chars),
                   f"tokenizing a text of {n_chars} characters")

    @classmethod
    def metadata(cls, what: str) -> BodyLimit:
        return cls(METADATA_MAX_BYTES, what)

    def too_large(self, head: bytes) -> HttpError:
        """The error of an answer that passed max_bytes (`head`: its start): not retried,
        as the server would send as much again."""
        return HttpError(f"the server sent more than {_size(self.max_bytes)} for {self.what}: "
                         f"not read further (it starts {excerpt(head)})", truncated=True)

    def cut_text(self, text: str) -> tuple[str, bool]:
        """The text cut to max_chars, and whether it was cut."""
        if self.max_chars is None or len(text) <= self.max_chars:
            return text, False
        return text[:self.max_chars], True


async def read_some(resp: Any, max_bytes: int) -> tuple[bytes, bool]:
    """The body as it streams in, until it passes `max_bytes`: (what was read, whether the
    rest was left unread). Unread, it goes with the connection, which is then closed."""
    chunks: list[bytes] = []
    n_read = 0
    async for chunk in resp.aiter_bytes():
        chunks.append(chunk)
        n_read += len(chunk)
        if n_read > max_bytes:
            return b"".join(chunks), True
    return b"".join(chunks), False


async def read_body(resp: Any, limit: BodyLimit) -> bytes:
    """The whole body, or HttpError (limit.too_large) once it passes limit.max_bytes."""
    body, cut = await read_some(resp, limit.max_bytes)
    if cut:
        raise limit.too_large(body)
    return body


async def read_json(resp: Any, limit: BodyLimit) -> Any:
    body = await read_body(resp, limit)
    try:
        return json.loads(body)
    except ValueError:
        raise HttpError(f"the server answered {resp.status_code} with a body that is not JSON "
                        f"(it starts {excerpt(body)})") from None


class CappedLines:
    """The lines of a streamed body (server-sent events), read until the body passes
    `max_bytes`; then the iteration ends and `cut` is set. A line is decoded whole, so a
    character split between two chunks stays whole."""

    def __init__(self, resp: Any, max_bytes: int) -> None:
        self.resp = resp
        self.max_bytes = max_bytes
        self.cut = False
        self.head = b""  # the start of the body, for a message

    async def lines(self) -> AsyncIterator[str]:
        buffer = bytearray()
        n_read = 0
        async for chunk in self.resp.aiter_bytes():
            if len(self.head) < 16 * EXCERPT_CHARS:
                self.head += bytes(chunk[:16 * EXCERPT_CHARS - len(self.head)])
            n_read += len(chunk)
            buffer += chunk
            start = 0
            while (end := buffer.find(b"\n", start)) >= 0:
                yield buffer[start:end].decode("utf-8", errors="replace").rstrip("\r")
                start = end + 1
            del buffer[:start]
            if n_read > self.max_bytes:
                self.cut = True
                return
        if buffer:
            yield buffer.decode("utf-8", errors="replace").rstrip("\r")


class HttpClient:
    """Bounded-concurrency JSON client for one server (see the module docstring)."""

    def __init__(self, backend: str, base_url: str, options: Mapping[str, Any],
                 notify: Notify = notify_stderr) -> None:
        httpx = _import_httpx()
        self._httpx = httpx
        self.backend = backend
        # The query of a base_url (Azure's api-version, a key in ?api_key=) goes with every
        # request as params: appended to the path, it would end up before the route.
        parts = urlsplit(base_url.strip())
        self.params = parse_qsl(parts.query, keep_blank_values=True)
        self.base_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.where = redact_url(self.base_url)  # the server, as every message names it
        if urlsplit(self.base_url).scheme not in ("http", "https"):
            raise EvalkitError(f"backend {backend}: base_url {self.where} must start with "
                               "http:// or https://")
        self.concurrency = int(options.get("concurrency", DEFAULT_CONCURRENCY))
        self.connect_timeout_s = float(options.get("connect_timeout_s",
                                                   DEFAULT_CONNECT_TIMEOUT_S))
        self.timeout_s = float(options.get("timeout_s", DEFAULT_TIMEOUT_S))
        # the policy of the client's own metadata and tokenize calls (requests: the Model's)
        self.retry = RetryPolicy.from_options(options, remote=True)
        self.key = ApiKey(options.get("api_key_env"), backend)
        self.redact = Secrets(self.key, options)
        self.notify = notify
        # Tripped by a metadata call that got no answer at all: every later call and
        # request then fails at once, without being sent (see ServerHealth).
        self.health = ServerHealth(backend, self.where, self._notify)
        self._slow_noticed = False
        self._rng = random.Random()
        try:
            client = httpx.AsyncClient(
                base_url=self.base_url, params=self.params,
                timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
                limits=httpx.Limits(max_connections=self.concurrency))
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise EvalkitError(self.redact(f"backend {backend}: base_url {self.where} is not a "
                                           f"valid URL ({exc})")) from None
        self._client = client
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"evalkit-{backend}-http")
        self._thread.start()
        self._slots = asyncio.Semaphore(self.concurrency)
        weakref.finalize(self, _shut_down, self._loop, self._client)

    def _notify(self, message: str) -> None:
        self.notify(self.redact(message))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the client's loop and wait for it (from any thread but the loop's)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("HttpClient.run called on its own loop: it would wait forever")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def run_all(self, coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
        """Run the coroutines concurrently; their results in order. Interrupted (Ctrl-C,
        SIGTERM) while waiting, it cancels what is still in flight and raises Interrupted
        with the results that had arrived (by index), so that no answer is lost."""
        done: dict[int, T] = {}

        async def one(i: int, coro: Coroutine[Any, Any, T]) -> None:
            done[i] = await coro

        async def gather() -> list[T]:
            await asyncio.gather(*(one(i, c) for i, c in enumerate(coros)))
            return [done[i] for i in range(len(coros))]

        future = asyncio.run_coroutine_threadsafe(gather(), self._loop)
        try:
            return future.result()
        except KeyboardInterrupt as exc:
            future.cancel()
            # dict(): one step under the GIL; the results are Responses where it matters
            raise Interrupted.of(exc, cast("dict[int, Response]", dict(done))) from None

    def probe_json(self, path: str) -> Any:
        """GET a route that not every server has: ONE quiet attempt of at most PROBE_S (a
        live server says 404 in milliseconds), no retry, no notice. None where the server
        lacks it (a 4xx or 501); UNAVAILABLE where it could not say (no answer, a 5xx),
        which the caller treats as an answer of its own, never as an absent route."""
        within_s = min(PROBE_S, self.timeout_s, self.retry.total_timeout_s or PROBE_S)
        try:
            return self.run(self.call("GET", path, read_s=within_s, time_left_s=within_s))
        except HttpError as exc:
            lacks = exc.status is not None and (400 <= exc.status < 500 or exc.status == 501)
            return None if lacks else UNAVAILABLE

    def get_json(self, path: str, metadata: bool = True) -> Any:
        """GET; a metadata call (the default) has METADATA_TIMEOUT_S in all."""
        return self.request_json("GET", path, metadata=metadata)

    def post_json(self, path: str, body: Any, label: str | None = None,
                  metadata: bool = False, limit: BodyLimit | None = None) -> Any:
        return self.request_json("POST", path, body, label=label, metadata=metadata,
                                 limit=limit)

    def request_json(self, method: str, path: str, body: Any = None, label: str | None = None,
                     metadata: bool = False, limit: BodyLimit | None = None) -> Any:
        """A call of the client's own (metadata, tokenize: no Request), retried by the one
        policy from the calling thread, each retry announced on one line. A `metadata` call
        (a cheap one any live server answers at once) has METADATA_TIMEOUT_S in all, and a
        server silent to it is taken as down. At most `limit` (default: a metadata call's)
        of the answer is read. Raises HttpError after the last attempt, or at once when the
        server is down."""
        limit = limit or BodyLimit.metadata(f"{method} {path}")
        policy = self.retry.with_budget(METADATA_TIMEOUT_S) if metadata else self.retry
        budget = (f"the {policy.total_timeout_s:g} s a metadata call gets" if metadata
                  else policy.budget_text())
        read_s = min(self.timeout_s, METADATA_TIMEOUT_S / 3) if metadata else self.timeout_s
        what = f"{self.backend}: {method} {path}" + (f" ({label})" if label else "")
        last: list[HttpError] = []

        def once(time_left_s: float | None) -> Any:
            try:
                return self.run(self.call(method, path, body, time_left_s=time_left_s,
                                          read_s=read_s, budget=budget, limit=limit))
            except HttpError as exc:
                last[:] = [exc]
                raise RetryableError(exc.message, retryable=exc.retryable,
                                     retry_after_s=exc.retry_after_s) from None

        try:
            result = retry_call(once, policy, what=what, notify=self._notify, rng=self._rng,
                                budget=budget)
        except RetryableError as exc:
            status = last[0].status if last else None
            if not exc.retryable:
                if status is not None:
                    self.health.answered()  # it answered: this call's fault, not the server's
                raise HttpError(exc.message, status) from None
            message = self.health.failed(exc.message, at_once=metadata and status is None)
            raise HttpError(message, status, retryable=True) from None
        self.health.answered()
        return result

    async def call(self, method: str, path: str, body: Any = None,
                   read: Callable[[Any, BodyLimit], Awaitable[T]] = read_json,
                   time_left_s: float | None = None, read_s: float | None = None,
                   budget: str | None = None, limit: BodyLimit | None = None) -> T:
        """ONE attempt of a request, at most `concurrency` at a time. `read` turns a 2xx
        response into the result, reading at most `limit` of it (default: a metadata
        call's); it may stream, and may raise HttpError. The attempt ends within
        `time_left_s` (None: total_timeout_s) of the request's time (`budget`, as the
        messages name it), the server silent at most `read_s` (default timeout_s). Every
        failure is an HttpError naming the server, whose `retryable` and `retry_after_s`
        are the data the retry policy decides on; when the server is down, that at once."""
        budget = budget or self.retry.budget_text()
        limit = limit or BodyLimit.metadata(f"{method} {path}")
        read_s = self.timeout_s if read_s is None else read_s
        if time_left_s is None:
            time_left_s = self.retry.total_timeout_s or float("inf")
        async with self._slots:
            if self.health.down is not None:  # checked here: the wait for a slot is long
                raise HttpError(self.health.down, retryable=False)
            try:
                return await self._attempt(method, path, body, read, limit, time_left_s,
                                           budget, read_s)
            except HttpError as exc:
                exc.message = f"{self.where}: {exc.message}"
                raise

    async def _attempt(self, method: str, path: str, body: Any,
                       read: Callable[[Any, BodyLimit], Awaitable[T]], limit: BodyLimit,
                       remaining_s: float, budget: str, read_s: float) -> T:
        """One attempt within `remaining_s` of the request's time limit (`budget`, as the
        messages name it), the server silent at most `read_s`; every failure comes out as
        HttpError."""
        httpx = self._httpx
        if remaining_s <= 0:
            raise HttpError(f"{budget} used up", retryable=True)
        what = f"{method} {path}"
        slow = None
        if not self._slow_noticed and min(read_s, remaining_s) > SLOW_NOTICE_S:
            slow = asyncio.get_running_loop().call_later(SLOW_NOTICE_S, self._slow_notice,
                                                         what)
        timeout = httpx.Timeout(read_s, connect=self.connect_timeout_s)
        try:
            return await asyncio.wait_for(self._once(method, path, body, read, limit,
                                                     timeout), remaining_s)
        except asyncio.TimeoutError:
            raise HttpError("no complete answer in the time left", retryable=True) from None
        except httpx.ConnectTimeout:
            raise HttpError(f"could not connect within connect_timeout_s="
                            f"{self.connect_timeout_s:g} s", retryable=True) from None
        except httpx.TimeoutException:
            what_s = (f"timeout_s={self.timeout_s:g} s" if read_s == self.timeout_s
                      else f"{read_s:g} s")
            raise HttpError(f"no answer within {what_s}", retryable=True) from None
        except httpx.TransportError as exc:  # refused, reset, dropped mid-answer
            raise HttpError(self.redact(f"connection failed ({type(exc).__name__}: "
                                        f"{exc or 'no detail'})"), retryable=True) from None
        finally:
            if slow is not None:
                slow.cancel()

    def _slow_notice(self, what: str) -> None:
        if not self._slow_noticed:
            self._slow_noticed = True
            self._notify(f"{self.backend}: {what}: no answer yet after {SLOW_NOTICE_S:.0f} s; "
                         f"waiting up to timeout_s={self.timeout_s:g} s (a long prompt on a "
                         "slow server takes minutes)")

    async def _once(self, method: str, path: str, body: Any,
                    read: Callable[[Any, BodyLimit], Awaitable[T]], limit: BodyLimit,
                    timeout: Any) -> T:
        async with self._client.stream(method, path, json=body, headers=self.key.headers(),
                                       timeout=timeout) as resp:
            if resp.status_code >= 400:
                raw, _ = await read_some(resp, ERROR_MAX_BYTES)  # the message shows its start
                # a gateway may echo the request, key and all
                text = self.redact(raw[:ERROR_MAX_BYTES].decode("utf-8", errors="replace"))
                try:
                    parsed = json.loads(text)
                except ValueError:
                    parsed = None
                # the wait asked is data (the give-up line says it), not part of the
                # message: the samples of one failure keep one shared line
                raise HttpError(
                    f"HTTP {resp.status_code} {resp.reason_phrase}: "
                    f"{error_detail(parsed, text)}",
                    resp.status_code, retryable_status(resp.status_code),
                    parse_retry_after(resp.headers.get("retry-after")))
            try:
                return await read(resp, limit)
            except HttpError as exc:
                exc.message = self.redact(exc.message)
                raise


def _shut_down(loop: asyncio.AbstractEventLoop, client: Any) -> None:
    """Close the client on its loop, then stop the loop (at garbage collection or exit)."""
    if loop.is_closed() or not loop.is_running():
        return
    try:
        asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=5)
    except (RuntimeError, TimeoutError, OSError):
        pass  # the interpreter is going down; the sockets go with it
    loop.call_soon_threadsafe(loop.stop)
