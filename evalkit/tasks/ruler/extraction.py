"""RULER's two aggregation tasks, made by evalkit: cwe (the 10 most common words of a
numbered word list; scripts/data/synthetic/common_words_extraction.py) and fwe (the three
most frequent coded words of a Zipf-distributed text; freq_words_extraction.py).

As RULER makes them: cwe's words are wonderwords' nouns, adjectives and verbs (sorted, each
once, shuffled by Random(42)), 10 common words 30 times each and the rest 3 times (6 and 1
below 4K tokens), the list shuffled by Random(42), one few-shot example of 40 words (10 and
3 repeats; 20 words, 3 and 1 below 4K) written with the task template and its answer before
the question; fwe's vocabulary is length // 50 random six-letter words (sorted, shuffled by
Random(42)), the first one "...", word k taken floor(n k^-2 / zeta(2)) times, the text
shuffled by Random(42), the answer words 2 to 4. Budgets 120 and 50 tokens; string_match_all.

evalkit's own, as for every RULER task here (see niah): the size (cwe's number of words,
fwe's n) is the largest whose prompt fits its length, per sample (RULER settles on one size
per length, on one draw; a cwe sample that does not fit steps down 10 words, and fwe's
size moves in steps of length / 32); every draw comes from the sample's own
generator (a word sample is a prefix of the sample's one shuffle of the words, so a larger
size only adds words). The few-shot example is written as RULER's base template writes it
(the task template, no chat markup inside the user's text). cwe stops at the words it has
(8,166: about 190K tokens with Gemma's tokenizer, past RULER's 128K): RULER goes on with an
8.5 MB English word list, not bundled; a sample that runs out says so (meta
"words_exhausted") and falls short of its length.
"""

from __future__ import annotations

import array
import functools
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from scipy.special import zeta

from evalkit.tasks.base import Plan, TaskDef, data_dir, register_task, sample_rng
from evalkit.tasks.fitting import Curve, Estimator
from evalkit.tasks.ruler import suite
from evalkit.tasks.ruler.haystacks import fit_prompt
from evalkit.tasks.ruler.niah import RULER_SEED, score
from evalkit.tasks.ruler.protocol import (
    CWE_ANSWER_PREFIX,
    CWE_TEMPLATE,
    FWE_ANSWER_PREFIX,
    FWE_TEMPLATE,
)
from evalkit.types import EvalkitError, MetricDef, Sample

CWE_BUDGET, FWE_BUDGET = 120, 50
NUM_CW = 10  # cwe: the common words asked for
FWE_ALPHA, FWE_WORD_LEN = 2.0, 6


@dataclass(frozen=True)
class NoParams:
    """cwe and fwe take no parameters: RULER's settings are fixed."""


@functools.cache
def cwe_words() -> tuple[str, ...]:
    """RULER's: nouns + adjectives + verbs, each once, sorted, shuffled by Random(42)."""
    folder = data_dir() / "ruler"
    words: set[str] = set()
    for name in ("nounlist.txt", "adjectivelist.txt", "verblist.txt"):
        try:
            words.update(w.rstrip() for w in (folder / name).read_text(
                encoding="utf-8").splitlines())
        except FileNotFoundError:
            raise EvalkitError(f"task data file {folder / name} is missing: reinstall "
                               "evalkit (pip install evalkit)") from None
    out = sorted(words)
    random.Random(RULER_SEED).shuffle(out)
    return tuple(out)


def numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def cwe_list(chosen: list[str], common: int, uncommon: int) -> tuple[str, list[str]]:
    """RULER's get_example over the words chosen: the numbered list, the common words."""
    cw, ucw = chosen[:NUM_CW], chosen[NUM_CW:]
    word_list = cw * common + ucw * uncommon
    random.Random(RULER_SEED).shuffle(word_list)
    return numbered(word_list), cw


