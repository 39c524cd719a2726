"""lm_eval:niah_single_1 against lm-eval's own RULER with a Hugging Face tokenizer.

lm-eval's RULER sizes its haystacks with an HF tokenizer (AutoTokenizer of metadata
`tokenizer`); evalkit's lm_eval tasks give it the evaluated model's own TokenCounter
instead (evalkit.tasks.lm_eval.catalogue.CounterTokenizer). This checks, per length, that
the documents evalkit makes for Gemma 3 270M on llama.cpp's tokenizer are the ones
lm-eval's own dataset function makes with Gemma's HF tokenizer (read from the same GGUF by
evalkit's hf backend: about a minute), and times both: lm-eval generates its 500 documents
a length, evalkit only the first --docs.

    python bench/lm_eval_ruler.py [--lengths 1k,4k,16k] [--docs 5] [--task niah_single_1]
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1k,4k,16k")
    parser.add_argument("--docs", type=int, default=5)
    parser.add_argument("--task", default="niah_single_1")
    args = parser.parse_args()

    import numpy as np

    from evalkit.backends import make_backend
    from evalkit.tasks.base import WholeRun
    from evalkit.tasks.lm_eval import catalogue as lt

    lengths = tuple(int(x[:-1]) * 1024 if x.lower().endswith("k") else int(x)
                    for x in args.lengths.split(","))
    start = time.monotonic()
    hf_tok: Any = make_backend("hf", "gemma3-270m", {})._tok
    print(f"HF tokenizer from the GGUF: {time.monotonic() - start:.1f} s")
    counter = make_backend("llamacpp", "gemma3-270m", {}).tokenizer()
    run = WholeRun(params=lt.Params(), lengths=lengths, limit=args.docs, counter=counter)
    generate = lt.leaves(args.task, resolve=True)[0].cfg["custom_dataset"]
    for unit in lt.units(args.task, run, resolve=True):
        start = time.monotonic()
        ours = list(lt.build(unit, run).task.eval_docs)
        ours_s = time.monotonic() - start
        saved = generate.__globals__["get_tokenizer"]
        generate.__globals__["get_tokenizer"] = lambda *a, **k: hf_tok
        try:
            random.seed(lt.SEEDS[0])
            np.random.seed(lt.SEEDS[1])
            start = time.monotonic()
            theirs = list(generate(max_seq_lengths=[unit.cell])["test"])
            theirs_s = time.monotonic() - start
        finally:
            generate.__globals__["get_tokenizer"] = saved
        same = ours == theirs[:len(ours)]
        print(f"{args.task} {unit.cell}: evalkit {len(ours)} docs in {ours_s:.1f} s, lm-eval "
              f"(HF tokenizer) {len(theirs)} docs in {theirs_s:.1f} s, first {len(ours)} "
              f"{'identical' if same else 'DIFFERENT'}; prompt tokens "
              f"{[len(counter.encode(d['input'])) for d in ours]}")


if __name__ == "__main__":
    main()
