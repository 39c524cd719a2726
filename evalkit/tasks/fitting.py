"""Fit a haystack to a token budget, tokenizing about once.

A prompt of size k (k lines, conversations, profiles or filler characters) is fitted to a
budget B when measure(build(k)) <= B < measure(build(k + 1)), and `measure` is the exact
count of the rendered prompt, as the model will see it. Finding k by bisection re-tokenizes
the whole prompt at every step (10-18 times the final tokens). Here:

- Each whitespace-led chunk of text (" word", "\\nline") is tokenized once and its count
  memoized (`Estimator`); real tokenizers (SentencePiece, llama.cpp's BPE vocabularies)
  never merge tokens across whitespace-led chunks, so the sum is the count, and chunks
  repeat (filler words, corpus conversations, profile sentences, line names).
- A task gives the estimate of build(k) cheaply: cumulative sums over its units.
- `Fitter.fit` proposes k from the estimate, corrected by an offset learned from the last
  exact measurement (the chat template's wrapping, the BOS), measures the rendered prompt,
  and moves within the bounds it has measured until k fits and k + 1 does not. k + 1 is
  taken on the estimate's word only when the estimate has been exact for this fit so far;
  otherwise it is measured.

A conversation (a list of messages, the template rendering them as one prompt) is fitted the
same way (`Fitter.fit_messages`): build(k) makes the messages, the measure counts them
rendered (`measure_messages`: a Plan's measure made by evalkit.prompts.templates.PromptMeasure), and
the estimate is the generator's, over the messages' texts.

Every answer fits (the prompt is measured) and k + 1 was either measured over budget or
estimated over by an estimate that has been exact so far. Where the chunk rule holds, the
answer is the one bisection gives (`fit_max`, kept as the reference) whenever the count
grows with k. A tokenizer that breaks the rule costs speed: the first miss makes every
later fit of that call site measure k + 1; only an estimate that is wrong about k + 1 alone,
and right about everything measured before, could stop one unit short.
"""

from __future__ import annotations

import array
import bisect
import itertools
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from evalkit.types import EvalkitError, Message

Measure = Callable[[str], int]
P = TypeVar("P")  # a prompt: a text, or a conversation's messages

_CHUNK = re.compile(r"\s*\S+|\s+")
_ANCHOR = "x"  # what a chunk is counted after: one token that no whitespace-led chunk joins
_MEMO_MAX = 1_000_000  # chunks remembered (line names and numbers are mostly distinct)
_GUIDED_STEPS = 4  # estimate-guided measurements before the search falls back to bisection
_STEP_CHARS = 8192  # characters of units estimated together (one call over a server)
_SLOW_CALL_S = 3e-4  # a counter slower than this per call (a server) is asked per text


@dataclass(frozen=True)
class Fit(Generic[P]):
    size: int
    prompt: P
    tokens: int


def measure_messages(measure: Measure, messages: Sequence[Message]) -> int:
    """Tokens of a conversation rendered as the model reads it, by a Plan's `measure`: one
    that measures conversations too (its `conversation` method, as
    evalkit.prompts.templates.PromptMeasure has). A measure of user texts alone is one EvalkitError
    line."""
    conversation: Callable[[Sequence[Message]], int] | None = getattr(
        measure, "conversation", None)
    if conversation is None:
        raise EvalkitError("this plan measures prompts of one user text only: a task that "
                           "makes conversations needs a plan whose measure is an "
                           "evalkit.prompts.templates.PromptMeasure")
    return conversation(messages)


def with_answer_prefix(measure: Measure, answer_prefix: str) -> Measure:
    """A Plan's `measure` of prompts that end with `answer_prefix` (Sample.answer_prefix:
    written after the rendered prompt, counted with it), for fitting such samples. It needs
    a measure that renders (evalkit.prompts.templates.PromptMeasure); a plain function of
    the user text is one EvalkitError line."""
    method: Callable[[str], Measure] | None = getattr(measure, "with_answer_prefix", None)
    if method is None:
        raise EvalkitError("this plan measures user texts only: a task whose samples carry "
                           "an answer prefix needs a plan whose measure is an "
                           "evalkit.prompts.templates.PromptMeasure")
    return method(answer_prefix)


