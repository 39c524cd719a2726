"""evalkit against real deployments: the response cache answers only for the server (and
deployment) that gave the answers, a server serving another model is refused, and
SIGTERM / SIGHUP stop a run as Ctrl-C does, losing no answer that arrived.

The servers are FakeOpenAI (vLLM's schemas, tests/fakeopenai.py) in this process; the
signal tests run evalkit as its own process, as a user, timeout, docker or Slurm starts it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from clirun import in_proc
from fakeopenai import FakeOpenAI

from evalkit.results import store
from evalkit.runner.config import build_spec
from evalkit.runner.execute import run
from evalkit.types import EvalkitError

pytest.importorskip("httpx")


def _spec(url: str, samples: int = 4, **options: Any) -> Any:
    return build_spec({"model": "tiny", "backend": "openai", "lengths": [200],
                       "samples": samples, "tasks": ["passkey"],
                       "backend_options": {"base_url": f"{url}/v1", **options}})


def _run(spec: Any, out: Path, cache: Path) -> list[dict[str, Any]]:
    run(spec, out=out, progress=False, log=lambda m: None, cache_dir=cache)
    return [json.loads(x) for x in (out / store.SAMPLES).read_text().splitlines()]


def test_the_cache_never_answers_for_another_server(tmp_path: Path) -> None:
    """Two servers under one model name (fp16 and fp8, vLLM and TGI, before and after a
    fix): the second is asked every prompt, and its own answers are recorded."""
    cache = tmp_path / "cache"
    with FakeOpenAI() as first, FakeOpenAI(wrong=True) as second:
        a = _run(_spec(first.url), tmp_path / "a", cache)
        b = _run(_spec(second.url), tmp_path / "b", cache)
        assert first.asked == 4 and second.asked == 4
        assert [r["response"]["cached"] for r in a + b] == [False] * 8
        assert sum(r["scores"]["accuracy"] for r in a) == 4
        assert sum(r["scores"]["accuracy"] for r in b) == 0  # its own (wrong) answers
        # the same server again: every answer from the cache, marked so
        again = _run(_spec(first.url), tmp_path / "a2", cache)
        assert first.asked == 4 and [r["response"]["cached"] for r in again] == [True] * 4


def test_two_llama_cpp_servers_of_one_model_name_each_answer_their_run(tmp_path: Path) -> None:
    """The real engine: two llama.cpp servers serving SmolLM2 under one name. The second
    is asked every prompt (its own log shows the completions), not only GET /v1/models."""
    from servers import llama_server, require

    require("llama_cpp", "'evalkit[llamacpp]'")
    from evalkit.model.files import resolve_gguf

    cache, smol = tmp_path / "cache", resolve_gguf("smollm2-135m")
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    with llama_server(smol, logs[0], n_ctx=1024) as first, \
            llama_server(smol, logs[1], n_ctx=1024) as second:
        for url, out in ((first, "a"), (second, "b")):
            records = _run(build_spec({
                "model": "smollm2-135m", "backend": "openai", "lengths": [256], "samples": 2,
                "tasks": ["passkey"], "backend_options": {"base_url": f"{url}/v1"}}),
                tmp_path / out, cache)
            assert [r["response"]["cached"] for r in records] == [False, False]
    asked = [log.read_text().count("POST /v1/completions") for log in logs]
    assert asked == [2, 2], asked


def test_a_redeployed_server_is_asked_again(tmp_path: Path) -> None:
    """Same address, same model name, another deployment (it says another root, another
    version): nothing of the old deployment's answers is reused."""
    cache = tmp_path / "cache"
    with FakeOpenAI(root="/models/tiny-fp16") as before:
        _run(_spec(before.url), tmp_path / "a", cache)
        port = before.port
    with FakeOpenAI(root="/models/tiny-fp8", port=port) as after:
        records = _run(_spec(after.url), tmp_path / "b", cache)
        assert after.asked == 4 and not any(r["response"]["cached"] for r in records)
    with FakeOpenAI(root="/models/tiny-fp8", version="0.12.0", port=port) as upgraded:
        _run(_spec(upgraded.url), tmp_path / "c", cache)
        assert upgraded.asked == 4
    # what the server does not report: the user's deployment label
    with FakeOpenAI(root="/models/tiny-fp8", version="0.12.0", port=port) as relabelled:
        _run(_spec(relabelled.url, deployment="kv-fp8"), tmp_path / "d", cache)
        assert relabelled.asked == 4
        _run(_spec(relabelled.url, deployment="kv-fp8"), tmp_path / "e", cache)
        assert relabelled.asked == 4  # the same deployment: answered from the cache


