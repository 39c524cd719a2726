"""Prompt templates: how a task's user text becomes the string the model reads.

- raw: the text as is (plain completion; the tokenizer adds BOS).
- mistral-instruct: `<s>[INST] {prompt} [/INST]` (Mistral-7B-Instruct-v0.1).
- mistrallite: `<|prompter|>{prompt}</s><|assistant|>` (MistralLite).
- chat: the model's own chat template (from the GGUF or tokenizer config), one user turn.

A sample may be a conversation instead (Sample.messages: system, user and assistant turns);
`Template.render_sample` renders either kind, and `sent_of` says where its user text stands
in the result. A chat template renders a conversation as apply_chat_template does (the
messages list, add_generation_prompt). raw renders it as a plain transcript: each message
as "System: ", "User: " or "Assistant: " and its content, a blank line between messages,
then "\n\nAssistant:" for the model to go on from. mistral-instruct and mistrallite are
formats of one user text, and refuse a conversation.

A chat template is rendered exactly as transformers' `apply_chat_template` renders it (the
reference every model's template is written and tested against), without importing
transformers: the same sandboxed jinja2 environment, extensions, filters, globals and
variables (see `chat_environment` and `make_template`).

A template that writes the BOS text itself gets no second BOS from the token counter
(see evalkit.prompts.counters and each backend's counter).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from evalkit.types import EvalkitError, Message, Sample, TokenCounter

# Literal texts of the fixed templates (jinja2). The user text is inserted unescaped.
FIXED_TEMPLATES: dict[str, str] = {
    "raw": "{{ prompt }}",
    "mistral-instruct": "<s>[INST] {{ prompt }} [/INST]",
    "mistrallite": "<|prompter|>{{ prompt }}</s><|assistant|>",
}
TEMPLATE_NAMES = ("auto", *FIXED_TEMPLATES, "chat")
_USE_FIXED = "pass --template raw, mistral-instruct or mistrallite instead"
# What a chat template may raise while it renders: jinja2's own errors (raise_exception, an
# undefined value used in an operation, a sandbox refusal) and the Python errors of the
# operations it runs ('a' + none, a missing list index, int('x'), deep recursion).
_RENDER_ERRORS = (jinja2.TemplateError, TypeError, ValueError, LookupError, AttributeError,
                  ArithmeticError, RuntimeError)
# The variables apply_chat_template sets itself; a special token of the same name cannot
# shadow them.
_CHAT_VARIABLES = frozenset({"messages", "tools", "documents", "add_generation_prompt"})


_TRANSCRIPT_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def transcript(messages: Sequence[Message]) -> str:
    """The raw template's conversation: a plain transcript (see the module docstring)."""
    turns = [f"{_TRANSCRIPT_ROLES[m.role]}: {m.content}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


def _as_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


@dataclass(frozen=True)
class Template:
    """A named template: `render` makes the prompt of one user text, `render_messages` that
    of a conversation (None: the template takes one user text only)."""

    name: str
    render: Callable[[str], str]
    render_messages: Callable[[Sequence[Message]], str] | None = None

    def render_conversation(self, messages: Sequence[Message]) -> str:
        """The prompt of a conversation; one EvalkitError line where the template takes
        one user text only."""
        if self.render_messages is None:
            raise EvalkitError(f"template {self.name} renders one user text, not a "
                               "conversation: use template chat (the model's own) or raw")
        return self.render_messages(messages)

    def render_sample(self, sample: Sample) -> str:
        """The prompt of any sample, as the model reads it: its user text or its
        conversation rendered, then its answer prefix, if any (Sample.answer_prefix)."""
        if sample.messages is None:
            return self.render(sample.prompt) + (sample.answer_prefix or "")
        return self.render_conversation(sample.messages) + (sample.answer_prefix or "")


@runtime_checkable
class MessagesCounter(Protocol):
    """A token counter that applies the chat template itself, as a chat endpoint will (the
    openai backend with endpoint chat): it counts a conversation from its messages, and
    the answer prefix the assistant's turn starts with, if any."""

    def encode_messages(self, messages: Sequence[Message],
                        answer_prefix: str = "") -> list[int]: ...


class PromptMeasure:
    """Tokens of a prompt as the model reads it: `measure(text)` counts a user text
    rendered with `template`, `measure.conversation(messages)` a conversation rendered
    with it. Over a counter that applies the chat template itself (MessagesCounter), a
    conversation is counted from its messages, as the chat endpoint will read them (the
    template still renders it first, so that one it refuses is refused here too).

    A Plan's `measure` made with it measures both kinds (evalkit.tasks.fitting.measure_messages,
    Fitter.fit_messages); a plain function measures user texts only."""

    def __init__(self, template: Template, counter: TokenCounter,
                 answer_prefix: str = "") -> None:
        self.template = template
        self.counter = counter
        self.answer_prefix = answer_prefix

    def __call__(self, text: str) -> int:
        if self.answer_prefix and isinstance(self.counter, MessagesCounter):
            return self.conversation((Message("user", text),))
        return len(self.counter.encode(self.template.render(text) + self.answer_prefix))

    def conversation(self, messages: Sequence[Message]) -> int:
        rendered = self.template.render_conversation(messages)
        if isinstance(self.counter, MessagesCounter):
            return len(self.counter.encode_messages(messages, self.answer_prefix))
        return len(self.counter.encode(rendered + self.answer_prefix))

    def with_answer_prefix(self, answer_prefix: str) -> PromptMeasure:
        """The same measure of prompts that end with an answer prefix (Sample.answer_prefix):
        what a generator fitting such samples measures with."""
        return PromptMeasure(self.template, self.counter, answer_prefix)

    def sample(self, sample: Sample) -> int:
        """The tokens of any sample's prompt, its answer prefix included."""
        measure = self.with_answer_prefix(sample.answer_prefix or "")
        if sample.messages is None:
            return measure(sample.prompt)
        return measure.conversation(sample.messages)


class GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: transformers' AssistantTracker tag, which marks
    the assistant's part of a conversation for training masks. Rendering outputs the body as
    is; it is built as the same CallBlock so that scoping inside the block matches too."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_generation_support")
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _generation_support(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # transformers replaces jinja2's tojson, which escapes HTML characters and sorts keys.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(format: str) -> str:  # noqa: A002 - the name templates call it with
    return datetime.now().strftime(format)


def chat_environment() -> ImmutableSandboxedEnvironment:
    """The jinja2 environment of transformers' `_compile_jinja_template`: immutable sandbox,
    trim_blocks and lstrip_blocks, the `generation` tag and loop controls (break/continue),
    its own `tojson`, and the globals `raise_exception` and `strftime_now`. Undefined values
    are jinja2's default (printed as nothing, falsy, `is defined` false), not strict: models'
    templates test `{% if tools %}` and `message.tool_calls` without defining them."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _whose(model: str | None) -> str:
    return f"the chat template of model '{model}'" if model else "the model's chat template"


def make_template(name: str, chat_template: str | None = None,
                  special_tokens: Mapping[str, str] | None = None,
                  model: str | None = None,
                  options: Mapping[str, Any] | None = None) -> Template:
    """Resolve a template by name. `chat_template` is the model's own (jinja2 source), needed
    for "chat"; `special_tokens` maps bos_token, eos_token (and any other named special token)
    to their texts; `model` names the model in errors.

    A chat template renders one user turn with what apply_chat_template passes:
    `messages=[{"role": "user", "content": prompt}]`, `tools=None`, `documents=None`,
    `add_generation_prompt=True` and the special tokens; a conversation the same way, with
    its messages as `messages`. Unlike transformers, bos_token and
    eos_token default to "" so that a model without one still renders. A template that does
    not parse, or that fails while rendering, raises one EvalkitError line naming the model
    and the fixed templates to use instead. `options` are the chat template's own switches
    (Qwen3's enable_thinking), passed to it as apply_chat_template's extra arguments are."""
    if name in FIXED_TEMPLATES:
        compiled = jinja2.Environment(autoescape=False).from_string(FIXED_TEMPLATES[name])
        return Template(name, lambda prompt: compiled.render(prompt=prompt),
                        transcript if name == "raw" else None)
    if name == "chat":
        if not chat_template:
            who = f"model '{model}'" if model else "the model"
            raise EvalkitError(f"{who} has no chat template of its own: {_USE_FIXED}")
        try:
            chat = chat_environment().from_string(chat_template)
        except jinja2.TemplateSyntaxError as exc:
            raise EvalkitError(f"{_whose(model)} does not parse (line {exc.lineno}: "
                               f"{_one_line(exc)}): {_USE_FIXED}") from None
        except jinja2.TemplateError as exc:
            raise EvalkitError(f"{_whose(model)} does not parse ({_one_line(exc)}): "
                               f"{_USE_FIXED}") from None
        tokens: dict[str, Any] = {"bos_token": "", "eos_token": ""}
        tokens.update({k: v for k, v in (special_tokens or {}).items()
                       if k not in _CHAT_VARIABLES})
        tokens.update({k: v for k, v in (options or {}).items() if k not in _CHAT_VARIABLES})

        def render_chat(messages: list[dict[str, str]], what: str) -> str:
            try:
                return chat.render(messages=messages, tools=None, documents=None,
                                   add_generation_prompt=True, **tokens)
            except _RENDER_ERRORS as exc:
                raise EvalkitError(
                    f"{_whose(model)} fails to render {what} "
                    f"({type(exc).__name__}: {_one_line(exc)}): {_USE_FIXED}"
                ) from None

        def render(prompt: str) -> str:
            return render_chat([{"role": "user", "content": prompt}], "a user turn")

        def render_messages(messages: Sequence[Message]) -> str:
            return render_chat(_as_dicts(messages), f"a conversation of {len(messages)} "
                                                    "messages")

        return Template("chat", render, render_messages)
    raise EvalkitError(
        f"unknown template '{name}': use one of {', '.join(TEMPLATE_NAMES)}"
    )


def split_sent(rendered: str, prompt: str) -> dict[str, Any]:
    """Where the user text stands in the rendered prompt, as the record keeps it:
    {"before", "after"} with rendered == before + prompt + after. Where the template took
    only part of the user text (Gemma's and Llama 3's trim it), "user" is [start, end]: the
    rendered prompt holds prompt[start:end]. Where the user text is not found at all,
    "user" is [0, 0] and the whole rendered prompt is "before". The user text is looked for
    last: a chat template writes the user turn after its own text."""
    lead = len(prompt) - len(prompt.lstrip())
    for start, end in dict.fromkeys(((0, len(prompt)), (lead, lead + len(prompt.strip())))):
        user = prompt[start:end]
        i = rendered.rfind(user) if user else -1
        if i >= 0:
            parts: dict[str, Any] = {"before": rendered[:i], "after": rendered[i + len(user):]}
            return parts if user == prompt else {**parts, "user": [start, end]}
    return {"before": rendered, "after": "", "user": [0, 0]}


def sent_of(rendered: str, sample: Sample) -> dict[str, Any]:
    """The record's `sent` of any sample: where its user text (`sample.prompt`) stands in
    the rendered prompt (split_sent). For a conversation that is its last user message,
    which the template renders after the earlier turns: those are part of "before", so that
    rendered == before + prompt + after holds as for one user text, and a report shows the
    earlier turns as template text around the highlighted question."""
    return split_sent(rendered, sample.prompt)


def sent_user(prompt: str, sent: Mapping[str, Any]) -> str:
    """The part of the user text that a record's `sent` says the rendered prompt holds."""
    start, end = sent.get("user", (0, len(prompt)))
    return prompt[start:end]


def chat_template_source(value: str | None) -> tuple[str | None, str | None]:
    """A backend's option chat_template -> (fixed template name, jinja source): the name of
    a fixed template, or a jinja file, which is read."""
    if value is None:
        return None, None
    if value in FIXED_TEMPLATES:
        return value, None
    path = Path(value).expanduser()
    if not path.is_file():
        raise EvalkitError(f"chat_template: {value} is neither a file nor one of "
                           f"{', '.join(FIXED_TEMPLATES)}")
    return None, path.read_text(encoding="utf-8")
