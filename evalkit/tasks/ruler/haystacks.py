"""RULER's haystacks and needle values, made by evalkit: sized in words, so that a prompt is
fitted to its length to within a word (RULER's own builder finds one size per length by
bisection over whole units, a line of noise, a distractor needle, an essay word, on one
draw; a sample that does not fit at that size steps down 25 lines or 500 words).

- noise: RULER's noise sentence group (protocol.NOISE), one a line;
- needle: distractor needles, one a line, each with a random key and value (RULER draws
  them anew at every size it tries; here line j of a sample is always the same line, so
  that a haystack grows by appending);
- essay: the words of an essay text, repeated if a length needs more, cut into sentences
  for the needles to go between (`sentences`).

With `whole_units` (a named option) a noise or needle haystack ends at a whole line, as
RULER's do, and the prompt may fall up to a line short of its length.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from evalkit.tasks.base import Plan, data_dir
from evalkit.tasks.fitting import (
    Curve,
    Estimate,
    Estimator,
    Fit,
    Haystack,
    SampledCounts,
    UnitCounts,
    with_answer_prefix,
)
from evalkit.tasks.ruler.protocol import NEEDLE, NOISE, NeedleType
from evalkit.types import EvalkitError

# a haystack's estimated tokens by size, the largest size within a number of tokens, and
# the unit counts they read
SizeCounts = tuple[Callable[[int], int], Callable[[float, int], int],
                   UnitCounts | SampledCounts | None]
_NEXT_LINE = "\nA"  # what follows a lines haystack, as far as its last junction can tell


def fit_prompt(plan: Plan, key: str, build: Callable[[int], str], answer_prefix: str,
               budget: int, lo: int, hi: int, what: str,
               haystack: SizeCounts | None = None) -> Fit[str]:
    """The largest size k in [lo, hi] whose user text build(k), rendered with the model's
    template and followed by the answer prefix, takes at most `budget` tokens.
    `haystack`: the estimated tokens of the haystack of size k alone, and the largest size
    within a number of tokens (lines_counts, words_counts), where the rest of build(k)
    (the template, the needles) adds the same at every k; the fit then estimates a size
    in constant time, not by chunking the whole prompt again."""
    if budget <= 0:
        raise EvalkitError(f"{plan.task}: a length of {budget + plan.max_new_tokens} tokens "
                           f"leaves nothing beside the {plan.max_new_tokens} tokens to "
                           "generate (a RULER length counts them): ask for a longer length")
    est = plan.fitter.estimator
    prefix_tokens = est(answer_prefix)
    estimate: Estimate
    if haystack is None:
        estimate = Curve(lambda k: est(build(k)) + prefix_tokens)
    else:
        tokens, largest, counts = haystack
        estimate = Haystack(tokens, largest, est(build(lo)) - tokens(lo) + prefix_tokens,
                            counts)
    return plan.fitter.fit(key, build, estimate, budget, lo=lo, hi=hi, what=what,
                           measure=with_answer_prefix(plan.measure, answer_prefix))


def line_unit(lines: Lines, j: int) -> str:
    """Line j of a lines haystack, led by its newline after the first (a unit)."""
    return ("\n" if j else "") + lines.line(j)


def line_units(lines: Lines) -> Iterator[str]:
    """The lines of a lines haystack, each after the first led by its newline (units of
    UnitCounts)."""
    return map(functools.partial(line_unit, lines), itertools.count())


def word_units(words: Sequence[str]) -> Iterator[str]:
    """The words of an essay haystack, repeated as first_words repeats them, each after
    the first led by its space (units of UnitCounts)."""
    for i, word in enumerate(itertools.cycle(words)):
        yield (" " if i else "") + word


def lines_counts(lines: Lines, units: UnitCounts | SampledCounts, est: Estimator
                 ) -> SizeCounts:
    """fit_prompt's `haystack` for "\n".join(lines.lines(k * lines.step())): whole lines
    by `units` (line_units), the cut line's words by the estimator."""
    wpl, step = lines.words_per_line, lines.step()

    def words(n: int) -> int:
        full, part = divmod(n, wpl)
        cut = (" ".join(lines.line(full).split(" ")[:part])
               if part and not lines.whole_units else "")
        total = units(full)
        if cut:
            total += est.after(lines.line(full - 1), "\n" + cut) if full else est(cut)
        last = cut or (lines.line(full - 1) if full else "")
        # a line follows the haystack (a needle, the question): its junction with the last
        # line depends on where that line is cut (".\n" is one token to some vocabularies)
        return total + _before_next_line(est, last)

    def largest(target: float, hi: int) -> int:
        full = units.largest_within(target, hi * step // wpl)
        if full < 0:
            return -1
        best = full * wpl // step
        for part in range(1, wpl if step == 1 else 0):
            if full * wpl + part > hi or words(full * wpl + part) > target:
                break
            best = full * wpl + part
        return best

    def tokens(k: int) -> int:
        return words(k * step)

    return tokens, _settled(tokens, largest), units


def words_counts(units: UnitCounts, words: Sequence[str], est: Estimator) -> SizeCounts:
    """fit_prompt's `haystack` for first_words(words, k) (units: word_units), followed by a
    line (the question)."""
    def tokens(k: int) -> int:
        return units(k) + _before_next_line(est, words[(k - 1) % len(words)] if k else "")

    return tokens, _settled(tokens, units.largest_within), units


def _before_next_line(est: Estimator, last: str) -> int:
    """What the line after a haystack (a needle, the question) changes at its junction
    with the haystack's last line or word: -1 where a vocabulary makes ".\\n" one token."""
    return est.joint(last, _NEXT_LINE)


def _settled(tokens: Callable[[int], int], largest: Callable[[float, int], int]
             ) -> Callable[[float, int], int]:
    """`largest` (found on the units' sums) corrected by the junction that `tokens` adds:
    the size it gives may be one short of, or one past, the largest within target."""
    def settled(target: float, hi: int) -> int:
        k = largest(target, hi)
        while k < hi and tokens(k + 1) <= target:
            k += 1
        while k >= 0 and tokens(k) > target:
            k -= 1
        return k

    return settled


@functools.cache
def key_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """RULER's word keys are "{adjective}-{noun}" over wonderwords' lists, drawn uniformly
    from the sorted set of those joins; with each list's duplicates dropped, every pair
    joins to a distinct word, so drawing an adjective and a noun uniformly is that draw
    (without building its 6.2 million words)."""
    folder = data_dir() / "ruler"
    try:
        adjs = (folder / "adjectivelist.txt").read_text(encoding="utf-8").splitlines()
        nouns = (folder / "nounlist.txt").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise EvalkitError(f"task data file {exc.filename} is missing: reinstall evalkit "
                           "(pip install evalkit)") from None
    return tuple(sorted(set(w.rstrip() for w in adjs))), tuple(sorted(set(w.rstrip()
                                                                          for w in nouns)))


def random_value(kind: NeedleType, rng: random.Random) -> str:
    """A needle's key or value as RULER draws it: a 7-digit number, an adjective-noun word,
    or a version-4 UUID."""
    if kind == "numbers":
        return str(rng.randint(10 ** 6, 10 ** 7 - 1))
    if kind == "words":
        adjs, nouns = key_words()
        return f"{rng.choice(adjs)}-{rng.choice(nouns)}"
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass(frozen=True)
class Lines:
    """A haystack of lines (noise, or distractor needles): `lines(k)` holds its first k
    words, `line(j)` being its j-th whole line; the last line is cut at a word unless
    `whole_units`, where k counts whole lines' words only."""

    line: Callable[[int], str]
    words_per_line: int  # every line has this many words (noise: 19; a needle: 10)
    whole_units: bool = False

    def lines(self, k: int) -> list[str]:
        full, part = divmod(k, self.words_per_line)
        out = [self.line(j) for j in range(full)]
        if part and not self.whole_units:
            out.append(" ".join(self.line(full).split(" ")[:part]))
        return out

    def step(self) -> int:
        """The sizes a fit tries are multiples of this (words)."""
        return self.words_per_line if self.whole_units else 1


def noise_lines(whole_units: bool = False) -> Lines:
    return Lines(lambda j: NOISE, len(NOISE.split(" ")), whole_units)


def needle_lines(seed: str, type_needle_k: NeedleType, type_needle_v: NeedleType,
                 whole_units: bool = False) -> Lines:
    """Distractor needles, line j drawn from a generator of its own (seeded by the
    sample and j), so that any line is made without the ones before it."""
    plural = f"{type_needle_v}"

    @functools.lru_cache(maxsize=65536)
    def line(j: int) -> str:
        rng = random.Random(f"{seed}/{j}")
        return NEEDLE.format(type_needle_v=plural, key=random_value(type_needle_k, rng),
                             value=random_value(type_needle_v, rng))

    words = len(line(0).split(" "))
    return Lines(line, words, whole_units)


def essay_words(text: str) -> list[str]:
    """RULER's essay haystack: the text's words, whitespace runs as one space."""
    return re.sub(r"\s+", " ", text).split(" ")


def first_words(words: Sequence[str], k: int) -> str:
    """The first k words, the essay repeated as often as k needs (as RULER does)."""
    if k <= len(words):
        return " ".join(words[:k])
    repeats = -(-k // len(words))
    return " ".join((list(words) * repeats)[:k])


# A sentence ends at . ! or ? (and the closing quotes or brackets after it) before a space:
# evalkit's own rule. RULER splits with nltk's punkt, whose model is a download; a fixed
# rule splits the same text the same everywhere. Needles go between sentences.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?= )")


def sentences(text: str) -> list[str]:
    """The sentences of a text whose words are one space apart: " ".join(them) is it."""
    text = text.strip()
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start:m.end()])
        start = m.end() + 1
    if start < len(text):
        out.append(text[start:])
    return out