def test_interchangeable_servers_share_their_answers(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with FakeOpenAI() as first, FakeOpenAI() as replica:
        _run(_spec(first.url, interchangeable=True), tmp_path / "a", cache)
        records = _run(_spec(replica.url, interchangeable=True), tmp_path / "b", cache)
        assert (first.asked, replica.asked) == (4, 0)
        assert all(r["response"]["cached"] for r in records)


def test_one_url_spelled_two_ways_is_one_server() -> None:
    from evalkit.backends.identity import server_address

    same = {server_address(u) for u in ("http://LocalHost:80/v1/", "http://localhost/v1",
                                         "HTTP://localhost", "http://localhost/?api_key=s3cret")}
    assert same == {"http://localhost:80"}
    assert server_address("https://h/openai?api-version=2024-06-01&api_key=zz") == (
        "https://h:443/openai?[('api-version', '2024-06-01')]")


def test_a_model_file_served_without_an_alias_is_named_by_its_file() -> None:
    from evalkit.backends.openai import _names

    served = "/models/mistral-7b-instruct-v0.1.Q4_K_M.gguf"
    assert _names("mistral-7b-instruct-v0.1.Q4_K_M", served)
    assert _names("mistral-7b-instruct-v0.1.Q4_K_M.gguf", served)
    assert not _names("mistral-7b", served)
    # a hub id is the name vLLM answers to, whole (it refuses requests for another)
    assert not _names("Mistral-7B-Instruct-v0.1", "mistralai/Mistral-7B-Instruct-v0.1")


def test_a_server_serving_another_model_is_refused(tmp_path: Path) -> None:
    with FakeOpenAI(served_id="totally-different-model") as server:
        with pytest.raises(EvalkitError, match="serves totally-different-model, not 'tiny'.*"
                                               "allow_model_mismatch"):
            run(_spec(server.url), out=tmp_path / "r", progress=False, log=lambda m: None,
                cache_dir=tmp_path / "cache")
        assert server.asked == 0 and not (tmp_path / "r").exists()
        # confirmed: it runs, and run.json names both
        run(_spec(server.url, allow_model_mismatch=True), out=tmp_path / "r", progress=False,
            log=lambda m: None, cache_dir=tmp_path / "cache")
        backend = json.loads((tmp_path / "r" / store.RUN_JSON).read_text())["backend"]
        assert (backend["api_model"], backend["served_model"]) == (
            "tiny", "totally-different-model")
        assert backend["server"]["/v1/models"]["root"] == "/models/tiny"


# -- signals: real processes ---------------------------------------------------------------

def _config(tmp_path: Path, url: str, samples: int, concurrency: int,
            **options: Any) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": "tiny", "backend": "openai", "lengths": [200], "samples": samples,
        "tasks": ["passkey"],
        "backend_options": {"base_url": f"{url}/v1", "concurrency": concurrency, **options}}))
    return cfg


