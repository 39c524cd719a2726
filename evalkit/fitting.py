"""Fit a haystack to a token budget.

`fit_max` finds the largest size k whose prompt still fits the budget, by a binary search
that ends by construction: at most ceil(log2(hi - lo + 1)) + 1 measurements.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from evalkit.types import EvalkitError

Measure = Callable[[str], int]


@dataclass(frozen=True)
class Fit:
    size: int
    prompt: str
    tokens: int


def fit_max(build: Callable[[int], str], measure: Measure, budget: int, lo: int, hi: int,
            what: str = "haystack") -> Fit:
    """Largest k in [lo, hi] with measure(build(k)) <= budget.

    `measure` must not decrease as k grows (more haystack, more tokens). Raises EvalkitError
    when even the smallest prompt is over budget. Returns k = hi when everything fits: the
    caller decides whether that means the source ran out.
    """
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


def fit_growing(build: Callable[[int], str], measure: Measure, budget: int, start: int,
                limit: int, what: str = "haystack") -> Fit:
    """`fit_max` for sources without a known size bound: double the upper bound from
    `start` until the prompt overflows the budget (at most log2(limit / start) doublings),
    then search. Raises EvalkitError when even `limit` items fit."""
    hi = max(2, start)
    while measure(build(hi)) <= budget:
        if hi >= limit:
            raise EvalkitError(f"{budget} tokens needs more {what} than the generator makes "
                               f"({limit}): ask for a shorter length")
        hi = min(limit, hi * 2)
    return fit_max(build, measure, budget, lo=1, hi=hi - 1, what=what)
