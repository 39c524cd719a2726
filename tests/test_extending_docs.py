"""docs/extending.md runs as written: its Python examples, in order, as one script in an
empty folder (a task fitted to lengths run on the scripted backend, a conversation task
tried on a plan of its own, a backend run on that task), and its entry-point snippet names
the groups the plugin of tests/data/plugin is found by."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest's own dependency there
    import tomli as tomllib

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
PLUGIN = Path(__file__).parent / "data" / "plugin" / "pyproject.toml"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", DOC.read_text(encoding="utf-8"),
                      flags=re.S | re.M)


def _records(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_the_python_examples_run_as_written(tmp_path: Path) -> None:
    blocks = _blocks("python")
    assert len(blocks) == 4
    script = tmp_path / "extending.py"
    script.write_text("\n\n".join(blocks), encoding="utf-8")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr

    # 1: the task, fitted to its lengths and scored, with its depth on every sample
    needle = _records(tmp_path / "results" / "needle")
    assert len(needle) == 8
    for r in needle:
        sample = r["sample"]
        assert isinstance(sample, dict) and sample["task"] == "needle"
        # the most sentences that fit: within one sentence (at most 5 words) of the length
        assert sample["target_tokens"] - 5 < sample["input_tokens"] <= sample["target_tokens"]
        assert r["scores"] == {"accuracy": 1.0} and 0 <= sample["meta"]["depth"] <= 1
        assert len(sample["targets"][0]) == 6  # the config's parameter
    assert "needle 256 accuracy 1.0" in out.stdout
    # 2: the conversation samples, fitted on their rendering
    made = re.findall(r"^recall/(\d+)/0/\d (\d+) exchanges, (\d+) tokens$", out.stdout, re.M)
    assert len(made) == 4
    assert all(int(n) > 1 and int(tokens) <= int(target) for target, n, tokens in made)
    # 3: the backend, run on the task through the same API
    baseline = _records(tmp_path / "results" / "needle-baseline")
    assert len(baseline) == 3 and all(r["scores"] == {"accuracy": 1.0} for r in baseline)


def test_the_entry_point_snippet_uses_the_plugins_groups() -> None:
    [snippet] = _blocks("toml")
    doc = tomllib.loads(snippet)["project"]["entry-points"]
    plugin = tomllib.loads(PLUGIN.read_text(encoding="utf-8"))["project"]["entry-points"]
    assert set(doc) == set(plugin) == {"evalkit.tasks", "evalkit.backends"}
    for group in doc.values():
        for value in group.values():
            assert re.fullmatch(r"[a-z_.]+:[A-Za-z_]+", value)
