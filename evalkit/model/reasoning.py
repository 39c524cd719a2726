"""Thinking models: the reasoning told apart from the answer, which alone is scored.

A model that reasons before it answers (Qwen3, DeepSeek-R1 distills, gpt-oss) writes its
reasoning between markers of its chat template, or a server hands it over apart
(vLLM's and llama.cpp's `reasoning_content`, `reasoning` in newer vLLM). A run's
`thinking:` settings (Thinking) say how to split it, how many tokens reasoning may take on
top of each task's answer budget, and which switches the chat template gets
(Qwen3's `enable_thinking`).

Splitting (`split_reasoning`), by `split`:
- "server": the reasoning the server handed over apart (Response.reasoning);
- "markers": the text up to the end marker is reasoning (from the start marker, which the
  template may already have written into the prompt, as DeepSeek-R1's does), the rest,
  its leading whitespace dropped, the answer; a reasoning that never reached its end
  marker is unfinished: no answer;
- "auto" (the default): the server's where it gave one, else the markers;
- "none": the output is the answer, whatever it holds.
The markers are `<think>`/`</think>` (Qwen3, DeepSeek-R1, QwQ and most open reasoners),
`harmony` (gpt-oss: the analysis channel, then the final one), or any pair given.

A record keeps the reasoning and its length in the model's tokens; a sample whose
reasoning used the whole budget without an answer is marked (`reasoning_exhausted`):
scored on its empty answer, counted apart in the report and by `evalkit run`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from evalkit.types import EvalkitError, Response, TokenCounter

Split = Literal["auto", "markers", "server", "none"]
MARKERS: dict[str, tuple[str, str]] = {
    "think": ("<think>", "</think>"),
    "harmony": ("<|channel|>analysis<|message|>", "<|channel|>final<|message|>"),
}


# what evalkit passes a chat template itself (evalkit.prompts.templates.make_template)
RENDER_ARGUMENTS = frozenset({"messages", "add_generation_prompt", "tools", "documents",
                              "bos_token", "eos_token"})


@dataclass(frozen=True)
class Thinking:
    """How a run treats a model's reasoning (a config's `thinking:`)."""

    split: Split = "auto"
    markers: tuple[str, str] = MARKERS["think"]
    budget: int = 0  # reasoning tokens allowed on top of each task's answer budget
    template_options: Mapping[str, Any] = field(default_factory=dict)  # chat template switches

    @staticmethod
    def of(raw: Mapping[str, Any] | None) -> Thinking | None:
        """The settings of a spec's `thinking` mapping (checked by the config), or None."""
        if raw is None:
            return None
        markers = raw.get("markers", "think")
        pair = MARKERS[markers] if isinstance(markers, str) else (markers[0], markers[1])
        return Thinking(split=raw.get("split", "auto"), markers=pair,
                        budget=int(raw.get("budget", 0)),
                        template_options=dict(raw.get("template_options") or {}))


def check_thinking(raw: Any, where: str) -> dict[str, Any]:
    """A config's `thinking:` mapping, checked: one EvalkitError line naming what is wrong."""
    if not isinstance(raw, dict):
        raise EvalkitError(f"{where}: write a mapping, e.g. thinking: {{budget: 4096}}")
    known = {"split", "markers", "budget", "template_options"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise EvalkitError(f"{where}.{unknown[0]}: unknown; known are {', '.join(sorted(known))}")
    split = raw.get("split", "auto")
    if split not in ("auto", "markers", "server", "none"):
        raise EvalkitError(f"{where}.split: {split!r}: use auto, markers, server or none")
    markers = raw.get("markers", "think")
    if isinstance(markers, str):
        if markers not in MARKERS:
            raise EvalkitError(f"{where}.markers: {markers!r}: use {' or '.join(MARKERS)}, or "
                               "a pair [start, end]")
    elif not (isinstance(markers, list) and len(markers) == 2
              and all(isinstance(m, str) and m for m in markers)):
        raise EvalkitError(f"{where}.markers: give a name ({', '.join(MARKERS)}) or a pair of "
                           "non-empty texts [start, end]")
    budget = raw.get("budget", 0)
    if isinstance(budget, bool) or not isinstance(budget, int) or not 0 <= budget <= 1 << 20:
        raise EvalkitError(f"{where}.budget: {budget!r}: give the reasoning tokens allowed on "
                           "top of each answer budget, a whole number from 0 to 1048576")
    options = raw.get("template_options", {})
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise EvalkitError(f"{where}.template_options: give a mapping of the chat template's "
                           "switches, e.g. {enable_thinking: true}")
    taken = sorted(set(options) & RENDER_ARGUMENTS)
    if taken:
        raise EvalkitError(f"{where}.template_options.{taken[0]}: evalkit sets it itself; give "
                           "only the template's own switches, e.g. enable_thinking")
    return dict(raw)


def split_reasoning(response: Response, thinking: Thinking, prompt: str,
                    counter: TokenCounter, budget: int | None = None) -> Response:
    """The response with its reasoning split off `text` (see the module's docstring);
    `prompt` is the rendered prompt (a template that opens the reasoning itself leaves a
    start marker in it that no end marker follows). `budget`: the request's max_new_tokens;
    a reasoning that never closed is `reasoning_exhausted` where the output reached it (or
    its length is not known), else it stopped early, and has no answer all the same. An
    errored response, or one with nothing to split, is returned as it is."""
    if response.error is not None or thinking.split == "none":
        return response
    if response.reasoning is not None and thinking.split in ("auto", "server"):
        # the answer after the reasoning, its leading whitespace dropped as below
        return _counted(response, response.reasoning, response.text.lstrip(),
                        bool(response.reasoning_exhausted), counter)
    if thinking.split == "server":
        return response
    start, end = thinking.markers
    text = response.text
    cut = text.find(end)
    if cut >= 0:
        reasoning = text[:cut]
        at = reasoning.find(start)
        reasoning = reasoning[at + len(start):] if at >= 0 else reasoning
        return _counted(response, reasoning.strip(), text[cut + len(end):].lstrip(), False,
                        counter)
    at = text.find(start)
    if at >= 0 or prompt.rfind(start) > prompt.rfind(end):  # opened, never closed: no answer
        reasoning = text[at + len(start):] if at >= 0 else text
        spent = (budget is None or response.output_tokens is None
                 or response.output_tokens >= budget)
        return _counted(response, reasoning.strip(), "", spent, counter)
    return response


def _counted(response: Response, reasoning: str, answer: str, exhausted: bool,
             counter: TokenCounter) -> Response:
    # the reasoning's own tokens (an encoder that adds a BOS adds it to "" too)
    tokens = len(counter.encode(reasoning)) - len(counter.encode("")) if reasoning else 0
    return dataclasses.replace(response, text=answer, reasoning=reasoning,
                               reasoning_tokens=tokens,
                               reasoning_exhausted=True if exhausted else None)
