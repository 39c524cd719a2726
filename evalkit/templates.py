"""Prompt templates: how a task's user text becomes the string the model reads.

- raw: the text as is (plain completion; the tokenizer adds BOS).
- mistral-instruct: `<s>[INST] {prompt} [/INST]` (Mistral-7B-Instruct-v0.1).
- mistrallite: `<|prompter|>{prompt}</s><|assistant|>` (MistralLite).
- chat: the model's own chat template (from the GGUF or tokenizer config), one user turn.

A template that writes the BOS text itself gets no second BOS from the token counter
(see tokenizers.py and each backend's counter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from evalkit.types import EvalkitError

# Literal texts of the fixed templates (jinja2). The user text is inserted unescaped.
FIXED_TEMPLATES: dict[str, str] = {
    "raw": "{{ prompt }}",
    "mistral-instruct": "<s>[INST] {{ prompt }} [/INST]",
    "mistrallite": "<|prompter|>{{ prompt }}</s><|assistant|>",
}
TEMPLATE_NAMES = ("auto", *FIXED_TEMPLATES, "chat")


@dataclass(frozen=True)
class Template:
    name: str
    render: Callable[[str], str]


def _env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        undefined=jinja2.StrictUndefined)

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def make_template(name: str, chat_template: str | None = None,
                  special_tokens: dict[str, str] | None = None) -> Template:
    """Resolve a template by name. `chat_template` is the model's own (jinja2 source), needed
    for "chat"; `special_tokens` gives bos_token/eos_token for it."""
    if name in FIXED_TEMPLATES:
        compiled = jinja2.Environment(autoescape=False).from_string(FIXED_TEMPLATES[name])
        return Template(name, lambda prompt: compiled.render(prompt=prompt))
    if name == "chat":
        if not chat_template:
            raise EvalkitError(
                "the model has no chat template of its own: pass --template raw, "
                "mistral-instruct or mistrallite"
            )
        try:
            chat = _env().from_string(chat_template)
        except jinja2.TemplateError as exc:
            raise EvalkitError(f"the model's chat template does not parse ({exc}): "
                               "pass --template raw or another fixed template") from None
        tokens: dict[str, Any] = {"bos_token": "", "eos_token": ""}
        tokens.update(special_tokens or {})

        def render(prompt: str) -> str:
            return chat.render(messages=[{"role": "user", "content": prompt}],
                               add_generation_prompt=True, **tokens)

        return Template("chat", render)
    raise EvalkitError(
        f"unknown template '{name}': use one of {', '.join(TEMPLATE_NAMES)}"
    )
