"""The Fitter: the answer bisection gives, from about one measurement per prompt."""

from __future__ import annotations

import itertools

import pytest
from conftest import whitespace_plan
from hypothesis import given, settings
from hypothesis import strategies as st

from evalkit.prompts.counters import get_counter
from evalkit.tasks import get_task, make_params
from evalkit.tasks.fitting import Curve, Estimator, Fitter, PrefixCounts, chunks, fit_max
from evalkit.types import EvalkitError


def _counting(measure):
    calls = []

    def counted(text: str) -> int:
        calls.append(len(text))
        return measure(text)

    return counted, calls


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 5), min_size=1, max_size=60),
       noise=st.lists(st.integers(-3, 3), min_size=60, max_size=60),
       budget=st.integers(0, 200), lo=st.integers(0, 3), offset=st.integers(-50, 50))
def test_same_answer_as_bisection_with_noisy_estimates(sizes, noise, budget, lo, offset):
    """Any monotone count, an estimate wrong by a noisy, drifting amount (its misses show
    in what is measured): the fitter finds bisection's answer, or refuses as it does."""
    hi = len(sizes)
    lo = min(lo, hi)
    cum = list(itertools.accumulate(sizes, initial=3))  # tokens of k units

    def build(k: int) -> str:
        return str(k)

    def measure(text: str) -> int:
        return cum[int(text)]

    est = Curve(lambda k: cum[k] + noise[k] * k // 4 + offset)
    fitter = Fitter(measure, measure)
    try:
        want = fit_max(build, measure, budget, lo, hi)
    except EvalkitError:
        with pytest.raises(EvalkitError, match="too short"):
            fitter.fit("k", build, est, budget, lo, hi)
        return
    for _ in range(3):  # the learned offset and trust carry over between fits
        assert fitter.fit("k", build, est, budget, lo, hi) == want


def test_exact_estimate_measures_once_after_the_first_fit():
    cum = list(itertools.accumulate(range(1, 400), initial=0))
    measure, calls = _counting(lambda t: cum[int(t)] + 7)  # 7: a template's wrapping
    fitter = Fitter(measure, measure)
    est = Curve(lambda k: cum[k])
    first = fitter.fit("k", str, est, 5000, 0, 398)
    assert cum[first.size] + 7 <= 5000 < cum[first.size + 1] + 7
    assert len(calls) >= 2  # the first fit learns the offset and checks k + 1
    calls.clear()
    for budget in (4000, 6000, 7000):
        fit = fitter.fit("k", str, est, budget, 0, 398)
        assert cum[fit.size] + 7 <= budget < cum[fit.size + 1] + 7
    assert len(calls) == 3


def test_a_missed_estimate_stops_trusting_the_next_unit():
    """An estimate that drifts (a tokenizer that merges across chunks) is caught by the
    first measurement it mispredicts; from then on k + 1 is measured, never assumed."""
    cum = list(itertools.accumulate(range(1, 100), initial=0))
    measure, calls = _counting(lambda t: cum[int(t)])
    fitter = Fitter(measure, measure)
    drifting = Curve(lambda k: cum[k] + k)  # one token too many per unit
    for budget in range(500, 1500, 37):
        fit = fitter.fit("k", str, drifting, budget, 0, 98)
        assert fit == fit_max(str, measure, budget, 0, 98)
    assert fitter.exact["k"] is False


def test_chunk_sums_are_mistral_counts():
    """The rule the estimate rests on, on the real tokenizer and every task's prompts:
    a text's tokens are the sum of its whitespace-led chunks' tokens."""
    counter = get_counter("mistral-v1")
    est = Estimator(lambda t: len(counter.encode(t)))
    for name in ("passkey", "lines", "topics", "longqa"):
        task = get_task(name)
        for s in task.generate(make_params(task, {}),
                               whitespace_plan(name, (1500,), 2, max_new_tokens=10)):
            first, *rest = chunks(s.prompt)
            assert len(counter.encode(first)) + sum(est.chunk(c) for c in rest) == \
                len(counter.encode(s.prompt)), s.id


_QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


class _QwenStyleBPE:
    """A byte-level BPE vocabulary with Qwen2.5's (and Llama 3's) pre-tokenizer, trained on
    the given texts: it joins punctuation with the newlines after it (".\\n", ">\\n")."""

    name = "qwen-style-bpe"

    def __init__(self, corpus: list[str]) -> None:
        tokenizers = pytest.importorskip("tokenizers")
        from tokenizers import Regex, pre_tokenizers, trainers

        self.tok = tokenizers.Tokenizer(tokenizers.models.BPE())
        self.tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self.tok.train_from_iterator(corpus, trainers.BpeTrainer(
            vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False))

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text).ids)