def generate_cwe(params: NoParams, plan: Plan) -> Iterator[Sample]:
    words = cwe_words()
    prompt_prefix = CWE_TEMPLATE + CWE_ANSWER_PREFIX
    for target in _lengths(plan, "cwe"):
        small = target < 4096
        repeats = (6, 1) if small else (30, 3)
        for i in range(plan.samples):
            sid = f"cwe/{target}/{plan.seed}/{i}"
            if not plan.wants(sid):
                continue
            rng = sample_rng(sid)
            shot, shot_answer = cwe_list(rng.sample(words, 20 if small else 40),
                                         *((3, 1) if small else (10, 3)))
            few_shot = (prompt_prefix.replace("{context}", shot).replace("{query}", "")
                        + " " + numbered(shot_answer))
            order = rng.sample(words, len(words))  # this sample's words: a prefix of these

            def build(k: int, order: list[str] = order, few_shot: str = few_shot,
                      repeats: tuple[int, int] = repeats) -> str:
                context, _ = cwe_list(order[:k], *repeats)
                return few_shot + "\n" + CWE_TEMPLATE.replace("{context}", context).replace(
                    "{query}", "")

            yield _fitted("cwe", plan, sid, target, build, CWE_ANSWER_PREFIX,
                          lo=NUM_CW + 1, hi=len(words),
                          answers=order[:NUM_CW], what="words",
                          tokens=_cwe_tokens(plan.fitter.estimator, order, repeats))


def _cwe_tokens(est: Estimator, order: list[str], repeats: tuple[int, int]
                ) -> Callable[[int], int]:
    """The estimated tokens of cwe_list(order[:k], *repeats), but for its first item's
    number: " 2." to " N.", and each word (all led by a space) as often as it is listed.
    The shuffle only moves them, so k costs two lookups in cumulative counts instead of a
    chunking of the list."""
    common, uncommon = repeats
    numbers = array.array("q", [0, 0])  # numbers[m]: tokens of " 2." ... " m."
    words = array.array("q", [0])  # words[j]: tokens of " order[0]" ... " order[j - 1]"

    def tokens(k: int) -> int:
        items = common * min(k, NUM_CW) + uncommon * max(0, k - NUM_CW)
        while len(numbers) <= items:
            numbers.append(numbers[-1] + est.chunk(f" {len(numbers)}."))
        while len(words) <= k:
            words.append(words[-1] + est.chunk(" " + order[len(words) - 1]))
        first = words[min(k, NUM_CW)]
        return numbers[items] + common * first + uncommon * (words[k] - first)

    return tokens


def fwe_vocabulary(rng: random.Random, size: int) -> list[str]:
    """RULER's: `size` distinct random six-letter words, sorted, shuffled by Random(42),
    the first made the noise word "..."."""
    vocab = {"".join(rng.choices(string.ascii_lowercase, k=FWE_WORD_LEN)) for _ in range(size)}
    while len(vocab) < size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=FWE_WORD_LEN)))
    out = sorted(vocab)
    random.Random(RULER_SEED).shuffle(out)
    out[0] = "..."
    return out


def fwe_text(vocab: list[str], n: int) -> str:
    """RULER's gen_text: word k (from 1) floor(n k^-alpha / zeta(alpha)) times, shuffled."""
    z = float(zeta(FWE_ALPHA))
    words = [w for k, w in enumerate(vocab, 1) for _ in range(int(n * k ** -FWE_ALPHA / z))]
    random.Random(RULER_SEED).shuffle(words)
    return " ".join(words)


