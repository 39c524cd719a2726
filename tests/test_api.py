"""The public Python API (evalkit/__init__.py): every name resolves, `import evalkit` is
light, and a run goes through it from spec to gate and report as the CLI's does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import evalkit


def test_every_public_name_resolves() -> None:
    assert evalkit.__all__ == sorted(evalkit.__all__) == sorted(evalkit._API)
    for name in evalkit.__all__:
        assert getattr(evalkit, name) is not None, name
        assert name in dir(evalkit)


def test_import_evalkit_imports_nothing_heavy() -> None:
    code = ("import sys, evalkit; heavy = {'pandas', 'typer', 'llama_cpp', 'torch', 'httpx'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_run_through_the_api(tmp_path: Path) -> None:
    spec = evalkit.build_spec({"name": "api", "model": "m", "backend": "scripted",
                               "lengths": [256, 512], "samples": 3, "tasks": ["passkey"]})
    result = evalkit.run(spec, out=tmp_path / "run", progress=False, log=lambda m: None)
    assert result.summary.status == "complete" and result.summary.n_done == 6
    run = evalkit.read_run(result.run_dir)
    frame = evalkit.summary_frame(run.rows)
    assert set(frame["length"]) == {256, 512} and set(frame["value"]) == {1.0}
    assert len(evalkit.records_frame(run.records)) == 6
    assert evalkit.run_gate(result.run_dir, result.run_dir).exit_code == 0
    page = evalkit.build_report([result.run_dir], tmp_path / "rep")
    assert page.name == "index.html" and "passkey" in page.read_text()
