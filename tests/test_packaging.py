"""The built wheel is what users install: it must carry every subpackage, the task data
(word lists, topic corpus) and the bundled configs, and run every task from any folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
                          "-q", "-w", str(out), str(ROOT)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    [whl] = out.glob("evalkit-*.whl")
    return whl


def test_the_wheel_holds_every_module_and_the_task_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "evalkit").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    data = {p.relative_to(ROOT).as_posix()
            for p in (ROOT / "evalkit" / "tasks" / "data").rglob("*") if p.is_file()}
    assert data and data <= names, sorted(data - names)
    configs = {f"evalkit/_configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")}
    assert configs <= names, sorted(configs - names)
    assert "evalkit/report/static/report.js" in names


def test_the_installed_wheel_runs_every_task_from_another_folder(wheel: Path,
                                                                 tmp_path: Path) -> None:
    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                          "--target", str(target), str(wheel)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import evalkit; print(evalkit.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip().startswith(str(target)), where  # the wheel, not the checkout
    res = subprocess.run(
        [sys.executable, "-m", "evalkit.cli", "run", "quickstart", "--backend", "scripted",
         "--model", "m", "--tokenizer", "whitespace", "--lengths", "600", "--samples", "1",
         "--out", "run", "--no-progress"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    records = [json.loads(line) for line in (work / "run" / "samples.jsonl").open()]
    assert {r["sample"]["task"] for r in records} == {"passkey", "lines", "topics", "longqa"}
