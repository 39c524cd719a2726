"""The runner on the scripted backend: records, resume, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalkit.results import store, texts
from evalkit.runner.config import build_spec
from evalkit.runner.execute import run, summarize
from evalkit.types import SCHEMA_VERSION

CONFIG = """
name: crash
model: scripted
backend: scripted
backend_options: {{delay_s: {delay}, fail_every: {fail_every}}}
samples: {samples}
lengths: [1000, 2000]
tasks: [passkey, lines, longqa]
"""


def _spec(delay: float = 0.0, samples: int = 3, fail_every: int = 0) -> dict:
    import yaml

    return yaml.safe_load(CONFIG.format(delay=delay, samples=samples, fail_every=fail_every))


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in (path / store.SAMPLES).read_text().splitlines()]


def _rows(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / store.SUMMARY).read_text())["rows"]


def test_run_writes_the_layout_and_scores(tmp_path: Path) -> None:
    result = run(build_spec(_spec()), out=tmp_path / "r", progress=False, log=lambda m: None)
    d = result.run_dir
    assert {p.name for p in d.iterdir() if not p.name.startswith(".")} == {
        "run.json", "samples.jsonl", "texts.pack", "summary.json", "table.csv",
        "sessions.jsonl"}
    (session,) = store.read_sessions(d)
    assert session["ended"] == "finished" and 0 < session["seconds"] < 600
    assert result.summary.status == "complete" and result.summary.n_done == 18
    recs = _lines(d)
    # a record whose prompt is stored in texts.pack says so by its version
    assert len(recs) == 18 and all(r["schema_version"] == (
        texts.RECORD_VERSION if texts.has_refs(r) else SCHEMA_VERSION) for r in recs)
    # the scripted backend reads the needle back: passkey and lines right, longqa wrong
    acc = {(r.task, r.length): r.value for r in result.summary.rows}
    assert acc[("passkey", 1000)] == 1.0 and acc[("lines", 2000)] == 1.0
    assert acc[("longqa", 1000)] == 0.0
    info = store.read_run(d)
    assert info["n_samples"] == 18 and info["spec_hash"] and info["versions"]["python"]
    # what ran, per task and length cell (the report's "planned" column)
    assert info["cells"] == {task: {"1000": 3, "2000": 3} for task in ("passkey", "lines",
                                                                      "longqa")}


def test_rerun_of_a_finished_run_runs_nothing(tmp_path: Path) -> None:
    spec = build_spec(_spec())
    run(spec, out=tmp_path / "r", progress=False, log=lambda m: None)
    again = run(spec, out=tmp_path / "r", progress=False, log=lambda m: None)
    assert again.resumed_from == 18
    assert len(_lines(tmp_path / "r")) == 18
    assert len(store.read_sessions(tmp_path / "r")) == 1  # nothing asked, no session


def test_other_spec_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    from evalkit.types import EvalkitError

    run(build_spec(_spec()), out=tmp_path / "r", progress=False, log=lambda m: None)
    with pytest.raises(EvalkitError, match="holds another run"):
        run(build_spec({**_spec(), "seed": 9}), out=tmp_path / "r", progress=False)


def test_without_out_the_same_command_resumes_its_run(tmp_path: Path) -> None:
    spec = build_spec({**_spec(fail_every=4), "retries": 0})
    first = run(spec, results_root=tmp_path, progress=False, log=lambda m: None)
    assert first.summary.status == "partial" and first.summary.n_errors > 0
    second = run(spec, results_root=tmp_path, progress=False, log=lambda m: None)
    assert second.run_dir == first.run_dir  # found by its spec hash, errors retried
    assert [p.name for p in tmp_path.iterdir()] == [first.run_dir.name]


def test_errors_are_recorded_not_swallowed_and_retried_on_resume(tmp_path: Path) -> None:
    data = {**_spec(fail_every=2), "retries": 0}
    first = run(build_spec(data), out=tmp_path / "r", progress=False, log=lambda m: None)
    assert first.summary.n_errors == 9
    errs = [r for r in _lines(tmp_path / "r") if r["response"]["error"]]
    assert errs and errs[0]["response"]["error"] == "scripted failure" and errs[0]["scores"] == {}
    second = run(build_spec(data), out=tmp_path / "r", progress=False, log=lambda m: None)
    assert second.summary.n_errors < first.summary.n_errors


def test_bounded_retries_recover_transient_errors(tmp_path: Path) -> None:
    result = run(build_spec({**_spec(fail_every=3), "retries": 2}), out=tmp_path / "r",
                 progress=False, log=lambda m: None)
    assert result.summary.n_errors == 0 and result.summary.status == "complete"


def test_a_second_process_on_the_same_run_is_refused(tmp_path: Path) -> None:
    from evalkit.types import EvalkitError

    spec = build_spec(_spec())
    (tmp_path / "r").mkdir()
    with store.run_lock(tmp_path / "r"), pytest.raises(EvalkitError, match="another evalkit"):
        run(spec, out=tmp_path / "r", progress=False, log=lambda m: None)
    assert run(spec, out=tmp_path / "r", progress=False, log=lambda m: None).summary.n_done == 18


def test_torn_last_line_is_repaired(tmp_path: Path) -> None:
    spec = build_spec(_spec())
    run(spec, out=tmp_path / "r", progress=False, log=lambda m: None)
    path = tmp_path / "r" / store.SAMPLES
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    assert len(store.read_records(tmp_path / "r")) == 5
    result = run(spec, out=tmp_path / "r", progress=False, log=lambda m: None)
    assert result.summary.n_done == 18 and len(_lines(tmp_path / "r")) == 18


def test_summary_rebuilds_from_samples(tmp_path: Path) -> None:
    result = run(build_spec(_spec()), out=tmp_path / "r", progress=False, log=lambda m: None)
    before = _rows(result.run_dir)
    (result.run_dir / store.SUMMARY).unlink()
    summarize(result.run_dir)
    assert _rows(result.run_dir) == before


def _start(config: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "evalkit.cli", "run", str(config),
                             "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_records(out: Path, at_least: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        path = out / store.SAMPLES
        if path.is_file() and path.read_text().count("\n") >= at_least:
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)
    raise AssertionError("the run wrote no records in 60 s")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_without_loss_or_duplicates(tmp_path: Path, sig: int) -> None:
    import yaml

    cfg = tmp_path / "crash.yaml"
    # 0.15 s a request: the 28 samples after the first batch take seconds, so the signal
    # lands mid-run even on a loaded machine
    cfg.write_text(yaml.safe_dump(_spec(delay=0.15, samples=6)))
    out = tmp_path / "killed"
    proc = _start(cfg, out)
    _wait_for_records(out, 8, proc)
    os.kill(proc.pid, sig)
    proc.wait(timeout=30)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert "run the same command again to resume" in (proc.stderr.read() if proc.stderr else "")
    done_before = len(_lines(out)) if (out / store.SAMPLES).read_text().endswith("\n") else None
    n_total = 36
    assert done_before is None or done_before < n_total, "the run finished before the kill"

    resumed = _start(cfg, out)
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    assert "resuming" in stdout + stderr

    clean = tmp_path / "clean"
    whole = _start(cfg, clean)
    whole.communicate(timeout=120)
    assert whole.returncode == 0

    ids = [r["sample"]["id"] for r in _lines(out)]
    assert len(ids) == len(set(ids)) == n_total
    assert sorted(ids) == sorted(r["sample"]["id"] for r in _lines(clean))
    killed_summary = json.loads((out / store.SUMMARY).read_text())
    clean_summary = json.loads((clean / store.SUMMARY).read_text())
    for key in ("status", "rows", "n_samples", "n_done", "n_errors"):
        assert killed_summary[key] == clean_summary[key]
    # the time of each session (kill -9 leaves none for the one it cut off)
    ended = [s["ended"] for s in store.read_sessions(out)]
    assert ended == (["interrupted", "finished"] if sig == signal.SIGINT else ["finished"])