class Estimator:
    """Token counts of texts as sums of memoized whitespace-led chunk counts. Over a counter
    that is slow per call (a server's tokenize endpoint), the chunks of a text that the memo
    lacks are counted in one call, joined (the count of the join is their sum), instead of
    one call each; which way only changes the speed, never a count."""

    def __init__(self, count: Measure) -> None:
        self._count = count
        self._calls, self._seconds = 0, 0.0
        self._anchor = self._timed(_ANCHOR)
        self._memo: dict[str, int] = {}

    def _timed(self, text: str) -> int:
        start = time.perf_counter()
        n = self._count(text)
        self._calls += 1
        self._seconds += time.perf_counter() - start
        return n

    @property
    def batched(self) -> bool:
        return self._calls >= 8 and self._seconds / self._calls > _SLOW_CALL_S

    def chunk(self, chunk: str) -> int:
        n = self._memo.get(chunk)
        if n is None:
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            n = self._memo[chunk] = self._timed(_ANCHOR + chunk) - self._anchor
        return n

    def unit(self, text: str) -> int:
        """The estimate of a text that will not be seen again (a line of random keys): its
        chunks that the memo lacks are counted in one call, joined, and not remembered."""
        chunks = _CHUNK.findall(text)
        unknown = [c for c in chunks if c not in self._memo]
        if len(unknown) < 2:
            return sum(self.chunk(c) for c in chunks)
        return (sum(self._memo[c] for c in chunks if c in self._memo)
                + self._timed(_ANCHOR + "".join(unknown)) - self._anchor)

    def __call__(self, text: str) -> int:
        chunks = _CHUNK.findall(text)
        if self.batched:
            unknown = [c for c in chunks if c not in self._memo]
            if len(unknown) > 1:
                known = sum(self._memo[c] for c in chunks if c in self._memo)
                return known + self._timed(_ANCHOR + "".join(unknown)) - self._anchor
        return sum(self.chunk(c) for c in chunks)


class Units:
    """Estimates of `head(k) + units[0] + ... + units[k-1] + tail(k)`, chunked as the whole
    prompt is (each piece estimated with the whitespace that leads it). Units are made in
    order, only as far as a fit reaches; sums are kept at the sizes a search asks about,
    each from the nearest one below."""

    def __init__(self, estimator: Estimator, unit: Callable[[int], str],
                 head: Callable[[int], str], tail: Callable[[int], str]) -> None:
        self._est, self._unit, self._head, self._tail = estimator, unit, head, tail
        self._texts: list[str] = []  # each unit with the whitespace that leads it
        self._carry: list[str] = []  # trailing whitespace of the head, then of each unit
        self._sums: dict[int, int] = {0: 0}  # estimated tokens of units 0..k-1
        self._bounds = [0]  # the k of _sums, sorted
        self._ends: dict[int, int] = {}

    def _make(self, k: int) -> None:
        """Units 0..k-1, each with the whitespace that leads it."""
        if not self._carry:
            head = self._head(1)
            self._carry.append(head[len(head.rstrip()):])
        while len(self._texts) < k:
            text = self._unit(len(self._texts))
            body = text.rstrip()
            self._texts.append(self._carry[-1] + body)
            self._carry.append(text[len(body):])

    def _sum(self, k: int) -> int:
        if k not in self._sums:
            self._make(k)
            base = self._bounds[bisect.bisect_right(self._bounds, k) - 1]  # known, below k
            self._sums[k] = self._sums[base] + self._est("".join(self._texts[base:k]))
            bisect.insort(self._bounds, k)
        return self._sums[k]

    def at(self, k: int) -> int:
        self._make(k)
        total = self._sum(k)
        if k not in self._ends:
            self._ends[k] = self._est(self._head(k).rstrip()) + self._est(
                self._carry[k] + self._tail(k))
        return total + self._ends[k]

    def largest_within(self, target: float, lo: int, hi: int) -> int:
        """The largest k in [lo, hi] estimated at most `target`; lo - 1 when none is. Walks
        up about _STEP_CHARS characters of units at a time, then bisects inside the step
        that overshot (units past it are never made)."""
        if lo > hi or self.at(lo) > target:
            return lo - 1
        low = lo
        while low < hi:
            bound, chars = low, 0
            while bound < hi and chars < _STEP_CHARS:
                self._make(bound + 1)
                chars += len(self._texts[bound])
                bound += 1
            if self.at(bound) > target:
                high = bound - 1
                while low < high:
                    mid = (low + high + 1) // 2
                    if self.at(mid) <= target:
                        low = mid
                    else:
                        high = mid - 1
                return low
            low = bound
        return low


