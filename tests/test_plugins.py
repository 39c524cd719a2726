"""A task and a backend written outside evalkit, installed as a package beside it, found
through their entry points (evalkit.tasks, evalkit.backends) and run through the CLI:
tasks, run, report and gate, with no change to evalkit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.types import EvalkitError

PLUGIN = Path(__file__).parent / "data" / "plugin"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin package installed (as pip installs it: dist-info, entry points) into a
    folder of its own, put on the path of the commands below."""
    source, target = tmp_path_factory.mktemp("src") / "plugin", tmp_path_factory.mktemp("site")
    shutil.copytree(PLUGIN, source)  # pip builds in the source folder: not in the checkout
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=300)
    return target


def _evalkit(plugin_path: Path, *args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(plugin_path)}
    return subprocess.run([sys.executable, "-m", "evalkit", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_an_installed_plugin_runs_through_tasks_run_report_and_gate(
        plugin_path: Path, tmp_path: Path) -> None:
    listed = _evalkit(plugin_path, "tasks")
    assert listed.returncode == 0, listed.stderr
    assert "echo: repeat a word hidden after filler (a plugin's task)" in listed.stdout
    assert "word = 'green'" in listed.stdout

    run = _evalkit(plugin_path, "run", "--task", "echo", "--backend", "echo", "--model", "m",
                   "--lengths", "64,128", "--samples", "3", "--out", tmp_path / "run",
                   "--no-progress")
    assert run.returncode == 0, run.stderr
    assert "6/6 samples scored" in run.stdout
    lines = [x.split() for x in run.stdout.splitlines() if x.startswith("echo ")]
    assert [(x[1], x[2], x[3]) for x in lines if x[1].isdigit()] == [
        ("64", "64", "1.00"), ("128", "128", "1.00")]
    # its effective length: every length passes; 3 of 3 has a lower bound of 0.44
    assert ["echo", "accuracy", ">=128", "/", "<64"] in lines

    report = _evalkit(plugin_path, "report", tmp_path / "run", "--out", tmp_path / "rep")
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "the word asked for appears in the answer" in page  # the plugin's scoring rule

    gate = _evalkit(plugin_path, "gate", "--baseline", tmp_path / "run", "--candidate",
                    tmp_path / "run")
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "gate PASS" in gate.stdout

    # without the plugin on the path, its names are unknown, in one line
    gone = _evalkit(tmp_path, "run", "--task", "echo", "--backend", "echo", "--dry-run")
    assert gone.returncode == 2 and gone.stderr.count("\n") == 1
    assert gone.stderr.startswith("error: --task: unknown task 'echo'")


def test_a_name_given_twice_or_an_entry_that_does_not_load_is_one_line() -> None:
    from evalkit.registry import Registry

    reg: Registry[str] = Registry("thing", "evalkit.test-things", {"a": "os.path:sep",
                                                                   "b": "no_such_module:x"},
                                  lambda obj: str(obj))
    assert reg.get("a") == os.path.sep and reg.names() == ["a", "b"]
    with pytest.raises(EvalkitError, match=r"^thing 'b' \(no_such_module:x, from evalkit\) "
                                           r"does not load: No module named"):
        reg.get("b")
    reg.register("c", "x")
    with pytest.raises(EvalkitError, match="thing 'c' is registered twice"):
        reg.register("c", "y")
    with pytest.raises(EvalkitError, match="unknown thing 'd': use one of a, b, c"):
        reg.get("d")
