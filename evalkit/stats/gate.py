"""The regression gate: is the candidate worse than the baseline, cell by cell?

A cell is (task, length, subset, metric) of the baseline's summary. For each, one
one-sided test of H0 "the candidate loses at most `margin`" against H1 "the candidate is
worse by more than `margin`" (the loss is baseline - candidate, or the reverse for a metric
where lower is better), chosen by what the two cells hold:

- the samples pair (both runs scored the same sample ids, as runs of one suite and seed
  do), binary metric: exact McNemar on the discordant pairs (a one-sided binomial test of
  the pairs the candidate lost against those it won) at margin 0; above 0, Tango's score
  test for a paired difference of proportions;
- the samples pair, continuous metric (a probability mass over the right answers, a
  log-probability): a one-sided paired t-test of the per-sample losses against the margin;
- the samples do not pair (another seed, a summary.json without samples), binary metric:
  Fisher's exact test at margin 0; above 0, the Farrington-Manning score test;
- continuous, not paired: Welch's t-test against the margin;
- a value that is not a plain mean of its samples (a mean of subset means, a suite's
  average over tasks), a cell whose samples share haystacks (the shared-context tasks:
  their interval is clustered by haystack), or a continuous cell known by its summary
  only: a z-test on the difference with each standard error read off the 95% interval.

Holm's correction runs over every tested cell, so a suite of many cells does not trip by
chance more often than `alpha` in all (the family-wise error rate). Assumptions: the
samples of a cell are independent draws of its task (a sample id names one test case);
paired tests assume the pairing is by test case, which sample ids guarantee (a changed
prompt under the same id, from a template change, is still paired, and reported). A cell
of a few samples can only catch a large drop: docs/ci.md has the sample counts a wanted
sensitivity needs.

The gate fails (exit 1) on a significant drop, on a baseline cell the candidate lacks,
on a candidate cell with errored samples, and on a candidate run that is not complete; it
passes (exit 0) otherwise. Asked to (`effective_threshold`), it also fails a task whose
effective length fell: the candidate's upper 95% bounds fall below the threshold at a
length where the baseline's scores still stayed at or above it (EffectiveVerdict).
Nothing here writes into a run.
"""

from __future__ import annotations

import math
import re
import statistics
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import pandas as pd
from scipy import stats

from evalkit.report.tables import counted, fmt_effective, fmt_length
from evalkit.results.effective import check_threshold
from evalkit.results.read import (
    CellKey,
    MetricInfo,
    Run,
    by_cell,
    effective_of,
    join_frames,
    read_run,
    records_frame,
    row_info,
)
from evalkit.stats.intervals import interval_se
from evalkit.types import EffectiveLength, EvalkitError, MetricKind, SummaryRow

Alternative = Literal["worse", "two-sided"]
Status = Literal["pass", "fail", "missing", "errors", "untested", "new"]
FAILING: frozenset[str] = frozenset({"fail", "missing", "errors"})


# ---- the tests ---------------------------------------------------------------------------
# Each returns a p-value. "worse": H1 is loss > margin (one-sided); "two-sided": H1 is
# loss != 0 (compare). `loss` is oriented so that positive means the candidate is worse.

def mcnemar_exact(n_lost: int, n_won: int, alternative: Alternative = "worse") -> float:
    """Exact McNemar: of the discordant pairs, those the candidate lost are Binomial(d, 1/2)
    under H0."""
    d = n_lost + n_won
    if d == 0:
        return 1.0
    alt = "greater" if alternative == "worse" else "two-sided"
    return float(stats.binomtest(n_lost, d, 0.5, alternative=alt).pvalue)


