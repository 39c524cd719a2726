from __future__ import annotations

import math

import pytest

from evalkit.results.summary import aggregate
from evalkit.stats.intervals import wilson
from evalkit.tasks.parsers import (
    first_int_match,
    last_int_match,
    normalize,
    parse_choice,
    topic_match,
)
from evalkit.types import Record, Response, Sample


def test_passkey_takes_the_first_integer() -> None:
    assert first_int_match(" 12345. Remember it. 999", "12345") == (True, "12345")
    assert first_int_match(" 999 then 12345", "12345") == (False, "999")
    assert first_int_match(" no digits", "1") == (False, None)


def test_lines_take_the_last_integer() -> None:
    assert last_int_match("line 12 has <4711>", "4711") == (True, "4711")
    assert last_int_match("4711, or maybe 12", "4711") == (False, "12")


def test_topic_match_is_normalised_and_word_bounded() -> None:
    assert normalize("The  Psychology of Happiness!") == "psychology of happiness"
    assert topic_match("The first topic was: the psychology of happiness.",
                       "The psychology of happiness")
    assert not topic_match("psychology of happinessness", "The psychology of happiness")
    assert topic_match("", "x") is False


def test_topics_score_lenient_and_exact_side_by_side() -> None:
    """The lenient match forgives case, punctuation, an article and words around the topic;
    exact_match takes the answer's first line as it is. The parsed answer is that line."""
    from evalkit.tasks import get_task

    sample = Sample(id="t", task="topics", prompt="p", targets=("The Psychology of Happiness",),
                    target_tokens=None, input_tokens=1, template="raw", max_new_tokens=50)
    score = get_task("topics").score

    def scored(text: str) -> tuple[dict[str, float], str | None]:
        s = score(sample, Response(text=text))
        return dict(s.scores), s.parsed

    assert scored("  The Psychology of Happiness \nmore") == (
        {"accuracy": 1.0, "exact_match": 1.0}, "The Psychology of Happiness")
    assert scored("the psychology of happiness.") == (
        {"accuracy": 1.0, "exact_match": 0.0}, "the psychology of happiness.")
    assert scored("\n\nIt was the psychology of happiness") == (
        {"accuracy": 1.0, "exact_match": 0.0}, "It was the psychology of happiness")
    assert scored("Happiness") == ({"accuracy": 0.0, "exact_match": 0.0}, "Happiness")
    assert scored(" \n ") == ({"accuracy": 0.0, "exact_match": 0.0}, None)


@pytest.mark.parametrize("text,letter", [
    ("B", "B"), (" (C) z", "C"), ("The answer is D.", "D"), ("Answer: A", "A"),
    ("I pick option C", "C"), ("I think y is right", "B"), ("A) x", "A"),
    ("\nA. x\nB. y\nC. z", None), ("no idea", None), ("x or y", None),
])
def test_parse_choice(text: str, letter: str | None) -> None:
    assert parse_choice(text, ["x", "y", "z", "w"]) == letter


def test_wilson_matches_known_values() -> None:
    lo, hi = wilson(8, 10)
    assert math.isclose(lo, 0.4902, abs_tol=1e-4) and math.isclose(hi, 0.9433, abs_tol=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(0, 5)
    assert lo == 0.0 and 0.4 < hi < 0.5


def _rec(sid: str, task: str, target: int | None, ok: float | None, meta: dict | None = None,
         model: str = "m") -> Record:
    s = Sample(id=sid, task=task, prompt="p", targets=("1",), target_tokens=target,
               input_tokens=target or 100, template="raw", max_new_tokens=5, meta=meta or {})
    if ok is None:
        return Record(s, Response(error="boom"), {}, model, "x", "k")
    return Record(s, Response(text="1"), {"accuracy": ok}, model, "x", "k", "1")


def test_aggregate_groups_by_fields_and_counts_errors_apart() -> None:
    recs = [_rec("a", "passkey", 1024, 1.0), _rec("b", "passkey", 1024, 0.0),
            _rec("c", "passkey", 1024, None), _rec("d", "passkey", 2048, 1.0),
            _rec("e", "longqa", None, 1.0, {"bin": "quality", "subsets": ["hard"]}),
            _rec("f", "longqa", None, 0.0, {"bin": "quality"})]
    rows = {(r.task, r.length, r.subset): r for r in aggregate(recs)}
    r = rows[("passkey", 1024, "all")]
    assert (r.value, r.n, r.n_errors) == (0.5, 2, 1)
    assert rows[("passkey", 2048, "all")].value == 1.0
    assert rows[("longqa", "quality", "all")].n == 2
    assert rows[("longqa", "quality", "hard")].value == 1.0
