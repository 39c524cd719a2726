"""A sample may be a conversation (Sample.messages): rendered by the chat template as the
model reads it, fitted to lengths on that rendering, written to and read from samples.jsonl
beside one-text samples (whose JSON and cache keys stay as they were), shown by the report
with its last user message singled out, and sent to a chat endpoint as its messages."""

from __future__ import annotations

import hashlib
import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from fakeopenai import FakeOpenAI

from evalkit.prompts.counters import WhitespaceCounter
from evalkit.prompts.templates import PromptMeasure, make_template, sent_of, sent_user, transcript
from evalkit.results import store
from evalkit.tasks.base import Plan
from evalkit.tasks.fitting import Units, measure_messages
from evalkit.types import (
    EvalkitError,
    Message,
    Record,
    Request,
    Response,
    Sample,
    last_user_text,
    record_from_json,
    sample_from_json,
    to_jsonable,
)

SMOLLM2 = (Path(__file__).parent / "data" / "chat_templates" / "smollm2.jinja").read_text(
    encoding="utf-8")
SMOLLM2_TOKENS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                  "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"}

CONVERSATION = (
    Message("user", "Write a poem about tapirs."),
    Message("assistant", "Tapirs wander, snouts held low."),
    Message("user", "Write a poem about ice."),
    Message("assistant", "Ice keeps the winter's word."),
    Message("user", "Repeat the first poem about tapirs."),
)
# CONVERSATION as SmolLM2-135M-Instruct reads it (its template writes its default system
# turn first); checked against transformers below where it is installed
SMOLLM2_RENDERED = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n"
    "<|im_start|>user\nWrite a poem about tapirs.<|im_end|>\n"
    "<|im_start|>assistant\nTapirs wander, snouts held low.<|im_end|>\n"
    "<|im_start|>user\nWrite a poem about ice.<|im_end|>\n"
    "<|im_start|>assistant\nIce keeps the winter's word.<|im_end|>\n"
    "<|im_start|>user\nRepeat the first poem about tapirs.<|im_end|>\n"
    "<|im_start|>assistant\n")

# a record as evalkit wrote them before conversations (and still writes one-text ones)
OLD_LINE = (
    '{"schema_version": 2, "sample": {"id": "passkey/256/0/0", "task": "passkey", "prompt": '
    '"Find it. The pass key is 42. What is the pass key?", "targets": ["42"], '
    '"target_tokens": 256, "input_tokens": 251, "template": "raw", "max_new_tokens": 10, '
    '"meta": {"depth": 0.5, "key": 42}}, "response": {"text": " 42.", "logprob": null, '
    '"is_greedy": null, "input_tokens": 251, "output_tokens": 2, "latency_s": 0.25, '
    '"error": null, "retryable": false, "retry_after_s": null, "cached": false, '
    '"truncated": false}, "scores": {"accuracy": 1.0}, "model": "m", "prompt_sha256": "'
    + "ab" * 32 + '", "cache_key": "' + "cd" * 32 + '", "parsed": "42", "sent": '
    '{"before": "", "after": ""}}\n')


def _chat() -> Any:
    return make_template("chat", SMOLLM2, SMOLLM2_TOKENS, model="smollm2")


def _sample(messages: tuple[Message, ...] | None = CONVERSATION, **kw: Any) -> Sample:
    fields: dict[str, Any] = {
        "id": "mrcr/512/0/0", "task": "mrcr",
        "prompt": "" if messages is None else last_user_text(messages),
        "targets": ("Tapirs wander, snouts held low.",), "target_tokens": 512,
        "input_tokens": 77, "template": "chat", "max_new_tokens": 64, "meta": {"turns": 2},
        "messages": messages}
    return Sample(**{**fields, **kw})


# -- rendering ---------------------------------------------------------------------------

def test_a_conversation_renders_with_the_models_chat_template() -> None:
    template = _chat()
    assert template.render_sample(_sample()) == SMOLLM2_RENDERED
    # a one-text sample renders as it always did: one user turn
    one = _sample(messages=None, prompt="Hello world")
    assert template.render_sample(one) == template.render("Hello world")


