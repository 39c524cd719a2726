"""How large a drop the gate catches: samples per cell against the smallest drop detected
with 80% power, computed exactly for the tests the gate runs (no simulation).

    python bench/gate_power.py [--cells K] [--alpha A] [--power P] [--baseline RUN]

A regression in one cell of a suite of K cells is caught when its p-value falls under
alpha / K (Holm's first step). Two settings:
- paired (the candidate ran the baseline's sample ids, as CI does with a committed run):
  exact McNemar. The model: the candidate loses each sample the baseline got right with
  probability q (the drop is p0 * q) and wins none back, as with greedy decoding where
  only the change differs. Wins by chance widen what it takes.
- unpaired (another seed, or a summary.json baseline): Fisher's exact test, one-sided,
  with the baseline's count fixed at round(p0 * n) (a committed baseline is fixed) and
  the candidate's count Binomial(n, p0 - drop).
With --baseline, the cells of that run (or summary.json) are listed with their own n and
accuracy: the smallest drop the gate catches there.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from scipy import stats

STEP = 0.005


def paired_power(p0: float, n: int, drop: float, level: float) -> float:
    right = round(p0 * n)
    if right == 0 or drop <= 0:
        return 0.0
    need = math.ceil(math.log2(1 / level) - 1e-12)  # 0.5 ** lost < level
    while 0.5 ** need >= level:
        need += 1
    q = min(1.0, drop / p0)
    return float(stats.binom.sf(need - 1, right, q))


def _fisher_critical(k_a: int, n: int, level: float) -> int:
    """The largest candidate count the one-sided Fisher test rejects at `level` (-1: none)."""
    worst = -1
    for k_b in range(0, n + 1):
        p = stats.fisher_exact([[k_a, n - k_a], [k_b, n - k_b]], alternative="greater").pvalue
        if p < level:
            worst = k_b
        else:
            break
    return worst


def unpaired_power(p0: float, n: int, drop: float, level: float,
                   critical: dict[tuple[int, int], int]) -> float:
    k_a = round(p0 * n)
    key = (k_a, n)
    if key not in critical:
        critical[key] = _fisher_critical(k_a, n, level)
    crit = critical[key]
    p1 = max(0.0, p0 - drop)
    return float(stats.binom.cdf(crit, n, p1)) if crit >= 0 else 0.0


def smallest_drop(paired: bool, p0: float, n: int, level: float, want: float,
                  critical: dict[tuple[int, int], int]) -> float | None:
    """The smallest drop (on a grid of STEP) caught with power `want`; None: none is."""
    drop = STEP
    while drop <= p0 + 1e-9:
        power = (paired_power(p0, n, drop, level) if paired
                 else unpaired_power(p0, n, drop, level, critical))
        if power >= want:
            return drop
        drop += STEP
    return None


def _fmt(drop: float | None) -> str:
    return "never" if drop is None else f"{drop:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=3, help="cells in the suite (Holm)")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--power", type=float, default=0.8)
    ap.add_argument("--baseline", type=Path, help="a run folder or summary.json")
    args = ap.parse_args()
    level = args.alpha / args.cells
    critical: dict[tuple[int, int], int] = {}
    print(f"smallest drop caught with {args.power:.0%} power, one cell of {args.cells}, "
          f"alpha {args.alpha} (level {level:.4f} at Holm's first step)")
    accs = (1.0, 0.9, 0.75, 0.5)
    head = f"{'n/cell':>7}" + "".join(f"  {'paired p0=' + str(p):>14}" for p in accs) + \
        "".join(f"  {'unpaired p0=' + str(p):>16}" for p in accs)
    print(head)
    print("-" * len(head))
    for n in (20, 50, 100, 200, 400, 1000):
        line = f"{n:>7}"
        for p0 in accs:
            line += f"  {_fmt(smallest_drop(True, p0, n, level, args.power, critical)):>14}"
        for p0 in accs:
            line += f"  {_fmt(smallest_drop(False, p0, n, level, args.power, critical)):>16}"
        print(line)
    if args.baseline is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from evalkit.results.read import read_run

        run = read_run(args.baseline)
        print(f"\nthe cells of {args.baseline} ({len(run.rows)} cells: level "
              f"{args.alpha / len(run.rows):.4f})")
        level = args.alpha / len(run.rows)
        for r in run.rows:
            paired = smallest_drop(True, r.value, r.n, level, args.power, critical)
            unpaired = smallest_drop(False, r.value, r.n, level, args.power, critical)
            print(f"  {r.task:<10} {r.length!s:>6} {r.metric:<10} value {r.value:.3f} "
                  f"n={r.n}: paired {_fmt(paired)}, unpaired {_fmt(unpaired)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
