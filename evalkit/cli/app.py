"""The command group: typer's app, its flags shown as flags, exit codes, one line for any
failure and for an interrupt (evalkit.cli)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from evalkit import interrupts
from evalkit.types import EvalkitError


def _untyped_flags(params: list[Any]) -> list[Any]:
    """Flags (--dry-run, --progress/--no-progress, --help) with a blank metavar: typer's
    rich help prints each option's value type, `<bool>` for a flag, which takes no value."""
    for p in params:
        if isinstance(p, TyperOption) and (p.is_flag or p.count) and p.metavar is None:
            p.metavar = ""
    return params


class _Command(TyperCommand):
    """A command whose help shows a flag as a flag (_untyped_flags)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


class _Group(TyperGroup):
    """`evalkit --help` likewise; and an interrupt of any command is one line and exit
    128 + the signal (typer would exit 130 without a word)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            code = _interrupted(exc)
            # at once: what arrived is recorded, and a server call still running in a
            # worker thread (SageMaker's pool) must not hold the exit up to its timeout
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


app = typer.Typer(cls=_Group, add_completion=False, pretty_exceptions_enable=False,
                  no_args_is_help=True, help="Long-context evaluation: accuracy by input length.")


# Exit codes: 0 done; 1 a regression (gate) or an internal error; 2 bad input or a fault
# that stopped the command (one line on stderr says what to do); 3 a run that finished
# partial (some samples errored: rerun to retry them); 128 + the signal when interrupted:
# 130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP (the same command resumes).
EXIT_BAD_INPUT = 2
EXIT_PARTIAL = 3


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def _interrupted(exc: KeyboardInterrupt) -> int:
    """Say that the command was interrupted, and by what; its exit code (128 + signal)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        _err(f"\ninterrupted ({signal.Signals(signum).name}): every finished sample is saved; "
             "run the same command again to resume")
    return 128 + int(signum)


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The interrupt an exit was raised for (typer turns one into a silent exit 130)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def main() -> None:
    """The console script: every failure is one line on stderr and an exit code, never a
    traceback (EVALKIT_DEBUG=1 shows the traceback of an internal error)."""
    try:
        interrupts.install()
        app()
    except KeyboardInterrupt as exc:  # a signal while typer builds the command, before click
        sys.exit(_interrupted(exc))
    except SystemExit as exc:  # a signal while typer parses the command line: it exits 130
        interrupt = _interrupt_behind(exc)
        if interrupt is None:
            raise
        sys.exit(_interrupted(interrupt))
    except EvalkitError as exc:
        _err(f"error: {exc}")
        sys.exit(EXIT_BAD_INPUT)
    except OSError as exc:  # disk full, permission denied, a vanished file: say which
        where = f" ({exc.filename})" if exc.filename else ""
        _err(f"error: {exc.strerror or exc}{where}: fix that and run the same command again")
        sys.exit(EXIT_BAD_INPUT)
    except Exception as exc:
        if os.environ.get("EVALKIT_DEBUG"):
            raise
        text = " ".join(str(exc).split())[:300]
        _err(f"internal error (a bug in evalkit, please report it): {type(exc).__name__}: "
             f"{text} (EVALKIT_DEBUG=1 shows the traceback)")
        sys.exit(1)
    finally:
        interrupts.release()
