"""The one retry policy: bounded retries decided from data, and a remote server's health."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from evalkit.types import (
    Log,
)

T = TypeVar("T")

DEFAULT_MAX_RETRIES = 4  # remote backends: 429s, 5xx and dropped connections are common
DEFAULT_LOCAL_RETRIES = 2  # in-process engines: a transient fault (memory) is rare
DEFAULT_BACKOFF_S = 0.5
DEFAULT_TOTAL_TIMEOUT_S = 600.0  # one remote request, all attempts and waits
MAX_SLEEP_S = 30.0  # no single backoff or Retry-After wait is longer than this
TRIP_AFTER = 2  # requests in a row that failed past their retries: the server is down


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


