"""A scripted backend of our own, for unit tests of the runner and for dry runs.

It runs no model: it counts whitespace tokens and answers every prompt by a rule:
`reply: lookup` (reads a pass key, or the asked line's number, back out of the prompt),
`reply: <any text>` (that text), with an optional `delay_s` per request and
`fail_every: N` (every N-th request returns an error) to exercise the runner.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from evalkit.backends import check_options, register_backend
from evalkit.tokenizers import WhitespaceCounter
from evalkit.types import Backend, Request, Response, TokenCounter, Unsupported

OPTIONS: dict[str, type] = {"reply": str, "delay_s": float, "fail_every": int,
                            "context_window": int}
_PASSKEY = re.compile(r"The pass key is (\d+)")
_ASKED_LINE = re.compile(r"in line (.+?)\? I need the number")


class ScriptedBackend:
    name = "scripted"
    max_batch_size = 8

    def __init__(self, model: str, options: Mapping[str, Any]) -> None:
        check_options(self.name, options, OPTIONS)
        self.model = model
        self.options = dict(options)
        self._calls = 0

    def tokenizer(self) -> TokenCounter:
        return WhitespaceCounter()

    def context_window(self) -> int | None:
        return int(self.options.get("context_window", 1_000_000))

    def chat_template(self) -> str | None:
        return None

    def special_tokens(self) -> Mapping[str, str]:
        return {}

    def _answer(self, prompt: str) -> str:
        rule = self.options.get("reply", "lookup")
        if rule != "lookup":
            return str(rule)
        asked = _ASKED_LINE.search(prompt)
        if asked:
            line = re.search(f"line {re.escape(asked.group(1))}: REGISTER_CONTENT is <(\\d+)>",
                             prompt)
            return f" The number is {line.group(1)}." if line else " I do not know."
        key = _PASSKEY.search(prompt)
        return f" {key.group(1)}." if key else " I do not know."

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        out = []
        for req in requests:
            self._calls += 1
            time.sleep(float(self.options.get("delay_s", 0.0)))
            every = int(self.options.get("fail_every", 0))
            if every and self._calls % every == 0:
                out.append(Response(error="scripted failure"))
                continue
            text = self._answer(req.prompt)
            out.append(Response(text=text, input_tokens=len(req.prompt.split()) + 1,
                                output_tokens=len(text.split()),
                                latency_s=float(self.options.get("delay_s", 0.0))))
        return out

    def loglikelihood(self, requests: Sequence[Request]) -> list[Response]:
        raise Unsupported("the scripted backend does not score loglikelihood")

    def fingerprint(self) -> str:
        return f"scripted:{self.options.get('reply', 'lookup')}"

    def describe(self) -> Mapping[str, Any]:
        return {"backend": self.name, "model": self.model, "options": self.options}


@register_backend("scripted")
def _make(model: str, options: Mapping[str, Any]) -> Backend:
    return ScriptedBackend(model, options)
