"""How a signal stops a command without losing an answer that arrived.

SIGINT (Ctrl-C), SIGTERM (timeout, docker stop, Kubernetes, Slurm, a CI cancel) and SIGHUP
(the terminal closed) raise `Interrupted` (evalkit.types), a KeyboardInterrupt that names
the signal; the CLI exits with 128 + its number. While answers are handled (cached,
recorded: `deferred()`), a signal waits: it is raised where the Model waits for the backend
(`allowed()`), whose callers carry the answers that had arrived up to the runner, or when
the handling ends. So it never lands between an answer's arrival and its record.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from evalkit.types import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_deferring = 0  # depth of deferred() sections
_allowed = 0  # depth of allowed() sections inside them
_pending: int | None = None  # a signal that came while deferred
_before: dict[int, Any] = {}  # what install() replaced, for release()


def on_signal(signum: int, frame: object) -> None:
    """The handler: raise Interrupted now, or once the answers in hand are handled."""
    global _pending
    if _deferring and not _allowed:
        _pending = signum
        return
    raise Interrupted(signum)


def install() -> None:
    """Take SIGINT, SIGTERM and SIGHUP over (in the main thread). A signal that the parent
    set to be ignored stays ignored (nohup)."""
    for sig in SIGNALS:
        current = signal.getsignal(sig)
        if current is not signal.SIG_IGN:
            if current is not on_signal:
                _before[sig] = current
            signal.signal(sig, on_signal)


def release() -> None:
    """Put back the handlers install() replaced, as the command ends (a process that calls
    the command in itself, a test or a notebook, gets its own handlers back)."""
    for sig, handler in list(_before.items()):
        if signal.getsignal(sig) is on_signal:
            signal.signal(sig, handler)
        del _before[sig]


def _raise_pending() -> None:
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """A section in which a signal waits for the next allowed() section, or for its end."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring:
        _raise_pending()


@contextmanager
def allowed() -> Iterator[None]:
    """Where a signal is taken at once (a wait for the backend): one that came while
    deferred is raised on entry, before anything is sent."""
    global _allowed
    _raise_pending()
    _allowed += 1
    try:
        yield
    finally:
        _allowed -= 1
