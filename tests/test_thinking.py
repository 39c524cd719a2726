"""Thinking models: the answer alone is scored; the reasoning is split off by the real chat
templates' markers (Qwen3, DeepSeek-R1 distills, in tests/data/chat_templates) or taken
from a server's reasoning field; its budget is its own; a reasoning that used the whole
budget is marked; the template's switches (enable_thinking) are options."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from clirun import in_proc, one_line_error
from fakeopenai import FakeOpenAI
from servers import require

from evalkit.model.reasoning import MARKERS, Thinking, split_reasoning
from evalkit.prompts.counters import WhitespaceCounter
from evalkit.prompts.templates import make_template
from evalkit.report.html import build_report
from evalkit.results import store
from evalkit.runner import execute
from evalkit.runner.config import build_spec
from evalkit.types import Message, Response

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
QWEN3 = TEMPLATES / "qwen3.jinja"
R1 = TEMPLATES / "deepseek-r1-distill.jinja"
WORDS = WhitespaceCounter()


def _split(text: str, prompt: str = "", **kw: Any) -> Response:
    return split_reasoning(Response(text=text), Thinking(**kw), prompt, WORDS)


# -- splitting -----------------------------------------------------------------------------

def test_think_markers_split_the_answer_off() -> None:
    r = _split("<think>\nThe key is near the top. It is 4821.\n</think>\n\n 4821.")
    assert r.text == "4821." and r.reasoning == "The key is near the top. It is 4821."
    assert r.reasoning_tokens == 9 and r.reasoning_exhausted is None


def test_a_template_that_opens_the_reasoning_itself() -> None:
    """DeepSeek-R1's template ends the prompt with <think>: the output holds only its end."""
    r = _split("looking for the key\n</think>\n\nThe key is 77.", prompt="<｜Assistant｜><think>\n")
    assert (r.text, r.reasoning) == ("The key is 77.", "looking for the key")
    cut = _split("looking for the key and still looking", prompt="<｜Assistant｜><think>\n")
    assert cut.text == "" and cut.reasoning_exhausted is True and cut.reasoning_tokens == 7


def test_unclosed_reasoning_is_exhausted_and_plain_answers_pass_through() -> None:
    r = _split("<think> step one, step two")
    assert r.text == "" and r.reasoning == "step one, step two" and r.reasoning_exhausted
    # stopped before its budget: no answer, but the budget was not what ended it
    early = split_reasoning(Response(text="<think> step one", output_tokens=3), Thinking(),
                            "", WORDS, budget=100)
    assert early.text == "" and early.reasoning_exhausted is None
    plain = _split(" 4821.")
    assert plain == Response(text=" 4821.")  # a model that did not reason: as it was
    assert _split("<think>x</think>y", split="none").text == "<think>x</think>y"


def test_harmony_markers_of_gpt_oss() -> None:
    start, end = MARKERS["harmony"]
    r = _split(f"{start}The user wants the key.<|end|><|start|>assistant{end}4821",
               markers=MARKERS["harmony"])
    assert r.text == "4821" and r.reasoning.startswith("The user wants the key.")


def test_a_servers_reasoning_field_is_taken_as_it_is() -> None:
    server = Response(text="\n\n4821.", reasoning="It said 4821.")
    r = split_reasoning(server, Thinking(), "", WORDS)
    # the answer's leading whitespace goes, as where markers split it
    assert (r.text, r.reasoning, r.reasoning_tokens) == ("4821.", "It said 4821.", 3)
    # split: markers ignores the server's field and reads the text
    assert split_reasoning(server, Thinking(split="markers"), "", WORDS).reasoning_tokens is None


# -- the real templates' switches ----------------------------------------------------------

def _render(path: Path, **options: Any) -> str:
    template = make_template("chat", path.read_text(encoding="utf-8"),
                             {"eos_token": "<|im_end|>"}, options=options)
    return template.render_messages((Message("user", "What is the key?"),))