@dataclass
class Curve:
    """An estimate given as a function of k, cheap anywhere (the passkey filler)."""

    at: Callable[[int], int]

    def largest_within(self, target: float, lo: int, hi: int) -> int:
        low, high = lo, hi  # bisection on the estimate: no tokenizing
        best = lo - 1
        while low <= high:
            mid = (low + high) // 2
            if self.at(mid) <= target:
                best, low = mid, mid + 1
            else:
                high = mid - 1
        return best


class PrefixCounts:
    """Estimates of text[:m] for every m of one long text (a repeated filler): whole chunks
    by cumulative sums, the cut chunk by the memo."""

    def __init__(self, estimator: Estimator, text: str) -> None:
        self._est, self.text = estimator, text
        self._ends = array.array("q")  # arrays: a million chunks take 16 MB, not 70
        self._cum = array.array("q", [0])
        total = 0
        for m in _CHUNK.finditer(text):
            self._ends.append(m.end())
            total += estimator.chunk(m.group())
            self._cum.append(total)

    def __call__(self, m: int) -> int:
        whole = bisect.bisect_right(self._ends, m)  # chunks that end at or before m
        start = self._ends[whole - 1] if whole else 0
        return self._cum[whole] + (self._est(self.text[start:m]) if m > start else 0)


class UnitCounts:
    """Estimates of the first n units of a long text (its lines, its words), for every n:
    cumulative sums, made as far as a fit reaches. Each unit after the first is led by
    whitespace (a line with its newline, a word with its space), so that it is chunked as
    in the whole text and the estimates add up."""

    def __init__(self, estimator: Estimator, units: Iterable[str]) -> None:
        self._est = estimator
        self._units = iter(units)
        self._cum = array.array("q", [0])

    def _make(self, n: int) -> None:
        cum, total = self._cum, self._cum[-1]
        for unit in itertools.islice(self._units, max(0, n + 1 - len(cum))):
            total += self._est.unit(unit)
            cum.append(total)

    def __call__(self, n: int) -> int:
        self._make(n)
        return self._cum[min(n, len(self._cum) - 1)]

    def largest_within(self, target: float, hi: int) -> int:
        """The largest n <= hi whose first n units are estimated at most `target` (-1 when
        none is): units are made toward it at the rate of tokens per unit seen so far, so
        that little past the answer is estimated."""
        cum = self._cum
        self._make(min(hi, 64))  # the rate is learned before the first leap
        while len(cum) - 1 < hi and cum[-1] <= target:
            made = len(cum) - 1
            rate = cum[-1] / made if made else 1.0
            self._make(min(hi, made + int((target - cum[-1]) / max(rate, 1e-6) * 1.01) + 8))
            if len(cum) - 1 == made:  # the text ended
                break
        return min(hi, bisect.bisect_right(cum, target) - 1)