def test_the_rendering_is_transformers_apply_chat_template() -> None:
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {t: i for i, t in enumerate(dict.fromkeys(["<unk>", *SMOLLM2_TOKENS.values()]))}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=SMOLLM2,
                                              **SMOLLM2_TOKENS)
    reference = hf.apply_chat_template([{"role": m.role, "content": m.content}
                                        for m in CONVERSATION], tokenize=False,
                                       add_generation_prompt=True)
    assert reference == SMOLLM2_RENDERED == _chat().render_conversation(CONVERSATION)


def test_raw_renders_a_transcript_and_one_text_formats_refuse_a_conversation() -> None:
    raw = make_template("raw")
    assert raw.render_sample(_sample()) == transcript(CONVERSATION) == (
        "User: Write a poem about tapirs.\n\nAssistant: Tapirs wander, snouts held low.\n\n"
        "User: Write a poem about ice.\n\nAssistant: Ice keeps the winter's word.\n\n"
        "User: Repeat the first poem about tapirs.\n\nAssistant:")
    for name in ("mistral-instruct", "mistrallite"):
        with pytest.raises(EvalkitError) as info:
            make_template(name).render_sample(_sample())
        assert str(info.value) == (f"template {name} renders one user text, not a "
                                   "conversation: use template chat (the model's own) or raw")


def test_a_template_that_fails_on_a_conversation_is_one_line() -> None:
    alternating = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0)"
                   " %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
                   "{{ m['content'] }}{% endfor %}")
    template = make_template("chat", alternating, {}, model="odd.gguf")
    with pytest.raises(EvalkitError) as info:
        template.render_conversation((Message("user", "a"), Message("user", "b")))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("the chat template of model 'odd.gguf' fails to render "
                                      "a conversation of 2 messages (TemplateError: "
                                      "Conversation roles must alternate)")


