"""Property-based fuzzing of the `evalkit` command: random command lines over every
command, random config values, and damaged run folders. Whatever comes in, the outcome is
clean: success, a partial run (exit 3), or one `error: ...` line and exit 2; never a
traceback and never evalkit's "internal error" (exit 1).

The examples are derandomized, so CI runs the same inputs every time; EVALKIT_FUZZ_SCALE=10
explores ten times as many (seeded from the clock) on a developer's machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evalkit import cli

SCALE = int(os.environ.get("EVALKIT_FUZZ_SCALE", "1"))
COUNTS: Counter[str] = Counter()


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=n * SCALE, deadline=None, database=None,
                    derandomize=SCALE == 1,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def invoke(*args: str) -> tuple[int, str, str]:
    """`evalkit ARGS` in process, through the console script's own entry point."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["evalkit", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def assert_clean(args: tuple[str, ...], code: int, out: str, err: str) -> None:
    text = out + err
    where = f"evalkit {' '.join(args)!s:.300} -> exit {code}: {err[-600:]}"
    assert "Traceback" not in text, where
    assert "internal error" not in err, where
    assert code in (0, 2, 3), where
    usage = "Usage:" in text or "─ Error ─" in text  # typer's own usage errors and help
    if code == 2 and not usage:
        lines = [x for x in err.splitlines() if x.strip()]
        assert lines and lines[-1].startswith("error: "), where
        assert sum(x.startswith("error: ") for x in lines) == 1, where
    COUNTS[f"exit {code}"] += 1


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    sys.stderr.write(f"\nCLI fuzzing: {sum(COUNTS.values())} invocations, "
                     f"{dict(sorted(COUNTS.items()))}, 0 tracebacks\n")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small finished run on the scripted backend, to show, report, compare and damage."""
    root = tmp_path_factory.mktemp("fuzz-run")
    code, _, err = invoke("run", "--backend", "scripted", "--model", "m", "--task", "passkey",
                          "--task", "lines", "--lengths", "300,500", "--samples", "2",
                          "--out", str(root / "run"), "--no-progress")
    assert code == 0, err
    return root / "run"


# ---- random command lines -------------------------------------------------------------------

_WORDS = st.sampled_from([
    "", "-", "--", ".", "..", "/", "0", "-1", "1", "2", "3", "1k", "4k", "300", "2000k",
    "99999999999999999999", "nan", "inf", "1e9", "1.5", "true", "none", "null", "é", "\x00x",
    "passkey", "lines", "topics", "longqa", "hellaswag", "scripted", "llamacpp", "openai",
    "auto", "raw", "chat", "mistrallite", "mistral-instruct", "whitespace", "mistral-v1",
    "quickstart", "smollm2", "missing.yaml", "missing.gguf", "missing.jsonl", "{RUN}", "{DIR}",
    "{FILE}", "{OUT}", "a b", "x" * 300, "http://u:p@127.0.0.1:1",
])
_OPTIONS = {
    "run": ["--task", "-t", "--lengths", "--samples", "--seed", "--model", "--backend",
            "--template", "--tokenizer", "--corpus", "--cases", "--quality", "--out",
            "--results", "--dry-run", "--no-progress", "--progress", "--bogus"],
    "show": ["--bogus"],
    "report": ["--out", "--index", "--title", "--bogus"],
    "compare": ["--out", "--bogus"],
    "tasks": ["--bogus"],
    "convert-gguf": ["--bogus"],
}
_FLAGS = {"--dry-run", "--no-progress", "--progress"}


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from([*_OPTIONS, "nonsense", ""]))
    args = [command] if command else []
    for _ in range(draw(st.integers(0, 6))):
        if command in _OPTIONS and draw(st.booleans()):
            opt = draw(st.sampled_from(_OPTIONS[command]))
            args.append(opt)
            if opt not in _FLAGS and draw(st.integers(0, 9)) > 0:
                args.append(draw(_WORDS))
        else:
            args.append(draw(_WORDS))
    if command == "run" and "--dry-run" not in args:
        # a real run, kept on the scripted backend so that no engine loads and it is quick
        args += ["--backend", "scripted", "--no-progress"]
    return args


def _fill(args: list[str], run: Path, scratch: Path) -> list[str]:
    subst = {"{RUN}": str(run), "{DIR}": str(scratch), "{FILE}": str(scratch / "afile.txt"),
             "{OUT}": str(scratch / "out")}
    return [subst.get(a, a) for a in args]


def test_random_command_lines_end_cleanly(finished_run: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("not a run\n")

    @fuzz_settings(150)
    @given(args=command_lines())
    def check(args: list[str]) -> None:
        # lengths stay small: the whitespace counter makes any length quick, but the
        # scripted backend's window is large, so a huge length is refused only by our cap
        filled = _fill(args, finished_run, tmp_path)
        if "--lengths" in filled or "--samples" in filled:
            filled += ["--lengths", "300", "--samples", "1"]
        code, out, err = invoke(*filled)
        assert_clean(tuple(filled), code, out, err)

    check()


# ---- random config values -------------------------------------------------------------------

_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6)
_KEYS = ["name", "model", "backend", "backend_options", "tokenizer", "template", "seed",
         "samples", "temperature", "retries", "lengths", "tasks", "models", "label", "bogus"]
_TASK_KEYS = ["depths", "key_digits", "index_style", "num_lines", "num_topics", "cases",
              "corpus", "quality", "hard_only", "lengths", "samples", "template",
              "max_new_tokens", "bogus"]


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {"backend": "scripted", "model": "m", "tasks": ["passkey"]}
    for key in draw(st.lists(st.sampled_from(_KEYS), max_size=4, unique=True)):
        if key == "tasks" and draw(st.booleans()):
            name = draw(st.sampled_from(["passkey", "lines", "topics", "longqa", "nope"]))
            params = {k: draw(_JSONISH) for k in
                      draw(st.lists(st.sampled_from(_TASK_KEYS), max_size=3, unique=True))}
            data["tasks"] = [{name: params}]
        else:
            data[key] = draw(_JSONISH)
    return data


def test_random_config_values_end_cleanly(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "fuzz.yaml"

    @fuzz_settings(200)
    @given(data=configs(), dry=st.booleans())
    def check(data: dict[str, Any], dry: bool) -> None:
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        # the config's own values are validated whatever the command line overrides; the
        # overrides keep the planned work small
        args = ["run", str(path), "--lengths", "300", "--samples", "1", "--no-progress",
                "--out", str(tmp_path / "out")]
        args += ["--dry-run", "--tokenizer", "whitespace", "--template", "raw"] if dry else []
        code, out, err = invoke(*args)
        assert_clean(tuple(args), code, out, err)
        shutil.rmtree(tmp_path / "out", ignore_errors=True)

    check()


# ---- damaged run folders --------------------------------------------------------------------

def _damage(rng: random.Random, run: Path) -> str:
    files = sorted(p for p in run.iterdir() if p.is_file() and not p.name.startswith("."))
    target = rng.choice(files)
    data = target.read_bytes()
    how = rng.choice(["truncate", "garbage line", "flip bytes", "drop key", "wrong type",
                      "delete", "empty", "not utf-8", "json list"])
    if how == "truncate":
        target.write_bytes(data[:rng.randrange(len(data) + 1)])
    elif how == "garbage line":
        lines = data.splitlines(keepends=True)
        lines.insert(rng.randrange(len(lines) + 1), b"{not json at all\n")
        target.write_bytes(b"".join(lines))
    elif how == "flip bytes":
        buf = bytearray(data)
        for _ in range(rng.randint(1, 5)):
            if buf:
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        target.write_bytes(bytes(buf))
    elif how in ("drop key", "wrong type"):
        lines = data.decode("utf-8", "replace").splitlines() or [""]
        i = rng.randrange(len(lines)) if target.suffix == ".jsonl" else None
        try:
            obj = json.loads(lines[i]) if i is not None else json.loads(data)
        except ValueError:  # not JSON (or not UTF-8) already: damage it another way
            return _damage(rng, run)
        if isinstance(obj, dict) and obj:
            node = obj
            for _ in range(rng.randint(0, 2)):  # walk into a nested object now and then
                inner = [v for v in node.values() if isinstance(v, dict) and v]
                if not inner:
                    break
                node = rng.choice(inner)
            key = rng.choice(sorted(node))
            if how == "drop key":
                del node[key]
            else:
                node[key] = rng.choice([None, 7, "x", [1], {"a": 1}, True, -1.5])
        text = json.dumps(obj)
        if i is not None:
            lines[i] = text
            target.write_text("\n".join(lines) + "\n")
        else:
            target.write_text(text)
    elif how == "delete":
        target.unlink()
    elif how == "empty":
        target.write_bytes(b"")
    elif how == "not utf-8":
        target.write_bytes(b"\xff\xfe" + data)
    else:
        target.write_text("[1, 2, 3]\n")
    return f"{how} {target.name}"


def test_damaged_run_folders_are_read_cleanly(finished_run: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tally: Counter[str] = Counter()

    @fuzz_settings(60)
    @given(seed=st.integers(0, 2**32), damages=st.integers(1, 3),
           command=st.sampled_from(["show", "report", "compare", "index", "resume"]))
    def check(seed: int, damages: int, command: str) -> None:
        rng = random.Random(seed)
        work = tmp_path / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        run = work / "run"
        shutil.copytree(finished_run, run)
        for _ in range(damages):
            if any(p.is_file() for p in run.iterdir()):
                tally[_damage(rng, run).split()[0]] += 1
        args = {
            "show": ["show", str(run)],
            "report": ["report", str(run), "--out", str(work / "rep")],
            "compare": ["compare", str(finished_run), str(run)],
            "index": ["report", "--index", str(work), "--out", str(work / "idx")],
            "resume": ["run", "--backend", "scripted", "--model", "m", "--task", "passkey",
                       "--task", "lines", "--lengths", "300,500", "--samples", "2",
                       "--out", str(run), "--no-progress"],
        }[command]
        code, out, err = invoke(*args)
        assert_clean(tuple(args), code, out, err)
        tally[f"{command} exit {code}"] += 1

    check()
    sys.stderr.write(f"\ndamaged run folders: {dict(sorted(tally.items()))}\n")
