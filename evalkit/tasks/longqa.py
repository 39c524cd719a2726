"""Long-input multiple-choice QA: QuALITY's official JSONL, or a synthetic long document.

QuALITY published no prompt; evalkit fixes one (PROMPT below, recorded with every sample)
and reports accuracy on all questions and on the hard subset (difficult == 1).
The synthetic variant, ours, runs offline at exact lengths: a document of short profiles
of fictional people, and one question about one attribute of one of them, with three
distractors drawn from the same attribute of other people in the document.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from evalkit.tasks.base import (
    Plan,
    Score,
    TaskDef,
    accuracy,
    read_words,
    register_task,
    sample_rng,
)
from evalkit.tasks.importers import read_quality
from evalkit.tasks.parsers import choice_match
from evalkit.types import EvalkitError, Response, Sample

LETTERS = "ABCD"
PROMPT = (
    "Read the following text and answer the multiple-choice question that follows.\n\n"
    "{document}\n\n"
    "Question: {question}\n{options}\n\n"
    "Answer with the letter of the correct option (A, B, C or D).\nAnswer:"
)

# attribute -> (word list, sentence of the profile, question)
ATTRIBUTES: dict[str, tuple[str, str, str]] = {
    "town": ("towns", "{name} lives in {value}.", "In which town does {name} live?"),
    "profession": ("professions", "By trade, {name} is a {value}.",
                   "What is the profession of {name}?"),
    "animal": ("animals", "At home {name} looks after a {value}.",
               "Which animal does {name} look after?"),
    "instrument": ("instruments", "In the evenings {name} plays the {value}.",
                   "Which instrument does {name} play?"),
    "food": ("foods", "The dish {name} cooks most often is {value}.",
             "Which dish does {name} cook most often?"),
    "color": ("colors", "The front door of {name}'s house is painted {value}.",
              "What color is the front door of {name}'s house?"),
}
MAX_PEOPLE = 20000


@dataclass(frozen=True)
class LongQAParams:
    quality: str | None = field(
        default=None, metadata={"help": "QuALITY JSONL (train/dev, with gold labels); none: the "
                                        "synthetic long-document QA"})
    hard_only: bool = field(default=False, metadata={"help": "QuALITY: only difficult == 1"})


@lru_cache(maxsize=1)
def _vocab() -> dict[str, tuple[str, ...]]:
    names = ["first_names", "surnames"] + [a[0] for a in ATTRIBUTES.values()]
    return {n: tuple(read_words(n)) for n in names}


def format_prompt(document: str, question: str, options: Sequence[str]) -> str:
    opts = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return PROMPT.format(document=document, question=question, options=opts)


def _profile(rng: random.Random, name: str) -> tuple[str, dict[str, str]]:
    vocab = _vocab()
    values = {attr: rng.choice(vocab[spec[0]]) for attr, spec in ATTRIBUTES.items()}
    attrs = list(ATTRIBUTES)
    rng.shuffle(attrs)
    text = " ".join(ATTRIBUTES[a][1].format(name=name, value=values[a]) for a in attrs)
    return text, values


class ProfileStream:
    """Profiles of distinct people drawn one at a time (the first n never depend on n)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.names: list[str] = []
        self.profiles: list[tuple[str, dict[str, str]]] = []
        self._seen: set[str] = set()

    def extend(self, n: int) -> None:
        vocab = _vocab()
        while len(self.names) < n:
            for _ in range(1000):  # rejection of repeated names; 22,500 names to draw from
                first = self.rng.choice(vocab["first_names"])
                name = f"{first} {self.rng.choice(vocab['surnames'])}"
                if name not in self._seen:
                    break
            else:
                raise EvalkitError("longqa: ran out of distinct names for the document")
            self._seen.add(name)
            self.names.append(name)
            self.profiles.append(_profile(self.rng, name))


