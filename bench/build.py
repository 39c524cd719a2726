"""How fast evalkit builds prompts fitted to exact lengths, beside lm-eval's RULER.

For each tokenizer (Mistral v1's SentencePiece; llama.cpp's Gemma 3 vocabulary), task and
length: samples/s (median of --reps fresh plans of --samples samples each, as a run plans
them), the ratio of tokens tokenized (every encode call, the fitter's chunk counts
included) to tokens in the final prompts, and the largest gap below the target. Beside it,
on the same tokenizer and lengths, lm-eval's RULER niah_single_1 generation (500 samples
per length, its own count; its "repeat" noise haystack needs no download): samples/s and
how far its lengths fall from the target.

    pip install wonderwords   # RULER's only extra
    python bench/build.py [--lengths 4k,16k,32k] [--samples 20] [--reps 3]
        [--tokenizers mistral-v1,llamacpp] [--tasks passkey,lines,topics,longqa] [--no-ruler]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # RULER's progress bars

from evalkit.runner.config import parse_lengths  # noqa: E402
from evalkit.tasks import Plan, get_task, make_params  # noqa: E402
from evalkit.types import TokenCounter  # noqa: E402


def evalkit_rate(counter: TokenCounter, task: str, length: int, samples: int,
                 params: dict[str, Any]) -> tuple[float, float, int]:
    tokens = 0

    def count(text: str) -> int:
        nonlocal tokens
        n = len(counter.encode(text))
        tokens += n
        return n

    tdef = get_task(task)
    plan = Plan(task=task, lengths=(length,), samples=samples, seed=0, template="raw",
                max_new_tokens=tdef.max_new_tokens, measure=count, count=count)
    start = time.perf_counter()
    made = list(tdef.generate(make_params(tdef, params), plan))
    elapsed = time.perf_counter() - start
    final = sum(s.input_tokens for s in made)
    return len(made) / elapsed, tokens / final, max(length - s.input_tokens for s in made)


def hf_tokenizer_folder(which: str, gguf: Path | None) -> Path:
    """A local HF tokenizer folder for RULER: Mistral v1 from mistral_common's SentencePiece
    file; Gemma from the GGUF's vocabulary."""
    from transformers import AutoTokenizer

    folder = Path(tempfile.mkdtemp(prefix=f"tok-{which}-"))
    if which == "mistral-v1":
        from evalkit.prompts.counters import mistral_v1_model_file

        shutil.copy(mistral_v1_model_file(), folder / "tokenizer.model")
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    else:
        assert gguf is not None
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return folder


def ruler_rate(folder: Path, length: int) -> tuple[float, float, int]:
    """lm-eval's RULER niah_single_1 at one length: samples/s, and its prompts' mean and
    largest distance below the length (its own tokenizer count of the input)."""
    from lm_eval.tasks.ruler.common_utils import get_tokenizer
    from lm_eval.tasks.ruler.niah_utils import niah_single_1

    tok = get_tokenizer(tokenizer=str(folder))
    start = time.perf_counter()
    data = niah_single_1(tokenizer=str(folder), max_seq_lengths=[length])["test"]
    elapsed = time.perf_counter() - start
    gaps = [length - len(tok(row["input"]).input_ids) for row in data.select(range(20))]
    return len(data) / elapsed, statistics.fmean(gaps), max(gaps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="4k,16k,32k")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokenizers", default="mistral-v1,llamacpp")
    ap.add_argument("--tasks", default="passkey,lines,topics,longqa,lines_shared")
    ap.add_argument("--no-ruler", action="store_true")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    lengths = parse_lengths(args.lengths)
    for name in args.tokenizers.split(","):
        gguf = None
        if name == "llamacpp":
            from evalkit.backends import make_backend
            from evalkit.model.files import resolve_gguf

            counter = make_backend("llamacpp", "gemma3-270m", {}).tokenizer()
            gguf = resolve_gguf("gemma3-270m")
        else:
            from evalkit.prompts.counters import get_counter

            counter = get_counter(name)
        print(f"\n== {name}: evalkit, {args.samples} samples per plan, median of {args.reps}")
        print(f"{'task':<14} {'length':>6} {'samples/s':>10} {'tokenized/final':>16} "
              f"{'max gap':>8}")
        for task in args.tasks.split(","):
            params = {"questions": 10} if task.endswith("_shared") else {}
            samples = max(1, args.samples // 10) if params else args.samples
            for length in lengths:
                runs = [evalkit_rate(counter, task, length, samples, params)
                        for _ in range(args.reps)]
                rate = statistics.median(r[0] for r in runs)
                print(f"{task:<14} {length:>6} {rate:>10.2f} {runs[0][1]:>16.2f} "
                      f"{max(r[2] for r in runs):>8}", flush=True)
        if args.no_ruler:
            continue
        folder = hf_tokenizer_folder(name, gguf)
        print(f"-- {name}: lm-eval RULER niah_single_1 (500 samples per length), median of "
              f"{args.reps}")
        print(f"{'length':>6} {'samples/s':>10} {'mean gap':>9} {'max gap':>8}")
        for length in lengths:
            runs = [ruler_rate(folder, length) for _ in range(args.reps)]
            print(f"{length:>6} {statistics.median(r[0] for r in runs):>10.2f} "
                  f"{runs[0][1]:>9.1f} {runs[0][2]:>8}", flush=True)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
