"""No fault loses a sample; bad input is one line.

The results store and the commands that read runs, under real faults: a full disk (a
small tmpfs, or a file size limit), a read-only run folder, damaged files, SIGKILLs at
random moments. Real files and real `evalkit` processes; nothing is mocked.

How a folder is made read-only here: root ignores permission bits, so `chmod -R a-w`
alone proves nothing when the tests run as root. As root, the "mount" variant bind-mounts
the folder read-only onto itself (every write is EROFS) and the "immutable" variant sets
`chattr -R +i` on it (EPERM, binding root too; needs a file system with that flag, such as
ext4). As any other user both variants are `chmod -R a-w` (EACCES), which binds that user.
Running evalkit as uid 65534 instead does not work where the interpreter itself lives in a
private home (/root/.pyenv, mode 0700): uid 65534 cannot even exec it. Each variant first
proves that a write really fails, so a test can never pass on a folder that was writable.

A full disk is a 256 KiB tmpfs mounted for the test (root only); the "rlimit" variant
gives the evalkit process a file size limit (RLIMIT_FSIZE: writes past it fail with EFBIG),
which needs no privilege and fails a write part-way just the same.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from clirun import in_proc, one_line_error

from evalkit.results import store, texts
from evalkit.runner.config import build_spec
from evalkit.runner.execute import run
from evalkit.types import EvalkitError

IS_ROOT = os.geteuid() == 0

SCRIPTED: dict[str, Any] = {
    "name": "faults", "model": "scripted", "backend": "scripted", "samples": 6,
    "lengths": [1000, 2000], "tasks": ["passkey", "lines", "longqa"],
}
N_SCRIPTED = 36
LONGER: dict[str, Any] = {**SCRIPTED, "lengths": [8000, 16000]}
# a model that cannot load: an error that names it means the model was reached first
NO_MODEL: dict[str, Any] = {**SCRIPTED, "name": "nomodel", "backend": "llamacpp",
                            "model": "/nonexistent/evalkit-test-model.gguf"}


# ---- helpers ---------------------------------------------------------------------------

def _config(folder: Path, data: dict[str, Any], name: str = "cfg.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(*args: Any, preexec: Callable[[], None] | None = None, cwd: Path | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`evalkit ARGS` as a real process."""
    return subprocess.run([sys.executable, "-m", "evalkit.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec, cwd=cwd)


def _records(run_dir: Path) -> list[dict[str, Any]]:
    text = (run_dir / store.SAMPLES).read_text()
    assert text == "" or text.endswith("\n"), "a half-written record is left at the end"
    return [json.loads(line) for line in text.splitlines()]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(folder.iterdir())}


def _summary_core(run_dir: Path) -> dict[str, Any]:
    s = json.loads((run_dir / store.SUMMARY).read_text())
    return {k: s[k] for k in ("status", "rows", "n_samples", "n_done", "n_errors")}


def _scripted_run(folder: Path, data: dict[str, Any] | None = None) -> Path:
    return run(build_spec(data or SCRIPTED), out=folder, progress=False,
               log=lambda m: None).run_dir


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished scripted run; tests copy it before they damage it."""
    return _scripted_run(tmp_path_factory.mktemp("finished") / "run")


def _copy(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


# ---- read-only folders -----------------------------------------------------------------

def _chmod_tree(folder: Path, writable: bool) -> None:
    for p in [folder, *folder.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP
                                                                | stat.S_IWOTH))


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def refusal(how: str) -> str:
    """The OS's words for a write into a folder made read-only `how`."""
    if not IS_ROOT:
        return os.strerror(errno.EACCES)  # "Permission denied"
    return os.strerror(errno.EROFS if how == "mount" else errno.EPERM)


@contextlib.contextmanager
def read_only(folder: Path, how: str) -> Iterator[None]:
    """Make `folder` and all in it read-only `how` (see the module docstring), prove that a
    write from a new process fails, and undo it afterwards."""
    undo: list[str] = []
    if IS_ROOT and how == "mount":
        res = _mount("--bind", str(folder), str(folder))
        if res.returncode != 0:
            pytest.skip(f"bind mounts are not permitted here ({res.stderr.strip()}); the "
                        "'immutable' variant makes the folder read-only another way")
        undo = ["umount"]
        res = _mount("-o", "remount,bind,ro", str(folder))
        assert res.returncode == 0, res.stderr
    elif IS_ROOT:
        res = subprocess.run(["chattr", "-R", "+i", str(folder)], capture_output=True,
                             text=True)
        if res.returncode != 0:
            subprocess.run(["chattr", "-R", "-i", str(folder)], capture_output=True)
            pytest.skip(f"chattr +i is not supported here ({res.stderr.strip()}); the "
                        "'mount' variant makes the folder read-only another way")
        undo = ["chattr"]
    else:
        _chmod_tree(folder, writable=False)
        undo = ["chmod"]
    try:
        probe = subprocess.run([sys.executable, "-c", f"open({str(folder / 'probe')!r}, 'w')"],
                               capture_output=True, text=True)
        assert probe.returncode != 0 and refusal(how) in probe.stderr, \
            f"{folder} is still writable ({how}): the test would prove nothing"
        yield
    finally:
        if undo == ["umount"]:
            _umount(folder)
        elif undo == ["chattr"]:
            subprocess.run(["chattr", "-R", "-i", str(folder)], capture_output=True)
        else:
            _chmod_tree(folder, writable=True)


@pytest.mark.parametrize("how", ["mount", "immutable"])
def test_show_and_rerun_of_a_finished_run_write_nothing_in_a_read_only_folder(
        tmp_path: Path, how: str) -> None:
    cfg = _config(tmp_path, SCRIPTED)
    run_dir = _scripted_run(tmp_path / "run")
    before = _snapshot(run_dir)
    with read_only(run_dir, how):
        shown = _cli("show", run_dir)
        assert shown.returncode == 0, shown.stderr
        assert f"status=complete ({N_SCRIPTED}/{N_SCRIPTED})" in shown.stdout
        again = _cli("run", cfg, "--out", run_dir, "--no-progress")
        assert again.returncode == 0, again.stderr
        assert f"{N_SCRIPTED}/{N_SCRIPTED} samples scored" in again.stdout
        assert again.stderr == ""
    assert _snapshot(run_dir) == before  # not a byte, not an mtime changed


@pytest.mark.parametrize("how", ["mount", "immutable"])
def test_read_only_run_without_summary_shows_in_memory_and_rerun_says_so_once(
        tmp_path: Path, how: str) -> None:
    cfg = _config(tmp_path, SCRIPTED)
    run_dir = _scripted_run(tmp_path / "run")
    from_summary = _cli("show", run_dir)
    assert from_summary.returncode == 0, from_summary.stderr
    (run_dir / store.SUMMARY).unlink()
    (run_dir / store.TABLE).unlink()
    before = _snapshot(run_dir)
    with read_only(run_dir, how):
        shown = _cli("show", run_dir)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout == from_summary.stdout  # the same table, computed in memory
        # the summary must now be written, and cannot be: one line, before any model work
        again = _cli("run", cfg, "--out", run_dir, "--no-progress")
        one_line_error(again.returncode, again.stderr, str(run_dir), refusal(how),
                        "run the same command again")
    assert _snapshot(run_dir) == before


def test_show_writes_nothing_even_where_it_could(finished: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = _copy(finished, tmp_path / "run")
    (run_dir / store.SUMMARY).unlink()
    (run_dir / store.TABLE).unlink()
    before = _snapshot(run_dir)
    code, out, err = in_proc(capsys, monkeypatch, "show", run_dir)
    assert code == 0, err
    assert f"status=complete ({N_SCRIPTED}/{N_SCRIPTED})" in out
    assert _snapshot(run_dir) == before


def test_rerun_of_a_finished_run_does_not_rewrite_its_summary(finished: Path,
                                                              tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path / "run")
    before = _snapshot(run_dir)
    time.sleep(0.01)  # a rewrite would move the mtimes
    again = run(build_spec(SCRIPTED), out=run_dir, progress=False, log=lambda m: None)
    assert again.summary.status == "complete" and again.resumed_from == N_SCRIPTED
    assert _snapshot(run_dir) == before


# ---- the run folder is checked before any model work -----------------------------------

@pytest.mark.parametrize("how", ["mount", "immutable"])
def test_unwritable_results_folder_is_one_line_before_the_model_loads(
        tmp_path: Path, how: str) -> None:
    cfg = _config(tmp_path, NO_MODEL)
    results = tmp_path / "results"
    results.mkdir()
    with read_only(results, how):
        res = _cli("run", cfg, "--results", results, "--no-progress")
    line = one_line_error(res.returncode, res.stderr, str(results), refusal(how))
    assert "model" not in line.split(str(results))[0], line  # the folder, not the model
    assert "not found" not in line and "pip install" not in line, line
    assert list(results.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a real file system that really fills up."""
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root; the 'rlimit' variant covers a write "
                    "that fails part-way without privileges")
    disk = tmp_path / "disk"
    disk.mkdir()
    res = _mount("-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(disk))
    if res.returncode != 0:
        pytest.skip(f"mount is not permitted here ({res.stderr.strip()}); the 'rlimit' "
                    "variant covers a write that fails part-way")
    try:
        yield disk
    finally:
        _umount(disk)


def _fill(disk: Path) -> None:
    with (disk / "filler").open("wb", buffering=0) as f, contextlib.suppress(OSError):
        for _ in range(1 << 20):  # bounded; ENOSPC ends it long before
            f.write(b"\0" * 4096)
    assert (disk / "filler").stat().st_size > 200_000


def _file_limit(n_bytes: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))
    return preexec


@pytest.mark.parametrize("fault", ["tmpfs", "rlimit"])
def test_full_disk_at_start_is_one_line_before_the_model_loads(
        request: pytest.FixtureRequest, tmp_path: Path, fault: str) -> None:
    cfg = _config(tmp_path, NO_MODEL)
    preexec = None
    if fault == "tmpfs":
        disk = request.getfixturevalue("small_disk")
        _fill(disk)
        results, why, advice = disk / "results", "No space left on device", "free space"
    else:
        results, why, advice = tmp_path / "results", "File too large", "ulimit -f"
        preexec = _file_limit(0)
    res = _cli("run", cfg, "--results", results, "--no-progress", preexec=preexec)
    line = one_line_error(res.returncode, res.stderr, str(results), why, advice,
                           "run the same command again")
    assert "not found" not in line and "pip install" not in line, line
    assert not results.exists() or list(results.iterdir()) == []  # no empty run folder left


@pytest.mark.parametrize("fault", ["tmpfs", "rlimit"])
def test_full_disk_during_appends_leaves_whole_records_and_resumes(
        request: pytest.FixtureRequest, tmp_path: Path, fault: str) -> None:
    # prompts long enough that the run's texts (stored once, compressed) outgrow the disk
    cfg = _config(tmp_path, LONGER)
    if fault == "tmpfs":
        disk = request.getfixturevalue("small_disk")
        out, preexec = disk / "run", None
        why, advice = "No space left on device", "free space and run the same command again"
    else:
        out, preexec = tmp_path / "run", _file_limit(150_000)
        why, advice = "File too large", "run the same command again"
        # planned first, without the limit (the plan cache): the limit falls on the appends
        planned = _cli("run", cfg, "--dry-run")
        assert planned.returncode == 0, planned.stderr
    res = _cli("run", cfg, "--out", out, "--no-progress", preexec=preexec)
    one_line_error(res.returncode, res.stderr, str(out), why, advice, "to resume")
    kept = _records(out)  # every line whole: the failed batch was rolled back
    assert 0 < len(kept) < N_SCRIPTED

    if fault == "tmpfs":  # space is back
        assert _mount("-o", "remount,size=8m", str(disk)).returncode == 0
    resumed = _cli("run", cfg, "--out", out, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out}: {len(kept)} of {N_SCRIPTED}" in resumed.stdout
    ids = [r["sample"]["id"] for r in _records(out)]
    assert len(ids) == len(set(ids)) == N_SCRIPTED
    clean = _scripted_run(tmp_path / "clean", LONGER)
    assert _summary_core(out) == _summary_core(clean)
    assert not list(out.glob("*.tmp"))


def test_append_rolls_back_a_write_cut_short(finished: Path, tmp_path: Path) -> None:
    """In a real child process with a file size limit that falls inside the batch: the
    write stops part-way (EFBIG), and the file is cut back to its size before it."""
    run_dir = _copy(finished, tmp_path / "run")
    size = (run_dir / store.SAMPLES).stat().st_size
    code = (f"from evalkit.results import store\n"
            f"recs = store.read_records({str(finished)!r})[:8]\n"
            f"store.append_records({str(run_dir)!r}, recs)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         preexec_fn=_file_limit(size + 5000), timeout=60)
    assert res.returncode == 1 and "EvalkitError" in res.stderr, res.stderr
    assert f"cannot append to samples.jsonl in {run_dir}: File too large" in res.stderr
    assert (run_dir / store.SAMPLES).stat().st_size == size
    assert len(_records(run_dir)) == N_SCRIPTED


# ---- damaged run folders: one line naming the file (and line) -------------------------

def _edit_line(path: Path, lineno: int, edit: Callable[[dict[str, Any]], Any]) -> None:
    lines = path.read_text().splitlines(keepends=True)
    rec = json.loads(lines[lineno - 1])
    new = edit(rec)
    lines[lineno - 1] = (new if isinstance(new, str) else json.dumps(rec)) + "\n"
    path.write_text("".join(lines))


def _del(d: dict[str, Any], *keys: str) -> None:
    for k in keys[:-1]:
        d = d[k]
    del d[keys[-1]]


def _set(d: dict[str, Any], value: Any, *keys: str) -> None:
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value


SAMPLE_FAULTS = {
    "garbage line": (5, lambda r: "this is not a record {", "line 5: not a JSON record"),
    "missing field": (3, lambda r: _del(r, "cache_key"), "line 3: field 'cache_key' is missing"),
    "wrong type": (7, lambda r: _set(r, "many", "sample", "input_tokens"),
                   "line 7: field 'sample.input_tokens' should be an integer"),
    "not an object": (2, lambda r: "[1, 2, 3]", "line 2: the line should be a JSON object"),
    "bad response": (4, lambda r: _set(r, 1, "response", "error"),
                     "line 4: field 'response.error' should be a string or null"),
    "unknown field": (6, lambda r: _set(r, 0, "response", "tokens"),
                      "line 6: unknown field 'response.tokens'"),
    "scores": (8, lambda r: _set(r, {"accuracy": "yes"}, "scores"),
               "line 8: field 'scores' should be an object of numbers"),
    "sent": (3, lambda r: _set(r, {"before": "<s>", "after": "", "user": [5, 2]}, "sent"),
             "line 3: field 'sent' should be an object of 'before' and 'after' texts"),
    # fields with a default that every record has held: a line without one is damaged
    "no meta": (2, lambda r: _del(r, "sample", "meta"), "line 2: field 'sample.meta' is missing"),
    "no text": (5, lambda r: _del(r, "response", "text"),
                "line 5: field 'response.text' is missing"),
    "no version": (4, lambda r: _del(r, "schema_version"),
                   "line 4: field 'schema_version' is missing"),
    "conversation": (6, lambda r: _set(r, [{"role": "robot", "content": "hi"}], "sample",
                                       "messages"),
                     "line 6: sample.messages[0] should be {role, content}"),
}


@pytest.mark.parametrize("fault", list(SAMPLE_FAULTS))
def test_a_bad_line_in_samples_is_one_line_for_every_reader_and_the_resume(
        finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    lineno, edit, message = SAMPLE_FAULTS[fault]
    run_dir = _copy(finished, tmp_path / "run")
    _edit_line(run_dir / store.SAMPLES, lineno, edit)
    where = f"{run_dir / store.SAMPLES} {message}"
    code, _, err = in_proc(capsys, monkeypatch, "report", run_dir, "--out", tmp_path / "rep")
    one_line_error(code, err, where, "remove or restore that line")
    cfg = _config(tmp_path, SCRIPTED)
    code, _, err = in_proc(capsys, monkeypatch, "run", cfg, "--out", run_dir, "--no-progress")
    one_line_error(code, err, where)
    (run_dir / store.SUMMARY).unlink()  # show then reads the records
    code, _, err = in_proc(capsys, monkeypatch, "show", run_dir)
    one_line_error(code, err, where)


def test_only_a_torn_last_line_is_forgiven(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path / "run")
    path = run_dir / store.SAMPLES
    data = path.read_bytes()
    path.write_bytes(data + b'{"schema_version": 1, "sam')  # a crash mid-write
    assert len(store.read_records(run_dir)) == N_SCRIPTED
    lines = data.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:10]) + lines[10][:50] + b"\n" + b"".join(lines[11:]))
    with pytest.raises(EvalkitError, match=r"samples\.jsonl line 11: not a JSON record"):
        store.read_records(run_dir)


RUN_JSON_FAULTS = {
    "not JSON": ('{"run_id": "x",\n  "spec_hash" "abc"}', "line 2 column 15: not valid JSON"),
    "a list": ("[1, 2]", "the file should be a JSON object, got a list"),
    "missing key": ({"drop": "spec_hash"}, "field 'spec_hash' is missing"),
    "wrong type": ({"set": ("n_samples", "ten")}, "field 'n_samples' should be an integer"),
    "spec not an object": ({"set": ("spec", [])}, "field 'spec' should be a JSON object"),
    # None until set, never written as null (git_sha alone is: a run made outside git)
    "null backend": ({"set": ("backend", None)}, "field 'backend' should be a JSON object, "
                     "got null"),
    "not UTF-8": (b"\xff\xfe{}", "not UTF-8 text"),
}

SUMMARY_FAULTS = {
    "not JSON": ("{", "line 1 column 2: not valid JSON"),
    "a list": ("[]", "the file should be a JSON object, got a list"),
    "missing rows": ({"drop": "rows"}, "field 'rows' is missing"),
    "bad status": ({"set": ("status", "done")}, "field 'status' should be \"complete\""),
    "bad row": ({"row": ("value", "high")}, "field 'rows[0].value' should be a number"),
    "n_done": ({"set": ("n_done", 3.5)}, "field 'n_done' should be an integer"),
}


def _damage(path: Path, how: Any) -> None:
    if isinstance(how, bytes):
        path.write_bytes(how)
        return
    if isinstance(how, str):
        path.write_text(how)
        return
    data = json.loads(path.read_text())
    if "drop" in how:
        del data[how["drop"]]
    if "set" in how:
        data[how["set"][0]] = how["set"][1]
    if "row" in how:
        data["rows"][0][how["row"][0]] = how["row"][1]
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("fault", list(RUN_JSON_FAULTS))
def test_a_damaged_run_json_is_one_line(finished: Path, tmp_path: Path, fault: str,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    how, message = RUN_JSON_FAULTS[fault]
    run_dir = _copy(finished, tmp_path / "run")
    _damage(run_dir / store.RUN_JSON, how)
    for args in (("show", run_dir), ("report", run_dir, "--out", tmp_path / "rep"),
                 ("run", _config(tmp_path, SCRIPTED), "--out", run_dir, "--no-progress")):
        code, _, err = in_proc(capsys, monkeypatch, *args)
        one_line_error(code, err, str(run_dir / store.RUN_JSON), message)


def test_resuming_by_spec_names_a_damaged_run_instead_of_starting_beside_it(
        finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "results"
    spec_hash = build_spec(SCRIPTED).spec_hash()
    partial = _copy(finished, results / f"2026-01-01T00-00-00_faults_scripted_{spec_hash[:6]}")
    (partial / store.SUMMARY).unlink()
    (partial / store.RUN_JSON).write_text('{"run_id": ')
    code, _, err = in_proc(capsys, monkeypatch, "run", _config(tmp_path, SCRIPTED),
                            "--results", results, "--no-progress")
    one_line_error(code, err, str(partial / store.RUN_JSON), "not valid JSON")
    assert [p.name for p in results.iterdir()] == [partial.name]  # no second run beside it


@pytest.mark.parametrize("fault", list(SUMMARY_FAULTS))
def test_a_damaged_summary_json_is_one_line_and_a_resume_rebuilds_it(
        finished: Path, tmp_path: Path, fault: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    how, message = SUMMARY_FAULTS[fault]
    run_dir = _copy(finished, tmp_path / "run")
    good = (run_dir / store.SUMMARY).read_bytes()
    _damage(run_dir / store.SUMMARY, how)
    # readers of a run with samples need no summary.json: show computes it from samples.jsonl
    code, out, err = in_proc(capsys, monkeypatch, "show", run_dir)
    assert code == 0 and "status=complete" in out, err
    # a summary.json alone (a committed baseline) is all there is: a fault is one line
    alone = tmp_path / "baseline"
    alone.mkdir()
    shutil.copy(run_dir / store.SUMMARY, alone / store.SUMMARY)
    code, _, err = in_proc(capsys, monkeypatch, "show", alone / store.SUMMARY)
    one_line_error(code, err, str(alone / store.SUMMARY), message, "delete it")
    # the writer rebuilds what is derived
    code, _, err = in_proc(capsys, monkeypatch, "run", _config(tmp_path, SCRIPTED),
                            "--out", run_dir, "--no-progress")
    assert code == 0, err
    assert (run_dir / store.SUMMARY).read_bytes() == good


def test_index_reports_the_good_runs_and_lists_the_bad_ones(
        finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "results"
    _copy(finished, results / "2026-01-01_good")
    bad_line = _copy(finished, results / "2026-01-02_badline")
    _edit_line(bad_line / store.SAMPLES, 4, lambda r: "garbage")
    bad_run = _copy(finished, results / "2026-01-03_badrun")
    (bad_run / store.RUN_JSON).write_text("[]")
    (results / "notes").mkdir()  # not a run: ignored
    code, out, err = in_proc(capsys, monkeypatch, "report", "--index", results,
                              "--out", tmp_path / "idx")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err, err
    assert str(bad_line / store.SAMPLES) + " line 4: not a JSON record" in err
    assert str(bad_run / store.RUN_JSON) + ": the file should be a JSON object" in err
    html = (tmp_path / "idx" / "index.html").read_text()
    assert html.count('href="runs/') == 1 and 'href="runs/2026-01-01_good/' in html
    assert f"1 run under {results}" in html and "Runs that could not be read (2)" in html
    assert "2026-01-02_badline" in html and "line 4: not a JSON record" in html
    assert (tmp_path / "idx" / "runs" / "2026-01-01_good" / "index.html").is_file()
    assert not (tmp_path / "idx" / "runs" / "2026-01-02_badline").exists()


# ---- report --out ----------------------------------------------------------------------

def test_report_out_that_is_a_file_is_one_line(finished: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.html"
    target.write_text("keep me")
    code, _, err = in_proc(capsys, monkeypatch, "report", finished, "--out", target)
    one_line_error(code, err, f"--out {target} is a file, not a folder")
    code, _, err = in_proc(capsys, monkeypatch, "report", "--index", finished.parent,
                            "--out", target)
    one_line_error(code, err, f"--out {target} is a file, not a folder")
    code, _, err = in_proc(capsys, monkeypatch, "report", finished, "--out",
                            target / "sub")
    one_line_error(code, err, str(target / "sub"))
    assert target.read_text() == "keep me"


def test_report_never_writes_into_a_run(finished: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = _copy(finished, tmp_path / "run")
    before = _snapshot(run_dir)
    code, _, err = in_proc(capsys, monkeypatch, "report", run_dir, "--out", run_dir)
    one_line_error(code, err, "is a run folder")
    assert _snapshot(run_dir) == before


# ---- file modes ------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_run_file_gets_the_mode_of_an_ordinary_file(tmp_path: Path, umask: int) -> None:
    cfg = _config(tmp_path, {**SCRIPTED, "samples": 1})
    res = _cli("run", cfg, "--out", tmp_path / "run", "--no-progress",
               preexec=lambda: os.umask(umask) and None)
    assert res.returncode == 0, res.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").iterdir()}
    want = 0o666 & ~umask
    assert modes == {".lock": want, store.RUN_JSON: want, store.SAMPLES: want,
                     texts.TEXTS: want, store.SUMMARY: want, store.TABLE: want,
                     store.SESSIONS: want}


# ---- SIGKILL at random moments ---------------------------------------------------------

KILLS = 20
KILL_RUN: dict[str, Any] = {
    "name": "kills", "model": "scripted", "backend": "scripted",
    "backend_options": {"delay_s": 0.01}, "samples": 50, "lengths": [300, 600],
    "tasks": ["passkey", "lines"],
}
N_KILL_RUN = 2 * 2 * 50
BATCH_S = 8 * 0.01  # the scripted backend answers 8 requests per batch


def _cut_inside_last_batch(path: Path, rng: random.Random) -> None:
    """Leave what a SIGKILL inside write(2) leaves: a prefix of the last batch's bytes.
    (The window of a real one is microseconds wide, too narrow to hit on purpose.)"""
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    batch = sum(len(x) for x in lines[-8:])
    if batch:
        path.write_bytes(data[:len(data) - batch + rng.randrange(batch)])


def test_twenty_random_sigkills_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("EVALKIT_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    cfg = _config(tmp_path, KILL_RUN)
    out = tmp_path / "killed"
    samples = out / store.SAMPLES
    argv = [sys.executable, "-m", "evalkit.cli", "run", str(cfg), "--out", str(out),
            "--no-progress"]
    for kill in range(KILLS):
        # the new process first cuts a torn tail (if any), then appends whole batches
        data = samples.read_bytes() if samples.is_file() else b""
        size, whole = len(data), data.rfind(b"\n") + 1
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if rng.random() < 0.3:  # anywhere in start-up, planning or the first batch
            time.sleep(rng.uniform(0.05, 0.9))
        else:  # while it writes: just after a batch landed, or during the next one
            deadline = time.monotonic() + 30
            while (not samples.is_file() or samples.stat().st_size in (size, whole)) \
                    and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, BATCH_S))
        assert proc.poll() is None, (f"seed {seed}: kill {kill} came too late (the run "
                                     f"ended: {proc.stderr.read() if proc.stderr else ''})")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        if rng.random() < 0.3 and samples.is_file():
            _cut_inside_last_batch(samples, rng)
    done = samples.read_bytes().count(b"\n")  # whole records kept through the kills
    assert done < N_KILL_RUN, f"seed {seed}: the run ended among the kills ({done} records)"

    resumed = _cli("run", cfg, "--out", out, "--no-progress")
    assert resumed.returncode == 0, f"seed {seed}: {resumed.stderr}"
    clean = _cli("run", cfg, "--out", tmp_path / "clean", "--no-progress")
    assert clean.returncode == 0, clean.stderr

    ids = [r["sample"]["id"] for r in _records(out)]
    assert len(ids) == len(set(ids)) == N_KILL_RUN, f"seed {seed}"
    assert sorted(ids) == sorted(r["sample"]["id"] for r in _records(tmp_path / "clean"))
    assert _summary_core(out) == _summary_core(tmp_path / "clean"), f"seed {seed}"
    assert (out / store.TABLE).read_bytes() == (tmp_path / "clean" / store.TABLE).read_bytes()
    assert not list(out.glob("*.tmp")), "a killed writer's temporary file was left behind"