_CHUNKED_TASKS = ("passkey", "lines", "niah_single_1", "niah_multikey_2", "vt", "topics")


def _prompts(plan_of) -> list[str]:
    out = []
    for name in _CHUNKED_TASKS:
        task = get_task(name)
        out += [s.prompt for s in task.generate(make_params(task, {}), plan_of(name))]
    return out


@pytest.fixture(scope="module")
def qwen_style_bpe() -> _QwenStyleBPE:
    from evalkit.prompts.counters import WhitespaceCounter
    from evalkit.prompts.templates import PromptMeasure, make_template
    from evalkit.tasks import Plan

    words = WhitespaceCounter()
    return _QwenStyleBPE(_prompts(lambda name: Plan(
        task=name, lengths=(1500,), samples=2, seed=0, template="raw", max_new_tokens=10,
        measure=PromptMeasure(make_template("raw"), words),
        count=lambda t: len(words.encode(t)))))


def test_chunk_sums_are_counts_of_a_bpe_vocabulary_that_joins_punctuation_and_newlines(
        qwen_style_bpe: _QwenStyleBPE) -> None:
    """The chunk rule holds for GPT-style pre-tokenizers too: a cut before a newline that
    follows punctuation would split ".\\n", which Qwen's vocabulary makes one token; the
    units of a haystack, estimated apart, add up through Estimator.after; fitted with that
    vocabulary, every estimate is exact."""
    from evalkit.prompts.templates import PromptMeasure, make_template
    from evalkit.tasks import Plan
    from evalkit.tasks.fitting import UnitCounts
    from evalkit.tasks.ruler.haystacks import line_units, needle_lines, noise_lines

    bpe = qwen_style_bpe

    def count(text: str) -> int:
        return len(bpe.encode(text))

    est = Estimator(count)
    assert count("again.\nThe") < count("again.") + count("\nThe")  # the joint is a token
    plans = []

    def bpe_plan(name: str) -> Plan:
        plans.append(Plan(task=name, lengths=(1500, 4000), samples=2, seed=1, template="raw",
                          max_new_tokens=10, measure=PromptMeasure(make_template("raw"), bpe),
                          count=count))
        return plans[-1]

    naive = 0
    for prompt in _prompts(bpe_plan):
        first, *rest = chunks(prompt)
        assert count(first) + sum(est.chunk(c) for c in rest) == count(prompt), prompt[:80]
        pieces = [p for p in prompt.replace("\n", " \n").split(" ") if p]  # cut at every
        naive += sum(count(p) for p in pieces) != count(prompt)  # whitespace: not additive
    assert naive > 0
    assert all(all(p.fitter.exact.values()) for p in plans)
    for lines in (noise_lines(), needle_lines("s", "words", "numbers")):
        units = UnitCounts(est, line_units(lines))
        for n in (1, 2, 7, 30):
            text = "\n".join(lines.line(j) for j in range(n))
            assert units(n) == est(text) == count(text), n


def test_prefix_counts_estimate_every_cut():
    text = " The grass is green. The sky is blue." * 20
    est = Estimator(lambda t: len(t.split()) + 1)
    counts = PrefixCounts(est, text)
    for m in range(len(text)):
        assert counts(m) == len(text[:m].split()), m


def test_too_short_is_one_line():
    with pytest.raises(EvalkitError, match="too short.*its shortest prompt"):
        Fitter(len, len).fit("k", lambda k: "x" * (k + 100), Curve(lambda k: k), 50, 0, 10)


