"""The `evalkit` console script (and `python -m evalkit`).

Ctrl-C, SIGTERM and SIGHUP are taken over first, before the second the imports take: a
signal then ends the process at once with its exit code (nothing has begun, nothing is
lost); once the command runs, it stops the command without losing an answer
(evalkit.interrupts)."""

from __future__ import annotations

import contextlib
import os
import signal


def _before_start(signum: int, frame: object) -> None:
    # an exception raised here could land in a finalizer and be ignored: exit at once
    with contextlib.suppress(OSError):
        os.write(2, f"interrupted ({signal.Signals(signum).name}) before the command "
                    "began\n".encode())
    os._exit(128 + signum)


def main() -> None:
    from evalkit.interrupts import SIGNALS  # light: the standard library and evalkit.types

    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _before_start)
    from evalkit.cli import main as cli_main

    try:
        cli_main()
    finally:
        # the command is over, every answer saved: while the interpreter shuts down
        # (closing clients, flushing), a signal ends the process at once instead of
        # raising in cleanup code, where it could only print a traceback
        for sig in SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)


if __name__ == "__main__":
    main()