def _synthetic(sid: str, target: int, plan: Plan) -> Sample:
    rng = sample_rng(sid)
    attr = rng.choice(list(ATTRIBUTES))
    depth_draw = rng.random()
    letter_draw = rng.randrange(4)
    distractor_seed = rng.random()
    stream = ProfileStream(rng)

    def asked_at(n: int) -> int:
        return min(n - 1, int(depth_draw * n))

    first_seen: dict[str, int] = {}  # each value of the attribute: its first profile
    scanned = [0]  # profiles entered in first_seen

    def question(n: int) -> tuple[str, list[str]]:
        stream.extend(n)
        for j in range(scanned[0], n):
            first_seen.setdefault(stream.profiles[j][1][attr], j)
        scanned[0] = max(scanned[0], n)
        asked = asked_at(n)
        right = stream.profiles[asked][1][attr]
        others = sorted(v for v, j in first_seen.items() if j < n and v != right)
        pool = others if len(others) >= 3 else sorted(set(_vocab()[ATTRIBUTES[attr][0]]) - {right})
        wrong = random.Random(distractor_seed).sample(pool, 3)
        options = wrong[:letter_draw] + [right] + wrong[letter_draw:]
        return ATTRIBUTES[attr][2].format(name=stream.names[asked]), options

    def build(n: int) -> str:
        asked = question(n)  # makes the first n profiles
        return format_prompt("\n\n".join(p[0] for p in stream.profiles[:n]), *asked)

    def profile(j: int) -> str:
        stream.extend(j + 1)
        return ("\n\n" if j else "") + stream.profiles[j][0]

    head, _ = PROMPT.split("{document}")

    def tail(n: int) -> str:
        return format_prompt("", *question(n)).removeprefix(head)

    units = plan.fitter.units(profile, lambda n: head, tail)
    fit = plan.fitter.fit("longqa", build, units, target, lo=1, hi=MAX_PEOPLE, what="profiles")
    if fit.size == MAX_PEOPLE:
        raise EvalkitError(f"{target} tokens needs more profiles than the generator makes "
                           f"({MAX_PEOPLE}): ask for a shorter length")
    _, options = question(fit.size)
    asked = asked_at(fit.size)
    return Sample(
        id=sid, task="longqa", prompt=fit.prompt, targets=(LETTERS[letter_draw],),
        target_tokens=target, input_tokens=fit.tokens, template=plan.template,
        max_new_tokens=plan.max_new_tokens,
        meta={"options": options, "attribute": attr, "person": stream.names[asked],
              "num_profiles": fit.size, "depth": round(asked / max(1, fit.size - 1), 4),
              "source": "synthetic"},
    )


def _quality(params: LongQAParams, plan: Plan) -> Iterator[Sample]:
    assert params.quality is not None
    made = 0
    for qset in read_quality(params.quality):  # every row and question checked already
        for q in qset.questions:
            hard = q.difficult == 1
            if params.hard_only and not hard:
                continue
            made += 1
            options = list(q.options)
            prompt = format_prompt(qset.article, q.question, options)
            yield Sample(
                id=f"longqa/quality/{q.key}", task="longqa", prompt=prompt,
                targets=(LETTERS[q.gold_label - 1],), target_tokens=None,
                input_tokens=plan.measure(prompt), template=plan.template,
                max_new_tokens=plan.max_new_tokens,
                meta={"options": options, "bin": "quality", "subsets": ["hard"] if hard else [],
                      "difficult": int(hard), "article_id": qset.article_id,
                      "set_unique_id": qset.set_unique_id, "source": "quality"},
            )
    if not made:  # else a run of no samples, and a table of nothing
        raise EvalkitError(f"{params.quality}: hard_only, but no question has difficult == 1: "
                           "drop hard_only or use QuALITY's train or dev file")


def generate(params: LongQAParams, plan: Plan) -> Iterator[Sample]:
    if params.quality:
        yield from _quality(params, plan)
        return
    if not plan.lengths:
        raise EvalkitError("longqa needs lengths (or quality: FILE): pass --lengths, e.g. 2k,4k")
    for target in plan.lengths:
        for i in range(plan.samples):
            sid = f"longqa/{target}/{plan.seed}/{i}"
            if plan.wants(sid):
                yield _synthetic(sid, target, plan)


def score(sample: Sample, response: Response) -> Score:
    ok, parsed = choice_match(response.text, sample.targets[0], sample.meta["options"])
    return Score({"accuracy": float(ok)}, parsed)


TASK = register_task(TaskDef(
    name="longqa",
    description="answer a multiple-choice question about a long document (QuALITY or synthetic)",
    params_type=LongQAParams, default_template="chat", max_new_tokens=16,
    generate=generate, score=score, fitted=lambda p: not p.quality,
    kind="generate", metrics=(accuracy(
        "the letter read from the output is the gold option's: a leading letter, then "
        "'answer is X', 'option X' or '(X)', else the one option whose text the output "
        "holds; an output that lists several options chose none"),),
))
