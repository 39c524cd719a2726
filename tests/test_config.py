"""Bad input: one line naming the problem and the fix, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.config import Overrides, build_spec, parse_lengths
from evalkit.types import EvalkitError


def test_parse_lengths() -> None:
    assert parse_lengths("1k,4k,16K") == (1024, 4096, 16384)
    assert parse_lengths("1.5k, 3000") == (1536, 3000)
    for bad in ("1x", "", "k", "-4k"):
        with pytest.raises(EvalkitError):
            parse_lengths(bad)


def test_spec_from_config_with_task_overrides() -> None:
    spec = build_spec({"lengths": ["1k"], "samples": 2,
                       "tasks": [{"passkey": {"depths": [0.5], "lengths": ["2k", "4k"]}},
                                 "lines", {"topics": {"num_topics": [5]}}]})
    by = {t.name: t for t in spec.tasks}
    assert by["passkey"].lengths == (2048, 4096) and by["passkey"].params["depths"] == [0.5]
    assert by["lines"].lengths == (1024,)
    assert by["topics"].lengths == ()  # by count, not fitted
    cli = build_spec({"tasks": ["passkey"]}, Overrides(lengths="8k", samples=1, seed=3))
    assert cli.tasks[0].lengths == (8192,) and cli.seed == 3


def test_spec_hash_ignores_the_name_but_not_the_seed() -> None:
    a = build_spec({"name": "a"})
    assert a.spec_hash() == build_spec({"name": "b"}).spec_hash()
    assert a.spec_hash() != build_spec({"seed": 1}).spec_hash()


def test_secrets_are_redacted() -> None:
    spec = build_spec({"backend_options": {"api_key": "sk-123", "n_threads": 2}})
    assert spec.redacted()["backend_options"] == {"api_key": "***", "n_threads": 2}


@pytest.mark.parametrize("data,message", [
    ({"modle": "x"}, "unknown key 'modle'"),
    ({"samples": "many"}, "samples"),
    ({"tasks": ["nope"]}, "unknown task 'nope'"),
    ({"template": "alpaca"}, "unknown template 'alpaca'"),
    ({"tasks": [{"passkey": {"depth": 1}}]}, "unknown parameter 'depth'"),
    ({"tasks": [{"passkey": {"depths": [2.0]}}]}, "depths must lie in [0, 1]"),
    ({"lengths": ["4q"]}, "'4q' is not a length"),
])
def test_bad_config_is_one_clear_error(data: dict, message: str) -> None:
    with pytest.raises(EvalkitError) as exc:
        build_spec(data, source="c.yaml")
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evalkit.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,message", [
    (["run", "--task", "nope"], "unknown task 'nope'"),
    (["run", "--lengths", "4q"], "'4q' is not a length"),
    (["run", "--template", "alpaca"], "unknown template 'alpaca'"),
    (["run", "--model", "missing.gguf"], "model file not found"),
    (["run", "--model", "llama-9000"], "unknown model 'llama-9000'"),
    (["run", "nothere.yaml"], "config file not found"),
    (["run", "bad.yaml"], "malformed YAML"),
    (["run", "list.yaml"], "a config is a mapping"),
    (["run", "--backend", "scripted", "--model", "x", "--task", "passkey",
      "--lengths", "2000k"], "over the context window"),
    (["show", "."], "not an evalkit run"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str],
                                             message: str) -> None:
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    res = _cli(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
