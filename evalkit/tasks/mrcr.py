"""OpenAI's MRCR (multi-round co-reference resolution), read from its published files.

Each row is a long chat of many similar requests and answers (poems, essays, emails about
a few topics), a few of them identical requests (the needles: 2, 4 or 8); the last user
turn asks for one of them ("the 2nd poem about tapirs") with a random string to prepend.
The conversation goes to the model as it is, rendered by its chat template; no text is
fitted or cut.

Binning: by the conversation's token count as the evaluated model reads it (its own
tokenizer and chat template; OpenAI counts with o200k_base over the messages' contents),
into MRCR's 8 bins (4K, 8K], (8K, 16K], ... (512K, 1M]; a bin is named by its upper edge
(a row of 8K tokens or fewer is in the 8K bin). `bins` picks bins; `samples` is the
number of rows a bin takes of each needle count, in file order. Rows whose conversation
and answer budget do not fit the model's window are skipped, counted and listed (run.json's
`skipped`), never truncated.

Grading is OpenAI's (`grade`): 0 unless the response starts with the random string, else
difflib's SequenceMatcher ratio of the response against the answer, both with the string
removed: a continuous score in [0, 1].
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field

from evalkit.tasks.base import Plan, Score, TaskDef, found_marks, register_task
from evalkit.tasks.importers import MrcrCase, load_mrcr, mrcr_files
from evalkit.types import EvalkitError, MetricDef, Response, Sample, last_user_text

# the upper edges of MRCR's bins: (4K, 8K], (8K, 16K], ..., (512K, 1M]
BINS: tuple[int, ...] = tuple(2 ** k for k in range(13, 21))


@dataclass(frozen=True)
class MrcrParams:
    data: list[str] = field(default_factory=list, metadata={
        "help": "MRCR's files (openai/mrcr: 2needle.parquet, 4needle.parquet, "
                "8needle.parquet, or JSONL of the same columns) or their folder"})
    needles: list[int] = field(default_factory=lambda: [2, 4, 8], metadata={
        "help": "the needle counts to take (rows with another n_needles are left out)"})
    bins: list[str | int] = field(default_factory=lambda: [f"{b // 1024}k" for b in BINS],
                                  metadata={"help": "the bins to take, by upper edge "
                                                    "(8k, 16k, ... 1024k)"})

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("data: give MRCR's files or their folder (openai/mrcr on the "
                             "Hugging Face hub: 2needle.parquet, 4needle.parquet, "
                             "8needle.parquet)")
        for b in self.bins:
            edge_of(b)  # a bin that is not MRCR's is refused by name
        mrcr_files(self.data)  # files that are not there are one line before any model loads
        if not self.needles or any(n < 1 for n in self.needles):
            raise ValueError("needles: give needle counts such as [2, 4, 8]")


BIN_NAMES = {f"{b // 1024}k": b for b in BINS} | {"1m": BINS[-1]}


def edge_of(name: str | int) -> int:
    """A bin's upper edge from its name ("8k", "1024k" or "1m") or its edge in tokens;
    ValueError naming MRCR's bins for any other."""
    edge = name if isinstance(name, int) and not isinstance(name, bool) else BIN_NAMES.get(
        str(name).strip().lower())
    if edge not in BINS:
        raise ValueError(f"bins: {name!r} is not one of MRCR's bins, named by their upper "
                         f"edges: {', '.join(list(BIN_NAMES)[:-1])}")
    return int(edge)


def bin_of(tokens: int) -> int | None:
    """The upper edge of the MRCR bin that holds `tokens` (the first bin also holds what
    is shorter); None beyond the last (1M)."""
    return next((edge for edge in BINS if tokens <= edge), None)


def grade(response: str, answer: str, random_string: str) -> float:
    """OpenAI's MRCR grade: 0 unless the response starts with the random string, else the
    SequenceMatcher ratio of the response and the answer, the string removed from both."""
    if not response.startswith(random_string):
        return 0.0
    return float(difflib.SequenceMatcher(None, response.removeprefix(random_string),
                                         answer.removeprefix(random_string)).ratio())