def tango_score(n_lost: int, n_won: int, n: int, margin: float) -> float:
    """One-sided p of Tango's (1998) score test of H0: p_lost - p_won <= margin for paired
    binary outcomes of n pairs, n_lost pairs right in the baseline only, n_won in the
    candidate only. The variance is taken at the maximum-likelihood p_won under H0's
    boundary (the root of 2n x^2 - B x - C = 0); at margin 0 this is McNemar's z."""
    if n == 0 or margin >= 1:
        return 1.0  # a proportion cannot drop by 1 or more: H0 holds
    c = n - n_lost - n_won
    b = n_lost * (1 - margin) + n_won * (1 - 3 * margin) - 2 * c * margin
    cc = n_won * margin * (1 - margin)
    x = (b + math.sqrt(max(0.0, b * b + 8 * n * cc))) / (4 * n)
    var = n * (2 * x + margin - margin * margin)
    diff = n_lost - n_won - n * margin
    if var <= 0:
        return 0.0 if diff > 0 else 1.0
    return float(stats.norm.sf(diff / math.sqrt(var)))


def paired_t(losses: Sequence[float], margin: float,
             alternative: Alternative = "worse") -> float:
    """The paired t-test on per-sample losses: mean > margin (worse) or != 0 (two-sided)."""
    if len(losses) < 2:
        return math.nan
    centre = margin if alternative == "worse" else 0.0
    mean = statistics.fmean(losses)
    if statistics.pstdev(losses) == 0:  # no spread: the difference is known exactly
        if alternative == "worse":
            return 0.0 if mean > centre else 1.0
        return 0.0 if mean != centre else 1.0
    alt = "greater" if alternative == "worse" else "two-sided"
    return float(stats.ttest_1samp(losses, centre, alternative=alt).pvalue)


def two_proportions(k_a: int, n_a: int, k_b: int, n_b: int, margin: float,
                    alternative: Alternative = "worse") -> float:
    """Unpaired proportions, a = baseline, b = candidate, loss = p_a - p_b: Fisher's exact
    test at margin 0 (one-sided or two-sided); the Farrington-Manning score test of
    loss > margin above 0."""
    if n_a == 0 or n_b == 0:
        return math.nan
    if alternative == "worse" and margin >= 1:
        return 1.0  # a proportion cannot drop by 1 or more: H0 holds
    if alternative == "two-sided" or margin == 0:
        alt = "greater" if alternative == "worse" else "two-sided"
        return float(stats.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]],
                                        alternative=alt).pvalue)
    from statsmodels.stats.proportion import test_proportions_2indep

    res = test_proportions_2indep(k_a, n_a, k_b, n_b, value=margin, method="score",
                                  compare="diff", alternative="larger", correction=False)
    return float(res.pvalue)


def welch(losses_a: Sequence[float], losses_b: Sequence[float], margin: float,
          alternative: Alternative = "worse") -> float:
    """Welch's t-test, unpaired continuous scores oriented as losses: a holds the baseline's
    values, b the candidate's (each times the metric's sign); H1: mean(a) - mean(b) > margin."""
    if len(losses_a) < 2 or len(losses_b) < 2:
        return math.nan
    shifted = [x - margin for x in losses_a] if alternative == "worse" else list(losses_a)
    if statistics.pvariance(shifted) + statistics.pvariance(losses_b) == 0:
        diff = statistics.fmean(shifted) - statistics.fmean(losses_b)
        return (0.0 if diff > 0 else 1.0) if alternative == "worse" else float(diff == 0)
    alt = "greater" if alternative == "worse" else "two-sided"
    return float(stats.ttest_ind(shifted, losses_b, equal_var=False, alternative=alt).pvalue)


def interval_z(a: SummaryRow, b: SummaryRow, sign: int, margin: float,
               alternative: Alternative = "worse") -> float:
    """A z-test on the difference, each standard error read off its 95% interval (for
    values that are not a plain mean of samples, or are known by their summary only)."""
    se = math.sqrt(sum(interval_se(r) ** 2 for r in (a, b)))
    loss = sign * (a.value - b.value)
    if not math.isfinite(se):
        return math.nan
    if se == 0:
        if alternative == "worse":
            return 0.0 if loss > margin else 1.0
        return 0.0 if loss != 0 else 1.0
    if alternative == "worse":
        return float(stats.norm.sf((loss - margin) / se))
    return float(2 * stats.norm.sf(abs(loss) / se))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    if not p_values:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(list(p_values), method="holm")[1]]


