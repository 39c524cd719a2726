"""Bad input: one line naming the problem and the fix, exit code 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.runner.config import (
    Overrides,
    build_spec,
    build_specs,
    load_config_file,
    parse_lengths,
)
from evalkit.types import EvalkitError

ROOT = Path(__file__).resolve().parents[1]


def test_parse_lengths() -> None:
    assert parse_lengths("1k,4k,16K") == (1024, 4096, 16384)
    assert parse_lengths("1.5k, 3000") == (1536, 3000)
    assert parse_lengths("512k,1m,2M") == (524288, 1048576, 2097152)  # m: 1024k, as MRCR's bins
    with pytest.raises(EvalkitError, match="'1024k' and '1m' .* given twice"):
        parse_lengths("1k,1024k,1m")
    for bad in ("1x", "", "k", "-4k", "5m"):
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


def test_secrets_outside_api_key_env_are_redacted_everywhere_in_the_spec() -> None:
    spec = build_spec({"backend": "openai", "model": "m", "backend_options": {
        "base_url": "http://alice:hunter2@127.0.0.1:8000/v1?api_key=sk-q&x=1",
        "api_key_env": "MY_KEY",
        "extra_body": {"api_key": "sk-body", "nested": [{"token": "tk-1"}], "top_k": 3}}})
    text = json.dumps(spec.redacted())
    for secret in ("hunter2", "sk-q", "sk-body", "tk-1"):
        assert secret not in text
    opts = spec.redacted()["backend_options"]
    assert opts["base_url"].startswith("http://alice:***@127.0.0.1:8000/v1?")
    assert "x=1" in opts["base_url"] and opts["api_key_env"] == "MY_KEY"
    assert opts["extra_body"]["top_k"] == 3
    assert spec.to_json()["backend_options"]["extra_body"]["api_key"] == "sk-body"  # only redacted


@pytest.mark.parametrize("data,message", [
    ({"retries": 1000000}, "retries"),
    ({"retries": -1}, "retries"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"samples": True}, "samples"),
    ({"samples": 0}, "samples"),
    ({"samples": 10**9}, "samples"),
    ({"seed": -5}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"name": ""}, "name"),
    ({"lengths": ["99999k"]}, "over 4096k tokens"),
    ({"lengths": [None]}, "lengths.0"),
    ({"tasks": [{"passkey": {"samples": True}}]}, "tasks.passkey.samples"),
    ({"tasks": [{"passkey": {"max_new_tokens": 0}}]}, "tasks.passkey.max_new_tokens"),
    ({"tasks": [{"passkey": {"lengths": {"a": 1}}}]}, "tasks.passkey.lengths: {'a': 1} is not"),
    # checked where the cases are not fitted too (topics by count)
    ({"tasks": [{"topics": {"num_topics": [5], "lengths": ["banana"]}}]},
     "c.yaml: tasks.topics.lengths: 'banana' is not a length"),
    ({"tasks": [{"passkey": {"lengths": []}}]},
     "tasks.passkey.lengths: no lengths given: write e.g. [1k, 4k, 16k]"),
    ({"tasks": [{"passkey": {"depths": "middle"}}]}, "depths"),
    ({"tasks": [{"passkey": {"key_digits": True}}]}, "key_digits"),
    ({"tasks": [{"lines": {"num_lines": [0]}}]}, "num_lines must lie in"),
    ({"tasks": [{"topics": {"num_topics": [-3]}}]}, "num_topics must lie in"),
    ({"tasks": [{"longqa": {"hard_only": "yes"}}]}, "hard_only"),
    ({"models": [{"model": "a", "label": "x"}, {"model": "b", "label": "x"}]}, "share a label"),
])
def test_out_of_range_values_are_refused(data: dict, message: str) -> None:
    with pytest.raises(EvalkitError) as exc:
        build_spec(data, source="c.yaml") if "models" not in data else build_specs(data)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_single_value_where_a_list_is_asked_for_is_a_list_of_one() -> None:
    spec = build_spec({"tasks": [{"lines": {"num_lines": 200}}]})
    assert spec.tasks[0].params["num_lines"] == [200]


@pytest.mark.parametrize("label", [".", "..", "../escape", "a/b", "/abs"])
def test_labels_become_safe_folder_names(tmp_path: Path, label: str) -> None:
    """A model label is a table name, never a path: the run stays under --out."""
    config = tmp_path / "two.yaml"
    config.write_text(json.dumps({
        "backend": "scripted", "backend_options": {"reply": "lookup"}, "samples": 1,
        "lengths": [300], "tasks": ["passkey"],
        "models": [{"model": "m1", "label": label}, {"model": "m2", "label": "other"}]}))
    out = tmp_path / "work" / "out"
    res = _cli("run", str(config), "--out", str(out), "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    made = sorted(p.parent.relative_to(tmp_path).as_posix()
                  for p in tmp_path.rglob("run.json"))
    assert len(made) == 2 and all(m.startswith("work/out/") for m in made), made
    assert all(".." not in m.split("/") and "/." not in m for m in made)


def test_bundled_configs_run_from_any_folder(tmp_path: Path) -> None:
    res = _cli("run", "quickstart", "--backend", "scripted", "--model", "m", "--samples", "1",
               "--lengths", "300", "--task", "passkey", "--out", "o", "--no-progress",
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "o" / "run.json").read_text())["spec"]["name"] == "quickstart"
    res = _cli("run", "no-such-config", cwd=tmp_path)
    assert res.returncode == 2 and "bundled configs: " in res.stderr and "quickstart" in res.stderr


def test_a_partial_run_exits_3_and_says_so(tmp_path: Path) -> None:
    args = ["run", "--backend", "scripted", "--model", "m", "--task", "passkey", "--lengths",
            "300", "--samples", "4", "--out", "o", "--no-progress"]
    config = tmp_path / "failing.yaml"
    config.write_text(json.dumps({"backend_options": {"reply": "lookup", "fail_every": 2},
                                  "retries": 0}))
    res = _cli(*args[:1], str(config), *args[1:], cwd=tmp_path)
    assert res.returncode == 3, res.stderr
    assert "partial run" in res.stderr and "run the same command again" in res.stderr


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


# The spec hashes of the bundled configs as the releases before wrote them: a run folder
# names its spec by this hash, and a run resumes only where the hash is the same, so a
# change here strands every run made with the config (change one only on purpose).
BUNDLED_SPEC_HASHES = {
    "leaderboard-v1.yaml": [
        "85f561f90139ec3055ac02b4374651c5738b4f2b8b47abb90794142a535c648c",
    ],
    "mistrallite-vs-mistral-instruct.yaml": [
        "dd10e8135a1cab3f86e785e9e4f636b9e93fa0adf2ec1972aa707630af15ba51",
        "e39fd5d04e6468f51109bf53e913fa8de9f90af9d3e70f97c8620eff6c9d36a3",
    ],
    "ruler.yaml": [
        "273d7d3fb95dba511a909db9e727e95c9884f68203977adb3a63a86092192e7c",
    ],
    "quickstart.yaml": [
        "5f6d01a2cf7700264cf6ec35c231b63f201f8bd4c7abf0a49678dfdf9f032bb7",
    ],
    "scale/many-servers.yaml": [
        "7bf06a6609e1341ad762b502c7ac2eb1913f7c57195c536d8694e30593b06b06",
    ],
    "scale/multi-gpu.yaml": [
        "7f33dfe1c59f8a3ad43607d714aedf90691527391cf094e7d4ccfdc75207e091",
    ],
    "scale/one-gpu.yaml": [
        "7f787e0bbe7568ac27a3c275ca615815391cb36af5c3566bf1f085a11213e900",
    ],
    "scale/ray-cluster.yaml": [
        "87a6c3cb693db7ec1beacc7707366df26c25bdd3b0ee786ba25cd36f28cc1339",
    ],
    "scale/sharded.yaml": [
        "0f6ae06105ad3251dc031ff56b0db281ea338888c82305784d596089a41baea0",
    ],
    "smoke.yaml": [
        "f816541f25b6221eb57efe28f08ee8089819a046586b9e1e2daff13aee3a7ac0",
    ],
    "smollm2.yaml": [
        "0d4dfcf4dd2fa0b1d404f94007f16699fb6f302dba1d8bea23d73c5b9558930e",
    ],
}


@pytest.mark.parametrize("name", sorted(BUNDLED_SPEC_HASHES))
def test_a_bundled_config_keeps_its_spec_hash(name: str) -> None:
    specs = build_specs(load_config_file(ROOT / "configs" / name))
    assert [s.spec_hash() for s in specs] == BUNDLED_SPEC_HASHES[name]


def test_every_bundled_config_with_tasks_has_its_hash_pinned() -> None:
    """A config added later is pinned from its first release on (one that names no task,
    longeval-published.yaml, takes them from --task)."""
    with_tasks = {str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml")
                  if load_config_file(p).get("tasks")}
    assert with_tasks == set(BUNDLED_SPEC_HASHES)
