"""How long fitting a sample to an exact token length takes, and how many tokenizer calls
it costs, per task and length, with llama.cpp's tokenizer (Gemma 3) and Mistral v1.
Prints figures; asserts nothing.

    python bench/fit_bench.py [--lengths 4k,16k,31k] [--samples 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from evalkit.backends import make_backend
from evalkit.config import parse_lengths
from evalkit.generators import Plan, get_task, make_params
from evalkit.templates import make_template
from evalkit.tokenizers import get_counter
from evalkit.types import TokenCounter


def bench(counter: TokenCounter, lengths: tuple[int, ...], samples: int) -> None:
    template = make_template("raw")
    calls = 0

    def measure(text: str) -> int:
        nonlocal calls
        calls += 1
        return len(counter.encode(template.render(text)))

    for task_name in ("passkey", "lines", "topics", "longqa"):
        task = get_task(task_name)
        for length in lengths:
            plan = Plan(task=task_name, lengths=(length,), samples=samples, seed=0,
                        template="raw", max_new_tokens=task.max_new_tokens, measure=measure)
            calls = 0
            times, gaps = [], []
            it = task.generate(make_params(task, {}), plan)
            for _ in range(samples):
                t0 = time.perf_counter()
                s = next(it)
                times.append(time.perf_counter() - t0)
                gaps.append(s.target_tokens - s.input_tokens)
            print(f"{counter.name:<10} {task_name:<8} {length:>6}: "
                  f"{statistics.median(times) * 1000:7.0f} ms/sample, "
                  f"{calls / samples:5.1f} tokenizer calls/sample, "
                  f"tokens below target: max {max(gaps)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="4k,16k,31k")
    ap.add_argument("--samples", type=int, default=3)
    args = ap.parse_args()
    lengths = parse_lengths(args.lengths)
    bench(get_counter("mistral-v1"), lengths, args.samples)
    bench(make_backend("llamacpp", "gemma3-270m", {}).tokenizer(), lengths, args.samples)


if __name__ == "__main__":
    main()