# ---- one cell ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CellTest:
    test: str            # mcnemar, tango, paired-t, fisher, score, welch-t, z-ci; "" none
    p: float | None
    n_pairs: int = 0
    prompts_changed: int = 0


def cell_test(a: SummaryRow, b: SummaryRow, info: MetricInfo, pairs: pd.DataFrame | None,
              values_a: Sequence[float], values_b: Sequence[float], margin: float = 0.0,
              alternative: Alternative = "worse") -> CellTest:
    """The test fitting one cell (see the module docstring). `pairs` are the cell's rows
    of evalkit.results.read.paired_frame (None: the runs cannot pair, one has no samples);
    `values_*` each side's scored values (empty for a summary alone)."""
    sign = 1 if info.higher_is_better else -1
    n_pairs, changed = (0, 0) if pairs is None else (len(pairs),
                                                     int(pairs["prompt_changed"].sum()))
    if a.derived or b.derived or a.clusters or b.clusters:  # not independent samples
        return _tested("z-ci", interval_z(a, b, sign, margin, alternative), n_pairs, changed)
    if pairs is not None and _pair_whole(n_pairs, a, b, values_a, values_b):
        return _paired_test(pairs, info.kind, sign, margin, alternative, changed)
    if info.kind == "binary" and a.successes is not None and b.successes is not None:
        p = _proportions_p(a.successes, a.n, b.successes, b.n, sign, margin, alternative)
        name = "fisher" if margin == 0 or alternative == "two-sided" else "score"
        return _tested(name, p, n_pairs, changed)
    if values_a and values_b:
        p = welch([sign * v for v in values_a], [sign * v for v in values_b], margin,
                  alternative)
        return _tested("welch-t", p, n_pairs, changed)
    return _tested("z-ci", interval_z(a, b, sign, margin, alternative), n_pairs, changed)


def _pair_whole(n_pairs: int, a: SummaryRow, b: SummaryRow, values_a: Sequence[float],
                values_b: Sequence[float]) -> bool:
    """Whether the pairs are the whole cell: every scored sample of either side paired."""
    return n_pairs >= 1 and n_pairs == len(values_a) == len(values_b) == a.n == b.n


def _tested(test: str, p: float, n_pairs: int, changed: int) -> CellTest:
    """A test's result; a p-value it could not compute (NaN) is None: no test."""
    return CellTest(test, None if math.isnan(p) else p, n_pairs, changed)


def _paired_test(pairs: pd.DataFrame, kind: MetricKind, sign: int, margin: float,
                 alternative: Alternative, changed: int) -> CellTest:
    """Both runs scored the cell's samples: exact McNemar on 0/1 scores (Tango's score test
    against a margin), the paired t-test on continuous ones."""
    n_pairs = len(pairs)
    losses = [sign * (x - y) for x, y in zip(pairs["value_a"], pairs["value_b"], strict=True)]
    if kind != "binary":
        return _tested("paired-t", paired_t(losses, margin, alternative), n_pairs, changed)
    lost, won = sum(1 for x in losses if x > 0), sum(1 for x in losses if x < 0)
    if margin > 0 and alternative == "worse":
        return CellTest("tango", tango_score(lost, won, n_pairs, margin), n_pairs, changed)
    return CellTest("mcnemar", mcnemar_exact(lost, won, alternative), n_pairs, changed)


def _proportions_p(k_a: int, n_a: int, k_b: int, n_b: int, sign: int, margin: float,
                   alternative: Alternative) -> float:
    """two_proportions of the two sides' successes, or of their failures where lower is
    better (so that a loss is still a drop)."""
    if sign < 0:
        k_a, k_b = n_a - k_a, n_b - k_b
    return two_proportions(k_a, n_a, k_b, n_b, margin, alternative)


