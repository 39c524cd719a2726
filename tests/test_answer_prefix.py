"""A sample may start the model's answer itself (Sample.answer_prefix: RULER's answer
prefix, lm-eval's gen_prefix): written after the rendered prompt, past the chat template's
assistant start, counted in the prompt's length, kept in the record (omitted from the JSON
where there is none, so every other sample is written as before), in the cache key only
when set, and sent to a chat endpoint as the start of the assistant's turn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakeopenai import FakeOpenAI
from test_conversations import (
    CONVERSATION,
    SMOLLM2_RENDERED,
    ChatServer,
    _chat,
    chat_endpoint_model,
)

from evalkit.prompts.counters import WhitespaceCounter
from evalkit.prompts.templates import PromptMeasure, make_template, sent_of
from evalkit.tasks.fitting import with_answer_prefix
from evalkit.types import EvalkitError, Request, Sample, sample_from_json, to_jsonable

PREFIX = " The special magic number for tidy-plant mentioned in the provided text is"


def _sample(**kw: object) -> Sample:
    fields: dict[str, object] = {
        "id": "niah_single_1/4096/0/0", "task": "niah_single_1",
        "prompt": "A special magic number is hidden within the following text.\nWhat is it?",
        "targets": ("1234567",), "target_tokens": 4096, "input_tokens": 30,
        "template": "chat", "max_new_tokens": 128, "answer_prefix": PREFIX}
    return Sample(**{**fields, **kw})  # type: ignore[arg-type]


def test_the_prefix_follows_the_rendered_prompt_past_the_assistant_start() -> None:
    chat = _chat()
    sample = _sample()
    rendered = chat.render_sample(sample)
    assert rendered == chat.render(sample.prompt) + PREFIX
    assert chat.render(sample.prompt).endswith("<|im_start|>assistant\n")
    conversation = _sample(messages=CONVERSATION, prompt=CONVERSATION[-1].content)
    assert chat.render_sample(conversation) == SMOLLM2_RENDERED + PREFIX
    assert make_template("raw").render_sample(sample) == sample.prompt + PREFIX
    # the record's sent: the prefix is text after the user text, as the model read it
    sent = sent_of(rendered, sample)
    assert sent["before"] + sample.prompt + sent["after"] == rendered
    assert sent["after"].endswith(PREFIX)


def test_the_prefix_is_counted_in_the_prompts_length() -> None:
    counter = WhitespaceCounter()
    measure = PromptMeasure(make_template("raw"), counter)
    sample = _sample(template="raw")
    assert measure.sample(sample) == len(counter.encode(sample.prompt + PREFIX))
    assert measure.sample(sample) == measure(sample.prompt) + len(PREFIX.split())
    prefixed = with_answer_prefix(measure, PREFIX)
    assert prefixed(sample.prompt) == measure.sample(sample)
    assert prefixed.conversation(CONVERSATION) == len(counter.encode(
        make_template("raw").render_conversation(CONVERSATION) + PREFIX))
    with pytest.raises(EvalkitError, match="answer prefix needs a plan whose measure is"):
        with_answer_prefix(lambda text: len(text), PREFIX)


def test_a_sample_without_a_prefix_writes_the_json_it_always_did() -> None:
    plain = _sample(answer_prefix=None)
    assert "answer_prefix" not in to_jsonable(plain)
    with_prefix = to_jsonable(_sample())
    assert with_prefix["answer_prefix"] == PREFIX
    assert sample_from_json(json.loads(json.dumps(with_prefix))) == _sample()
    assert sample_from_json(to_jsonable(plain)) == plain


def test_the_cache_key_holds_the_prefix_only_when_set() -> None:
    def key(prefix: str | None) -> str:
        return Request(sample_id="s", kind="generate", prompt="Hello world", max_new_tokens=10,
                       seed=3, stop=("\n",), answer_prefix=prefix).cache_key("fp")

    # the key evalkit gave this request before answer prefixes (pinned)
    assert key(None) == "442296424f4f9924a890485134a6e1ecd553ce373595c9e475c7289f0a1b410b"
    assert len({key(None), key(""), key(" Answer:")}) == 3


def test_a_chat_endpoint_is_sent_the_prefix_as_the_assistants_turn(tmp_path: Path) -> None:
    with ChatServer() as server:
        model = chat_endpoint_model(server, tmp_path)
        raw = make_template("raw")  # evalkit renders nothing for a chat endpoint
        measure = PromptMeasure(raw, model.backend.tokenizer())
        sample = _sample(template="raw")
        # counted as the server renders it: the user turn, the assistant start, the prefix
        assert measure.sample(sample) == len(FakeOpenAI.token_ids(
            _chat().render(sample.prompt) + PREFIX))
        rendered = raw.render_sample(sample)
        req = Request(sample_id=sample.id, kind="generate", prompt=rendered,
                      max_new_tokens=8, answer_prefix=sample.answer_prefix)
        model.generate([req])
        (body,) = server.chats
        assert body["messages"] == [{"role": "user", "content": sample.prompt},
                                    {"role": "assistant", "content": PREFIX}]
        assert body["continue_final_message"] is True
        assert body["add_generation_prompt"] is False
