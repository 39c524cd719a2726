"""Pure metric functions and aggregation by (model, task, length, subset).

Every scorer returns (correct, parsed): `parsed` is what was read out of the output (None
when nothing could be), so a wrong answer and an unparseable one stay distinguishable.
"""

from __future__ import annotations

import math
import re
import statistics
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from evalkit.types import MetricKind, Record, SummaryRow

_INT = re.compile(r"\d+")


def first_int_match(output: str, target: str) -> tuple[bool, str | None]:
    """Passkey: the first integer in the output equals the key."""
    m = _INT.search(output)
    if m is None:
        return False, None
    return int(m.group()) == int(target), m.group()


def last_int_match(output: str, target: str) -> tuple[bool, str | None]:
    """LongEval lines: the last integer in the output equals the register content."""
    found = _INT.findall(output)
    if not found:
        return False, None
    return int(found[-1]) == int(target), found[-1]


_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, a leading article dropped, spaces folded."""
    words = text.lower().translate(_PUNCT).split()
    if words and words[0] in ("the", "a", "an"):
        words = words[1:]
    return " ".join(words)


def topic_match(output: str, topic: str) -> bool:
    """LongEval topics, scored deterministically and leniently: the normalised topic name
    appears in the normalised output (word boundaries respected)."""
    want, got = normalize(topic), normalize(output)
    return bool(got) and f" {want} " in f" {got} "


def first_line(output: str) -> str | None:
    """The answer as a reader takes it: the output's first line with text, spaces trimmed
    (None: the output has no text)."""
    return next((line.strip() for line in output.splitlines() if line.strip()), None)


_LETTER_PATTERNS = [
    re.compile(r"^\s*\(?([A-D])\)?\s*(?:[.):\]]|$|\s)"),  # "B", "(B)", "B.", "B) text"
    re.compile(r"answer\s*(?:is|:)?\s*(?:option\s*)?\(?([A-D])\)?(?![A-Za-z])", re.I),
    re.compile(r"(?:option|choice)\s*\(?([A-D])\)?(?![A-Za-z])", re.I),
    re.compile(r"\(([A-D])\)"),
]


_LISTED = re.compile(r"^\s*([A-D])[.)]\s+\S", re.M)


def parse_choice(output: str, options: Sequence[str]) -> str | None:
    """The letter a multiple-choice answer picks, or None if it cannot be told.

    An output that lists two or more options ("A. ...", "B. ...") chose none. Otherwise,
    tried in order: a leading letter, "answer is X", "option X", "(X)", then the text of
    exactly one option appearing in the output.
    """
    letters = "ABCD"[: len(options)]
    listed = {m.group(1) for m in _LISTED.finditer(output)}
    if len(listed & set(letters)) >= 2:
        return None  # the output lists the options instead of choosing one
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(output)
        if m and m.group(1) in letters:
            return m.group(1)
    got = f" {normalize(output)} "
    hits = [letters[i] for i, opt in enumerate(options)
            if normalize(opt) and f" {normalize(opt)} " in got]
    return hits[0] if len(hits) == 1 else None


def choice_match(output: str, target_letter: str,
                 options: Sequence[str]) -> tuple[bool, str | None]:
    parsed = parse_choice(output, options)
    return parsed == target_letter, parsed


Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (95% by default) for a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """Normal-approximation 95% interval of the mean of continuous scores (TruthfulQA mc2,
    say): mean +- z * sd / sqrt(n). NaN bounds with fewer than two values."""
    n = len(values)
    if n < 2:
        return (float("nan"), float("nan"))
    mean = statistics.fmean(values)
    half = z * statistics.stdev(values) / math.sqrt(n)
    return (mean - half, mean + half)


def interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95% interval of a mean score: Wilson for 0/1 scores, else the normal one, kept
    inside [0, 1] when every score is (TruthfulQA's mc2 is a probability mass)."""
    if metric_kind(values) == "binary":
        return wilson(sum(values), len(values))
    lo, hi = mean_interval(values)
    if all(0.0 <= v <= 1.0 for v in values) and not math.isnan(lo):
        return max(0.0, lo), min(1.0, hi)
    return lo, hi