def _start(cfg: Path, out: Path, cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "EVALKIT_CACHE_DIR": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "evalkit", "run", str(cfg), "--out",
                             str(out), "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _records(out: Path) -> list[dict[str, Any]]:
    path = out / store.SAMPLES
    if not path.is_file():
        return []
    whole = path.read_text().rpartition("\n")[0]  # a line still being written is not read
    return [json.loads(x) for x in whole.splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_keeps_the_answers_that_arrived(tmp_path: Path, sig: int) -> None:
    """One batch of 8 in flight: 4 answered at once, 4 slow. SIGTERM (or SIGHUP) after the
    fast ones arrived: they are recorded, the session says interrupted, one line, exit
    128 + the signal; the next run asks only for the other 4."""
    arrived: list[str] = []

    def delay_s(prompt: str) -> float:
        arrived.append(prompt)  # one at a time under the GIL
        return 0.0 if len(arrived) <= 4 else 60.0

    with FakeOpenAI(delay_s=delay_s) as server:
        cfg = _config(tmp_path, server.url, samples=8, concurrency=8)
        out, cache = tmp_path / "r", tmp_path / "cache"
        proc = _start(cfg, out, cache)
        deadline = time.monotonic() + 60
        while server.answered < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.answered == 4, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.2)  # the client reads them (were it slower, fewer would be recorded)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 128 + sig, stderr
        name = signal.Signals(sig).name
        lines = [x for x in stderr.splitlines() if x.strip()]
        assert lines[-1].startswith(f"interrupted ({name}): every finished sample is saved")
        assert "Traceback" not in stderr
        records = _records(out)
        fast = len(records)
        assert 1 <= fast <= 4 and all(r["scores"]["accuracy"] == 1 for r in records)
        assert [s["ended"] for s in store.read_sessions(out)] == ["interrupted"]

        server.delay_s = lambda p: 0.0
        asked = server.asked
        resumed = _start(cfg, out, cache)
        _, stderr = resumed.communicate(timeout=60)
        assert resumed.returncode == 0, stderr
        assert server.asked - asked == 8 - fast  # only the samples not recorded
        ids = [r["sample"]["id"] for r in _records(out)]
        assert len(ids) == len(set(ids)) == 8


def test_the_command_in_a_process_of_its_own_gives_its_signal_handlers_back(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """main() takes SIGINT, SIGTERM and SIGHUP over while it runs, and puts back what the
    calling process had (a test runner, a notebook), whether the command succeeds or fails;
    the console script alone then leaves them to the system for the interpreter's exit."""
    def mine(signum: int, frame: object) -> None:
        pass

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGTERM, mine)
        for args in (["tasks"], ["show", "/no/such/run"]):
            code, _, _ = in_proc(capsys, monkeypatch, *args)
            assert code == (0 if args == ["tasks"] else 2)
            assert signal.getsignal(signal.SIGTERM) is mine
            assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_signal_while_the_command_line_is_parsed_exits_with_its_code(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal that lands before the command starts (typer parsing its arguments, which
    would exit 130 without a word) exits 128 + the signal, with the one line."""
    import importlib

    from evalkit.types import Interrupted

    cli_app = importlib.import_module("evalkit.cli.app")  # the package's `app` is typer's

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(sys, "argv", ["evalkit", "tasks"])
    # while click parses the arguments (typer exits 130), and before, while typer reads the
    # commands' signatures (the interrupt comes out of typer as it is)
    for where, name in ((cli_app._Group, "make_context"),
                        (typer.main, "get_params_from_function")):
        with monkeypatch.context() as patch:
            patch.setattr(where, name, interrupted)
            with pytest.raises(SystemExit) as exit_:
                cli_app.main()
        assert exit_.value.code == 128 + signal.SIGTERM, name
        err = capsys.readouterr().err
        assert err.strip().startswith("interrupted (SIGTERM)"), name
        assert "Traceback" not in err


def test_signals_at_random_moments_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    """SIGTERMs and SIGHUPs at random moments of a run, at least 20, of which at least 10
    land while requests are in flight: a quarter are sent early (while Python imports
    evalkit, while it plans), the rest after a random number of new records, then a
    random fraction of a batch. Every interrupted process exits 143 or 129 with one line
    and no traceback; no sample is ever recorded twice; the resumed run equals the
    uninterrupted one."""
    rng = random.Random(7)
    samples = 48

    def interrupted(run_dir: Path) -> int:
        return sum(s["ended"] == "interrupted" for s in store.read_sessions(run_dir))

    with FakeOpenAI(delay_s=lambda p: 0.1) as server:
        # counted locally (no tokenize round trips), so that a run's time goes to requests
        cfg = _config(tmp_path, server.url, samples=samples, concurrency=4,
                      tokenizer="whitespace", context_window=4096)
        out, cache = tmp_path / "r", tmp_path / "cache"
        signals = codes = mid_run = rounds = 0
        while (signals < 20 or mid_run < 10) and rounds < 80:  # bounded: about 2 s a round
            rounds += 1
            before, sessions_before = len(_records(out)), interrupted(out)
            proc = _start(cfg, out, cache)
            if rng.random() < 0.25:
                time.sleep(rng.uniform(0.2, 1.5))  # past the interpreter's own start
            else:
                deadline = time.monotonic() + 60
                want = before + rng.randint(1, 8)
                while (len(_records(out)) < want and proc.poll() is None
                       and time.monotonic() < deadline):
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.1))
            sig = rng.choice([signal.SIGTERM, signal.SIGHUP])
            if proc.poll() is None:
                proc.send_signal(sig)
                signals += 1
            stdout, stderr = proc.communicate(timeout=60)
            assert "Traceback" not in stderr and "internal error" not in stderr, stderr
            if proc.returncode == -sig:  # it came as Python shut down, the run finished
                assert (out / store.SUMMARY).is_file() and "samples scored" in stdout, stderr
                proc.returncode = 0
            assert proc.returncode in (0, 128 + sig), stderr
            if proc.returncode == 128 + sig:
                codes += 1
                mid_run += interrupted(out) > sessions_before  # it was asking the server
                assert stderr.strip().splitlines()[-1].startswith(
                    f"interrupted ({signal.Signals(sig).name})"), stderr
            ids = [r["sample"]["id"] for r in _records(out)]
            assert len(ids) == len(set(ids)), "a sample was recorded twice"
            if proc.returncode == 0:  # finished before the signal: start over, and with
                assert len(ids) == samples  # an empty cache, or every later run is instant
                os.rename(out, tmp_path / f"done{rounds}")
                if cache.exists():
                    os.rename(cache, tmp_path / f"cache-done{rounds}")
        print(f"\n[signals] {signals} signals in {rounds} runs: {codes} interrupted a "
              f"process, {mid_run} while it was asking the server")
        assert signals >= 20 and mid_run >= 10 and codes >= mid_run
        finish = _start(cfg, out, cache)
        _, stderr = finish.communicate(timeout=60)
        assert finish.returncode == 0, stderr

        clean = tmp_path / "clean"
        whole = _start(cfg, clean, tmp_path / "cache-clean")
        whole.communicate(timeout=60)
        assert whole.returncode == 0
    got, want = _records(out), _records(clean)
    assert sorted(r["sample"]["id"] for r in got) == sorted(r["sample"]["id"] for r in want)
    assert len(got) == samples
    a, b = (json.loads((d / store.SUMMARY).read_text()) for d in (out, clean))
    for key in ("status", "rows", "n_samples", "n_done", "n_errors"):
        assert a[key] == b[key]


# -- in-process engines: the weights by their content ---------------------------------------

def test_weights_are_known_by_their_content_not_their_name_or_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evalkit.backends import identity
    from evalkit.backends.identity import weights_identity

    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(identity, "_digests", None)
    data = random.Random(0).randbytes(5 << 20)
    a, b = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(data)
    os.utime(b, (1, 1))  # a copy made elsewhere: another time, the same weights
    assert weights_identity(a) == weights_identity(b)
    middle = bytearray(data)
    middle[len(data) // 2] ^= 1  # a layer in the middle fine-tuned
    b.write_bytes(middle)
    assert weights_identity(a) != weights_identity(b)
    # digests are remembered for later processes, by file and modification
    memo = (tmp_path / "cache" / identity.DIGESTS_FILE).read_text().splitlines()
    assert len(memo) == 3
    monkeypatch.setattr(identity, "_digests", None)
    assert weights_identity(b) == weights_identity(b) and len(
        (tmp_path / "cache" / identity.DIGESTS_FILE).read_text().splitlines()) == 3
    # a hub cache names a file by its sha256: not read at all
    blob = tmp_path / "hub" / "blobs" / ("ab" * 32)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"x")
    link = tmp_path / "hub" / "model.safetensors"
    link.symlink_to(blob)
    assert weights_identity(link) == {"file": "sha256:" + "ab" * 32}
    # an HF folder: every weight file, and the config, generation and tokenizer files
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(data)
    (folder / "config.json").write_text('{"rope_theta": 10000}')
    before = weights_identity(folder)
    (folder / "tokenizer_config.json").write_text('{"add_bos_token": false}')
    assert set(weights_identity(folder)) == {"model.safetensors", "config.json",
                                             "tokenizer_config.json"}
    assert weights_identity(folder) != before


def test_llamacpp_knows_its_file_by_content_and_its_engine(tmp_path: Path) -> None:
    """A copy of the GGUF under another name and time answers as the original; options
    that change the sums (flash attention) and the engine version are in the key."""
    pytest.importorskip("llama_cpp")
    from evalkit.backends import make_backend
    from evalkit.model.files import resolve_gguf

    original = resolve_gguf("smollm2-135m")
    copy = tmp_path / "renamed.gguf"
    copy.symlink_to(original)
    be = make_backend("llamacpp", str(original), {})
    assert make_backend("llamacpp", str(copy), {}).fingerprint() == be.fingerprint()
    assert make_backend("llamacpp", str(original), {"flash_attn": True}).fingerprint() != (
        be.fingerprint())
    assert make_backend("llamacpp", "gemma3-270m", {}).fingerprint() != be.fingerprint()
