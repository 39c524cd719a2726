"""Hostile and mistaken configs: alias bombs, deep nesting, huge files and keys given twice
are refused in one line naming the file, in bounded memory, before anything expands them;
misspelled names get the closest known one; a run.json whose spec was edited by hand is
refused when its run is resumed, naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from evalkit.results import store
from evalkit.runner.config import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_VALUES,
    Overrides,
    build_spec,
    build_specs,
    check_recorded_spec,
    load_config_file,
    parse_lengths,
    recorded_spec_sha256,
)
from evalkit.runner.execute import run
from evalkit.runner.shards import merge
from evalkit.types import EvalkitError

ROOT = Path(__file__).resolve().parents[1]


def _laughs(levels: int = 9) -> str:
    """The "billion laughs": each anchor holds nine aliases of the one before, so a few
    lines expand to 9**levels values."""
    lines = ["backend: scripted", "backend_options:",
             "  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


HOSTILE = {
    "alias bomb": (_laughs(), f"expands to over {MAX_CONFIG_VALUES} values through its aliases"),
    "alias bomb of merges": (
        "backend_options:\n  a0: &a0 {x: 1, y: 2}\n"
        + "".join(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 8)),
        f"expands to over {MAX_CONFIG_VALUES} values"),
    "a long text aliased many times": (
        f"backend_options:\n  s: &s {'x' * 100_000}\n  l: [{', '.join(['*s'] * 50)}]\n",
        "expands to over 1024 KB of text"),
    "an alias of itself": ("backend_options: &a\n  x: [1, *a]\n",
                           "holds an alias (*name) of itself"),
    "10,000 nested lists": ("x: " + "[" * 10_000 + "]" * 10_000 + "\n", "nested over 64 levels"),
    "10,000 nested mappings": ("x: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n",
                               "nested over 64 levels"),
    "10,000 nested block lists": ("x:\n" + "- " * 10_000 + "x\n", "nested over 64 levels"),
    "100,000 values": ("x: [" + "0," * 100_000 + "]\n", f"over {MAX_CONFIG_VALUES} values"),
    "a key given twice": ("name: a\nseed: 1\nseed: 2\n",
                          "key 'seed' is given twice (lines 2 and 3)"),
    "a nested key given twice": ("backend_options:\n  n_ctx: 1\n  extra: {a: {b: 1, b: 2}}\n",
                                 "key 'b' is given twice (line 3)"),
    "a task parameter given twice": ("tasks:\n  - lines\n  - passkey:\n      depths: [0.5]\n"
                                     "      key_digits: [5]\n      depths: [0.1]\n",
                                     "key 'depths' is given twice (lines 4 and 6)"),
    "a model key given twice": ("models:\n  - model: a\n    label: x\n    label: y\n",
                                "key 'label' is given twice"),
}


def _refused(call: Callable[[], Any], *fragments: str) -> tuple[str, float, int]:
    """The one-line message `call` is refused with, its time (s) and peak memory (bytes)."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(EvalkitError) as info:
            call()
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg, seconds, peak


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_config_file_is_refused_before_it_expands(
        tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    text, fragment = HOSTILE[case]
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    msg, seconds, peak = _refused(lambda: load_config_file(path), str(path), fragment)
    assert peak < 32 * 1024 * 1024, f"{case}: {peak} bytes at peak"
    with capsys.disabled():
        print(f"\n{case}: refused in {seconds * 1000:.0f} ms, peak {peak / 1e6:.1f} MB: {msg}")


def test_a_20_mb_config_is_refused_by_its_size_alone(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("name: huge\n" + ("# " + "x" * 97 + "\n") * 200_000)
    assert path.stat().st_size > 20_000_000
    _refused(lambda: load_config_file(path), str(path), f"over {MAX_CONFIG_BYTES // 1024} KB")
    path.write_text("name: fine\n" + "# comment\n" * 1000)  # a large but real config loads
    assert load_config_file(path) == {"name": "fine"}


def test_aliases_and_merges_within_the_bounds_still_load(tmp_path: Path) -> None:
    """Anchors that share options between models, and `<<` merges that override a merged
    key, are YAML as meant: not a key given twice."""
    path = tmp_path / "shared.yaml"
    path.write_text("backend: scripted\nmodels:\n"
                    "  - {model: a, backend_options: &o {reply: lookup, delay_s: 0.5}}\n"
                    "  - {model: b, backend_options: {<<: *o, delay_s: 0.0}}\n"
                    "  - {model: c, backend_options: *o}\n")
    a, b, c = build_specs(load_config_file(path), source=str(path))
    assert a.backend_options == {"reply": "lookup", "delay_s": 0.5} == c.backend_options
    assert b.backend_options == {"reply": "lookup", "delay_s": 0.0}


def test_bundled_configs_are_far_inside_the_bounds() -> None:
    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    assert configs
    for path in configs:
        assert path.stat().st_size < MAX_CONFIG_BYTES // 32
        assert load_config_file(path)


def _shared(levels: int) -> list[Any]:
    value: list[Any] = ["lol"] * 10
    for _ in range(levels):
        value = [value] * 10
    return value


def _self_holding() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


@pytest.mark.parametrize("options,fragment", [
    ({"x": _shared(5)}, f"over {MAX_CONFIG_VALUES} values once its shared values expand"),
    ({"x": ["y" * 100_000] * 20}, "over 1024 KB of text"),
    ({"x": _self_holding()}, "nested over 64 levels deep"),
    ({"when": __import__("datetime").date(2024, 1, 1)}, "backend_options.when: "
                                                        "datetime.date(2024, 1, 1) is a date"),
    ({"s": {1, 2}}, "is a set"),
    ({True: 1}, "the key True is not a name"),
    ({1: "a", "1": "b"}, "the key '1' is given twice"),
])
def test_backend_options_are_checked_before_they_are_hashed(options: dict[Any, Any],
                                                            fragment: str) -> None:
    """The same bounds for values given through the Python API: checked before the spec
    copies or hashes them, where a shared list would be expanded."""
    _refused(lambda: build_spec({"backend": "scripted", "backend_options": options},
                                source="api"), "api: ", fragment)


def _cli(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "evalkit.cli", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=120)
    return res, time.perf_counter() - started


@pytest.mark.parametrize("case", ["alias bomb", "10,000 nested lists", "a key given twice"])
def test_the_cli_refuses_a_hostile_config_in_one_line(
        tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_text(HOSTILE[case][0])
    res, seconds = _cli("run", str(path), "--no-progress", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(f"error: {path}: ") and HOSTILE[case][1] in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    with capsys.disabled():
        print(f"\ncli, {case}: exit 2 in {seconds:.2f} s (with the interpreter's start)")


# ---- messages that name the file and the fix ------------------------------------------------

def test_a_misspelled_task_parameter_names_the_file_and_the_closest_name(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("tasks: [{passkey: {depthz: [0.5]}}]\n")
    res, _ = _cli("run", str(path), "--backend", "scripted", "--model", "m", "--dry-run",
                  cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"{path}: tasks.passkey: unknown parameter 'depthz' (did you mean 'depths'?" \
        in res.stderr


@pytest.mark.parametrize("data,fragments", [
    ({"tasks": [{"lines": {"num_line": [200]}}]}, ("tasks.lines: unknown parameter 'num_line'",
                                                   "did you mean 'num_lines'?")),
    ({"tasks": [{"passkey": {"depths": [2.0]}}]}, ("tasks.passkey: depths must lie in [0, 1]",)),
    ({"tasks": [{"passkey": {"max_new_token": 5}}]}, ("did you mean 'max_new_tokens'?",)),
    ({"tasks": ["paskey"]}, ("unknown task 'paskey' (did you mean 'passkey'?",)),
    ({"sampels": 3}, ("unknown key 'sampels' (did you mean 'samples'?",)),
    ({"models": [{"model": "a", "lable": "x"}]}, ("unknown key 'lable' in models.0 (did you "
                                                  "mean 'label'?",)),
    ({"tasks": [{"mmlu": {"subject": ["anatomy"]}}]}, ("tasks.mmlu: unknown option 'subject'",)),
    ({"tasks": ["passkey", "lines", "passkey"]}, ("tasks: 'passkey' is listed twice",)),
    ({"lengths": ["1k", "2k", "1k"]}, ("lengths: '1k' given twice: list each length once",)),
    ({"lengths": ["1k", 1024]}, ("'1k' and '1024' (1024 tokens) given twice",)),
    ({"tasks": [{"passkey": {"lengths": ["2k", "2k"]}}]}, ("tasks.passkey.lengths: '2k'",)),
])
def test_config_mistakes_name_the_file_and_the_fix(data: dict[str, Any],
                                                   fragments: tuple[str, ...]) -> None:
    _refused(lambda: build_specs(data, source="c.yaml"), "c.yaml: ", *fragments)


def test_a_repeated_length_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(EvalkitError, match="'1k' given twice"):
        parse_lengths("1k,1k")
    assert parse_lengths("1k,2k") == (1024, 2048)
    res, _ = _cli("run", "--backend", "scripted", "--model", "m", "--lengths", "1k,1k",
                  "--dry-run", cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--lengths: '1k' given twice: list each length once" in res.stderr
    assert "same id" not in res.stderr


def test_a_task_given_on_the_command_line_names_the_option() -> None:
    _refused(lambda: build_spec({}, Overrides(tasks=["linez"]), source="c.yaml"),
             "--task: unknown task 'linez' (did you mean 'lines'?")


# ---- run.json edited by hand ----------------------------------------------------------------

CONFIG = {"name": "edit", "model": "scripted", "backend": "scripted", "samples": 2,
          "lengths": [1000], "tasks": [{"passkey": {"depths": [0.5]}}, "lines"]}


def _quiet(msg: str) -> None:
    pass


def _edit(run_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = run_dir / store.RUN_JSON
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info, indent=2))


def test_a_hand_edited_spec_is_refused_on_resume_naming_the_field(tmp_path: Path) -> None:
    spec = build_spec(CONFIG)
    out = tmp_path / "r"
    run(spec, out=out, progress=False, log=_quiet)
    info = store.read_run(out)
    assert info["spec_redacted_sha256"] == recorded_spec_sha256(info["spec"])
    run(spec, out=out, progress=False, log=_quiet)  # unedited: resumes (here: nothing to do)

    _edit(out, lambda i: i["spec"].update(seed=7))
    with pytest.raises(EvalkitError) as exc:
        run(spec, out=out, progress=False, log=_quiet)
    assert str(exc.value) == (
        f"{out / 'run.json'}: its spec was edited (field 'seed' differs from what spec_hash "
        "was made of): restore it, or start a new run with --out")

    _edit(out, lambda i: i["spec"].update(seed=0))  # restored: resumes again
    run(spec, out=out, progress=False, log=_quiet)
    _edit(out, lambda i: i["spec"]["tasks"][0]["params"].update(depths=[0.25]))
    _edit(out, lambda i: i["spec"].update(name="renamed"))
    _refused(lambda: run(spec, out=out, progress=False, log=_quiet),
             "field 'tasks.0.params.depths' differs")


def test_a_hand_edited_spec_is_refused_when_found_under_results(tmp_path: Path) -> None:
    """Resuming by spec (no --out) finds the unfinished run under results/: checked too."""
    spec = build_spec(CONFIG)
    results = tmp_path / "results"
    first = run(spec, results_root=results, progress=False, log=_quiet).run_dir
    (first / store.SUMMARY).unlink()  # unfinished, so that it is resumed, not started anew
    _edit(first, lambda i: i["spec"].update(temperature=0.5, name="other"))
    _refused(lambda: run(spec, results_root=results, progress=False, log=_quiet),
             str(first / "run.json"), "(field 'temperature' differs")


def test_an_old_run_json_without_the_hash_still_resumes(tmp_path: Path) -> None:
    spec = build_spec(CONFIG)
    out = tmp_path / "r"
    run(spec, out=out, progress=False, log=_quiet)
    (out / store.SUMMARY).unlink()
    with (out / store.SAMPLES).open("r+") as f:  # one sample short: the resume runs it
        lines = f.readlines()
        f.seek(0)
        f.writelines(lines[:-1])
        f.truncate()
    _edit(out, lambda i: i.pop("spec_redacted_sha256"))
    result = run(spec, out=out, progress=False, log=_quiet)
    assert result.resumed_from == len(lines) - 1 and result.summary.status == "complete"
    assert "spec_redacted_sha256" not in store.read_run(out)  # run.json is written once


def test_the_committed_smoke_baseline_is_accepted_as_it_is() -> None:
    baseline = ROOT / "results" / "baselines" / "smoke"
    info = store.read_run(baseline)
    assert "spec_redacted_sha256" not in info
    check_recorded_spec(baseline / store.RUN_JSON, info,
                        build_spec(load_config_file(ROOT / "configs" / "smoke.yaml")))


def test_a_merged_run_records_the_hash_of_its_own_spec(tmp_path: Path) -> None:
    spec = build_spec(CONFIG)
    shards = [run(build_spec(CONFIG, Overrides(shard=(i, 2))), results_root=tmp_path / "s",
                  progress=False, log=_quiet).run_dir for i in (1, 2)]
    merged = merge(shards, tmp_path / "merged")
    info = store.read_run(merged)
    assert info["spec"]["shard"] is None
    assert info["spec_redacted_sha256"] == recorded_spec_sha256(info["spec"])
    check_recorded_spec(merged / store.RUN_JSON, info, spec)
    assert run(spec, out=merged, progress=False, log=_quiet).summary.status == "complete"