def test_messages_and_conversation_prompts_are_checked() -> None:
    with pytest.raises(ValueError, match="role is one of system, user, assistant"):
        Message("tool", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a user message"):
        last_user_text((Message("system", "s"),))
    assert last_user_text(CONVERSATION) == "Repeat the first poem about tapirs."


# -- lengths -----------------------------------------------------------------------------

def _plan(measure: Any) -> Plan:
    counter = WhitespaceCounter()
    return Plan(task="mrcr", lengths=(512,), samples=1, seed=0, template="chat",
                max_new_tokens=64, measure=measure, count=lambda t: len(counter.encode(t)))


def _exchange(j: int) -> tuple[Message, Message]:
    return (Message("user", f"Write a poem about topic number {j}."),
            Message("assistant", " ".join(f"verse{j}-{w}" for w in range(5 + j % 7))))


def _build(k: int) -> tuple[Message, ...]:
    earlier = [m for j in range(k) for m in _exchange(j)]
    return (*earlier, Message("user", "Repeat the first poem."))


def test_a_conversation_is_fitted_on_its_rendered_length() -> None:
    template = _chat()
    measure = PromptMeasure(template, WhitespaceCounter())
    plan = _plan(measure)

    def rendered_tokens(k: int) -> int:
        return len(WhitespaceCounter().encode(template.render_conversation(_build(k))))

    # the estimate is over the turns' texts; the template's text around them is learned
    units = plan.fitter.units(lambda j: " ".join(m.content for m in _exchange(j)) + "\n",
                              lambda k: "", lambda k: "Repeat the first poem.")
    assert isinstance(units, Units)
    for budget in (300, 512, 1000):
        fit = plan.fitter.fit_messages("mrcr", _build, units, budget, lo=0, hi=500)
        assert fit.prompt == _build(fit.size)
        assert fit.tokens == rendered_tokens(fit.size) == measure.sample(
            _sample(fit.prompt)) <= budget < rendered_tokens(fit.size + 1)
        assert fit.tokens == plan.fitter.measure_messages(fit.prompt) == measure_messages(
            plan.measure, fit.prompt)


def test_a_conversation_is_fitted_to_an_exact_length() -> None:
    """Filler words in the first user turn, one token each: every length is met exactly."""
    measure = PromptMeasure(_chat(), WhitespaceCounter())
    plan = _plan(measure)

    def build(n: int) -> tuple[Message, ...]:
        return (Message("system", "Remember everything."),
                Message("user", " ".join(["grass"] * n) + " The code is 7."),
                Message("assistant", "Noted."), Message("user", "What is the code?"))

    estimate = plan.fitter.units(lambda j: " grass", lambda n: "", lambda n: "")
    for budget in (64, 512, 2048):
        fit = plan.fitter.fit_messages("exact", build, estimate, budget, lo=0, hi=4096,
                                       what="filler words")
        assert fit.tokens == budget == measure.conversation(fit.prompt)


def test_a_measure_of_texts_alone_refuses_a_conversation_in_one_line() -> None:
    plan = _plan(lambda text: len(text.split()))
    with pytest.raises(EvalkitError, match="^this plan measures prompts of one user text "
                                           "only: .*PromptMeasure$"):
        plan.fitter.measure_messages(CONVERSATION)


def test_a_conversation_is_measured_refused_by_a_one_text_template() -> None:
    with pytest.raises(EvalkitError, match="renders one user text, not a conversation"):
        PromptMeasure(make_template("mistral-instruct"), WhitespaceCounter()).conversation(
            CONVERSATION)


# -- files -------------------------------------------------------------------------------

def test_a_conversation_sample_and_record_round_trip_through_json() -> None:
    sample = _sample()
    data = json.loads(json.dumps(to_jsonable(sample)))
    assert data["messages"] == [{"role": m.role, "content": m.content} for m in CONVERSATION]
    assert sample_from_json(data) == sample
    record = Record(sample=sample, response=Response(text="Tapirs wander"), scores={"x": 1.0},
                    model="m", prompt_sha256="0" * 64, cache_key="1" * 64,
                    sent={"before": "b", "after": "a"})
    assert record_from_json(json.loads(json.dumps(to_jsonable(record)))) == record


def test_a_one_text_sample_writes_the_json_it_always_did() -> None:
    sample = _sample(messages=None, prompt="Hello", meta={})
    assert json.dumps(to_jsonable(sample)) == (
        '{"id": "mrcr/512/0/0", "task": "mrcr", "prompt": "Hello", "targets": ["Tapirs '
        'wander, snouts held low."], "target_tokens": 512, "input_tokens": 77, "template": '
        '"chat", "max_new_tokens": 64, "meta": {}}')


def test_old_records_read_and_write_unchanged(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / store.SAMPLES).write_text(OLD_LINE, encoding="utf-8")
    [record] = store.read_records(old)
    assert record.sample.messages is None
    assert record.sample.prompt == "Find it. The pass key is 42. What is the pass key?"
    store.append_records(new, [record])
    assert (new / store.SAMPLES).read_bytes() == OLD_LINE.encode("utf-8")
    # a conversation record goes through the store too
    conv = Record(sample=_sample(), response=Response(text="x"), scores={}, model="m",
                  prompt_sha256="0" * 64, cache_key="1" * 64, sent=None)
    store.append_records(new, [conv])
    assert store.read_records(new)[1] == conv


def test_malformed_messages_are_one_line() -> None:
    data = to_jsonable(_sample())
    data["messages"] = [{"role": "robot", "content": "x"}]
    with pytest.raises(EvalkitError, match=r"^sample.messages\[0\] should be \{role, content\}"):
        sample_from_json(data)
    data["messages"] = []
    with pytest.raises(EvalkitError, match="^sample.messages should be a non-empty list"):
        sample_from_json(data)


# -- the record's sent and the report ----------------------------------------------------

@pytest.mark.parametrize("name", ["chat", "raw"])
def test_sent_singles_out_the_last_user_message_and_the_report_shows_it(name: str) -> None:
    from evalkit.report.html import _prompt_sent

    template = _chat() if name == "chat" else make_template("raw")
    sample = _sample(template=name)
    rendered = template.render_sample(sample)
    sent = sent_of(rendered, sample)
    assert sent["before"] + sent_user(sample.prompt, sent) + sent["after"] == rendered
    assert sent_user(sample.prompt, sent) == "Repeat the first poem about tapirs."
    for earlier in CONVERSATION[:-1]:
        assert earlier.content in sent["before"]
    record = Record(sample=sample, response=Response(text="Tapirs"), scores={}, model="m",
                    prompt_sha256=hashlib.sha256(rendered.encode("utf-8")).hexdigest(),
                    cache_key="0" * 64, sent=sent)
    parts, how = _prompt_sent(record_from_json(json.loads(json.dumps(to_jsonable(record)))),
                              server_template=False)
    assert how == "exact"
    assert parts == [sent["before"], "Repeat the first poem about tapirs.", sent["after"]]


def test_sent_of_a_one_text_sample_is_split_sent() -> None:
    template = _chat()
    sample = _sample(messages=None, prompt="  Hello world  ")  # the template keeps it whole
    rendered = template.render_sample(sample)
    sent = sent_of(rendered, sample)
    assert sent["before"] + sample.prompt + sent["after"] == rendered


# -- requests and the response cache -----------------------------------------------------

def test_cache_keys_of_one_text_requests_are_unchanged() -> None:
    # the keys evalkit gave these requests before conversations (pinned)
    gen = Request(sample_id="s", kind="generate", prompt="Hello world", max_new_tokens=10,
                  seed=3, stop=("\n",))
    assert gen.cache_key("fp") == (
        "442296424f4f9924a890485134a6e1ecd553ce373595c9e475c7289f0a1b410b")
    ll = Request(sample_id="s", kind="loglikelihood", prompt="ctx", max_new_tokens=0,
                 continuation=" x", context_tokens=(1, 2), continuation_tokens=(3,))
    assert ll.cache_key("fp") == (
        "bc7b1fc7d5292786112cb971011652c3dce10ab5fb86bcf0f51929a4b47887bd")


def test_conversations_differing_in_an_earlier_turn_have_different_keys() -> None:
    other = (CONVERSATION[0], Message("assistant", "Tapirs sleep."), *CONVERSATION[2:])

    def key(messages: tuple[Message, ...] | None) -> str:
        # the same prompt text: only the messages tell them apart (as on a chat endpoint,
        # where the prompt is evalkit's transcript and the server renders the messages)
        return Request(sample_id="s", kind="generate", prompt="same", max_new_tokens=8,
                       messages=messages).cache_key("fp")

    assert len({key(None), key(CONVERSATION), key(other)}) == 3
    assert key(CONVERSATION) == key(tuple(CONVERSATION))


# -- a chat endpoint ---------------------------------------------------------------------

class ChatServer(FakeOpenAI):
    """FakeOpenAI with /v1/chat/completions, keeping every body it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.chats: list[Any] = []

    def post(self, h: BaseHTTPRequestHandler, body: Any) -> None:
        if h.path != "/v1/chat/completions":
            super().post(h, body)
            return
        self.chats.append(body)
        self.send_json(h, 200, {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
            "model": self.served_id, "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant",
                                                              "content": " Tapirs."}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}})


def chat_endpoint_model(server: ChatServer, tmp_path: Path) -> Any:
    """The openai backend on `server`'s chat endpoint, counting with SmolLM2's template."""
    pytest.importorskip("httpx")
    from evalkit.model import make_model

    template_file = tmp_path / "smollm2.jinja"
    template_file.write_text(SMOLLM2, encoding="utf-8")
    return make_model("openai", "tiny", {"base_url": server.url, "endpoint": "chat",
                                         "chat_template": str(template_file)},
                      cache_dir=tmp_path / "cache")


def test_the_chat_endpoint_is_sent_the_messages_and_counts_them(tmp_path: Path) -> None:
    with ChatServer() as server:
        model = chat_endpoint_model(server, tmp_path)
        backend = model.backend
        # evalkit renders nothing for a chat endpoint (raw), the counter the model's template
        assert backend.chat_template() is None
        measure = PromptMeasure(make_template("raw"), backend.tokenizer())
        rendered_by_server = SMOLLM2_RENDERED
        assert measure.conversation(CONVERSATION) == len(
            FakeOpenAI.token_ids(rendered_by_server))
        assert measure("Hello world") == len(FakeOpenAI.token_ids(
            _chat().render("Hello world")))

        sample = _sample()
        prompt = make_template("raw").render_sample(sample)
        conv = Request(sample_id=sample.id, kind="generate", prompt=prompt,
                       max_new_tokens=8, messages=sample.messages)
        one = Request(sample_id="one", kind="generate", prompt="Hello world", max_new_tokens=8)
        answers = model.generate([conv, one])
        assert [a.text for a in answers] == [" Tapirs.", " Tapirs."]
        sent = sorted(server.chats, key=lambda b: len(b["messages"]))
        assert sent[0]["messages"] == [{"role": "user", "content": "Hello world"}]
        assert sent[1]["messages"] == [{"role": m.role, "content": m.content}
                                       for m in CONVERSATION]
        # answered from the response cache by the messages, asked again for other ones
        again = model.generate([conv])
        assert again[0].cached and len(server.chats) == 2
        other = Request(sample_id=sample.id, kind="generate", prompt=prompt, max_new_tokens=8,
                        messages=(Message("user", "Something else."),))
        assert not model.generate([other])[0].cached and len(server.chats) == 3


def test_a_fixed_chat_template_name_cannot_count_a_conversation(tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    from evalkit.backends import make_backend

    with ChatServer() as server:
        backend = make_backend("openai", "tiny", {"base_url": server.url, "endpoint": "chat",
                                                  "chat_template": "mistral-instruct"})
        measure = PromptMeasure(make_template("raw"), backend.tokenizer())
        with pytest.raises(EvalkitError, match="template mistral-instruct renders one user "
                                               "text, not a conversation"):
            measure.conversation(CONVERSATION)


# -- the real model ----------------------------------------------------------------------

@pytest.mark.engine
def test_smollm2_reads_a_conversation_fitted_to_its_tokens() -> None:
    """SmolLM2-135M-Instruct's own tokenizer and chat template (from its GGUF): a
    conversation fitted to 256 tokens is 256 tokens as llama.cpp reads it, and the model
    answers it."""
    pytest.importorskip("llama_cpp")
    from evalkit.model import make_model

    try:
        model = make_model("llamacpp", "smollm2-135m", {"n_ctx": 1024}, use_cache=False)
    except EvalkitError as exc:
        pytest.skip(f"the embedded SmolLM2 model is not installed: {exc}")
    backend = model.backend
    template = make_template("chat", backend.chat_template(), dict(backend.special_tokens()))
    counter = backend.tokenizer()
    measure = PromptMeasure(template, counter)
    plan = _plan(measure)

    def build(n: int) -> tuple[Message, ...]:
        return (Message("user", "Remember: the code is 7." + " The sky is blue." * n),
                Message("assistant", "I will remember the code."),
                Message("user", "What is the code? Answer with the number."))

    estimate = plan.fitter.units(lambda j: " The sky is blue.", lambda n: "", lambda n: "")
    fit = plan.fitter.fit_messages("smol", build, estimate, 256, lo=0, hi=200,
                                   what="sentences")
    sample = _sample(fit.prompt, input_tokens=fit.tokens, target_tokens=256)
    rendered = template.render_sample(sample)
    assert len(counter.encode(rendered)) == fit.tokens <= 256 < measure.conversation(
        build(fit.size + 1))
    answer = model.generate([Request(sample_id=sample.id, kind="generate", prompt=rendered,
                                     max_new_tokens=8, messages=sample.messages)])[0]
    assert answer.error is None and answer.input_tokens == fit.tokens


def test_a_conversation_given_as_a_list_is_the_sample_read_back() -> None:
    listed = _sample(list(CONVERSATION))  # type: ignore[arg-type]
    assert listed == _sample() == sample_from_json(json.loads(json.dumps(to_jsonable(listed))))
    with pytest.raises(ValueError, match="a conversation needs a message"):
        Sample(id="x", task="t", prompt="", targets=(), target_tokens=None, input_tokens=0,
               template="chat", max_new_tokens=1, messages=())
