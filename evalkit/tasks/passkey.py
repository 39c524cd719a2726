"""Passkey retrieval (landmark attention, llama/run_test.py), fitted to exact token lengths.

Faithful: the filler is cut to n characters, the needle goes after a prefix of uniform
random length, k = randint(1, 50000), plain completion, 10 new tokens, scored by the first
integer of the output. Added (named options): `depths` places the needle at fixed fractions
of the haystack; `key_digits` draws keys of that many digits (InfiniteBench uses 5).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

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
from evalkit.tasks.fitting import Curve, PrefixCounts
from evalkit.tasks.parsers import first_int_match
from evalkit.types import EvalkitError, MetricDef, Response, Sample

TASK_DESCRIPTION = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize them. I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {k}. Remember it. {k} is the pass key."
QUESTION = "What is the pass key? The pass key is"


@dataclass(frozen=True)
class PasskeyParams:
    depths: list[float] | None = field(
        default=None,
        metadata={"help": "needle depths in [0, 1] (0 = start); none: uniform random, as landmark"})
    key_digits: int | None = field(
        default=None, metadata={"help": "draw keys of this many digits; none: randint(1, 50000)"})

    def __post_init__(self) -> None:
        if self.depths is not None and not all(0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"depths must lie in [0, 1], got {self.depths}")
        if self.key_digits is not None and not 1 <= self.key_digits <= 18:
            raise ValueError(f"key_digits must be 1..18, got {self.key_digits}")


def filler(n_chars: int) -> str:
    """The first n characters of the repeated filler (landmark's garbage_inf[:n])."""
    reps = n_chars // (len(FILLER) + 1) + 1
    return " ".join([FILLER] * reps)[:n_chars]


def build_prompt(n_garbage: int, depth: float, key: int) -> str:
    prefix = round(n_garbage * depth)
    return "\n".join([TASK_DESCRIPTION, filler(prefix), NEEDLE.format(k=key),
                      filler(n_garbage - prefix), QUESTION])


def _filler_counts(plan: Plan) -> tuple[dict[int, int], PrefixCounts]:
    """For each length, the most filler characters a search may try (1.5 times the
    filler's characters per token, with room), and the estimate of every filler prefix up
    to the longest."""
    probe = filler(4000)
    chars_per_token = len(probe) / max(1, plan.measure(probe))
    bounds = {t: int(t * chars_per_token * 1.5) + 256 for t in plan.lengths}
    return bounds, PrefixCounts(plan.fitter.estimator, filler(max(bounds.values())))


def generate(params: PasskeyParams, plan: Plan) -> Iterator[Sample]:
    if not plan.lengths:
        raise EvalkitError("passkey needs lengths: pass --lengths, e.g. 1k,4k,16k")
    depths: list[float | None] = list(params.depths) if params.depths is not None else [None]
    bounds, fillers = _filler_counts(plan)
    for target in plan.lengths:
        for depth in depths:
            for i in range(plan.samples):
                index = f"{i}" if depth is None else f"d{round(depth * 100):03d}-{i}"
                sid = f"passkey/{target}/{plan.seed}/{index}"
                if not plan.wants(sid):
                    continue
                rng = sample_rng(sid)
                if params.key_digits is None:
                    key = rng.randint(1, 50000)
                else:
                    key = rng.randint(10 ** (params.key_digits - 1), 10 ** params.key_digits - 1)
                where = rng.random() if depth is None else depth
                fixed = plan.fitter.estimator(build_prompt(0, where, key))

                def estimate(n: int, where: float = where, fixed: int = fixed,
                             needle: str = "\n" + NEEDLE.format(k=key)) -> int:
                    prefix = round(n * where)
                    return (fixed + fillers(prefix, before=needle)
                            + fillers(n - prefix, before="\n" + QUESTION))

                fit = plan.fitter.fit(
                    "passkey", functools.partial(build_prompt, depth=where, key=key),
                    Curve(estimate), target, lo=0, hi=bounds[target], what="filler characters")
                yield Sample(
                    id=sid, task="passkey", prompt=fit.prompt, targets=(str(key),),
                    target_tokens=target, input_tokens=fit.tokens, template=plan.template,
                    max_new_tokens=plan.max_new_tokens,
                    meta={"depth": round(where, 4), "depth_swept": depth is not None,
                          "n_garbage_chars": fit.size, "key": key},
                )


KEY_ACCURACY = accuracy("the first integer in the output equals the pass key")


def marks(sample: Sample) -> list[tuple[str, str]]:
    """The needle (the key's sentence) and the question, for the report."""
    key = sample.meta.get("key")
    name = sample.meta.get("name")
    if name is not None:  # several named keys in one haystack: this sample's
        return found_marks(sample, [SHARED_NEEDLE.format(name=name, k=key)],
                           SHARED_QUESTION.format(name=name).split("?")[0] + "?")
    return found_marks(sample, [NEEDLE.format(k=key)], QUESTION.split("?")[0] + "?")


def score(sample: Sample, response: Response) -> Score:
    ok, parsed = first_int_match(response.text, sample.targets[0])
    return Score({"accuracy": float(ok)}, parsed)


def generate_ll(params: PasskeyParams, plan: Plan) -> Iterator[Sample]:
    """The passkey samples themselves (the same prompts, keys and depths: each sample's
    random draws are seeded by its passkey id), with the key as the continuation to score."""
    def ll_id(sample_id: str) -> str:
        return "passkey_ll/" + sample_id.removeprefix("passkey/")

    def wants(sample_id: str, haystack: str | None = None) -> bool:  # asked by its own id
        return plan.wants(ll_id(sample_id), haystack)

    for s in generate(params, dataclasses.replace(plan, select=wants)):
        yield dataclasses.replace(s, id=ll_id(s.id), task="passkey_ll",
                                  targets=(f" {s.targets[0]}",))


def score_ll(sample: Sample, response: Response) -> Score:
    """accuracy: the key is what greedy decoding would write; logprob: log P(key | prompt)
    in nats, a graded measure of retrieval that a base model's wrong guesses still move."""
    scores = {"accuracy": float(bool(response.is_greedy))}
    if response.logprob is not None:
        scores["logprob"] = response.logprob
    return Score(scores, sample.targets[0].strip() if response.is_greedy else None)


TASK = register_task(TaskDef(
    name="passkey",
    description="find a pass key hidden in repeated filler text (landmark attention)",
    params_type=PasskeyParams, default_template="raw", max_new_tokens=10,
    generate=generate, score=score, fitted=lambda p: True,
    kind="generate", metrics=(KEY_ACCURACY,),
    axes=("depth",), marks=marks,
))

TASK_LL = register_task(TaskDef(
    name="passkey_ll",
    description="passkey scored by loglikelihood: is the key the greedy continuation, and "
                "its log-probability (no generation; for base models)",
    params_type=PasskeyParams, default_template="raw", max_new_tokens=8,
    generate=generate_ll, score=score_ll, fitted=lambda p: True,
    kind="loglikelihood", metrics=(
        accuracy("the pass key is what greedy decoding writes after the prompt (scored from "
                 "the model's token probabilities; nothing is generated)"),
        MetricDef("logprob", "continuous",
                  description="log P(pass key | prompt) in nats: higher is better")),
    axes=("depth",), marks=marks,
))


# ---- shared context: several keys in one haystack, one question each ---------------------

SHARED_NEEDLE = "The pass key of {name} is {k}. Remember it. {k} is the pass key of {name}."
SHARED_QUESTION = "What is the pass key of {name}? The pass key of {name} is"


@dataclass(frozen=True)
class SharedPasskeyParams:
    questions: int = field(
        default=10, metadata={"help": "keys hidden in each haystack, each asked once (a sample)"})

    def __post_init__(self) -> None:
        if not 1 <= self.questions <= 100:
            raise ValueError(f"questions must lie in 1..100, got {self.questions}")


def build_shared(n_garbage: int, question: str, needles: list[tuple[float, str]]) -> str:
    """The landmark layout with several needles: filler cut at each needle's depth."""
    parts, done = [TASK_DESCRIPTION], 0
    for depth, needle in needles:
        at = round(n_garbage * depth)
        parts += [filler(at - done), needle]
        done = at
    return "\n".join([*parts, filler(n_garbage - done), question])


def _same(questions: list[str], n: int) -> list[str]:
    return questions  # the keys are asked whatever the haystack's size


def generate_shared(params: SharedPasskeyParams, plan: Plan) -> Iterator[Sample]:
    if not plan.lengths:
        raise EvalkitError("passkey_shared needs lengths: pass --lengths, e.g. 4k,8k")
    names = read_words("first_names")
    if params.questions > len(names):
        raise EvalkitError(f"passkey_shared: at most {len(names)} questions")
    bounds, fillers = _filler_counts(plan)
    for target in plan.lengths:
        for h in range(plan.samples):
            group = f"passkey_shared/{target}/{plan.seed}/{h}"
            if not all([plan.wants(f"{group}/q{j}", group) for j in range(params.questions)]):
                continue
            rng = sample_rng(group)
            who = rng.sample(names, params.questions)
            keys = [rng.randint(1, 50000) for _ in who]
            depths = [rng.random() for _ in who]
            needles = sorted((d, SHARED_NEEDLE.format(name=w, k=k))
                             for d, w, k in zip(depths, who, keys, strict=True))
            asked = [SHARED_QUESTION.format(name=w) for w in who]
            fixed = plan.fitter.estimator(
                build_shared(0, max(asked, key=plan.fitter.estimator), needles))

            def estimate(n: int, needles: list[tuple[float, str]] = needles,
                         fixed: int = fixed, question: str = "\n" + asked[0]) -> int:
                cuts = [0, *(round(n * d) for d, _ in needles), n]
                nexts = ["\n" + needle for _, needle in needles] + [question]
                return fixed + sum(fillers(b - a, before=nxt) for (a, b), nxt
                                   in zip(itertools.pairwise(cuts), nexts, strict=True))

            n, prompts, tokens = plan.fitter.fit_shared(
                "passkey_shared", functools.partial(build_shared, needles=needles),
                functools.partial(_same, asked), Curve(estimate), target, lo=0, hi=bounds[target],
                what="filler characters")
            for j, (prompt, tok) in enumerate(zip(prompts, tokens, strict=True)):
                yield Sample(
                    id=f"{group}/q{j}", task="passkey_shared", prompt=prompt,
                    targets=(str(keys[j]),), target_tokens=target, input_tokens=tok,
                    template=plan.template, max_new_tokens=plan.max_new_tokens,
                    meta={"haystack": group, "depth": round(depths[j], 4), "key": keys[j],
                          "n_garbage_chars": n, "name": who[j]})


TASK_SHARED = register_task(TaskDef(
    name="passkey_shared",
    description="passkey with several named keys in one haystack, one question each "
                "(shared context; intervals clustered by haystack)",
    params_type=SharedPasskeyParams, default_template="raw", max_new_tokens=10,
    generate=generate_shared, score=score, fitted=lambda p: True,
    kind="generate", metrics=(KEY_ACCURACY,),
    axes=("depth",), marks=marks,
))
