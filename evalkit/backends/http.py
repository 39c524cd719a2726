"""What the HTTP backends (openai, tgi, sagemaker) share.

- `HttpClient`: one httpx.AsyncClient on an event loop of its own (a daemon thread), so
  that the synchronous Backend methods can run a batch of requests concurrently, at most
  `concurrency` at a time, whatever thread or event loop the caller is in.
- `RetryPolicy`: bounded retries with exponential backoff and full jitter on 429, 5xx,
  connection errors and timeouts; Retry-After is honoured, and every sleep is capped.
- `ApiKey`: the key is read from the environment variable the config names, at request
  time; it is never stored, and every error message is redacted of it.

Token counting for these backends is in evalkit/backends/counting.py.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from evalkit.backends import check_options
from evalkit.types import EvalkitError

T = TypeVar("T")

DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 600.0  # a 32K-token prefill on a CPU server takes minutes
DEFAULT_MAX_RETRIES = 4
DEFAULT_BACKOFF_S = 0.5
MAX_SLEEP_S = 30.0  # no single backoff or Retry-After sleep is longer than this

# Options every HTTP backend takes (float options also accept ints: YAML writes 30, not 30.0).
HTTP_OPTIONS: dict[str, type] = {"base_url": str, "api_key_env": str, "concurrency": int,
                                 "timeout_s": float, "max_retries": int, "backoff_s": float}
RETRY_OPTIONS: dict[str, type] = {k: HTTP_OPTIONS[k] for k in
                                  ("concurrency", "timeout_s", "max_retries", "backoff_s")}


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
    for key in ("concurrency", "max_retries", "timeout_s", "backoff_s"):
        low = 1 if key == "concurrency" else 0
        if key in out and (out[key] < low or (key == "timeout_s" and out[key] <= 0)):
            raise EvalkitError(f"backend {backend}: option '{key}' must be "
                               f"{'positive' if key != 'max_retries' else 'zero or more'}")
    return out


@dataclass(frozen=True)
class RetryPolicy:
    """At most `max_retries` retries; the n-th sleeps uniformly in [0, backoff_s * 2**n]
    (full jitter, so that many clients do not retry in step), capped at MAX_SLEEP_S."""

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S

    def delay_s(self, attempt: int, rng: random.Random,
                retry_after_s: float | None = None) -> float:
        if retry_after_s is not None:
            return min(max(0.0, retry_after_s), MAX_SLEEP_S)
        return rng.uniform(0.0, min(MAX_SLEEP_S, self.backoff_s * 2 ** attempt))

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RetryPolicy:
        return cls(int(options.get("max_retries", DEFAULT_MAX_RETRIES)),
                   float(options.get("backoff_s", DEFAULT_BACKOFF_S)))


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
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.message  # redacted later, in place, where the key is known


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
        return text.replace(key, "***") if key else text


def error_detail(body: Any, text: str) -> str:
    """The human part of an error body: OpenAI's {"error": {"message"}}, TGI's {"error"},
    FastAPI's {"detail"}, or the start of the text."""
    if isinstance(body, Mapping):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, Mapping):
            err = err.get("message", err)
        if err is not None:
            kind = body.get("error_type")
            return f"{err} ({kind})" if kind else str(err)
    return " ".join(text.split())[:300]


async def read_json(resp: Any) -> Any:
    await resp.aread()
    try:
        return resp.json()
    except ValueError:
        raise HttpError(f"the server answered {resp.status_code} with a body that is not JSON: "
                        f"{error_detail(None, resp.text)!r}") from None


class HttpClient:
    """Bounded-concurrency, retrying JSON client for one server (see the module docstring)."""

    def __init__(self, backend: str, base_url: str, options: Mapping[str, Any]) -> None:
        httpx = _import_httpx()
        self._httpx = httpx
        self.backend = backend
        self.base_url = base_url.rstrip("/")
        self.concurrency = int(options.get("concurrency", DEFAULT_CONCURRENCY))
        self.timeout_s = float(options.get("timeout_s", DEFAULT_TIMEOUT_S))
        self.retry = RetryPolicy.from_options(options)
        self.key = ApiKey(options.get("api_key_env"), backend)
        self._rng = random.Random()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"evalkit-{backend}-http")
        self._thread.start()
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout_s,
            limits=httpx.Limits(max_connections=self.concurrency))
        self._slots = asyncio.Semaphore(self.concurrency)
        weakref.finalize(self, _shut_down, self._loop, self._client)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the client's loop and wait for it (from any thread but the loop's)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("HttpClient.run called on its own loop: it would wait forever")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def run_all(self, coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
        async def gather() -> list[T]:
            return list(await asyncio.gather(*coros))

        return self.run(gather())

    def get_json(self, path: str) -> Any:
        return self.run(self.call("GET", path))

    def post_json(self, path: str, body: Any) -> Any:
        return self.run(self.call("POST", path, body))

    async def call(self, method: str, path: str, body: Any = None,
                   read: Callable[[Any], Awaitable[T]] = read_json,
                   give_up: Callable[[HttpError], bool] | None = None) -> T:
        """One request, retried per the policy. `read` turns a 2xx response into the result
        (it may stream, and may raise HttpError); `give_up` marks errors not worth retrying.
        Raises HttpError naming the status or reason after the last attempt."""
        attempts = self.retry.max_retries + 1
        last = HttpError("no attempt made")
        for attempt in range(attempts):
            try:
                async with self._slots:  # the sleep below holds no slot
                    return await asyncio.wait_for(self._once(method, path, body, read),
                                                  self.timeout_s)
            except HttpError as exc:
                last = exc
            except (asyncio.TimeoutError, self._httpx.TimeoutException):
                last = HttpError(f"no answer within timeout_s={self.timeout_s:g} s",
                                 retryable=True)
            except self._httpx.TransportError as exc:  # refused, reset, dropped mid-answer
                last = HttpError(self.key.redact(
                    f"connection failed ({type(exc).__name__}: {exc or 'no detail'})"),
                    retryable=True)
            if not last.retryable or (give_up is not None and give_up(last)):
                raise last
            if attempt + 1 < attempts:
                await asyncio.sleep(self.retry.delay_s(attempt, self._rng, last.retry_after_s))
        raise HttpError(f"{last.message} (gave up after {attempts} attempts)", last.status)

    async def _once(self, method: str, path: str, body: Any,
                    read: Callable[[Any], Awaitable[T]]) -> T:
        async with self._client.stream(method, path, json=body,
                                       headers=self.key.headers()) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                try:
                    parsed = resp.json()
                except ValueError:
                    parsed = None
                detail = error_detail(parsed, resp.text)
                raise HttpError(
                    self.key.redact(f"HTTP {resp.status_code} {resp.reason_phrase}: {detail}"),
                    resp.status_code, retryable_status(resp.status_code),
                    parse_retry_after(resp.headers.get("retry-after")))
            try:
                return await read(resp)
            except HttpError as exc:
                exc.message = self.key.redact(exc.message)
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