@dataclass
class Haystack:
    """The estimate of a prompt whose haystack grows with k while the rest (the template,
    the needles) adds `rest` tokens at every k: `tokens(k)` estimates the haystack of size
    k, `largest(target, hi)` the largest size within `target` tokens; constant time a
    size, not a chunking of the whole prompt."""

    tokens: Callable[[int], int]
    largest: Callable[[float, int], int]
    rest: int

    def at(self, k: int) -> int:
        return self.rest + self.tokens(k)

    def largest_within(self, target: float, lo: int, hi: int) -> int:
        k = self.largest(target - self.rest, hi)
        return k if k >= lo else lo - 1


Estimate = Units | Curve | Haystack


@dataclass
class Fitter:
    """Fits prompts for one plan: the exact `measure`, the chunk `Estimator` over the raw
    `count`, and per call site the offset between the two (learned, carried from one sample
    to the next, so that the first proposal is usually the answer)."""

    measure: Measure
    count: Measure
    offsets: dict[str, int] = field(default_factory=dict)
    exact: dict[str, bool] = field(default_factory=dict)  # the estimate never missed here
    _estimator: Estimator | None = None
    _unit_counts: dict[str, UnitCounts] = field(default_factory=dict)

    @property
    def estimator(self) -> Estimator:
        if self._estimator is None:
            self._estimator = Estimator(self.count)
        return self._estimator

    def unit_counts(self, key: str, units: Callable[[], Iterable[str]]) -> UnitCounts:
        """UnitCounts of a long text that many samples share (a haystack), made once per
        key; the last two kept."""
        found = self._unit_counts.pop(key, None)
        if found is None:
            found = UnitCounts(self.estimator, units())
        self._unit_counts[key] = found
        while len(self._unit_counts) > 2:
            del self._unit_counts[next(iter(self._unit_counts))]
        return found

    def units(self, unit: Callable[[int], str], head: Callable[[int], str],
              tail: Callable[[int], str]) -> Units:
        return Units(self.estimator, unit, head, tail)

    def measure_messages(self, messages: Sequence[Message]) -> int:
        """Tokens of a conversation rendered as the model reads it (measure_messages)."""
        return measure_messages(self.measure, messages)

    def fit(self, key: str, build: Callable[[int], str], estimate: Estimate, budget: int,
            lo: int, hi: int, what: str = "haystack", measure: Measure | None = None
            ) -> Fit[str]:
        """The k in [lo, hi] with measure(build(k)) <= budget < measure(build(k + 1)) (or
        k = hi when everything fits: the caller decides whether the source ran out).
        Raises EvalkitError when even build(lo) is over budget. `measure`: another measure
        than the plan's (with_answer_prefix's, for a sample that carries one)."""
        return self._fit(key, build, measure or self.measure, estimate, budget, lo, hi, what)

    def fit_messages(self, key: str, build: Callable[[int], Sequence[Message]],
                     estimate: Estimate, budget: int, lo: int, hi: int,
                     what: str = "turns") -> Fit[tuple[Message, ...]]:
        """`fit` for a conversation: build(k) makes its messages, which are measured
        rendered (measure_messages); the estimate is over their texts (the template's text
        around each turn is learned as the offset, and where it grows with k the fit only
        measures more)."""
        return self._fit(key, lambda k: tuple(build(k)), self.measure_messages, estimate,
                         budget, lo, hi, what)

    def _fit(self, key: str, build: Callable[[int], P], measure: Callable[[P], int],
             estimate: Estimate, budget: int, lo: int, hi: int, what: str) -> Fit[P]:
        if lo > hi:
            raise ValueError(f"empty search range [{lo}, {hi}]")
        offset = self.offsets.get(key, 0)
        learned = key in self.offsets  # the first fit of a call site measures k + 1 itself
        best: Fit[P] | None = None
        over = hi + 1  # the smallest k measured over budget
        k = min(hi, max(lo, estimate.largest_within(budget - offset, lo, hi)))
        for step in range(64 + _GUIDED_STEPS):
            prompt = build(k)
            tokens = measure(prompt)
            predicted = estimate.at(k) + offset
            if tokens != predicted and step:  # missed with this fit's own offset: from now
                self.exact[key] = False  # on, k + 1 is always measured at this call site
            # k + 1 is taken on the estimate's word only when the estimate was exact here
            trusted = learned and self.exact.get(key, True) and tokens == predicted
            offset = tokens - estimate.at(k)
            self.offsets[key] = offset
            if tokens <= budget:
                best = Fit(k, prompt, tokens)
            else:
                over = k
            if best is None:
                if k == lo:
                    raise EvalkitError(
                        f"{budget} tokens is too short for this task: its shortest prompt "
                        f"({lo} {what}) already takes {tokens} tokens; ask for a longer length")
                low = lo
            else:
                if best.size == hi or over == best.size + 1:
                    return best
                low = best.size + 1
            high = over - 1
            if step >= _GUIDED_STEPS:  # the estimate is no guide here: search without it
                if over > hi:  # nothing over budget yet: gallop up from what fits
                    k = min(high, low + 2 ** (step - _GUIDED_STEPS) - 1)
                else:  # bisection: ends in log steps
                    k = (low + high + (best is not None)) // 2
                continue
            k = estimate.largest_within(budget - offset, low, high)
            if k < low:  # the estimate says nothing above what fits fits
                if best is not None and trusted:
                    return best
                k = low
        raise AssertionError("fit did not converge")  # pragma: no cover

    def fit_shared(self, key: str, build: Callable[[int, str], str],
                   questions: Callable[[int], Sequence[str]], estimate: Estimate, budget: int,
                   lo: int, hi: int, what: str = "haystack") -> tuple[int, list[str], list[int]]:
        """One haystack of size k for several questions, each asked last (`build(k, q)`):
        fitted with the question the estimate finds longest, then every question's prompt
        measured, k shrinking while one is over budget. Returns k, the prompts, their
        tokens."""
        def longest(k: int) -> str:
            return max(questions(k), key=self.estimator)

        k = self.fit(key, lambda k: build(k, longest(k)), estimate, budget, lo, hi, what).size
        while True:
            prompts = [build(k, q) for q in questions(k)]
            tokens = [self.measure(p) for p in prompts]
            if max(tokens) <= budget:
                return k, prompts, tokens
            if k == lo:
                raise EvalkitError(f"{budget} tokens is too short for {len(prompts)} questions "
                                   "over one haystack: ask for a longer length")
            k -= 1  # the estimate was wrong about which question is longest