# ---- two runs ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """Two runs' rows of one cell, with what the test needs."""

    key: CellKey
    baseline: SummaryRow | None
    candidate: SummaryRow | None
    info: MetricInfo
    test: CellTest | None = None


def paired_cells(base: Run, cand: Run, margin: float,
                 alternative: Alternative) -> list[Cell]:
    """Every cell of either run, tested where both have it (with values)."""
    infos = row_info([*base.rows, *cand.rows], [*base.records, *cand.records])
    rows_a = {(r.task, r.length, r.subset, r.metric): r for r in base.rows}
    rows_b = {(r.task, r.length, r.subset, r.metric): r for r in cand.rows}
    fa, fb = records_frame(base.records), records_frame(cand.records)  # once per run
    values_a = {k: list(g["value"]) for k, g in by_cell(fa).items()}
    values_b = {k: list(g["value"]) for k, g in by_cell(fb).items()}
    pairs = by_cell(join_frames(fa, fb)) if base.has_samples and cand.has_samples else {}
    out = []
    for key in [*rows_a, *(k for k in rows_b if k not in rows_a)]:
        a, b = rows_a.get(key), rows_b.get(key)
        info = infos.get((key[0], key[3]), MetricInfo("binary"))
        test = None
        if a is not None and b is not None and a.n and b.n and _finite(a.value, b.value):
            test = cell_test(a, b, info, pairs.get(key),
                             values_a.get(key, []), values_b.get(key, []), margin,
                             alternative)
        out.append(Cell(key, a, b, info, test))
    return out


def _finite(*xs: float) -> bool:
    return all(math.isfinite(x) for x in xs)


# ---- the gate ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    task: str
    length: int | str
    subset: str
    metric: str
    kind: MetricKind
    higher_is_better: bool
    baseline: SummaryRow | None
    candidate: SummaryRow | None
    status: Status
    reason: str
    test: str = ""
    p: float | None = None
    p_holm: float | None = None
    n_pairs: int = 0
    prompts_changed: int = 0

    @property
    def delta(self) -> float | None:
        """candidate - baseline (in the metric's own direction)."""
        if self.baseline is None or self.candidate is None:
            return None
        if not _finite(self.baseline.value, self.candidate.value):
            return None
        return self.candidate.value - self.baseline.value

    @property
    def name(self) -> str:
        return self.task if self.subset == "all" else f"{self.task}:{self.subset}"


@dataclass(frozen=True)
class EffectiveVerdict:
    """A task's effective length in both runs (the opt-in check of `gate`): it fails when
    even the candidate's upper 95% bounds do not reach the length the baseline's scores
    reached (a fall beyond the candidate's own interval)."""

    task: str
    metric: str
    baseline: EffectiveLength
    candidate: EffectiveLength | None
    failed: bool
    reason: str


@dataclass(frozen=True)
class GateResult:
    baseline: str
    candidate: str
    margin: float
    alpha: float
    verdicts: list[Verdict]
    problems: list[str] = field(default_factory=list)  # run-level reasons to fail
    n_tested: int = 0  # the cells Holm's correction ran over
    effective: list[EffectiveVerdict] = field(default_factory=list)  # when asked for

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status in FAILING]

    @property
    def passed(self) -> bool:
        return (not self.failed and not self.problems
                and not any(e.failed for e in self.effective))

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def _check(margin: float, alpha: float) -> None:
    if not (math.isfinite(margin) and margin >= 0):
        raise EvalkitError(f"--margin {margin}: give a loss to tolerate, 0 or more, in the "
                           "metric's units (0.05 = five points of accuracy)")
    if not 0 < alpha < 1:
        raise EvalkitError(f"--alpha {alpha}: give a significance level between 0 and 1, "
                           "such as 0.05")