def generate_fwe(params: NoParams, plan: Plan) -> Iterator[Sample]:
    for target in _lengths(plan, "fwe"):
        budget = target - plan.max_new_tokens
        for i in range(plan.samples):
            sid = f"fwe/{target}/{plan.seed}/{i}"
            if not plan.wants(sid):
                continue
            vocab = fwe_vocabulary(sample_rng(sid), max(4, budget // 50))

            def build(n: int, vocab: list[str] = vocab) -> str:
                return FWE_TEMPLATE.replace("{context}", fwe_text(vocab, n)).replace(
                    "{query}", "")

            # word 4 (the third answer) is there from n = 4^2 zeta(2) on
            yield _fitted("fwe", plan, sid, target, build, FWE_ANSWER_PREFIX, lo=27,
                          hi=max(27, budget * 2), answers=vocab[1:4], what="words",
                          tokens=_fwe_tokens(plan.fitter.estimator, vocab))


def _fwe_tokens(est: Estimator, vocab: list[str]) -> Callable[[int], int]:
    """The estimated tokens of fwe_text(vocab, n): each word (all led by a space) times its
    count, and the junction of the last one (the noise word "..." joins the newline after
    it in some vocabularies) with the question's line. O(vocabulary) a size, no text."""
    z = float(zeta(FWE_ALPHA))
    powers = [k ** -FWE_ALPHA for k in range(1, len(vocab) + 1)]
    costs = [est.chunk(" " + w) for w in vocab]

    def tokens(n: int) -> int:
        counts = [int(n * p / z) for p in powers]  # as fwe_text counts them
        total = sum(c * t for c, t in zip(counts, costs, strict=True))
        length = sum(counts)
        at = _last_of_shuffle(length)
        if at is None or not length:
            return total
        for word, count in zip(vocab, counts, strict=True):
            if at < count:
                return total + est.joint(word, "\nQuestion")
            at -= count
        return total  # pragma: no cover

    return tokens


def _last_of_shuffle(n: int) -> int | None:
    """Where the last item of random.Random(RULER_SEED).shuffle(a list of n) comes from:
    CPython's shuffle swaps the last place first, with the first draw below n. None where
    this Python shuffles otherwise (then the estimate leaves that junction out)."""
    if not _shuffle_draws_last_first():
        return None
    below: Callable[[int], int] = getattr(random.Random(RULER_SEED), _RANDBELOW)
    return below(n) if n > 1 else 0


_RANDBELOW = "_randbelow"  # CPython's draw below n, which shuffle uses


@functools.cache
def _shuffle_draws_last_first() -> bool:
    probe = list(range(1000))
    random.Random(RULER_SEED).shuffle(probe)
    below = getattr(random.Random(RULER_SEED), _RANDBELOW, None)
    return below is not None and probe[-1] == below(1000)


def _lengths(plan: Plan, name: str) -> tuple[int, ...]:
    if not plan.lengths:
        raise EvalkitError(f"{name} needs lengths: pass --lengths, e.g. 4k,8k,16k")
    return plan.lengths


def _fitted(name: str, plan: Plan, sid: str, target: int, build: Callable[[int], str],
            prefix: str, lo: int, hi: int, answers: list[str], what: str,
            tokens: Callable[[int], int]) -> Sample:
    """`tokens`: the estimated tokens of the part of build(k) that grows with k."""
    fit = fit_prompt(plan, name, build, prefix, target - plan.max_new_tokens, lo=lo, hi=hi,
                     what=what, haystack=(tokens, _largest(tokens), None))
    meta: dict[str, object] = {"size": fit.size}
    if name == "cwe" and fit.size == hi:
        meta["words_exhausted"] = True
    return Sample(id=sid, task=name, prompt=fit.prompt, targets=tuple(answers),
                  target_tokens=target, input_tokens=fit.tokens, template=plan.template,
                  max_new_tokens=plan.max_new_tokens, meta=meta, answer_prefix=prefix)


def _largest(tokens: Callable[[int], int]) -> Callable[[float, int], int]:
    """The largest size within a number of tokens, by bisection on the estimate alone (it
    grows with the size)."""
    return lambda target, hi: Curve(tokens).largest_within(target, 0, hi)


def _task(name: str, description: str, budget: int, generate: Callable[..., Iterator[Sample]],
          answers: str) -> TaskDef:
    return register_task(TaskDef(
        name=name, description=f"RULER's {name}: {description}", params_type=NoParams,
        default_template="chat", max_new_tokens=budget, generate=generate, score=score,
        kind="generate", metrics=(MetricDef(
            "string_match_all", "continuous",
            description=f"the share of {answers} found in the output (RULER's "
                        "string_match_all)"),),
        budget_in_length=True, summarize=suite.rows,
        details=(f"lengths count the prompt and the {budget} tokens to generate (RULER's "
                 "max_seq_length); the list is as long as fits",)))


CWE = _task("cwe", "name the 10 most common words of a long numbered word list", CWE_BUDGET,
            generate_cwe, "the 10 common words")
FWE = _task("fwe", "name the 3 most frequent coded words of a long Zipf text", FWE_BUDGET,
            generate_fwe, "the 3 most frequent words")
