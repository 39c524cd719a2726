"""Fit a haystack to a token budget, tokenizing about once.

A prompt of size k (k lines, conversations, profiles or filler characters) is fitted to a
budget B when measure(build(k)) <= B < measure(build(k + 1)), and `measure` is the exact
count of the rendered prompt, as the model will see it. Finding k by bisection re-tokenizes
the whole prompt at every step (10-18 times the final tokens). Here:

- Each whitespace-led chunk of text (" word", " is <123>\\nline") is tokenized once and its
  count memoized (`Estimator`). A chunk starts where whitespace follows a non-space and
  either begins with a space or follows a letter or digit: SentencePiece never merges
  tokens across such a cut, nor do the pre-tokenizers of GPT-style BPE vocabularies
  (Qwen's, Llama 3's, which join punctuation with the newlines after it: ".\\n"), so the
  sum is the count, and chunks repeat (filler words, corpus conversations, profile
  sentences, line names). Texts estimated apart (the units of a haystack) are joined by
  `Estimator.after`, which counts the junction as the whole text would chunk it.
- A task gives the estimate of build(k) cheaply: cumulative sums over its units.
- `Fitter.fit` proposes k from the estimate, corrected by an offset learned from the last
  exact measurement (the chat template's wrapping, the BOS), measures the rendered prompt,
  and moves within the bounds it has measured until k fits and k + 1 does not. k + 1 is
  taken on the estimate's word only when the estimate has been exact for this fit so far;
  otherwise it is measured. The first long fit of a call site is preceded by one at a
  budget of a few thousand tokens (`_calibrate`), which learns the offset and checks the
  estimate on short prompts instead of two long ones.
- A haystack of units no other prompt shares (a sample's own random lines: LongEval lines,
  RULER's distractor needles) is not estimated whole (`SampledCounts`): a rate from a few
  units guesses the size, the guess is measured, and the size is found from the exact
  estimates of the units between it and the guess. Where the call site's estimate has
  been exact, that size is taken with the count the estimate gives (the measured count
  plus the exact difference), without a second measurement of the long prompt.

A conversation (a list of messages, the template rendering them as one prompt) is fitted the
same way (`Fitter.fit_messages`): build(k) makes the messages, the measure counts them
rendered (`measure_messages`: a Plan's measure made by evalkit.prompts.templates.PromptMeasure), and
the estimate is the generator's, over the messages' texts.

Every answer fits (the prompt is measured, or, for an approximate estimate, its count is
a measured count plus an exact difference) and k + 1 was either measured over budget or
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

# a chunk runs from one cut to the next; a whitespace run that does not begin with a space
# and follows punctuation (".\n") is not a cut: BPE pre-tokenizers join the two
_CHUNK = re.compile(r"\s*\S+(?:(?<![^\W_])[^\S ]\s*\S*)*|\s+")
_TAIL = re.compile(r" ?(?:[^\w\s]|_)+$")  # punctuation that a newline after it may join
_ANCHOR = "x"  # what a chunk is counted after: one token that no whitespace-led chunk joins
_MEMO_MAX = 1_000_000  # chunks remembered (line names and numbers are mostly distinct)
_GUIDED_STEPS = 4  # estimate-guided measurements before the search falls back to bisection
_STEP_CHARS = 8192  # characters of units estimated together (one call over a server)
_CALIBRATION_BUDGETS = (2048, 8192, 32768)  # a long fit's call site is first fitted to these
_CHECK_EVERY = 16  # 1 in 16 approximate fits has its size measured after all
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
        self._joints: dict[tuple[str, str, str], int] = {}

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

    def unit(self, text: str, after: str = "") -> int:
        """The estimate of a text that will not be seen again (a line of random keys), as
        it adds to `after` (the text before it: `Estimator.after`): its chunks that the
        memo lacks are counted in one call, joined, and not remembered."""
        return self._sum(_CHUNK.findall(text), remember=False) + self.joint(after, text)

    def _sum(self, chunks: list[str], remember: bool) -> int:
        """The chunks' counts: from the memo, else the ones led by a space and ending in a
        non-space counted in one call, joined (the cuts between them are cuts in the join
        too), the others one by one (a chunk led by a newline may join the punctuation
        that would come before it in a join)."""
        if sum(c not in self._memo for c in chunks) < 2:  # one call at most: remembered
            return sum(self.chunk(c) for c in chunks)
        total, glued = 0, []
        for c in chunks:
            n = self._memo.get(c)
            if n is not None:
                total += n
            elif c[0] == " " and not c[-1].isspace():
                glued.append(c)
            else:
                total += self.chunk(c) if remember else self._timed(_ANCHOR + c) - self._anchor
        if len(glued) == 1:
            return total + (self.chunk(glued[0]) if remember
                            else self._timed(_ANCHOR + glued[0]) - self._anchor)
        return total + (self._timed(_ANCHOR + "".join(glued)) - self._anchor if glued else 0)

    def after(self, before: str, text: str) -> int:
        """The tokens `text` adds after `before`: where the two join without a cut
        (".\\n" + "line"), the junction is counted as in the whole text."""
        return self(text) + self.joint(before, text)

    def joint(self, before: str, text: str) -> int:
        """What joining `before` and `text` without a cut adds to their separate counts
        (-1 where a vocabulary makes ".\\n" one token, 0 for SentencePiece): found once
        per kind of junction (the punctuation before it, the whitespace and the kind of
        character after it), on the first pair that has it."""
        if not before or not text or _is_cut(before[-1], text[0]):
            return 0
        if not text[0].isspace():  # a word cut in two: no kind, count this one
            last, first = last_chunk(before), _CHUNK.findall(text[:4096])[0]
            return self(last + first) - self.chunk(last) - self.chunk(first)
        tail = _TAIL.search(before[-16:])
        lead = len(text) - len(text.lstrip())
        after = text[lead:lead + 1]
        key = (tail.group() if tail else before[-1:], text[:lead],
               "a" if after.isalpha() else "0" if after.isdigit() else after)
        joint = self._joints.get(key)
        if joint is None:
            last, first = last_chunk(before), _CHUNK.findall(text[:4096])[0]
            joint = self._joints[key] = (self(last + first) - self.chunk(last)
                                         - self.chunk(first))
        return joint

    def __call__(self, text: str) -> int:
        chunks = _CHUNK.findall(text)
        if self.batched:
            return self._sum(chunks, remember=True)
        return sum(self.chunk(c) for c in chunks)


class Units:
    """Estimates of `head(k) + units[0] + ... + units[k-1] + tail(k)`, chunked as the whole
    prompt is (each piece estimated with the whitespace that leads it). Units are made in
    order, only as far as a fit reaches; sums are kept at the sizes a search asks about,
    each from the nearest one below."""

    def __init__(self, estimator: Estimator, unit: Callable[[int], str],
                 head: Callable[[int], str], tail: Callable[[int], str], own: bool = False
                 ) -> None:
        self._est, self._unit, self._head, self._tail = estimator, unit, head, tail
        self._texts: list[str] = []  # each unit with the whitespace that leads it
        self._carry: list[str] = []  # trailing whitespace of the head, then of each unit
        self._sums: dict[int, int] = {0: 0}  # estimated tokens of units 0..k-1
        self._bounds = [0]  # the k of _sums, sorted
        self._ends: dict[int, int] = {}
        # units that no other prompt shares (random lines): estimated near a guess only
        self._own = SampledCounts(estimator, self._text) if own else None

    def _text(self, i: int) -> str:
        self._make(i + 1)
        return self._texts[i]

    @property
    def approximate(self) -> bool:
        return self._own is not None

    def start(self) -> None:
        if self._own is not None:
            self._own.start()

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
        """Units 0..k-1 as they add after the head (the head's junction with unit 0 is
        counted in `at`)."""
        if self._own is not None:
            self._make(k)
            return self._own(k)
        if k not in self._sums:
            self._make(k)
            base = self._bounds[bisect.bisect_right(self._bounds, k) - 1]  # known, below k
            texts = "".join(self._texts[base:k])
            self._sums[k] = self._sums[base] + (
                self._est.after(self._texts[base - 1], texts) if base else self._est(texts))
            bisect.insort(self._bounds, k)
        return self._sums[k]

    def at(self, k: int) -> int:
        return self._sum(k) + self._end(k)

    def _end(self, k: int) -> int:
        """The head and the tail around k units, with their junctions."""
        self._make(k)
        if k not in self._ends:
            head = self._head(k).rstrip()
            joint = self._est.joint(head, self._texts[0]) if k else 0
            last = self._texts[k - 1] if k else head
            self._ends[k] = (self._est(head) + joint
                             + self._est.after(last, self._carry[k] + self._tail(k)))
        return self._ends[k]

    def largest_within(self, target: float, lo: int, hi: int) -> int:
        """The largest k in [lo, hi] estimated at most `target`; lo - 1 when none is. Walks
        up about _STEP_CHARS characters of units at a time, then bisects inside the step
        that overshot (units past it are never made)."""
        if self._own is not None and lo <= hi:  # from the rate's guess, unit by unit
            k = max(lo, min(hi, self._own.largest_within(target - self._end(lo), hi)))
            while k < hi and self.at(k + 1) <= target:
                k += 1
            while k >= lo and self.at(k) > target:
                k -= 1
            return k
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

    def __call__(self, m: int, before: str = "") -> int:
        """text[:m]; with `before`, text[:m] as it adds to the text that follows it (the
        junction counted as the whole text chunks it: a cut after "." joins "\\n")."""
        whole = bisect.bisect_right(self._ends, m)  # chunks that end at or before m
        start = self._ends[whole - 1] if whole else 0
        total = self._cum[whole] + (self._est(self.text[start:m]) if m > start else 0)
        return total + (self._est.joint(self.text[max(0, m - 256):m], before) if m else 0)


class UnitCounts:
    """Estimates of the first n units of a long text (its lines, its words), for every n:
    cumulative sums, made as far as a fit reaches. Each unit after the first is led by
    whitespace (a line with its newline, a word with its space), so that it is chunked as
    in the whole text and the estimates add up."""

    def __init__(self, estimator: Estimator, units: Iterable[str]) -> None:
        self._est = estimator
        self._units = iter(units)
        self._cum = array.array("q", [0])
        self._last = ""  # the last unit made, which the next one joins

    def _make(self, n: int) -> None:
        cum, total = self._cum, self._cum[-1]
        for unit in itertools.islice(self._units, max(0, n + 1 - len(cum))):
            total += self._est.unit(unit, self._last)
            self._last = unit
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


class SampledCounts:
    """UnitCounts for units that no other prompt shares (a sample's own random lines), of
    which only a few are estimated: the first `probe` give a rate of tokens per unit, the
    size a fit first tries is the rate's guess (the anchor), and sizes around it are
    estimated by the exact units between them and the anchor. The level is a guess, which
    the fit's first measurement corrects (its offset); the differences are exact, so the
    fit needs no second measurement (Fitter.fit: `approximate`). `start()` drops the
    anchor before each fit."""

    approximate = True

    def __init__(self, estimator: Estimator, unit: Callable[[int], str], probe: int = 64
                 ) -> None:
        self._est, self._unit, self._probe = estimator, unit, probe
        self._rate = 0.0
        self._anchor: int | None = None
        self._up = array.array("q", [0])  # units anchor..anchor+i-1
        self._down = array.array("q", [0])  # units anchor-i..anchor-1

    def _tokens(self, i: int) -> int:
        return self._est.unit(self._unit(i), self._unit(i - 1) if i else "")

    def start(self) -> None:
        self._anchor = None

    def _learn_rate(self) -> float:
        if not self._rate:
            self._rate = max(1e-6, sum(self._tokens(i) for i in range(self._probe))
                             / self._probe)
        return self._rate

    def _set(self, n: int) -> int:
        self._learn_rate()
        self._anchor = n
        self._up, self._down = array.array("q", [0]), array.array("q", [0])
        return n

    def __call__(self, n: int) -> int:
        anchor = self._set(n) if self._anchor is None else self._anchor
        base = round(self._rate * anchor)
        if n >= anchor:
            up = self._up
            while len(up) <= n - anchor:
                up.append(up[-1] + self._tokens(anchor + len(up) - 1))
            return base + up[n - anchor]
        down = self._down
        while len(down) <= anchor - n:
            down.append(down[-1] + self._tokens(anchor - len(down)))
        return base - down[anchor - n]

    def largest_within(self, target: float, hi: int) -> int:
        """The largest n <= hi estimated at most `target` (-1 when none is), walking from
        the anchor (the rate's guess, on a fit's first call)."""
        if self._anchor is None:
            self._set(max(0, min(hi, int(target / self._learn_rate()))))
        n = max(0, min(hi, self._anchor if self._anchor is not None else 0))
        if self(n) <= target:
            while n < hi and self(n + 1) <= target:
                n += 1
            return n
        while n > 0 and self(n) > target:
            n -= 1
        return n if self(n) <= target else -1


@dataclass
class Haystack:
    """The estimate of a prompt whose haystack grows with k while the rest (the template,
    the needles) adds `rest` tokens at every k: `tokens(k)` estimates the haystack of size
    k, `largest(target, hi)` the largest size within `target` tokens; constant time a
    size, not a chunking of the whole prompt."""

    tokens: Callable[[int], int]
    largest: Callable[[float, int], int]
    rest: int
    counts: UnitCounts | SampledCounts | None = None  # what tokens() and largest() read

    @property
    def approximate(self) -> bool:
        return isinstance(self.counts, SampledCounts)

    def start(self) -> None:
        if isinstance(self.counts, SampledCounts):
            self.counts.start()

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
    approximate_fits: dict[str, int] = field(default_factory=dict)  # per call site
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
              tail: Callable[[int], str], own: bool = False) -> Units:
        """Units; `own`: units that no other prompt shares (a sample's random lines)."""
        return Units(self.estimator, unit, head, tail, own)

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
        self._calibrate(key, build, measure or self.measure, estimate, budget, lo, hi)
        return self._fit(key, build, measure or self.measure, estimate, budget, lo, hi, what)

    def fit_messages(self, key: str, build: Callable[[int], Sequence[Message]],
                     estimate: Estimate, budget: int, lo: int, hi: int,
                     what: str = "turns") -> Fit[tuple[Message, ...]]:
        """`fit` for a conversation: build(k) makes its messages, which are measured
        rendered (measure_messages); the estimate is over their texts (the template's text
        around each turn is learned as the offset, and where it grows with k the fit only
        measures more)."""
        self._calibrate(key, lambda k: tuple(build(k)), self.measure_messages, estimate,
                        budget, lo, hi)
        return self._fit(key, lambda k: tuple(build(k)), self.measure_messages, estimate,
                         budget, lo, hi, what)

    def _calibrate(self, key: str, build: Callable[[int], P], measure: Callable[[P], int],
                   estimate: Estimate, budget: int, lo: int, hi: int) -> None:
        """Before the first long fit of a call site, one at a short budget: the offset is
        learned and the estimate checked (k + 1 measured) on prompts of a few thousand
        tokens instead of on two of the long ones. A short budget the task cannot fit is
        skipped, and leaves nothing learned."""
        for short in _CALIBRATION_BUDGETS:
            if key in self.offsets or short * 8 > budget:
                return
            try:
                self._fit(key, build, measure, estimate, short, lo, hi, "calibration")
            except EvalkitError:
                self.offsets.pop(key, None)
                self.exact.pop(key, None)

    def _fit(self, key: str, build: Callable[[int], P], measure: Callable[[P], int],
             estimate: Estimate, budget: int, lo: int, hi: int, what: str) -> Fit[P]:
        if lo > hi:
            raise ValueError(f"empty search range [{lo}, {hi}]")
        offset = self.offsets.get(key, 0)
        learned = key in self.offsets  # the first fit of a call site measures k + 1 itself
        approximate = getattr(estimate, "approximate", False)
        if approximate:
            estimate.start()  # type: ignore[union-attr]
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
            if approximate and not step and learned and self.exact.get(key, True):
                # the guess is measured; the size is found on the exact differences, and
                # taken without measuring it, but for one fit in _CHECK_EVERY: that one
                # measures it (the search goes on), so that a miss stops the trust
                size = estimate.largest_within(budget - offset, lo, hi)
                if size == k and best is not None:
                    return best
                self.approximate_fits[key] = n = self.approximate_fits.get(key, 0) + 1
                if lo <= size != k and n % _CHECK_EVERY:
                    return Fit(size, build(size), estimate.at(size) + offset)
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


def _is_cut(before: str, after: str) -> bool:
    """Whether a chunk starts between these two characters (see _CHUNK)."""
    return after.isspace() and not before.isspace() and (after == " " or before.isalnum())


def last_chunk(text: str) -> str:
    """The chunk a text ends with ("" for ""): a chunk starts at a cut, and a cut depends
    on the two characters around it only, so the tail of the text finds it."""
    for width in (256, 4096, len(text)):
        found = _CHUNK.findall(text[-width:])
        if len(found) > 1 or width >= len(text):
            return found[-1] if found else ""
    return ""  # pragma: no cover


def chunks(text: str) -> Sequence[str]:
    """The whitespace-led chunks a text is estimated by (for tests)."""
    return _CHUNK.findall(text)
