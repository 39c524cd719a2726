"""evalkit's overhead over calling each engine directly, on the same prompts.

Per engine, --prompts passkey samples at --length tokens are planned once; then, --reps
times, the same prompts run two ways, in alternating order:

- evalkit: `evalkit.runner.execute.run` of that spec with the response cache off, into a fresh
  folder. Timed is the execution alone (runner._execute: the planned samples read back,
  rendered, sent through the Model in batches of its max_batch_size under the retry policy,
  scored and appended to samples.jsonl, fsynced per batch). Planning, the run folder,
  run.json and the summary are timed apart ("setup", not in the ratio). The Model is made
  once and handed to every run, so no run pays an engine start.
- direct: the engine's own API on the rendered prompts in the runner's order (prompts that
  share a prefix side by side), with the same parameters (max_tokens, temperature 0, seed):
  llamacpp: llama_cpp.Llama.create_completion on a second Llama of the same file, n_ctx,
  n_threads and n_batch; vllm: vllm.LLM.generate with SamplingParams on evalkit's own LLM
  object (the backend cannot be handed an engine, so the direct side borrows evalkit's: one
  start, 30-90 s, and never two engines on the CPU); openai: raw httpx posts, the same JSON
  body and concurrency, to the llama-cpp-python server (started as tests/servers.py does)
  that evalkit's openai backend is pointed at.

Fairness: each side runs once untimed first; both then send the same prompts in the same
order, so every timed side starts from the same engine state: llamacpp, each Llama's KV
cache holds the last prompt of its previous pass; vllm, the prefix cache is emptied
(LLM.reset_prefix_cache) before every side; openai, a short unrelated request before every
side leaves the server's KV cache sharing no prefix with the prompts (with several in
flight, the order the server takes them in, and so its prefix reuse, varies a little).
Prints per engine the median wall time of each side, the median of the per-rep ratios
evalkit/direct (the aim: at most 1.05) and whether the answers are the same.

    python bench/overhead.py [--engines llamacpp,openai,vllm] [--reps 5] [--prompts 8]
        [--length 1k] [--model gemma3-270m] [--vllm-model smollm2-135m] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from evalkit.model import make_model
from evalkit.model.files import resolve_gguf
from evalkit.results import store
from evalkit.runner import execute as runner
from evalkit.runner import plans
from evalkit.runner.config import build_spec, parse_length

# fp32 as the converted weights are (vLLM's CPU default is bf16); eager: no long compile
VLLM_OPTIONS = {"dtype": "float32", "enforce_eager": True}

Prompt = tuple[str, str, int]  # sample id, rendered prompt, max_new_tokens
Direct = Callable[[list[Prompt]], dict[str, str]]  # the answers' texts by sample id


@dataclass(frozen=True)
class Timed:
    run_dir: Path
    execute_s: float  # runner._execute: the requests through the Model, records appended
    setup_s: float  # the rest of runner.run: planning, run folder, run.json, summary


class EvalkitRuns:
    """evalkit.runner.execute.run on one Model made once (its engine stays loaded from run to run),
    the execution timed apart from the rest."""

    def __init__(self, backend: str, model: str, options: Mapping[str, Any]) -> None:
        self.base = {"model": model, "backend": backend, "backend_options": dict(options),
                     "cache": False}
        self.model = make_model(backend, model, options, use_cache=False)

    def __enter__(self) -> EvalkitRuns:
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop a vLLM engine now. Left to the end of the process, the run can hang there:
        an import error vLLM keeps (no torchcodec) holds, by its traceback, the frames of
        the backend's first call and so the engine, and multiprocessing's exit hook then
        waits for the engine's process before vLLM's own finalizer would stop it."""
        llm = getattr(self.model.backend, "_llm", None)
        if self.base["backend"] == "vllm" and llm is not None:
            llm.llm_engine.engine_core.shutdown()

    def spec(self, config: Mapping[str, Any]) -> Any:
        return build_spec({**self.base, **config})

    def run(self, out: Path, config: Mapping[str, Any]) -> Timed:
        spent: list[float] = []
        execute = runner._execute

        def timed(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            execute(*args, **kwargs)
            spent.append(time.perf_counter() - start)

        start = time.perf_counter()
        with mock.patch.object(runner, "make_model", lambda *a, **k: self.model), \
                mock.patch.object(runner, "_execute", timed):
            runner.run(self.spec(config), out=out, progress=False)
        total = time.perf_counter() - start
        failed = [r for r in store.read_records(out, prompts=False) if not r.ok]
        if failed:
            raise SystemExit(f"{len(failed)} sample(s) failed, e.g. {failed[0].response.error}")
        return Timed(out, sum(spent), total - sum(spent))

    def planned(self, config: Mapping[str, Any]) -> list[Prompt]:
        """Every sample's rendered prompt, in the order the runner sends them."""
        spec, backend = self.spec(config), self.model.backend
        samples = runner.plan_samples(spec, backend, backend.tokenizer())
        samples.sort(key=lambda s: (s.task, plans.prefix_key(s.prompt)))
        templates = {t.name: runner.resolve_template(t, backend) for t in spec.tasks}
        return [(s.id, templates[s.task].render(s.prompt), s.max_new_tokens) for s in samples]


def answers(run_dir: Path) -> dict[str, str]:
    return {r.sample.id: r.response.text or "" for r in store.read_records(run_dir, False)}


def compare(name: str, runs: EvalkitRuns, config: Mapping[str, Any],
            make_direct: Callable[[], Direct], reps: int, tmp: Path,
            before: Callable[[], object] = lambda: None) -> None:
    """Both sides once untimed, then --reps timed in alternating order; `before` runs
    before every timed side."""
    prompts = runs.planned(config)
    runs.run(tmp / f"{name}-warm-up", config)  # loads the engine
    direct = make_direct()
    direct(prompts)

    def ours(rep: int) -> tuple[float, dict[str, str], float]:
        before()
        t = runs.run(tmp / f"{name}-{rep}", config)
        return t.execute_s, answers(t.run_dir), t.setup_s

    def theirs(rep: int) -> tuple[float, dict[str, str], float]:
        before()
        start = time.perf_counter()
        out = direct(prompts)
        return time.perf_counter() - start, out, 0.0

    ev, dr, ratios, setup = [], [], [], []
    for rep in range(reps):
        sides = (ours, theirs) if rep % 2 == 0 else (theirs, ours)
        results = {side: side(rep) for side in sides}
        (e, e_out, s), (d, d_out, _) = results[ours], results[theirs]
        ev.append(e)
        dr.append(d)
        ratios.append(e / d)
        setup.append(s)
        print(f"  rep {rep + 1}: evalkit {e:.3f} s (setup {s:.3f} s), direct {d:.3f} s, "
              f"ratio {e / d:.3f}", flush=True)
    same = sum(e_out[i] == d_out.get(i) for i, _, _ in prompts)
    print(f"{name}: {len(prompts)} prompts, median of {reps} reps: evalkit "
          f"{statistics.median(ev):.3f} s, direct {statistics.median(dr):.3f} s, ratio "
          f"evalkit/direct {statistics.median(ratios):.3f} (aim <= 1.05); setup apart "
          f"{statistics.median(setup):.3f} s; same answers {same}/{len(prompts)}", flush=True)


def passkey(args: argparse.Namespace) -> dict[str, Any]:
    return {"tasks": ["passkey"], "lengths": [args.length], "samples": args.prompts,
            "seed": args.seed}


def run_llamacpp(args: argparse.Namespace, tmp: Path) -> None:
    import llama_cpp

    runs = EvalkitRuns("llamacpp", args.model, {"n_threads": args.threads})

    def make_direct() -> Direct:
        engine = runs.model.backend._llm  # evalkit's Llama, loaded: the settings to copy
        llm = llama_cpp.Llama(model_path=str(runs.model.backend.path), n_ctx=engine.n_ctx(),
                              n_threads=args.threads, n_batch=engine.n_batch, verbose=False)

        def direct(prompts: list[Prompt]) -> dict[str, str]:
            return {i: llm.create_completion(prompt=p, max_tokens=n, temperature=0.0,
                                             seed=args.seed)["choices"][0]["text"]
                    for i, p, n in prompts}
        return direct

    compare("llamacpp", runs, passkey(args), make_direct, args.reps, tmp)


def run_vllm(args: argparse.Namespace, tmp: Path) -> None:
    with EvalkitRuns("vllm", args.vllm_model,
                     {**VLLM_OPTIONS, "max_model_len": args.length + 1024}) as runs:
        compare("vllm", runs, passkey(args), lambda: vllm_direct(runs, args.seed), args.reps,
                tmp, before=lambda: runs.model.backend._llm.reset_prefix_cache())


def vllm_direct(runs: EvalkitRuns, seed: int) -> Direct:
    from vllm import SamplingParams

    engine = runs.model.backend._llm  # evalkit's LLM: one engine serves both sides

    def direct(prompts: list[Prompt]) -> dict[str, str]:
        outs = engine.generate([p for _, p, _ in prompts],
                               [SamplingParams(temperature=0.0, max_tokens=n, seed=seed)
                                for _, _, n in prompts], use_tqdm=False)
        return {i: o.outputs[0].text for (i, _, _), o in zip(prompts, outs, strict=True)}
    return direct


async def post_all(client: Any, model: str, prompts: list[Prompt], concurrency: int,
                   seed: int) -> dict[str, str]:
    slots = asyncio.Semaphore(concurrency)

    async def one(prompt: str, n: int) -> str:
        async with slots:
            resp = await client.post("/v1/completions", json={
                "model": model, "max_tokens": n, "temperature": 0.0, "seed": seed,
                "prompt": prompt})
            resp.raise_for_status()
            return str(resp.json()["choices"][0]["text"])

    texts = await asyncio.gather(*(one(p, n) for _, p, n in prompts))
    return {i: t for (i, _, _), t in zip(prompts, texts, strict=True)}


def run_openai(args: argparse.Namespace, tmp: Path) -> None:
    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from servers import llama_server  # noqa: E402 (tests/servers.py: --n_threads 2)

    with llama_server(resolve_gguf(args.model), tmp / "server.log", args.length + 1024,
                      logits_all=False) as url:
        runs = EvalkitRuns("openai", args.model,
                           {"base_url": url, "concurrency": args.concurrency})
        # one client on one loop, its connections kept alive from pass to pass, as evalkit's
        loop = asyncio.new_event_loop()
        client = httpx.AsyncClient(base_url=url, timeout=600,
                                   limits=httpx.Limits(max_connections=args.concurrency))

        def flush() -> None:  # the server's KV cache then shares no prefix with a prompt
            httpx.post(f"{url}/v1/completions", timeout=60, json={
                "model": args.model, "prompt": "Hello", "max_tokens": 1}).raise_for_status()

        def direct(prompts: list[Prompt]) -> dict[str, str]:
            return loop.run_until_complete(
                post_all(client, args.model, prompts, args.concurrency, args.seed))

        try:
            compare("openai", runs, passkey(args), lambda: direct, args.reps, tmp,
                    before=flush)
        finally:
            loop.run_until_complete(client.aclose())
            loop.close()


ENGINES = {"llamacpp": run_llamacpp, "openai": run_openai, "vllm": run_vllm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="llamacpp,openai,vllm",
                    help="comma-separated, run one after the other: llamacpp, openai, vllm")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=8, help="passkey samples")
    ap.add_argument("--length", type=parse_length, default=1024, help="tokens, e.g. 1k")
    ap.add_argument("--model", default="gemma3-270m", help="llamacpp and openai (a GGUF)")
    ap.add_argument("--vllm-model", default="smollm2-135m", help="an HF folder or alias")
    ap.add_argument("--threads", type=int, default=2, help="llamacpp n_threads")
    ap.add_argument("--concurrency", type=int, default=8, help="openai requests in flight")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        ap.error(f"unknown engine {unknown[0]}: use {', '.join(ENGINES)}")
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            print(f"{engine}: {args.prompts} passkey prompts of {args.length} tokens, "
                  f"{args.reps} reps", flush=True)
            ENGINES[engine](args, Path(tmp))


if __name__ == "__main__":
    main()
