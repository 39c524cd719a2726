"""Token counting as the model sees it: Mistral v1 offline, templates, no doubled BOS."""

from __future__ import annotations

import pytest
from conftest import reference_data
from servers import require

from evalkit.prompts.counters import get_counter
from evalkit.prompts.templates import make_template
from evalkit.runner.config import build_spec
from evalkit.tasks import Plan, get_task, make_params
from evalkit.types import EvalkitError


@pytest.fixture(scope="module")
def mistral():
    require("mistral_common", "'evalkit[mistral]'")
    require("sentencepiece", "'evalkit[mistral]'")
    return get_counter("mistral-v1")


def test_mistral_special_tokens_are_parsed_once(mistral) -> None:
    plain = mistral.encode("Hello world")
    assert plain[0] == 1 and plain.count(1) == 1
    inst = mistral.encode(make_template("mistral-instruct").render("Hello world"))
    assert inst[0] == 1 and inst[1] != 1 and inst.count(1) == 1
    lite = mistral.encode(make_template("mistrallite").render("Hello world"))
    assert lite[:2] == [1, 32002] and lite[-2:] == [2, 32001]
    # MistralLite's added tokens strip the whitespace around them
    assert mistral.encode("<|prompter|> Hello world</s> <|assistant|>") == lite


def _passkey_plan(counter, template_name: str, lengths: tuple[int, ...], samples: int) -> Plan:
    template = make_template(template_name)
    return Plan(task="passkey", lengths=lengths, samples=samples, seed=0, template=template_name,
                max_new_tokens=10, measure=lambda t: len(counter.encode(template.render(t))))


def test_passkey_within_one_percent_with_mistral_v1_and_mistrallite(mistral) -> None:
    task = get_task("passkey")
    plan = _passkey_plan(mistral, "mistrallite", (1024, 4096, 16384), 5)
    samples = list(task.generate(make_params(task, {}), plan))
    assert len(samples) == 15
    template = make_template("mistrallite")
    for s in samples:
        assert abs(s.input_tokens - s.target_tokens) <= 0.01 * s.target_tokens
        assert s.input_tokens == len(mistral.encode(template.render(s.prompt)))


@pytest.mark.parametrize("task_name", ["lines", "topics", "longqa"])
def test_other_tasks_fit_with_mistral_v1(mistral, task_name: str) -> None:
    task = get_task(task_name)
    template = make_template("mistral-instruct")
    plan = Plan(task=task_name, lengths=(4096,), samples=2, seed=0, template="mistral-instruct",
                max_new_tokens=task.max_new_tokens,
                measure=lambda t: len(mistral.encode(template.render(t))))
    for s in task.generate(make_params(task, {}), plan):
        assert s.input_tokens <= 4096
        assert 4096 - s.input_tokens <= (700 if task_name == "topics" else 60)


def test_chat_template_renders_one_user_turn() -> None:
    tpl = make_template("chat", "{{ bos_token }}{% for m in messages %}<{{ m.role }}>"
                        "{{ m.content }}{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}",
                        {"bos_token": "<s>"})
    assert tpl.render("hi") == "<s><user>hi<bot>"
    with pytest.raises(EvalkitError, match="no chat template"):
        make_template("chat", None)


def test_unknown_tokenizer_is_named() -> None:
    with pytest.raises(EvalkitError, match="unknown tokenizer 'gpt9'"):
        get_counter("gpt9")


def test_longeval_published_rows_counted_with_mistral_v1(mistral) -> None:
    """The imported prompts measure near the published token_size (LongChat's LLaMA
    tokenizer, a sibling SentencePiece model of the same size)."""
    from evalkit.tasks.importers import read_longeval_lines

    template = make_template("raw")
    plan = Plan(task="lines", lengths=(), samples=1, seed=0, template="raw", max_new_tokens=100,
                measure=lambda t: len(mistral.encode(template.render(t))))
    rows = list(read_longeval_lines(str(reference_data("longeval", "lines_200_first3.jsonl")),
                                    plan))
    for r in rows:
        assert abs(r.input_tokens - r.meta["published_tokens"]) <= 0.15 * r.meta["published_tokens"]


def test_spec_accepts_mistral_tokenizer() -> None:
    assert build_spec({"tokenizer": "mistral-v1"}).tokenizer == "mistral-v1"