def test_qwen3_enable_thinking_is_a_template_option() -> None:
    assert _render(QWEN3).endswith("<|im_start|>assistant\n")
    assert _render(QWEN3, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert _render(R1).endswith("<｜Assistant｜><think>\n")


def test_the_templates_render_as_transformers_does() -> None:
    pytest.importorskip("transformers", reason="transformers (evalkit[hf]) is the reference")
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [{"role": "user", "content": "What is the key?"}]
    for path, options in ((QWEN3, {}), (QWEN3, {"enable_thinking": False}), (R1, {})):
        theirs, _ = render_jinja_template(conversations=[messages],
                                          chat_template=path.read_text(encoding="utf-8"),
                                          add_generation_prompt=True, bos_token="",
                                          eos_token="<|im_end|>", **options)
        assert _render(path, **options) == theirs[0], (path.name, options)


# -- through the runner --------------------------------------------------------------------

def _spec(reply: str, thinking: dict[str, Any] | None, template: Path = QWEN3,
          **task: Any) -> Any:
    config: dict[str, Any] = {
        "model": "x", "backend": "scripted", "lengths": ["512"], "samples": 2,
        "backend_options": {"reply": reply, "chat_template": str(template)},
        "tasks": [{"niah_single_1": {"max_new_tokens": 16, **task}}]}
    if thinking is not None:
        config["thinking"] = thinking
    return build_spec(config)


def test_a_run_scores_the_answer_and_keeps_the_reasoning(tmp_path: Path) -> None:
    reply = "<think>\nThe needle says 1234567.\n</think>\n\nThe number is 1234567."
    spec = _spec(reply, {"budget": 256})
    result = execute.run(spec, results_root=tmp_path / "results", progress=False)
    records = store.read_records(result.run_dir)
    for r in records:
        assert r.response.text == "The number is 1234567."
        assert r.response.reasoning == "The needle says 1234567."
        assert r.response.reasoning_tokens == 4
    # the request's budget is the answer's and the reasoning's: 16 + 256
    assert all(r.sample.max_new_tokens == 16 for r in records)
    assert execute.request_for(records[0].sample, "p", spec).max_new_tokens == 16 + 256
    line = json.loads((result.run_dir / "samples.jsonl").read_text().splitlines()[0])
    assert line["response"]["reasoning_tokens"] == 4
    # without thinking settings the output is the answer, markers and all
    plain = execute.run(_spec(reply, None), results_root=tmp_path / "plain", progress=False)
    [r0, *_] = store.read_records(plain.run_dir)
    assert r0.response.text == reply and r0.response.reasoning is None
    assert "reasoning" not in json.loads(
        (plain.run_dir / "samples.jsonl").read_text().splitlines()[0])["response"]


def test_reasoning_that_used_the_whole_budget_is_marked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({
        "model": "x", "backend": "scripted", "lengths": ["512"], "samples": 2,
        # more than the budget allows (10 + 12 tokens), and no end to the reasoning
        "backend_options": {"reply": " ".join(["let me read the text again"] * 8),
                            "chat_template": str(R1)},
        "template": "chat", "tasks": ["passkey"], "thinking": {"budget": 12}}))
    code, out, err = in_proc(capsys, monkeypatch, "run", config, "--out", tmp_path / "run",
                             "--no-progress")
    assert code == 0, err
    assert "2 samples used their whole reasoning budget without an answer" in out + err
    records = store.read_records(tmp_path / "run")
    assert all(r.response.reasoning_exhausted and r.response.text == "" for r in records)
    assert all(r.scores == {"accuracy": 0.0} for r in records)
    page = build_report([tmp_path / "run"], tmp_path / "report").read_text()
    assert "reasoning" in page and "2 out of budget" in page


@pytest.mark.parametrize("bad,needle", [
    ({"budget": -1}, "thinking.budget"), ({"split": "sometimes"}, "thinking.split"),
    ({"markers": "xml"}, "thinking.markers"), ({"budgets": 1}, "thinking.budgets"),
    ({"template_options": [1]}, "thinking.template_options"),
    ({"template_options": {"add_generation_prompt": False}},
     "template_options.add_generation_prompt: evalkit sets it itself")])
def test_bad_thinking_settings_are_one_line(
        tmp_path: Path, bad: dict[str, Any], needle: str,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"model": "x", "backend": "scripted", "tasks": ["passkey"],
                                  "thinking": bad}))
    code, _, err = in_proc(capsys, monkeypatch, "run", config, "--out", tmp_path / "run")
    one_line_error(code, err, needle)


