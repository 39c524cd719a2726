"""Shared-context speed-up: the lines_shared task against lines, through evalkit.runner.execute.run.

lines_shared asks --questions questions over each record, the question last, so that all
prompts of a record share the whole record as their prefix; lines makes a record per
sample. Both run the same number of samples (--haystacks x --questions) at each of
--lengths, on llamacpp (llama-cpp-python reuses the longest common prefix of consecutive
prompts; evalkit's backend keeps its Llama, and so its KV cache, from call to call, and the
runner sends prompts that share a prefix one after the other) and on vLLM CPU with
enable_prefix_caching.

Each run is evalkit.runner.execute.run with the response cache off, into a fresh folder, its
execution timed apart from planning (EvalkitRuns of bench/overhead.py: one Model made once,
its engine loaded before any timing). Each rep has a seed of its own (new records), so no
run finds its prefixes cached by an earlier one; the two tasks alternate which goes first.
Before the reps of a length, an untimed lines_shared run of one question sizes the engine
for that length (llama.cpp allocates its context for the longest prompt so far). Prints per
engine and length the median samples/s of each task and the speed-up (the aim: at least
5x), with planning apart and the mean answer length in tokens: answers are generated per
sample whatever is shared, so long ones dilute the speed-up (--max-new-tokens caps them).

    python bench/prefix.py [--engines llamacpp,vllm] [--lengths 4k,8k] [--haystacks 1]
        [--questions 10] [--reps 3] [--model gemma3-270m] [--vllm-model gemma3-270m]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from overhead import VLLM_OPTIONS, EvalkitRuns  # bench/overhead.py

from evalkit.results import store
from evalkit.runner.config import parse_lengths

TASKS = ("lines", "lines_shared")


def config(task: str, length: int, seed: int, haystacks: int, questions: int,
           max_new_tokens: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {"questions": questions} if task == "lines_shared" else {}
    if max_new_tokens:
        params["max_new_tokens"] = max_new_tokens
    samples = haystacks if task == "lines_shared" else haystacks * questions
    return {"tasks": [{task: params}], "lengths": [length], "samples": samples, "seed": seed}


def bench(name: str, runs: EvalkitRuns, args: argparse.Namespace, tmp: Path) -> None:
    n = args.haystacks * args.questions
    for length in args.lengths:
        runs.run(tmp / f"{name}-{length}-warm-up",
                 config("lines_shared", length, args.seed + 10**6, 1, 1, args.max_new_tokens))
        rates: dict[str, list[float]] = {t: [] for t in TASKS}
        setup: dict[str, list[float]] = {t: [] for t in TASKS}
        tokens: dict[str, list[int]] = {t: [] for t in TASKS}
        for rep in range(args.reps):
            for task in TASKS if rep % 2 == 0 else TASKS[::-1]:
                timed = runs.run(tmp / f"{name}-{length}-{task}-{rep}",
                                 config(task, length, args.seed + rep, args.haystacks,
                                        args.questions, args.max_new_tokens))
                rates[task].append(n / timed.execute_s)
                setup[task].append(timed.setup_s)
                tokens[task] += [r.response.output_tokens or 0
                                 for r in store.read_records(timed.run_dir, prompts=False)]
                print(f"  {length} tokens, rep {rep + 1}, {task}: {n} samples in "
                      f"{timed.execute_s:.2f} s ({n / timed.execute_s:.3f}/s), planning "
                      f"{timed.setup_s:.2f} s", flush=True)
        med = {t: statistics.median(rates[t]) for t in TASKS}
        print(f"{name} {length} tokens, {n} samples, median of {args.reps} reps: "
              + ", ".join(f"{t} {med[t]:.3f} samples/s (planning "
                          f"{statistics.median(setup[t]):.1f} s, answers "
                          f"{statistics.mean(tokens[t]):.0f} tokens)" for t in TASKS)
              + f"; speed-up {med['lines_shared'] / med['lines']:.2f}x (aim >= 5x)",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="llamacpp,vllm",
                    help="comma-separated, run one after the other: llamacpp, vllm")
    ap.add_argument("--lengths", type=parse_lengths, default=(4096, 8192), help="e.g. 4k,8k")
    ap.add_argument("--haystacks", type=int, default=1, help="records of lines_shared")
    ap.add_argument("--questions", type=int, default=10, help="questions per record")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="cap on the answers (default: the tasks' own, 100)")
    ap.add_argument("--model", default="gemma3-270m", help="llamacpp: a GGUF or alias")
    ap.add_argument("--vllm-model", default="gemma3-270m", help="an HF folder or alias")
    ap.add_argument("--threads", type=int, default=2, help="llamacpp n_threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if any(e not in ("llamacpp", "vllm") for e in engines):
        ap.error("--engines: llamacpp and/or vllm")
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            print(f"{engine}: lines vs lines_shared, {args.haystacks} x {args.questions} "
                  f"samples per length, {args.reps} reps", flush=True)
            if engine == "llamacpp":
                runs = EvalkitRuns("llamacpp", args.model, {"n_threads": args.threads})
            else:
                runs = EvalkitRuns("vllm", args.vllm_model, {
                    **VLLM_OPTIONS, "enable_prefix_caching": True,
                    "max_model_len": max(args.lengths) + 1024})
            with runs:
                bench(engine, runs, args, Path(tmp))


if __name__ == "__main__":
    main()
