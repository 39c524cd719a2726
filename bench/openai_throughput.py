"""Throughput of the openai backend against a minimal asyncio + httpx client.

Starts llama-cpp-python's server on 127.0.0.1 (SmolLM2-135M, small n_ctx), then, several
times over, sends the same requests (same prompts, max_tokens, temperature 0, seed 0) with
8 in flight: once through the openai backend, in batches of its max_batch_size as the
runner hands them, and once with a bare asyncio.gather of httpx posts under a semaphore.
Prints requests/s of both, per repetition and the medians, and their ratio. llama.cpp's
server may run the requests one at a time; the ratio is the figure that matters.

    python bench/openai_throughput.py [--reps 5] [--requests 16] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx

from evalkit.backends import make_backend
from evalkit.model.files import resolve_gguf
from evalkit.types import Request

CONCURRENCY = 8
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. "


def start_server(n_ctx: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model",
             str(resolve_gguf("smollm2-135m")), "--host", "127.0.0.1", "--port", str(port),
             "--n_ctx", str(n_ctx), "--n_threads", "2", "--logits_all", "false"],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: see {log}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2):
                return proc, url
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start within 120 s")


def prompts(n: int) -> list[str]:
    return [f"Note {i}. " + FILLER * (4 + i % 3) + "Now write one sentence about the sky:"
            for i in range(n)]


def via_backend(url: str, texts: list[str], max_tokens: int) -> float:
    backend = make_backend("openai", "smollm2-135m", {"base_url": url,
                                                      "concurrency": CONCURRENCY})
    backend.tokenizer()  # the tokenize probe is set-up, not throughput
    reqs = [Request(sample_id=str(i), kind="generate", prompt=t, max_new_tokens=max_tokens)
            for i, t in enumerate(texts)]
    start = time.perf_counter()
    for i in range(0, len(reqs), backend.max_batch_size):  # as the runner hands them out
        answers = backend.generate(reqs[i:i + backend.max_batch_size])
        if any(a.error for a in answers):
            raise SystemExit(f"backend error: {[a.error for a in answers if a.error][0]}")
    return len(reqs) / (time.perf_counter() - start)


async def _raw(url: str, texts: list[str], max_tokens: int) -> float:
    slots = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def one(text: str) -> None:
            async with slots:
                resp = await client.post("/v1/completions", json={
                    "model": "smollm2-135m", "prompt": text, "max_tokens": max_tokens,
                    "temperature": 0.0, "seed": 0})
                resp.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(one(t) for t in texts))
        return len(texts) / (time.perf_counter() - start)


def via_raw_client(url: str, texts: list[str], max_tokens: int) -> float:
    return asyncio.run(_raw(url, texts, max_tokens))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--n-ctx", type=int, default=2048)
    args = ap.parse_args()
    texts = prompts(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(args.n_ctx, Path(tmp) / "server.log")
        try:
            via_raw_client(url, texts[:2], args.max_tokens)  # warm-up
            ours, raw = [], []
            for rep in range(args.reps):
                # alternate the order, so that neither side always runs on a warmer server
                first, second = (via_backend, via_raw_client) if rep % 2 == 0 else (
                    via_raw_client, via_backend)
                a = first(url, texts, args.max_tokens)
                b = second(url, texts, args.max_tokens)
                o, r = (a, b) if first is via_backend else (b, a)
                ours.append(o)
                raw.append(r)
                print(f"rep {rep + 1}: backend {o:.3f} req/s, raw httpx {r:.3f} req/s, "
                      f"ratio {o / r:.3f}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    o_med, r_med = statistics.median(ours), statistics.median(raw)
    print(f"median over {args.reps} reps ({args.requests} requests, {CONCURRENCY} in flight, "
          f"max_tokens {args.max_tokens}): backend {o_med:.3f} req/s, raw {r_med:.3f} req/s, "
          f"ratio backend/raw {o_med / r_med:.3f}")


if __name__ == "__main__":
    main()