def gate(baseline: Path, candidate: Path, margin: float = 0.0, alpha: float = 0.05,
         metrics: Sequence[str] = (), effective_threshold: float | None = None
         ) -> GateResult:
    """Gate `candidate` against `baseline` (run folders, or summary.json files): the verdict
    per cell, Holm-corrected over every tested cell. With `effective_threshold`, also each
    task's effective length at that threshold (EffectiveVerdict). Reads only."""
    _check(margin, alpha)
    if effective_threshold is not None:
        check_threshold(effective_threshold)
    base, cand = read_run(baseline, prompts=False), read_run(candidate, prompts=False)
    if not base.rows:
        raise EvalkitError(f"the baseline {baseline} has no results: pass a finished run "
                           "(or its summary.json)")
    _check_metrics(metrics, base.rows)
    cells = [c for c in paired_cells(base, cand, margin, "worse")
             if not metrics or c.key[3] in metrics]
    verdicts, n_tested = _corrected([_verdict(c) for c in cells], margin, alpha)
    effective = ([] if effective_threshold is None
                 else [e for e in effective_verdicts(base, cand, effective_threshold)
                       if not metrics or e.metric in metrics])
    return GateResult(str(baseline), str(candidate), margin, alpha, verdicts,
                      _run_problems(cand), n_tested, effective)


def _reach(length: int | None) -> int:
    return -1 if length is None else length  # None: below the shortest length measured


def effective_verdicts(base: Run, cand: Run, threshold: float) -> list[EffectiveVerdict]:
    """Per task and metric of the baseline measured at two lengths or more: whether the
    candidate's effective length fell beyond its interval (its upper 95% bounds short of
    the baseline's effective length by its scores)."""
    mine = {(e.task, e.metric): e for e in effective_of(cand.rows, cand.records, threshold)}
    out = []
    for b in effective_of(base.rows, base.records, threshold):
        if b.longest == b.shortest:
            continue
        c = mine.get((b.task, b.metric))
        if c is None:
            out.append(EffectiveVerdict(b.task, b.metric, b, None, True,
                                        "the candidate has no lengths of this task"))
        elif not c.bounded:
            out.append(EffectiveVerdict(b.task, b.metric, b, c, False,
                                        "untested: a length of the candidate has no 95% "
                                        "interval (one sample, or one haystack)"))
        elif b.by_value is not None and c.longest < b.by_value:
            out.append(EffectiveVerdict(
                b.task, b.metric, b, c, True,
                f"not measured: the baseline stays >= {threshold:g} up to "
                f"{fmt_effective(b.by_value, b)}, the candidate was measured up to "
                f"{fmt_length(c.longest)} only"))
        elif _reach(c.by_ci_high) < _reach(b.by_value):
            out.append(EffectiveVerdict(
                b.task, b.metric, b, c, True,
                f"fell: the baseline stays >= {threshold:g} up to "
                f"{fmt_effective(b.by_value, b)}, the candidate not even by its upper 95% "
                f"bounds (up to {fmt_effective(c.by_ci_high, c)})"))
        else:
            out.append(EffectiveVerdict(b.task, b.metric, b, c, False, ""))
    return out


def _check_metrics(metrics: Sequence[str], rows: Sequence[SummaryRow]) -> None:
    """Refuse, in one line, a --metric the baseline does not have."""
    if not metrics:
        return
    known = {r.metric for r in rows}
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise EvalkitError(f"--metric {unknown[0]}: the baseline has no such metric; it "
                           f"has {', '.join(sorted(known))}")


def _corrected(verdicts: list[Verdict], margin: float,
               alpha: float) -> tuple[list[Verdict], int]:
    """The verdicts with Holm's correction run over the tested cells (those passing so far
    with a p-value), each of them failing where its adjusted p is below alpha; and how many
    cells were tested."""
    tested = [i for i, v in enumerate(verdicts) if v.status == "pass" and v.p is not None]
    adjusted = holm([verdicts[i].p for i in tested])  # type: ignore[misc]
    out = list(verdicts)
    for i, p_holm in zip(tested, adjusted, strict=True):
        out[i] = _judged(verdicts[i], p_holm, margin, alpha)
    return out, len(tested)