def test_a_slow_counter_is_asked_once_per_text_with_the_same_sums():
    """Over a server's tokenize endpoint (slow per call), a text's unknown chunks are
    counted in one call, joined: fewer calls, the same estimates."""
    import time

    def slow(text: str) -> int:
        time.sleep(0.001)
        return len(text.split()) + 1  # one token per word, and a BOS

    fast, calls = _counting(lambda t: len(t.split()) + 1)
    slow_counted, slow_calls = _counting(slow)
    quick, batched = Estimator(fast), Estimator(slow_counted)
    texts = ["".join(f" w{i}-{j}" for j in range(40)) for i in range(30)]
    assert [batched(t) for t in texts] == [quick(t) for t in texts] == [40] * 30
    assert batched.batched and not quick.batched
    assert len(slow_calls) <= 1 + 40 + 29 < 1 + 30 * 40 == len(calls)  # then one call a text


def test_a_misleading_estimate_never_sends_the_search_far_past_the_fit():
    """An estimate that halves every count (a tokenizer far from the chunk rule): after the
    guided steps the search gallops up from what fits instead of bisecting toward hi."""
    measured: list[int] = []

    def measure(text: str) -> int:
        measured.append(int(text))
        return 10 * int(text)

    fit = Fitter(measure, measure).fit("k", str, Curve(lambda k: 5 * k), 3000, 1, 100_000)
    assert fit.size == 300 and fit == fit_max(str, lambda t: 10 * int(t), 3000, 1, 100_000)
    assert max(measured) < 4 * 300, measured


def test_a_long_fit_over_random_lines_measures_its_guess_once_and_lands_exactly():
    """niah_multikey_2's haystack is each sample's own random lines: a long fit estimates a
    rate on a few, measures the rate's guess once, and takes the size on the exact units
    around it; the count it records is the measured count of the prompt it made, and one
    word more would be over budget."""
    from evalkit.prompts.counters import get_counter
    from evalkit.prompts.templates import PromptMeasure, make_template
    from evalkit.tasks import Plan

    counter = get_counter("mistral-v1")
    sizes: list[int] = []

    class Counting:
        name = counter.name

        def encode(self, text: str) -> list[int]:
            ids = counter.encode(text)
            sizes.append(len(ids))
            return ids

    counting = Counting()
    task = get_task("niah_multikey_2")
    plan = Plan(task="niah_multikey_2", lengths=(24576,), samples=3, seed=0, template="raw",
                max_new_tokens=128, measure=PromptMeasure(make_template("raw"), counting),
                count=lambda t: len(counting.encode(t)))
    measure = PromptMeasure(make_template("raw"), counter)
    made = list(task.generate(make_params(task, {}), plan))
    for s in made:
        exact = measure.with_answer_prefix(s.answer_prefix)
        assert exact(s.prompt) == s.input_tokens <= 24576 - 128
        assert 24576 - 128 - s.input_tokens <= 12  # within a word
    long = [n for n in sizes if n > 16384]
    assert len(long) == len(made)  # one measurement of a long prompt each
    assert sum(sizes) < 1.3 * sum(s.input_tokens for s in made)


_UNIT_TOKENS = [3 + (i * 7919) % 5 for i in range(20000)]  # units " u0", " u1", ...


def _random_units():
    """Tokens of the first k units, and the estimator's count of a text of units (and of
    the anchor, one token)."""
    def count(text: str) -> int:
        return sum(_UNIT_TOKENS[int(w[1:])] if w.startswith("u") else 1
                   for w in text.split())

    return list(itertools.accumulate(_UNIT_TOKENS, initial=0)), count


def test_an_approximate_estimate_that_misses_is_measured_not_trusted():
    """A tokenizer that merges across chunks (one token fewer every 7 units) breaks the
    exact differences a random haystack's fit relies on: the calibration catches it, and
    every long fit then measures until bisection's answer."""
    from evalkit.tasks.fitting import Haystack, SampledCounts

    cum, count = _random_units()

    def measure(text: str) -> int:
        k = int(text)
        return 10 + cum[k] - k // 7


    fitter = Fitter(measure, count)
    for budget in (30000, 41000, 50000):
        counts = SampledCounts(fitter.estimator, lambda i: f" u{i}")
        fit = fitter.fit("random", str, Haystack(counts, counts.largest_within, 10, counts),
                         budget, 0, 19999)
        assert fit == fit_max(str, measure, budget, 0, 19999)
    assert fitter.exact["random"] is False