def fit_max(build: Callable[[int], str], measure: Measure, budget: int, lo: int, hi: int,
            what: str = "haystack") -> Fit[str]:
    """Largest k in [lo, hi] with measure(build(k)) <= budget, by bisection: at most
    ceil(log2(hi - lo + 1)) + 1 measurements. The reference the Fitter is tested against.

    `measure` must not decrease as k grows. Raises EvalkitError when even the smallest prompt
    is over budget. Returns k = hi when everything fits."""
    if lo > hi:
        raise ValueError(f"empty search range [{lo}, {hi}]")
    smallest = build(lo)
    smallest_tokens = measure(smallest)
    if smallest_tokens > budget:
        raise EvalkitError(
            f"{budget} tokens is too short for this task: its shortest prompt ({lo} {what}) "
            f"already takes {smallest_tokens} tokens; ask for a longer length"
        )
    best = Fit(lo, smallest, smallest_tokens)
    low, high = lo + 1, hi
    for _ in range(math.ceil(math.log2(hi - lo + 1)) + 1):
        if low > high:
            break
        mid = (low + high) // 2
        prompt = build(mid)
        tokens = measure(prompt)
        if tokens <= budget:
            best = Fit(mid, prompt, tokens)
            low = mid + 1
        else:
            high = mid - 1
    return best


def chunks(text: str) -> Sequence[str]:
    """The whitespace-led chunks a text is estimated by (for tests)."""
    return _CHUNK.findall(text)