def clustered_interval(values: Sequence[float], clusters: Sequence[str],
                       kind: MetricKind) -> tuple[float, float]:
    """The 95% interval of a mean whose samples come in clusters (questions sharing one
    haystack), from the cluster-robust variance sum_c (S_c - m_c * mean)^2 * G / (G - 1) / n^2.
    Binary: Wilson's interval at the effective sample size n / design effect (Kish), the
    design effect at least 1, and n / max cluster size when every score is equal;
    continuous: mean +- z * se. NaN bounds with fewer than two clusters."""
    n, groups = len(values), len(set(clusters))
    if n == 0 or groups < 2:
        return (float("nan"), float("nan"))
    mean = statistics.fmean(values)
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for v, c in zip(values, clusters, strict=True):
        sums[c][0] += v
        sums[c][1] += 1
    var = groups / (groups - 1) * sum((s - m * mean) ** 2 for s, m in sums.values()) / n**2
    if kind == "binary":
        iid = mean * (1 - mean) / n
        largest = max(m for _, m in sums.values())
        n_eff = max(1, round(n / max(1.0, var / iid) if iid > 0 else n / largest))
        return wilson(mean * n_eff, n_eff)
    half = Z95 * math.sqrt(var)
    return (mean - half, mean + half)


def interval_se(row: SummaryRow) -> float:
    """A standard error read off a row's 95% interval: its wider side over z, since an
    interval clipped to [0, 1] is narrower on the clipped side (NaN where it has none)."""
    return max(row.value - row.ci_low, row.ci_high - row.value) / Z95


def length_key(record: Record) -> int | str:
    """The length cell a record belongs to (Sample.cell)."""
    return record.sample.cell


def metric_kind(values: Sequence[float]) -> MetricKind:
    """binary when every score is 0 or 1, else continuous (for a metric no task declares)."""
    return "binary" if all(v in (0.0, 1.0) for v in values) else "continuous"


def mean_row(model: str, task: str, length: int | str, subset: str, metric: str,
             values: Sequence[float], n_errors: int, tokens: float,
             kind: MetricKind | None = None,
             clusters: Sequence[str] | None = None) -> SummaryRow:
    """The summary row of a plain mean of sample scores: its 95% interval (clustered where
    `clusters` names each sample's haystack), and for a binary metric the success count
    (None where a score is not 0 or 1)."""
    kind = kind or metric_kind(values)
    value = statistics.fmean(values) if values else float("nan")
    if clusters is not None:
        lo, hi = clustered_interval(values, clusters, kind)
    else:
        lo, hi = interval(values)
    successes = (int(sum(values)) if kind == "binary" and metric_kind(values) == "binary"
                 else None)
    return SummaryRow(model=model, task=task, length=length, subset=subset, metric=metric,
                      value=value, ci_low=lo, ci_high=hi, n=len(values), n_errors=n_errors,
                      input_tokens_mean=round(tokens, 1), kind=kind, successes=successes,
                      clusters=None if clusters is None else len(set(clusters)))


def aggregate(records: Iterable[Record],
              kinds: Mapping[tuple[str, str], MetricKind] | None = None) -> list[SummaryRow]:
    """Mean of each score by (model, task, length, subset), with Wilson intervals for
    0/1 scores and normal ones for continuous scores. Errored samples are counted apart and
    left out of the mean. `kinds` gives (task, metric) -> the kind a task declares; a metric
    it lacks is binary when every score is 0 or 1."""
    kinds = kinds or {}
    groups: dict[tuple[str, str, int | str, str], list[Record]] = defaultdict(list)
    for r in records:
        subsets = ["all", *r.sample.subsets]
        for subset in subsets:
            groups[(r.model, r.sample.task, length_key(r), subset)].append(r)
    rows: list[SummaryRow] = []
    for (model, task, length, subset), recs in groups.items():
        ok = [r for r in recs if r.ok]
        n_errors = len(recs) - len(ok)
        tokens = statistics.fmean(r.sample.input_tokens for r in recs)
        metrics = sorted({m for r in ok for m in r.scores}) or ["accuracy"]
        for metric in metrics:
            scored = [r for r in ok if metric in r.scores]
            haystacks = [r.sample.cluster for r in scored]
            rows.append(mean_row(model, task, length, subset, metric,
                                 [r.scores[metric] for r in scored], n_errors, tokens,
                                 kinds.get((task, metric)),
                                 [str(h) for h in haystacks] if any(haystacks) else None))
    rows.sort(key=lambda r: (r.model, r.task, r.subset != "all", r.subset, length_order(r.length),
                             r.metric))
    return rows


def length_order(length: int | str) -> tuple[int, int | str]:
    """Sort key of length cells: token lengths by size, then named bins."""
    return (0, length) if isinstance(length, int) else (1, length)
