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
