"""Line retrieval (LongChat LongEval "lines"), fitted to token lengths or by line count.

The prompt is LongEval's, to the character. Index names default to LRT-NL adjective-noun
pairs (`torpid-kid`) from word lists we wrote; 1..n, UUID and ABC styles are options.
`cases` runs LongEval's published test-case rows instead (see importers.py).
"""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from evalkit.generators.base import (
    ACCURACY,
    Plan,
    Score,
    TaskDef,
    read_words,
    register_task,
    sample_rng,
)
from evalkit.generators.importers import read_case_files, read_longeval_lines
from evalkit.scoring import last_int_match
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
MAX_LINES = 16384  # about 250K tokens: more than any context this harness fits


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

        units = plan.fitter.units(line, lambda n: HEADER, question)
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
                yield _case(f"lines/n{n}/{plan.seed}/{i}", plan, params, n, None)
        return
    if not plan.lengths:
        raise EvalkitError("lines needs lengths or num_lines: pass --lengths, e.g. 1k,4k")
    for target in plan.lengths:
        for i in range(plan.samples):
            yield _case(f"lines/{target}/{plan.seed}/{i}", plan, params, None, target)


def score(sample: Sample, response: Response) -> Score:
    ok, parsed = last_int_match(response.text, sample.targets[0])
    return Score({"accuracy": float(ok)}, parsed)


TASK = register_task(TaskDef(
    name="lines",
    description="retrieve the number on a named line of a long record (LongEval lines)",
    params_type=LinesParams, default_template="chat", max_new_tokens=100,
    generate=generate, score=score,
    fitted=lambda p: not (p.cases or p.num_lines),
    kind="generate", metrics=(ACCURACY,),
))