def test_every_fit_is_the_largest_that_fits_where_the_vocabulary_joins_a_period_and_newline(
        qwen_style_bpe: _QwenStyleBPE, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fit of the needle, lines and passkey tasks, short and long (calibrated, and on
    the random-lines path that measures once), records the measured count of its prompt,
    within budget, and the next size is over budget, also where the haystack's last line
    or word ends with a period that the line after it joins."""
    from evalkit.prompts.templates import PromptMeasure, make_template
    from evalkit.tasks import Plan

    def count(text: str) -> int:
        return len(qwen_style_bpe.encode(text))

    checked, wrong = [], []
    fit = Fitter._fit

    def verified(self, key, build, measure, estimate, budget, lo, hi, what):
        found = fit(self, key, build, measure, estimate, budget, lo, hi, what)
        tokens = measure(found.prompt)
        more = measure(build(found.size + 1)) if found.size < hi else None
        checked.append(key)
        if tokens != found.tokens or tokens > budget or (more is not None and more <= budget):
            wrong.append((key, what, budget, found.size, found.tokens, tokens, more))
        return found

    monkeypatch.setattr(Fitter, "_fit", verified)
    for name in ("niah_single_1", "niah_single_2", "niah_multikey_2", "vt", "lines",
                 "passkey", "cwe", "fwe"):
        task = get_task(name)
        plan = Plan(task=name, lengths=(1500, 2100, 17000), samples=3, seed=1,
                    template="raw", max_new_tokens=10,
                    measure=PromptMeasure(make_template("raw"), qwen_style_bpe), count=count)
        list(task.generate(make_params(task, {}), plan))
        assert all(plan.fitter.exact.values()), name
    assert len(checked) > 70 and wrong == []


def test_fwe_knows_the_last_word_of_its_shuffle_without_shuffling():
    """fwe's estimate counts the junction of its text's last word with the question (the
    noise word "..." joins the newline after it in Qwen's vocabulary): which word is last
    is read off the first draw of RULER's shuffle, as CPython's shuffle makes it."""
    import random

    from evalkit.tasks.ruler import extraction

    for n in (2, 3, 27, 1000, 65537):
        items = list(range(n))
        random.Random(extraction.RULER_SEED).shuffle(items)
        assert extraction._last_of_shuffle(n) == items[-1]


def test_a_miss_that_only_long_prompts_show_is_caught_by_the_periodic_check():
    """Exact on short prompts (the calibration passes), one token fewer every 3 units past
    unit 2000: the fits that take their size on the estimate's differences without a
    second measurement are checked one in 16, the first check that misses stops the trust,
    and every later fit is bisection's answer."""
    from evalkit.tasks.fitting import _CHECK_EVERY, Haystack, SampledCounts

    cum, count = _random_units()

    def measure(text: str) -> int:
        k = int(text)
        return 10 + cum[k] - max(0, k - 2000) // 3


    fitter = Fitter(measure, count)
    caught = None
    for i, budget in enumerate(range(30000, 50000, 400)):
        counts = SampledCounts(fitter.estimator, lambda i: f" u{i}")
        fit = fitter.fit("random", str, Haystack(counts, counts.largest_within, 10, counts),
                         budget, 0, 19999)
        if caught is None and fitter.exact.get("random") is False:
            caught = i
        if caught is not None and caught < i:
            assert fit == fit_max(str, measure, budget, 0, 19999)
    assert caught is not None and caught <= _CHECK_EVERY + 1


def test_an_essay_word_is_counted_once_however_often_it_comes():
    """Units of one chunk (an essay's words) are remembered, as whole texts' chunks are:
    an essay of a few thousand distinct words costs a few thousand counts, not one per
    word of the haystack."""
    from evalkit.tasks.fitting import UnitCounts
    from evalkit.tasks.ruler.haystacks import word_units

    count, calls = _counting(lambda t: len(t.split()))
    words = [f"w{i % 50}." for i in range(5000)]
    units = UnitCounts(Estimator(count), word_units(words))
    assert units(5000) == 4999  # the first word, unled, joins the anchor ("xw0.")
    assert len(calls) < 120  # 50 words, with and without the space, and the anchor