def test_the_reasoning_budget_counts_against_the_window(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "run.yaml"
    base = {"model": "x", "backend": "scripted", "backend_options": {"context_window": 2048},
            "lengths": ["1k"], "tasks": ["passkey"]}
    config.write_text(json.dumps({**base, "thinking": {"budget": 1024}}))
    code, _, err = in_proc(capsys, monkeypatch, "run", config, "--out", tmp_path / "run")
    one_line_error(code, err, "passkey: length 1024 + 1034 new tokens is over the context "
                              "window")
    config.write_text(json.dumps({**base, "tasks": ["arc_challenge"],
                                  "thinking": {"budget": 16}}))
    code, _, err = in_proc(capsys, monkeypatch, "run", config, "--out", tmp_path / "run")
    one_line_error(code, err, "arc_challenge is scored whole by lm-eval")


class FakeReasoner(FakeOpenAI):
    """The stand-in vLLM server with a reasoning parser: chat completions whose message
    carries `reasoning_content` beside `content`; `long`: the whole budget goes on
    reasoning (no content, finish_reason "length")."""

    long = False

    def post(self, h: Any, body: Any) -> None:
        if h.path != "/v1/chat/completions":
            super().post(h, body)
            return
        prompt = " ".join(m["content"] for m in body["messages"])
        message = {"role": "assistant", "content": None if self.long else self.answer(prompt),
                   "reasoning_content": "I look for the pass key. " * (50 if self.long else 1)}
        self.send_json(h, 200, {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
            "model": self.served_id,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "length" if self.long else "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})


def test_a_servers_reasoning_content_reaches_the_record(tmp_path: Path) -> None:
    require("httpx", "evalkit[http]")
    with FakeReasoner() as server:
        options = {"base_url": server.url, "model": "tiny", "endpoint": "chat",
                   "tokenizer": "whitespace", "chat_template": str(QWEN3)}
        spec = build_spec({"model": "tiny", "backend": "openai", "backend_options": options,
                           "lengths": ["256"], "samples": 2, "tasks": ["passkey"],
                           "thinking": {"budget": 64}})
        result = execute.run(spec, results_root=tmp_path / "results", progress=False)
        server.long = True  # the same server answering otherwise: not from the cache
        spent = execute.run(dataclasses.replace(spec, cache=False),
                            results_root=tmp_path / "long", progress=False)
    records = store.read_records(result.run_dir)
    assert all(r.response.reasoning == "I look for the pass key. " for r in records)
    assert all(r.scores["accuracy"] == 1.0 for r in records)
    assert all(r.response.reasoning_tokens == 6 for r in records)
    for r in store.read_records(spent.run_dir):
        assert r.response.reasoning_exhausted and r.response.text == ""
        assert r.response.reasoning_tokens == 300 and r.scores["accuracy"] == 0.0


@pytest.mark.engine
def test_a_real_model_given_r1s_template_reasons_until_its_budget_runs_out(
        tmp_path: Path) -> None:
    """The real engine: SmolLM2-135M (llama.cpp) given DeepSeek-R1's chat template, which
    opens the reasoning in the prompt; a model that never closes it spends the budget
    reasoning, and the record says so, with the reasoning's length in its own tokens."""
    require("llama_cpp", "evalkit[llamacpp]")
    spec = build_spec({"model": "smollm2-135m", "backend": "llamacpp", "lengths": ["512"],
                       "samples": 2, "backend_options": {"chat_template": str(R1)},
                       "template": "chat",
                       "tasks": [{"passkey": {"max_new_tokens": 8}}],
                       "thinking": {"budget": 24}})
    result = execute.run(spec, results_root=tmp_path / "results", progress=False)
    for r in store.read_records(result.run_dir):
        assert r.sent is not None and r.sent["after"].endswith("<think>\n")
        if r.response.reasoning_exhausted:
            assert r.response.text == "" and r.response.output_tokens == 8 + 24
        else:  # it closed its reasoning: the answer is what came after
            assert r.response.reasoning is not None
        assert r.response.reasoning_tokens is not None and r.response.reasoning_tokens > 0
