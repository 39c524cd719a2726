"""RULER's preparation: cold, warm (the plan cache), and resumed after a kill at half-way.

Runs the RULER suite (configs/ruler.yaml's tasks) on the scripted backend (no model: the
preparation is what is measured), its lengths counted with the Mistral v1 tokenizer, each
phase an `evalkit run` process of its own. For each: the time to the first request (the
first record on disk: the scripted backend answers at once), the whole run, and the peak
RSS of the process.

- cold: an empty plan cache: every sample is fitted (and kept);
- warm: another run folder, the same cache: the samples are read, not fitted;
- killed + resumed, cache off: a run killed (SIGKILL) once half its samples are recorded,
  then resumed; the resume fits only the samples not recorded;
- killed + resumed, cache on: the same with the plan cache of the cold run.

qa_1 and qa_2 need SQuAD's dev-v2.0.json and HotpotQA's hotpot_dev_distractor_v1.json
(--squad, --hotpotqa); without them the suite runs without those two tasks.

    python bench/ruler_prep.py [--samples 100] [--lengths 4k,8k,16k,32k,64k,128k]
        [--squad FILE] [--hotpotqa FILE]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

NIAH = ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1",
        "niah_multikey_2", "niah_multikey_3", "niah_multivalue", "niah_multiquery"]


def records(out: Path) -> int:
    try:
        with (out / "samples.jsonl").open("rb") as f:
            return sum(1 for line in f if line.endswith(b"\n"))
    except FileNotFoundError:
        return 0


def phase(cfg: Path, out: Path, cache: Path, kill_at: int | None = None,
          no_cache: bool = False) -> dict[str, float]:
    """One `evalkit run`: seconds to the first record and to the end, peak RSS (MB)."""
    rss = out.parent / f"{out.name}.rss"
    cmd = ["/usr/bin/time", "-o", str(rss), "-f", "%M", sys.executable, "-m", "evalkit.cli",
           "run", str(cfg), "--out", str(out), "--no-progress",
           *(["--no-cache"] if no_cache else [])]
    env = {**os.environ, "EVALKIT_CACHE_DIR": str(cache)}
    before = records(out)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    first = None
    while proc.poll() is None:
        n = records(out)
        if first is None and n > before:
            first = time.perf_counter() - start
        if kill_at is not None and n >= kill_at:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    total = time.perf_counter() - start
    if kill_at is None and proc.returncode != 0:
        raise SystemExit(f"evalkit run failed: {proc.stderr.read() if proc.stderr else ''}")
    if first is None and records(out) > before:
        first = total
    peak = float(rss.read_text().split()[-1]) / 1024 if kill_at is None else float("nan")
    return {"first": first or float("nan"), "total": total, "rss": peak,
            "records": records(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--lengths", default="4k,8k,16k,32k,64k,128k")
    ap.add_argument("--squad", type=Path)
    ap.add_argument("--hotpotqa", type=Path)
    args = ap.parse_args()
    tasks: list[object] = [*NIAH, "vt", "cwe", "fwe"]
    if args.squad:
        tasks.append({"qa_1": {"data": str(args.squad.resolve())}})
    if args.hotpotqa:
        tasks.append({"qa_2": {"data": str(args.hotpotqa.resolve())}})
    lengths = args.lengths.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = root / "ruler.yaml"
        cfg.write_text(yaml.safe_dump({
            "name": "ruler-prep", "model": "scripted", "backend": "scripted",
            "backend_options": {"reply": "lookup", "context_window": 1 << 20},
            "tokenizer": "mistral-v1", "lengths": lengths, "samples": args.samples,
            "tasks": tasks}))
        n = len(tasks) * len(lengths) * args.samples
        print(f"RULER preparation: {len(tasks)} tasks x {args.lengths} x {args.samples} "
              f"samples = {n} samples, Mistral v1 tokenizer, scripted backend"
              + ("" if args.squad and args.hotpotqa else " (qa_1/qa_2 left out: --squad, "
                 "--hotpotqa)"))
        print(f"{'phase':<28} {'first request s':>16} {'whole run s':>12} {'peak RSS MB':>12}")

        def show(name: str, r: dict[str, float]) -> None:
            print(f"{name:<28} {r['first']:>16.1f} {r['total']:>12.1f} {r['rss']:>12.0f}",
                  flush=True)

        cache = root / "cache"
        show("cold (empty plan cache)", phase(cfg, root / "cold", cache))
        plans = cache / "plans"
        size = sum(p.stat().st_size for p in plans.rglob("*") if p.is_file())
        show("warm (plan cache)", phase(cfg, root / "warm", cache))
        for label, no_cache in (("cache off", True), ("cache on", False)):
            out = root / f"killed-{label.split()[-1]}"
            killed = phase(cfg, out, cache, kill_at=n // 2, no_cache=no_cache)
            show(f"killed at {killed['records']}/{n}, {label}", killed)
            show(f"  resumed, {label}", phase(cfg, out, cache, no_cache=no_cache))
        print(f"plan cache: {size / 1e6:.1f} MB for {n} samples")


if __name__ == "__main__":
    main()
