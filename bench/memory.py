"""Peak memory of a run against its number of samples and their length.

Each run is a fresh process on the scripted backend (no model: planning, running and
summarizing are what is measured): passkey samples at one length, the response cache
off. Prints the peak RSS of the process, its RSS after imports (the floor), the growth
per 1,000 samples between the two sizes, and the wall time. The target: flat in the
number of samples (planned samples are kept on disk, records summarized without their
prompts).

    python bench/memory.py [--samples 1000,10000] [--lengths 1k,16k]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

from evalkit.runner.config import parse_lengths

CHILD = """
import json, resource, sys, time
from pathlib import Path
from evalkit.runner.config import build_spec
from evalkit.runner.execute import run
floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n, length, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
spec = build_spec({"name": "memory", "model": "scripted", "backend": "scripted",
                   "tokenizer": "whitespace", "cache": False, "samples": n,
                   "lengths": [length], "tasks": ["passkey"]})
start = time.perf_counter()
result = run(spec, out=out, progress=False, log=lambda m: None)
print(json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "floor_kb": floor, "seconds": time.perf_counter() - start,
                  "done": result.summary.n_done}))
"""


def measure(n: int, length: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(length), f"{tmp}/run"],
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", default="1000,10000")
    ap.add_argument("--lengths", default="1k,16k")
    args = ap.parse_args()
    sizes = [int(x) for x in args.samples.split(",")]
    print(f"{'length':>6} {'samples':>8} {'peak RSS MB':>12} {'after imports':>14} "
          f"{'seconds':>8}")
    for length in parse_lengths(args.lengths):
        peaks = []
        for n in sizes:
            m = measure(n, length)
            assert m["done"] == n
            peaks.append(m["peak_kb"])
            print(f"{length:>6} {n:>8} {m['peak_kb'] / 1024:>12.1f} "
                  f"{m['floor_kb'] / 1024:>14.1f} {m['seconds']:>8.1f}", flush=True)
        growth = (peaks[-1] - peaks[0]) / ((sizes[-1] - sizes[0]) / 1000)
        print(f"{length:>6} growth: {growth / 1024:.2f} MB per 1,000 samples "
              f"({growth / 1000:.2f} KB per sample)")


if __name__ == "__main__":
    main()