def _judged(v: Verdict, p_holm: float, margin: float, alpha: float) -> Verdict:
    """A tested verdict, given its Holm-adjusted p: a fail below alpha, else a pass."""
    if not p_holm < alpha:
        return replace(v, status="pass", p_holm=p_holm)
    reason = f"worse by more than {margin:g}" if margin else "worse"
    if v.prompts_changed:
        reason += f" (prompt changed in {v.prompts_changed} of {v.n_pairs} pairs)"
    return replace(v, status="fail", reason=reason, p_holm=p_holm)


def _run_problems(cand: Run) -> list[str]:
    """Run-level reasons to fail: a candidate run that is not complete."""
    if cand.status == "complete":
        return []
    return [f"the candidate run is partial ({cand.n_done} of {cand.n_samples} samples "
            "scored): finish it (run the same command again) and gate again"]


def _verdict(cell: Cell) -> Verdict:
    task, length, subset, metric = cell.key
    a, b, t = cell.baseline, cell.candidate, cell.test
    kind = (a or b).kind if (a or b) else "binary"  # type: ignore[union-attr]

    def make(status: Status, reason: str) -> Verdict:
        return Verdict(task, length, subset, metric, kind, cell.info.higher_is_better, a, b,
                       status, reason, t.test if t else "", t.p if t else None, None,
                       t.n_pairs if t else 0, t.prompts_changed if t else 0)

    if a is None:
        return make("new", "not in the baseline")
    if b is None:
        return make("missing", "the candidate has no such cell")
    if b.n_errors:
        return make("errors", f"{b.n_errors} of {counted(b.n + b.n_errors, 'sample')} errored")
    if not a.n or not _finite(a.value):
        return make("untested", "the baseline has no scored value here")
    if not b.n or not _finite(b.value):
        return make("fail", "the candidate has no scored value here")
    if t is None or t.p is None:
        if 1 in (a.clusters, b.clusters):
            return make("untested", "one haystack: a clustered interval needs two or more "
                                    "(samples: 2 per length)")
        return make("untested", "too few samples on both sides for a test")
    note = f"prompt changed in {t.prompts_changed} of {t.n_pairs} pairs" \
        if t.prompts_changed else ""
    return make("pass", note)


# ---- output ------------------------------------------------------------------------------

def value_cell(r: SummaryRow | None) -> str:
    """A row's value and n for a text table ("-" where there is none)."""
    if r is None:
        return "-"
    if not _finite(r.value):
        return f"- n={r.n}"
    return f"{r.value:.3f} n={r.n}"


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


COLUMNS = ("cell", "length", "metric", "baseline", "candidate", "delta", "test", "p", "p_holm",
           "verdict")


def table_rows(result: GateResult) -> list[tuple[str, ...]]:
    return [(v.name, fmt_length(v.length), v.metric, value_cell(v.baseline),
             value_cell(v.candidate),
             "-" if v.delta is None else f"{v.delta:+.3f}", v.test or "-", _p(v.p),
             _p(v.p_holm), v.status.upper() + (f": {v.reason}" if v.reason else ""))
            for v in result.verdicts]


def headline(result: GateResult) -> str:
    counts = {s: sum(1 for v in result.verdicts if v.status == s)
              for s in ("pass", "fail", "missing", "errors", "untested", "new")}
    said = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if result.effective:
        fell = sum(1 for e in result.effective if e.failed)
        said += f"; effective length: {fell} of {len(result.effective)} fell"
    word = "PASS" if result.passed else "FAIL"
    margin = f"margin {result.margin:g}, " if result.margin else ""
    return (f"gate {word}: {said} ({margin}one-sided alpha {result.alpha:g}, Holm over "
            f"{result.n_tested} tested cells)")


