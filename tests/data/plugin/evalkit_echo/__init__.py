"""An evalkit plugin: the task `echo` (repeat a word hidden after filler, fitted to token
lengths) and the backend `echo` (a stand-in model that repeats the word it is asked for)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evalkit.prompts.counters import WhitespaceCounter
from evalkit.tasks.base import Plan, Score, TaskDef, accuracy
from evalkit.types import Capabilities, Request, Response, Sample, TokenCounter, Unsupported


@dataclass(frozen=True)
class EchoParams:
    word: str = field(default="green", metadata={"help": "the word to repeat (and a number)"})


def _prompt(word: str, filler: int) -> str:
    return "filler " * filler + f"Repeat the word {word}."


def generate(params: EchoParams, plan: Plan) -> Iterator[Sample]:
    for target in plan.lengths:
        for i in range(plan.samples):
            sid = f"echo/{target}/{plan.seed}/{i}"
            if not plan.wants(sid):
                continue
            word = f"{params.word}{i}"
            lo, hi = 0, target  # the most filler that fits: a bounded binary search
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if plan.measure(_prompt(word, mid)) <= target else (lo,
                                                                                       mid - 1)
            prompt = _prompt(word, lo)
            yield Sample(id=sid, task="echo", prompt=prompt, targets=(word,),
                         target_tokens=target, input_tokens=plan.measure(prompt),
                         template=plan.template, max_new_tokens=plan.max_new_tokens)


def score(sample: Sample, response: Response) -> Score:
    return Score({"accuracy": float(sample.targets[0] in response.text)},
                 response.text.strip()[:50] or None)


TASK = TaskDef(name="echo", description="repeat a word hidden after filler (a plugin's task)",
               params_type=EchoParams, default_template="raw", max_new_tokens=8,
               generate=generate, score=score, fitted=lambda p: True, kind="generate",
               metrics=(accuracy("the word asked for appears in the answer"),))


class EchoBackend:
    name = "echo"
    max_batch_size = 4

    def __init__(self, model: str, options: Mapping[str, Any]) -> None:
        self.model = model

    def capabilities(self) -> Capabilities:
        return Capabilities(generate=True, loglikelihood=False, chat=False)

    def tokenizer(self) -> TokenCounter:
        return WhitespaceCounter()

    def context_window(self) -> int | None:
        return 100_000

    def chat_template(self) -> str | None:
        return None

    def special_tokens(self) -> Mapping[str, str]:
        return {}

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        found = [re.search(r"Repeat the word (\S+)\.", r.prompt) for r in requests]
        return [Response(text=f" {m.group(1)}" if m else " ?") for m in found]

    def loglikelihood(self, requests: Sequence[Request]) -> list[Response]:
        raise Unsupported("the echo backend does not score loglikelihood")

    def fingerprint(self) -> str:
        return "echo:1"

    def describe(self) -> Mapping[str, Any]:
        return {"backend": self.name, "model": self.model}
