"""`evalkit ARGS` in the test's own process, through the console script's main(), and the
check that a refusal is one line."""

from __future__ import annotations

import sys
from typing import Any

import pytest

import evalkit.cli


def in_proc(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                       *args: Any) -> tuple[int, str, str]:
    """`evalkit ARGS` in this process (the same main() as the console script): exit code,
    stdout, stderr. An exception that main() does not turn into one line propagates."""
    monkeypatch.setattr(sys, "argv", ["evalkit", *map(str, args)])
    try:
        evalkit.cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit 2 and exactly one stderr line, `error: ...`, holding every needle."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
