"""RULER's protocol as its own code has it (NVIDIA/RULER at c3f5e3b): the task templates
and answer prefixes of scripts/data/synthetic/constants.py, byte for byte, the 13 tasks of
scripts/synthetic.yaml, and the metrics of scripts/eval/synthetic/constants.py.

RULER builds a prompt as `model_template.format(task_template=template) + answer_prefix`
(scripts/data/prepare.py): the answer prefix comes after the chat template's assistant
start, for the model to continue; here it is the sample's answer_prefix. A length counts
the input and the generation budget (`--max_seq_length: max sequence length including all
input tokens and generated tokens`).

lm-eval's port (lm_eval/tasks/ruler) copies these strings, with one difference: its
variable-tracking answer prefix keeps the misspelling "assgined" that RULER fixed (commit
4a216f4 "fix typo"); evalkit follows RULER.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to "
    "memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are "
    "all the special magic {type_needle_v} for {query} mentioned in the provided text?")
NIAH_ANSWER_PREFIX = (" The special magic {type_needle_v} for {query} mentioned in the "
                      "provided text are")
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
# the noise haystack (RULER's "noise", lm-eval's "repeat"): one unit, repeated, a line each
NOISE = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back "
         "again.")

VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text."
    "\n\n{context}\nQuestion: Find all variables that are assigned the value {query} in the "
    "text above.")
VT_ANSWER_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text "
                    "above, {num_v} variables are assigned the value {query}, they are: ")
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most "
    "common words in the above list?")
CWE_ANSWER_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the "
    "three most frequently appeared coded words. {context}\nQuestion: Do not provide any "
    "explanation. Please ignore the dots '....'. What are the three most frequently appeared "
    "words in the above coded text?")
FWE_ANSWER_PREFIX = (" Answer: According to the coded text above, the three most frequently "
                     "appeared words are:")
QA_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not "
    "output any other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the "
    "question based on the given documents. Only give me the answer and do not output any "
    "other words.\n\nQuestion: {query}")
QA_ANSWER_PREFIX = " Answer:"

# where needles go in an essay haystack: 40 depths, 0..100 (niah.py's DEPTHS)
DEPTHS: tuple[int, ...] = tuple(
    int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int))

Haystack = Literal["noise", "essay", "needle"]
NeedleType = Literal["words", "numbers", "uuids"]


@dataclass(frozen=True)
class Niah:
    """One needle-in-a-haystack task of synthetic.yaml (task: niah)."""

    name: str
    type_haystack: Haystack
    type_needle_k: NeedleType
    type_needle_v: NeedleType
    num_needle_k: int = 1
    num_needle_v: int = 1
    num_needle_q: int = 1
    tokens_to_generate: int = 128


NIAH: dict[str, Niah] = {t.name: t for t in (
    Niah("niah_single_1", "noise", "words", "numbers"),
    Niah("niah_single_2", "essay", "words", "numbers"),
    Niah("niah_single_3", "essay", "words", "uuids"),
    Niah("niah_multikey_1", "essay", "words", "numbers", num_needle_k=4),
    Niah("niah_multikey_2", "needle", "words", "numbers"),
    Niah("niah_multikey_3", "needle", "uuids", "uuids"),
    Niah("niah_multivalue", "essay", "words", "numbers", num_needle_v=4),
    Niah("niah_multiquery", "essay", "words", "numbers", num_needle_q=4),
)}


def string_match_all(pred: str, refs: tuple[str, ...]) -> float:
    """RULER's string_match_all for one prediction: the share of references found in it,
    case-insensitively (its corpus score is the mean of these, times 100)."""
    return sum(1.0 if r.lower() in pred.lower() else 0.0 for r in refs) / len(refs)


def string_match_part(pred: str, refs: tuple[str, ...]) -> float:
    """RULER's string_match_part for one prediction: 1 if any reference is found in it."""
    return max(1.0 if r.lower() in pred.lower() else 0.0 for r in refs)


def postprocess_pred(text: str) -> str:
    """RULER's postprocess_pred: stripped, control characters as newlines, stripped."""
    out = text.strip()
    return "".join("\n" if ord(c) < 0x20 else c for c in out).strip()