def _sample(case: MrcrCase, edge: int, tokens: int, plan: Plan) -> Sample:
    where = "".join(c if c.isalnum() or c in "_.-/" else "_" for c in case.source)
    return Sample(
        id=f"mrcr/{where}/{case.row}", task="mrcr", prompt=last_user_text(case.messages),
        messages=case.messages, targets=(case.answer,), target_tokens=None,
        input_tokens=tokens, template=plan.template, max_new_tokens=plan.max_new_tokens,
        meta={"bin": edge, "subsets": [f"{case.n_needles}needle"],
              "random_string_to_prepend": case.random_string, "n_needles": case.n_needles,
              "desired_msg_index": case.desired_msg_index,
              "total_messages": case.total_messages, "n_chars": case.n_chars,
              "source": case.source, "row": case.row, "tokens_counted_by": "the model"})


def generate(params: MrcrParams, plan: Plan) -> Iterator[Sample]:
    """The rows of the bins and needle counts asked for, `plan.samples` a (bin, needle
    count), in file order; every row is counted with the model's tokenizer and template."""
    edges = {edge_of(b) for b in params.bins}
    taken: dict[tuple[int, int], int] = {}
    cases = [c for c in load_mrcr(params.data) if c.n_needles in params.needles]
    if not cases:
        raise EvalkitError(f"mrcr: no row of {', '.join(params.data)} has n_needles in "
                           f"{params.needles}: pass other needles or other files")
    # a bin whose every row is over the window takes none: said once, its rows not read
    for upper in sorted(edges):
        lower = BINS[BINS.index(upper) - 1] if upper != BINS[0] else 0
        if not plan.fits(lower + 1):
            plan.skip(f"mrcr/bin/{upper // 1024}k", f"every row of this bin is over the "
                                                     f"window ({plan.window} tokens)")
            edges.discard(upper)
    for case in cases:
        if all(taken.get((edge, case.n_needles), 0) >= plan.samples for edge in edges):
            continue  # this needle count is full in every bin asked for (or none is left)
        tokens = plan.counted(f"tokens/{case.source}/{case.row}",
                              functools.partial(plan.fitter.measure_messages, case.messages))
        edge = bin_of(tokens)
        if edge is None or edge not in edges or taken.get((edge, case.n_needles), 0) >= \
                plan.samples:
            continue
        sample = _sample(case, edge, tokens, plan)
        if not plan.fits(tokens):
            plan.skip(sample.id, f"{tokens} + {plan.max_new_tokens + plan.reserve} new tokens "
                                 f"are over the window ({plan.window})")
            continue
        taken[(edge, case.n_needles)] = taken.get((edge, case.n_needles), 0) + 1
        if plan.wants(sample.id):
            yield sample


def marks(sample: Sample) -> list[tuple[str, str]]:
    """The asked message (the answer, its random string removed) and the request."""
    r = str(sample.meta["random_string_to_prepend"])
    return found_marks(sample, [sample.targets[0].removeprefix(r)], sample.prompt)


def score(sample: Sample, response: Response) -> Score:
    r = str(sample.meta["random_string_to_prepend"])
    text = response.text or ""
    return Score({"match_ratio": grade(text, sample.targets[0], r),
                  "prefixed": float(text.startswith(r))}, None)


TASK = register_task(TaskDef(
    name="mrcr",
    description="OpenAI's MRCR: reproduce the asked one of several identical requests in a "
                "long chat, a random string prepended (read from its published files)",
    params_type=MrcrParams, kind="generate", default_template="chat", max_new_tokens=2048,
    generate=generate, score=score, fitted=lambda params: False, marks=marks,
    options=frozenset({"samples", "template", "max_new_tokens"}),
    fixed="takes MRCR's bins by its `bins` parameter (8k ... 1024k), not lengths: its "
          "conversations are read as published, never fitted",
    metrics=(MetricDef("match_ratio", "continuous", description=(
        "OpenAI's grade: 0 unless the output starts with the random string, else difflib's "
        "SequenceMatcher ratio of output and answer, the string removed from both")),
             MetricDef("prefixed", "binary", description=(
                 "the output starts with the random string"))),
    details=("bins: the conversation's tokens by the model's tokenizer and chat template "
             "(OpenAI counts with o200k_base); a row over the window is skipped and listed",),
))
