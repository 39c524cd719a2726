"""Does the gate stay quiet on noise and trip on real regressions? Prints both figures.

    python bench/gate_calibration.py false-alarms --out DIR [--seeds 1-40] [--config C]
    python bench/gate_calibration.py regressions --out DIR [--baseline RUN] [--config C]

false-alarms: runs the suite (default configs/smoke.yaml) on the same model at each seed
(a run that is already in DIR is reused), then gates disjoint pairs of runs (seed 1
against 2, 3 against 4, ...) and, as a second figure, every pair of runs. With no change
to the model, at most about alpha of the pairs may fail.

regressions: runs the suite with seed 0 under each regression of the embedded model and
gates it against the baseline (default results/baselines/smoke, the same suite and seed,
so samples pair by id): RoPE's frequency base set wrong (10,000 for Gemma 3's 1,000,000,
the knob MistralLite changed the other way), a chat template that drops the line that
asks the question, the second embedded model in place of the first, and the context
window cut to a quarter of the suite's lengths. Prints which cells each one trips.

Runs use the engine, not the response cache (--no-cache), one at a time: two llama.cpp
processes on the same cores slow each other down several times over.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evalkit.results.read import read_run  # noqa: E402
from evalkit.stats.gate import gate  # noqa: E402
from evalkit.types import EvalkitError  # noqa: E402

# the user turn without its last line: where passkey, topics and lines ask their question
DROP_QUESTION = "{{ messages[0]['content'].rsplit('\\n', 1)[0] }}"


def evalkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evalkit.cli", *args], capture_output=True,
                          text=True)


def run_suite(config: Path, out: Path, seed: int | None = None) -> tuple[int, str, float]:
    """(exit code, last stderr line, seconds) of `evalkit run`; a finished run is reused."""
    start = time.perf_counter()
    args = ["run", str(config), "--no-cache", "--no-progress", "--out", str(out)]
    if seed is not None:
        args += ["--seed", str(seed)]
    res = evalkit(*args)
    tail = (res.stderr.strip().splitlines() or [""])[-1]
    return res.returncode, tail, time.perf_counter() - start


def _seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def false_alarms(args: argparse.Namespace) -> None:
    runs = []
    for seed in _seeds(args.seeds):
        out = args.out / f"seed-{seed:02d}"
        code, tail, secs = run_suite(args.config, out, seed)
        if code != 0:
            print(f"seed {seed}: evalkit run exit {code}: {tail}")
            continue
        print(f"seed {seed}: {secs:.0f} s", flush=True)
        runs.append(out)
    disjoint = list(zip(runs[0::2], runs[1::2], strict=False))
    for name, pairs in (("disjoint pairs", disjoint),
                        ("all pairs", list(itertools.combinations(runs, 2)))):
        failed, cells = 0, {}
        for a, b in pairs:
            result = gate(a, b, alpha=args.alpha)
            failed += not result.passed
            for v in result.failed:
                cells[v.name] = cells.get(v.name, 0) + 1
        share = failed / len(pairs) if pairs else float("nan")
        print(f"{name}: {failed} of {len(pairs)} gates failed ({share:.1%}; alpha "
              f"{args.alpha}); failing cells: {cells or 'none'}")


def regressions(args: argparse.Namespace) -> None:
    base_spec = yaml.safe_load(args.config.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    template = args.out / "drop-question.jinja"
    template.write_text(DROP_QUESTION)
    lengths = [t for t in read_run(args.baseline).rows]
    shortest = min(int(r.length) for r in lengths if isinstance(r.length, int))
    cases = {
        "rope-base-10k": {"backend_options": {"rope_freq_base": 10000}},
        "template-drops-question": {"backend_options": {"chat_template": str(template)},
                                    "template": "chat"},
        "second-model": {"model": "smollm2-135m"},
        "context-quarter": {"backend_options": {"n_ctx": shortest // 4}},
    }
    for name, change in cases.items():
        spec = {**base_spec, **change, "seed": 0, "name": f"smoke-{name}"}
        config = args.out / f"{name}.yaml"
        config.write_text(yaml.safe_dump(spec))
        code, tail, secs = run_suite(config, args.out / name)
        print(f"\n== {name}: {change}")
        if code not in (0, 3):
            print(f"evalkit run refused it (exit {code}): {tail}")
            continue
        try:
            result = gate(args.baseline, args.out / name, alpha=args.alpha)
        except EvalkitError as exc:
            print(f"gate: bad input: {exc}")
            continue
        print(f"run {secs:.0f} s; gate {'PASS' if result.passed else 'FAIL'}")
        for v in result.verdicts:
            base = "-" if v.baseline is None else f"{v.baseline.value:.2f}"
            cand = "-" if v.candidate is None else f"{v.candidate.value:.2f}"
            p = "-" if v.p_holm is None else f"{v.p_holm:.2g}"
            print(f"  {v.name:<10} {v.length!s:>6} {v.metric:<9} {base} -> {cand}  "
                  f"{v.test:<8} p_holm {p:<7} {v.status.upper()} {v.reason}")
        for problem in result.problems:
            print(f"  FAIL: {problem}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["false-alarms", "regressions"])
    ap.add_argument("--out", type=Path, required=True, help="where the runs go")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "smoke.yaml")
    ap.add_argument("--baseline", type=Path, default=ROOT / "results" / "baselines" / "smoke")
    ap.add_argument("--seeds", default="1-40")
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    (false_alarms if args.what == "false-alarms" else regressions)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
