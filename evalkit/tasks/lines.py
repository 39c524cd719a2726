"""Line retrieval (LongChat LongEval "lines"), fitted to token lengths or by line count.

The prompt is LongEval's, to the character. Index names default to LRT-NL adjective-noun
pairs (`torpid-kid`) from word lists we wrote; 1..n, UUID and ABC styles are options.
`cases` runs LongEval's published test-case rows instead (see importers.py).
"""

from __future__ import annotations

import random
import re
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from evalkit.tasks.base import (
    Plan,
    Score,
    TaskDef,
    accuracy,
    found_marks,
    read_words,
    register_task,
    sample_rng,
)
from evalkit.tasks.importers import read_case_files, read_longeval_lines
from evalkit.tasks.parsers import last_int_match
from evalkit.types import EvalkitError, Response, Sample

HEADER = (
    "Below is a record of lines I want you to remember. Each line begins with 'line <line index>' "
    "and contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. For each "
    "line index, memorize its corresponding <REGISTER_CONTENT>. At the end of the record, I will "
    "ask you to retrieve the corresponding <REGISTER_CONTENT> of a certain line index. Now the "
    "record start:\n\n"
)
LINE = "line {idx}: REGISTER_CONTENT is <{value}>\n"
QUESTION = ("\nNow the record is over. Tell me what is the <REGISTER_CONTENT> in line {idx}? "
            "I need the number. ")
INDEX_STYLES = ("nl", "int", "uuid", "abc")
MAX_LINES = 1 << 17  # about 2M tokens; LongEval's 450 x 450 line names allow 202,500


@dataclass(frozen=True)
class LinesParams:
    index_style: str = field(
        default="nl", metadata={"help": "line index names: nl (torpid-kid), int, uuid, abc"})
    num_lines: list[int] | None = field(
        default=None, metadata={"help": "make cases by line count (LongEval: 200..680) instead of"
                                        " by token length"})
    cases: list[str] | None = field(
        default=None, metadata={"help": "LongEval published lines test-case files (JSONL)"})

    def __post_init__(self) -> None:
        if isinstance(self.cases, str):
            object.__setattr__(self, "cases", [self.cases])
        if self.num_lines is not None and not all(1 <= n <= 100_000 for n in self.num_lines):
            raise ValueError(f"num_lines must lie in 1..100000, got {self.num_lines}")
        if self.index_style not in INDEX_STYLES:
            raise ValueError(f"index_style must be one of {', '.join(INDEX_STYLES)}, "
                             f"got '{self.index_style}'")


@lru_cache(maxsize=1)
def _nl_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(read_words("adjectives")), tuple(read_words("nouns"))


class LineStream:
    """Lines drawn one at a time, so that the first n are the same whatever n ends up."""

    def __init__(self, style: str, rng: random.Random) -> None:
        self.style, self.rng = style, rng
        self.indexes: list[str] = []
        self.values: list[int] = []
        self._seen: set[str] = set()

    def _name(self) -> str:
        j = len(self.indexes)
        if self.style == "int":
            return str(j + 1)
        if self.style == "uuid":
            return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        for _ in range(1000):  # rejection of repeats; ends: the name space is far larger
            if self.style == "abc":
                name = "".join(self.rng.choices(string.ascii_uppercase, k=6))
            else:
                adjectives, nouns = _nl_words()
                name = f"{self.rng.choice(adjectives)}-{self.rng.choice(nouns)}"
            if name not in self._seen:
                return name
        raise EvalkitError("ran out of distinct line names")

    def extend(self, n: int) -> None:
        while len(self.indexes) < n:
            name = self._name()
            self._seen.add(name)
            self.indexes.append(name)
            self.values.append(self.rng.randint(1, 50000))


def build_prompt(indexes: list[str], values: list[int], n: int, asked: int) -> str:
    body = "".join(LINE.format(idx=indexes[j], value=values[j]) for j in range(n))
    return HEADER + body + QUESTION.format(idx=indexes[asked])


def _case(sid: str, plan: Plan, params: LinesParams, n_lines: int | None,
          target: int | None) -> Sample:
    rng = sample_rng(sid)
    position_draw = rng.random()  # the asked line, as a fraction of the record
    stream = LineStream(params.index_style, rng)

    def asked_at(n: int) -> int:
        return min(n - 1, int(position_draw * n))

    def build(n: int) -> str:
        stream.extend(n)
        return build_prompt(stream.indexes, stream.values, n, asked_at(n))

    if target is None:
        assert n_lines is not None
        n, prompt = n_lines, build(n_lines)
        tokens = plan.measure(prompt)
    else:
        def line(j: int) -> str:
            stream.extend(j + 1)
            return LINE.format(idx=stream.indexes[j], value=stream.values[j])

        def question(n: int) -> str:
            return QUESTION.format(idx=stream.indexes[asked_at(n)])

        units = plan.fitter.units(line, lambda n: HEADER, question, own=True)
        fit = plan.fitter.fit("lines", build, units, target, lo=1, hi=MAX_LINES, what="lines")
        if fit.size == MAX_LINES:
            raise EvalkitError(f"{target} tokens needs more lines than the generator makes "
                               f"({MAX_LINES}): ask for a shorter length")
        n, prompt, tokens = fit.size, fit.prompt, fit.tokens
    asked = asked_at(n)
    return Sample(
        id=sid, task="lines", prompt=prompt, targets=(str(stream.values[asked]),),
        target_tokens=target, input_tokens=tokens, template=plan.template,
        max_new_tokens=plan.max_new_tokens,
        meta={"num_lines": n, "line_index": stream.indexes[asked], "position": asked,
              "depth": round(asked / max(1, n - 1), 4), "index_style": params.index_style,
              **({} if target is not None else {"bin": f"{n} lines"})},
    )


