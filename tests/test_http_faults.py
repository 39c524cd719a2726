"""Server faults on the HTTP backends: no fault loses a sample, every fault ends in bounded
time with one clear line, and no secret reaches a file or the terminal.

Real processes on 127.0.0.1 only: the `evalkit` command in a subprocess, against a tiny
misbehaving server of our own (tests/servers.py: never answers, or echoes the request) and,
in the tests marked engine, llama-cpp-python's server on the embedded SmolLM2, killed with
SIGKILL mid-run and mid-planning and started again on the same port.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import free_port, llama_server_process, misbehaving_server, require

require("httpx", "'evalkit[http]'")

from faultproxy import FaultProxy  # noqa: E402

from evalkit.backends import make_backend  # noqa: E402
from evalkit.backends.http import ApiKey, Secrets  # noqa: E402
from evalkit.model import MAX_SLEEP_S, TRIP_AFTER, RetryPolicy, ServerHealth, make_model  # noqa: E402
from evalkit.types import Request  # noqa: E402

KEY_ENV = "EVALKIT_TEST_FAULTS_KEY"
KEY = "sk-faults-4b1d9e77c2"  # made-up secrets: the tests grep every output for them
EXTRA_KEY = "xb-extra-body-51f0aa"
PASSWORD = "pw-in-the-url-93c1"
USER = "evalkit-user"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()  # what httpx sends for it
SECRETS = (KEY, EXTRA_KEY, PASSWORD, BASIC)
CLI_LIMIT_S = 300.0  # a hung test ends here; each test asserts its own, much smaller, bound
# Small limits so that a never-answering server costs seconds, not the defaults' minutes.
FAST = {"connect_timeout_s": 1, "timeout_s": 1.5, "total_timeout_s": 3, "backoff_s": 0.1}


def _cli(tmp: Path, name: str, config: dict[str, Any], out: Path) -> tuple[int, str, str, float]:
    """`evalkit run CONFIG --out OUT` in a subprocess: (exit code, stdout, stderr, seconds)."""
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(json.dumps({"name": name, "tasks": ["passkey"], **config}))  # JSON is YAML
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "evalkit.cli", "run", str(cfg), "--out",
                           str(out), "--no-progress"], capture_output=True, text=True, cwd=tmp,
                          timeout=CLI_LIMIT_S, env={**os.environ, KEY_ENV: KEY})
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start


def _error_line(stderr: str) -> str:
    """The one error line on stderr (never a traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1, stderr
    return lines[0]


def _records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "samples.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _latest(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {r["sample"]["id"]: r for r in _records(run_dir)}


# -- the policy, from data alone ---------------------------------------------------------

def test_the_retry_policy_decides_from_status_retry_after_and_time() -> None:
    policy = RetryPolicy(max_retries=3, backoff_s=0.5, total_timeout_s=10.0)
    rng = random.Random(0)

    def nxt(**kw: Any) -> float | None:
        args = {"retryable": True, "retry_after_s": None, "attempt": 0, "elapsed_s": 0.0, **kw}
        return policy.next_delay_s(rng=rng, **args)

    assert nxt(retryable=False) is None  # a 4xx: never again
    first = nxt()
    assert first is not None and 0.0 <= first <= 0.5
    assert nxt(retry_after_s=2.0) == 2.0
    assert nxt(retry_after_s=1e6) is None  # capped at MAX_SLEEP_S, still past the budget
    roomy = RetryPolicy(max_retries=3, backoff_s=0.5, total_timeout_s=100.0)
    assert roomy.next_delay_s(retryable=True, retry_after_s=1e6, attempt=0, elapsed_s=0.0,
                              rng=rng) == MAX_SLEEP_S
    assert nxt(attempt=2) is not None and nxt(attempt=3) is None  # 4 attempts in all
    assert nxt(elapsed_s=9.0, retry_after_s=2.0) is None  # would start past the 10 s budget
    assert nxt(elapsed_s=7.0, retry_after_s=2.0) == 2.0
    assert policy.with_budget(3.0).total_timeout_s == 3.0
    assert policy.with_budget(60.0).total_timeout_s == 10.0


def test_server_health_trips_on_failures_in_a_row_and_then_holds_one_message() -> None:
    notices: list[str] = []
    health = ServerHealth("openai", "http://127.0.0.1:1", notices.append)
    assert health.failed("first") == "first" and health.down is None
    health.answered()  # one prompt failing alone stops nothing
    for i in range(TRIP_AFTER - 1):
        assert health.failed(f"again {i}") == f"again {i}" and health.down is None
    assert health.failed("tripped") == "tripped" and health.down == "tripped"
    assert health.failed("later") == "tripped"  # every later failure reads the same
    assert len(notices) == 1 and "stopped answering" in notices[0]
    at_once = ServerHealth("tgi", "x", notices.append)
    assert at_once.failed("silent metadata", at_once=True) == at_once.down == "silent metadata"


def test_secrets_are_masked_in_any_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    options = {"base_url": f"http://{USER}:{PASSWORD}@127.0.0.1:9/v1?api_key={EXTRA_KEY}2",
               "api_key_env": KEY_ENV, "extra_body": {"api_key": EXTRA_KEY, "top_k": 5,
                                                      "auth": {"token": "tok-nested-77"}}}
    redact = Secrets(ApiKey(KEY_ENV, "openai"), options)
    echoed = (f"Authorization: Bearer {KEY} / Basic {BASIC} / {{\"api_key\": \"{EXTRA_KEY}\", "
              f"\"token\": \"tok-nested-77\"}} at {options['base_url']} top_k 5 api_key_env")
    masked = redact(echoed)
    for secret in (*SECRETS, "tok-nested-77", f"{EXTRA_KEY}2"):
        assert secret not in masked, secret
    assert "top_k 5" in masked and "api_key_env" in masked and "127.0.0.1:9" in masked
    assert masked.count("***") >= 6


# -- a server that accepts connections and never answers --------------------------------

def _stuck_config(url: str, **options: Any) -> dict[str, Any]:
    return {"model": "stuck", "backend": "openai", "lengths": [256], "samples": 8,
            "backend_options": {"base_url": f"{url}/v1", "api_key_env": KEY_ENV,
                                "concurrency": 2, **FAST, **options}}


@pytest.mark.parametrize("mode", ["hang", "models"])
def test_a_server_that_never_answers_ends_the_run_in_bounded_time(
        mode: str, tmp_path: Path) -> None:
    """"hang": even GET /v1/models (asked while the run starts) gets no answer; "models":
    that answers, the generations never do. Either way the run ends within about one
    request's total_timeout_s (3 s here; 600 s with the defaults), every planned sample is
    recorded with one shared error, the retries showed while they happened, exit 3."""
    out = tmp_path / "run"
    with misbehaving_server(mode) as url:
        rc, stdout, stderr, elapsed = _cli(tmp_path, mode, _stuck_config(
            url, tokenizer="whitespace", context_window=4096), out)
    assert rc == 3, (stdout, stderr)
    line = _error_line(stderr)
    latest = _latest(out)
    planned = json.loads((out / "run.json").read_text())["n_samples"]
    assert len(latest) == planned == 8  # four batches of two: without the stop, 4 x 3 s
    errors = {r["response"]["error"] for r in latest.values()}
    assert None not in errors and len(errors) == 1, errors  # one shared line
    [error] = errors
    assert f"error ({planned} samples): {error}" == line
    assert re.search(r"no answer within|no complete answer|used up", error), error
    assert re.search(r"failed: .*attempt 1/5, retrying in \d", stderr), stderr
    assert "stopped answering" in stderr
    assert KEY not in stderr + stdout
    # one request's budget (3 s), and the command's start (Python, imports)
    assert elapsed < 3.0 + 9.0, elapsed


def test_a_server_that_never_answers_while_planning_is_one_line_and_exit_2(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    with misbehaving_server("hang") as url:
        rc, stdout, stderr, elapsed = _cli(tmp_path, "plan", _stuck_config(url), out)
    assert rc == 2, (stdout, stderr)
    line = _error_line(stderr)
    assert line.startswith("error: openai backend: the tokenize probe failed: ") and url in line
    assert "check base_url and that the server is up" in line
    assert not _records(out)
    assert elapsed < 3.0 + 9.0, elapsed


# -- the sagemaker backend: the same policy -----------------------------------------------

def test_sagemaker_stops_calling_an_endpoint_that_keeps_failing(
        aws_test_credentials: None) -> None:
    require("boto3", "'evalkit[sagemaker]'")
    from botocore.stub import Stubber

    notices: list[str] = []
    model = make_model("sagemaker", "m", {
        "endpoint_name": "ep", "region": "eu-west-1", "tokenizer": "whitespace",
        "concurrency": 1, "max_retries": 1, "backoff_s": 0.01}, use_cache=False,
        log=notices.append)
    with Stubber(model.backend.client) as stub:  # type: ignore[attr-defined]
        for _ in range(TRIP_AFTER * 2):  # two attempts for each request until it trips
            stub.add_client_error("invoke_endpoint", "ServiceUnavailable", "down", 503)
        answers = model.generate([Request(sample_id=f"s{i}", kind="generate", prompt="hi",
                                          max_new_tokens=2) for i in range(4)])
        stub.assert_no_pending_responses()  # the last two were never sent
    errors = {a.error for a in answers}
    assert len(errors) == 1 and None not in errors
    [error] = errors
    assert "endpoint ep (eu-west-1): ServiceUnavailable (HTTP 503" in str(error)
    assert "gave up after 2 attempts" in str(error)
    assert sum("attempt 1/2, retrying in" in n for n in notices) == TRIP_AFTER
    assert sum("stopped answering" in n for n in notices) == 1


# -- secrets ------------------------------------------------------------------------------

def test_a_gateway_that_echoes_the_request_shows_no_secret(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tgi backend behind a gateway that echoes every request (headers included) in its
    error: the Basic credentials of a password in base_url are masked, and so is the key."""
    monkeypatch.setenv(KEY_ENV, KEY)
    with misbehaving_server("echo") as url:
        host = url.removeprefix("http://")
        for options in ({"base_url": f"http://{USER}:{PASSWORD}@{host}"},
                        {"base_url": url, "api_key_env": KEY_ENV}):
            backend = make_backend("tgi", "fake", {"tokenizer": "whitespace", **options})
            [answer] = backend.generate([Request(sample_id="s", kind="generate",
                                                 prompt="hello", max_new_tokens=2)])
            shown = json.dumps([answer.error, backend.describe(), backend.fingerprint()])
            assert answer.error is not None and "HTTP 400" in answer.error
            assert "Authorization: " in answer.error and "***" in answer.error
            assert not [s for s in SECRETS if s in shown], shown


def _grep_secrets(folder: Path, *texts: str) -> list[str]:
    """Where any secret shows: files under `folder`, then the given texts."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes().decode("utf-8", errors="replace")
        found += [f"{path.relative_to(folder)}: {s}" for s in SECRETS if s in data]
    for i, text in enumerate(texts):
        found += [f"output {i}: {s}" for s in SECRETS if s in text]
    return found


# -- a real server, killed ----------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2() -> Path:
    require("llama_cpp.server.app", "'llama-cpp-python[server]==0.3.36'")
    from evalkit.model.files import resolve_gguf

    return resolve_gguf("smollm2-135m")


class KillingProxy(FaultProxy):
    """Passes every request to the server, except that the `n`-th request whose line
    contains `path` first kills the server (SIGKILL): it and every later request meet a
    dead server, as when the server process dies."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port, fault_rate=0.0)
        self.target: tuple[str, int, subprocess.Popen[bytes]] | None = None
        self.killed = False

    def kill_at(self, path: str, n: int, proc: subprocess.Popen[bytes]) -> None:
        self.target, self.killed = (path, n, proc), False

    async def _forward(self, request: bytes, writer: Any) -> None:
        if self.target is not None:
            path, n, proc = self.target
            seen = sum(1 for line, _ in self.log if path in line)
            if seen >= n and not self.killed:
                proc.kill()
                proc.wait(timeout=10)
                self.killed = True
        await super()._forward(request, writer)

    def count(self, path: str, since: int = 0) -> int:
        return sum(1 for line, _ in self.log[since:] if path in line)


@pytest.fixture
def proxied(smollm2: Path, tmp_path: Path) -> Iterator[tuple[KillingProxy, int]]:
    port = free_port()
    proxy = KillingProxy(port)
    proxy.start()
    try:
        yield proxy, port
    finally:
        proxy.close()


@pytest.mark.engine
def test_a_server_killed_mid_run_then_mid_planning_loses_nothing(
        smollm2: Path, proxied: tuple[KillingProxy, int], tmp_path: Path) -> None:
    """1. Killed mid-run: bounded time, exit 3, one error line; every finished sample kept,
    the others recorded with one shared error. 2. Started again, killed while the samples
    are planned (tokens counted through the server): exit 2, one line, samples.jsonl
    untouched. 3. Started again: exit 0, and only the failed samples are sent."""
    proxy, port = proxied
    config = {"model": "smollm2-135m", "backend": "openai", "lengths": [256], "samples": 8,
              "backend_options": {"base_url": f"http://127.0.0.1:{proxy.port}/v1",
                                  "api_key_env": KEY_ENV, "concurrency": 2,
                                  "max_retries": 3, "backoff_s": 0.2}}
    out = tmp_path / "run"
    log = tmp_path / "server.log"

    with llama_server_process(smollm2, log, 2048, api_key=KEY, logits_all=False,
                              port=port) as (_, proc):
        proxy.kill_at("/v1/completions", 5, proc)  # two batches of two are done by then
        rc, stdout, stderr, elapsed = _cli(tmp_path, "killed", config, out)
    assert rc == 3, (stdout, stderr)
    assert proxy.killed
    line = _error_line(stderr)
    latest = _latest(out)
    assert len(latest) == 8 == len(_records(out))  # every sample recorded, once
    done = {i for i, r in latest.items() if r["response"]["error"] is None}
    failed = {i: r["response"]["error"] for i, r in latest.items() if i not in done}
    assert len(done) == 4 and len(failed) == 4
    [error] = set(failed.values())  # one shared error
    assert line == f"error (4 samples): {error}"
    assert "connection failed" in error and "gave up after 4 attempts" in error
    assert "stopped answering" in stderr and "attempt 1/4, retrying in" in stderr
    assert elapsed < 120, elapsed  # retries of a dead server: seconds, not minutes
    tokenize_calls = proxy.count("/extras/tokenize")
    assert tokenize_calls > 20  # planning counts through the server, so it can die there

    before = (out / "samples.jsonl").read_bytes()
    with llama_server_process(smollm2, log, 2048, api_key=KEY, logits_all=False,
                              port=port) as (_, proc):
        proxy.kill_at("/extras/tokenize", tokenize_calls + 10, proc)
        rc, stdout, stderr, elapsed = _cli(tmp_path, "killed", config, out)
    assert rc == 2, (stdout, stderr)
    assert proxy.killed
    line = _error_line(stderr)
    assert line.startswith("error: openai backend: counting tokens with /extras/tokenize "
                           "failed: ") and "run the same command again" in line
    assert (out / "samples.jsonl").read_bytes() == before  # nothing lost, nothing added
    assert elapsed < 120, elapsed

    mark = len(proxy.log)
    with llama_server_process(smollm2, log, 2048, api_key=KEY, logits_all=False,
                              port=port) as (_, proc):
        proxy.target = None
        rc, stdout, stderr, _ = _cli(tmp_path, "killed", config, out)
    assert rc == 0, (stdout, stderr)
    assert proxy.count("/v1/completions", since=mark) == 4  # only the failed ones
    records = _records(out)
    assert {r["sample"]["id"] for r in records[8:]} == set(failed)
    assert all(r["response"]["error"] is None for r in records[8:])
    latest = _latest(out)
    assert len(latest) == 8 and all(r["response"]["error"] is None for r in latest.values())
    assert "8/8 samples scored" in stdout


@pytest.mark.engine
def test_no_secret_reaches_a_run_folder_or_the_terminal(smollm2: Path, tmp_path: Path) -> None:
    """An API key (from the environment), a password in base_url and an api_key inside
    extra_body, through a run that succeeds, runs whose every request is echoed back by a
    gateway (headers and body), and a run that cannot start: no file of any run folder and
    no line the command printed holds any of them."""
    results = tmp_path / "results"
    extra = {"api_key": EXTRA_KEY, "repeat_penalty": 1.0}
    outputs: list[str] = []
    with llama_server_process(smollm2, tmp_path / "server.log", 2048, api_key=KEY,
                              logits_all=False) as (url, _):
        rc, stdout, stderr, _ = _cli(tmp_path, "ok", {
            "model": "smollm2-135m", "backend": "openai", "lengths": [256], "samples": 2,
            "backend_options": {"base_url": f"{url}/v1", "api_key_env": KEY_ENV,
                                "extra_body": extra}}, results / "ok")
        assert rc == 0, (stdout, stderr)
        outputs += [stdout, stderr]
    with misbehaving_server("echo") as echo:
        host = echo.removeprefix("http://")
        for name, base in (("echo-key", echo),
                           ("echo-password", f"http://{USER}:{PASSWORD}@{host}")):
            rc, stdout, stderr, _ = _cli(tmp_path, name, {
                "model": "m", "backend": "openai", "lengths": [256], "samples": 2,
                "backend_options": {"base_url": f"{base}/v1", "api_key_env": KEY_ENV,
                                    "extra_body": extra, "tokenizer": "whitespace",
                                    "context_window": 4096}}, results / name)
            assert rc == 3, (stdout, stderr)
            # each echo holds its own request: one error line per sample, here
            lines = [x for x in stderr.splitlines() if x.startswith("error")]
            assert lines and "Traceback" not in stderr, stderr
            for line in lines:
                assert "HTTP 400" in line and "Authorization: " in line and "***" in line
            outputs += [stdout, stderr]
    dead = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/v1"
    rc, stdout, stderr, _ = _cli(tmp_path, "dead", {
        "model": "m", "backend": "openai", "lengths": [256], "samples": 2,
        "backend_options": {"base_url": dead, "api_key_env": KEY_ENV, "extra_body": extra,
                            "backoff_s": 0.05}}, results / "dead")
    assert rc == 2, (stdout, stderr)
    assert f"http://{USER}:***@127.0.0.1" in _error_line(stderr)
    outputs += [stdout, stderr]
    assert len(list(results.rglob("*.json*"))) >= 6  # the folders were written
    assert _grep_secrets(results, *outputs) == []
