"""Answer parsers: what a scorer reads out of a model's output.

Every scorer returns (correct, parsed): `parsed` is what was read out of the output (None
when nothing could be), so a wrong answer and an unparseable one stay distinguishable.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

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
