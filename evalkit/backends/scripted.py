"""A scripted backend of our own, for unit tests of the runner and for dry runs.

It runs no model: it counts whitespace tokens and answers every prompt by a rule:
`reply: lookup` (reads a pass key, the asked line's number, or the values of the needles a
needle-in-a-haystack prompt asks for, back out of the prompt),
`reply: <any text>` (that text), with an optional `delay_s` per request and
`fail_every: N` (every N-th request returns a retryable error) to exercise the runner, and
`chat_template: FILE` (a jinja chat template: the model's own, for "chat" and "auto").

`loglikelihood: oracle` scores continuations by the same rule, to test the loglikelihood
path end to end without an engine: a continuation that is the answer `reply: lookup`
would give (the pass key, the line's number) gets log-probability -0.1 per token and is
greedy; any other gets -5 per token and is not.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from evalkit.backends import check_options
from evalkit.prompts.counters import WhitespaceCounter
from evalkit.prompts.templates import chat_template_source
from evalkit.types import (
    Capabilities,
    EvalkitError,
    Interrupted,
    Request,
    Response,
    TokenCounter,
)

OPTIONS: dict[str, type] = {"reply": str, "delay_s": float, "fail_every": int,
                            "context_window": int, "loglikelihood": str, "chat_template": str}
_KEY_STATED = re.compile(r"The pass key is (\d+)")
_ASKED_LINE = re.compile(r"in line (.+?)\? I need the number")
# a needle prompt ends with its answer prefix, which names the keys asked for
_ASKED_KEYS = re.compile(
    r"special magic \w+ for ([^?\n]+) mentioned in the provided text (?:is|are)$")


class ScriptedBackend:
    name = "scripted"
    max_batch_size = 8

    def __init__(self, model: str, options: Mapping[str, Any]) -> None:
        check_options(self.name, options, OPTIONS)
        if options.get("loglikelihood", "oracle") != "oracle":
            raise EvalkitError("backend scripted: option loglikelihood takes only 'oracle'")
        self.model = model
        self.options = dict(options)
        self._calls = 0
        fixed, self._chat_template = chat_template_source(options.get("chat_template"))
        if fixed is not None:
            raise EvalkitError(f"backend scripted: chat_template {fixed} is a fixed template: "
                               f"set template: {fixed} instead (chat_template takes a jinja "
                               "file)")

    def capabilities(self) -> Capabilities:
        return Capabilities(generate=True, loglikelihood="loglikelihood" in self.options,
                            chat=False)

    def tokenizer(self) -> TokenCounter:
        return WhitespaceCounter()

    def context_window(self) -> int | None:
        return int(self.options.get("context_window", 1_000_000))

    def chat_template(self) -> str | None:
        return self._chat_template

    def special_tokens(self) -> Mapping[str, str]:
        return {}

    def _answer(self, prompt: str) -> str:
        rule = self.options.get("reply", "lookup")
        if rule != "lookup":
            return str(rule)
        keys = _ASKED_KEYS.search(prompt)
        if keys:
            asked_keys = re.split(r", and |, ", keys.group(1))
            values = [v for k in asked_keys
                      for v in re.findall(f"for {re.escape(k)} is: (\\S+)\\.", prompt)]
            return f" {', '.join(values)}." if values else " I do not know."
        asked = _ASKED_LINE.search(prompt)
        if asked:
            line = re.search(f"line {re.escape(asked.group(1))}: REGISTER_CONTENT is <(\\d+)>",
                             prompt)
            return f" The number is {line.group(1)}." if line else " I do not know."
        key = _KEY_STATED.search(prompt)
        return f" {key.group(1)}." if key else " I do not know."

    def _fails(self) -> bool:
        """Counts a call; whether it is one that fail_every makes fail."""
        self._calls += 1
        time.sleep(float(self.options.get("delay_s", 0.0)))
        every = int(self.options.get("fail_every", 0))
        return bool(every) and self._calls % every == 0

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        out: list[Response] = []
        try:
            for req in requests:
                if self._fails():
                    out.append(Response(error="scripted failure", retryable=True))
                    continue
                text = self._answer(req.prompt)
                out.append(Response(text=text, input_tokens=len(req.prompt.split()) + 1,
                                    output_tokens=len(text.split()),
                                    latency_s=float(self.options.get("delay_s", 0.0))))
        except KeyboardInterrupt as exc:  # as an engine that answers one at a time would
            raise Interrupted.of(exc, dict(enumerate(out))) from None
        return out

    def loglikelihood(self, requests: Sequence[Request]) -> list[Response]:
        out = []
        for req in requests:
            if req.context_tokens is None or req.continuation_tokens is None:
                raise EvalkitError("scripted: loglikelihood requests come through "
                                   "evalkit.model.Model, which fills in their tokens")
            if self._fails():
                out.append(Response(error="scripted failure", retryable=True))
                continue
            n = len(req.continuation_tokens)
            want = self._answer(req.prompt).strip().rstrip(".")
            right = bool(req.continuation.strip()) and req.continuation.strip() == want
            out.append(Response(logprob=(-0.1 if right else -5.0) * n, is_greedy=right,
                                input_tokens=len(req.context_tokens) + n, output_tokens=0))
        return out

    def fingerprint(self) -> str:
        template = self._chat_template
        return f"scripted:{self.options.get('reply', 'lookup')}" + (
            f":{hashlib.sha256(template.encode()).hexdigest()[:16]}" if template else "")

    def describe(self) -> Mapping[str, Any]:
        return {"backend": self.name, "model": self.model, "options": self.options}