def generate(params: LinesParams, plan: Plan) -> Iterator[Sample]:
    if params.cases:
        yield from read_case_files(params.cases, read_longeval_lines, plan)
        return
    if params.num_lines:
        for n in params.num_lines:
            for i in range(plan.samples):
                sid = f"lines/n{n}/{plan.seed}/{i}"
                if plan.wants(sid):
                    yield _case(sid, plan, params, n, None)
        return
    if not plan.lengths:
        raise EvalkitError("lines needs lengths or num_lines: pass --lengths, e.g. 1k,4k")
    for target in plan.lengths:
        for i in range(plan.samples):
            sid = f"lines/{target}/{plan.seed}/{i}"
            if plan.wants(sid):
                yield _case(sid, plan, params, None, target)


LINE_ACCURACY = accuracy("the last integer in the output equals the line's number "
                         "(LongEval's rule)")


def marks(sample: Sample) -> list[tuple[str, str]]:
    """The asked line and the question, for the report."""
    idx = str(sample.meta.get("line_index"))
    return found_marks(sample, question=f"Tell me what is the <REGISTER_CONTENT> in line {idx}?",
                       patterns=[re.escape(f"line {idx}: ") + r"REGISTER_CONTENT is <\d+>"])


def score(sample: Sample, response: Response) -> Score:
    ok, parsed = last_int_match(response.text, sample.targets[0])
    return Score({"accuracy": float(ok)}, parsed)


TASK = register_task(TaskDef(
    name="lines",
    description="retrieve the number on a named line of a long record (LongEval lines)",
    params_type=LinesParams, default_template="chat", max_new_tokens=100,
    generate=generate, score=score,
    fitted=lambda p: not (p.cases or p.num_lines),
    kind="generate", metrics=(LINE_ACCURACY,), marks=marks,
))


# ---- shared context: several questions over one record ----------------------------------

@dataclass(frozen=True)
class SharedLinesParams:
    questions: int = field(
        default=10, metadata={"help": "questions asked over each record (each one sample)"})
    index_style: str = field(
        default="nl", metadata={"help": "line index names: nl (torpid-kid), int, uuid, abc"})

    def __post_init__(self) -> None:
        if not 1 <= self.questions <= 1000:
            raise ValueError(f"questions must lie in 1..1000, got {self.questions}")
        if self.index_style not in INDEX_STYLES:
            raise ValueError(f"index_style must be one of {', '.join(INDEX_STYLES)}, "
                             f"got '{self.index_style}'")


def distinct_positions(draws: list[float], n: int) -> list[int]:
    """Each draw in [0, 1) as a line of n, moved down to the next free line on a clash."""
    taken: set[int] = set()
    out = []
    for d in draws:
        pos = min(n - 1, int(d * n))
        while pos in taken:
            pos = (pos - 1) % n
        taken.add(pos)
        out.append(pos)
    return out


def _shared_record(group: str, plan: Plan, params: SharedLinesParams,
                   target: int) -> list[Sample]:
    """One record fitted to `target` with each of its questions; every prompt is the same
    record, the question last, so an engine's prefix cache serves all but the first."""
    rng = sample_rng(group)
    draws = [rng.random() for _ in range(params.questions)]
    stream = LineStream(params.index_style, rng)

    def line(j: int) -> str:
        stream.extend(j + 1)
        return LINE.format(idx=stream.indexes[j], value=stream.values[j])

    def questions(n: int) -> list[str]:
        stream.extend(n)
        return [QUESTION.format(idx=stream.indexes[p]) for p in distinct_positions(draws, n)]

    def build(n: int, question: str) -> str:
        stream.extend(n)
        body = "".join(LINE.format(idx=stream.indexes[j], value=stream.values[j])
                       for j in range(n))
        return HEADER + body + question

    units = plan.fitter.units(line, lambda n: HEADER,
                              lambda n: max(questions(n), key=plan.fitter.estimator))
    n, prompts, tokens = plan.fitter.fit_shared("lines_shared", build, questions, units, target,
                                                lo=params.questions, hi=MAX_LINES, what="lines")
    if n == MAX_LINES:
        raise EvalkitError(f"{target} tokens needs more lines than the generator makes "
                           f"({MAX_LINES}): ask for a shorter length")
    positions = distinct_positions(draws, n)
    return [
        Sample(id=f"{group}/q{j}", task="lines_shared", prompt=prompt,
               targets=(str(stream.values[pos]),), target_tokens=target, input_tokens=tok,
               template=plan.template, max_new_tokens=plan.max_new_tokens,
               meta={"haystack": group, "num_lines": n, "line_index": stream.indexes[pos],
                     "position": pos, "depth": round(pos / max(1, n - 1), 4),
                     "index_style": params.index_style})
        for j, (prompt, tok, pos) in enumerate(zip(prompts, tokens, positions, strict=True))]


def generate_shared(params: SharedLinesParams, plan: Plan) -> Iterator[Sample]:
    if not plan.lengths:
        raise EvalkitError("lines_shared needs lengths: pass --lengths, e.g. 4k,8k")
    for target in plan.lengths:
        for h in range(plan.samples):
            group = f"lines_shared/{target}/{plan.seed}/{h}"
            wanted = [plan.wants(f"{group}/q{j}", group) for j in range(params.questions)]
            if all(wanted):
                yield from _shared_record(group, plan, params, target)


TASK_SHARED = register_task(TaskDef(
    name="lines_shared",
    description="lines, several questions over each record (shared context: the engine's "
                "prefix cache answers them; intervals clustered by record)",
    params_type=SharedLinesParams, default_template="chat", max_new_tokens=100,
    generate=generate_shared, score=score, fitted=lambda p: True,
    kind="generate", metrics=(LINE_ACCURACY,), marks=marks,
))