def format_gate(result: GateResult) -> str:
    rows = [COLUMNS, *table_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=False)))
                     + "  " + r[-1])
        if j == 0:
            lines.append("-" * len(lines[0]))
    lines += ["", *effective_lines(result), *[f"FAIL: {p}" for p in result.problems],
              headline(result)]
    return "\n".join(lines)


def effective_lines(result: GateResult) -> list[str]:
    """A line per effective length checked (none when the check was not asked for)."""
    out = []
    for e in result.effective:
        base = fmt_effective(e.baseline.by_value, e.baseline)
        cand = "-" if e.candidate is None else fmt_effective(e.candidate.by_value, e.candidate)
        word = "FAIL" if e.failed else "untested" if e.reason.startswith("untested") else "pass"
        reason = e.reason.removeprefix("untested: ")
        out.append(f"effective length {e.task} {e.metric}: {base} -> {cand}: {word}"
                   + (f": {reason}" if reason else ""))
    return out + ([""] if out else [])


_MD_SPECIAL = set("\\`*_{}[]()<>#+-.!|~&")


def _md(text: str) -> str:
    """Untrusted text (labels, task names, paths) for a markdown table cell: every markdown
    punctuation mark backslash-escaped (no link, image, code or HTML can form), one line."""
    return "".join("\\" + c if c in _MD_SPECIAL else (" " if c in "\r\n" else c)
                   for c in text)


def markdown(result: GateResult) -> str:
    """The verdict as GitHub-flavoured markdown (for $GITHUB_STEP_SUMMARY)."""
    out = [f"### evalkit gate: {'PASS' if result.passed else 'FAIL'}", "",
           f"Baseline {_md(result.baseline)}, candidate {_md(result.candidate)}.", "",
           _md(headline(result)), ""]
    out += [f"- **FAIL**: {_md(p)}" for p in result.problems]
    out += [f"- {_md(line)}" for line in effective_lines(result) if line]
    if result.problems or result.effective:
        out.append("")
    out.append("| " + " | ".join(COLUMNS) + " |")
    out.append("|" + "---|" * len(COLUMNS))
    out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in table_rows(result)]
    return "\n".join(out) + "\n"


_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str) -> str:
    """Text XML 1.0 can hold: the characters it forbids (control characters) replaced."""
    return _XML_BAD.sub("\ufffd", text)


def junit_xml(result: GateResult) -> str:
    """JUnit XML: a test case per cell (failed, skipped for an untested one), and one for
    each run-level problem."""
    suite = ET.Element("testsuite", name="evalkit gate")
    failures = skipped = 0
    for v, row in zip(result.verdicts, table_rows(result), strict=True):
        case = ET.SubElement(suite, "testcase", classname=_xml(f"evalkit.gate.{v.task}"),
                             name=_xml(f"{v.name} {row[1]} {v.metric}"))
        detail = _xml("; ".join(f"{k}={c}" for k, c in zip(COLUMNS, row, strict=True)))
        if v.status in FAILING:
            failures += 1
            ET.SubElement(case, "failure", message=_xml(row[-1]), type=v.status).text = detail
        elif v.status in ("untested", "new"):
            skipped += 1
            ET.SubElement(case, "skipped", message=_xml(row[-1]))
        else:
            ET.SubElement(case, "system-out").text = detail
    for e in result.effective:
        case = ET.SubElement(suite, "testcase", classname=_xml(f"evalkit.gate.{e.task}"),
                             name=_xml(f"{e.task} effective length {e.metric}"))
        if e.failed:
            failures += 1
            ET.SubElement(case, "failure", message=_xml(e.reason), type="effective")
    for problem in result.problems:
        failures += 1
        case = ET.SubElement(suite, "testcase", classname="evalkit.gate", name="candidate run")
        ET.SubElement(case, "failure", message=_xml(problem), type="run")
    suite.set("tests", str(len(result.verdicts) + len(result.effective) + len(result.problems)))
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    suite.set("errors", "0")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
