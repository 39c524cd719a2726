"""The hf backend (transformers + torch) against the real engine on the embedded tiny
models, read from their GGUF packages and dequantized to fp32 on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from servers import require

from evalkit.backends import make_backend
from evalkit.model import Model
from evalkit.results import store
from evalkit.runner.config import build_spec
from evalkit.runner.execute import plan_samples, resolve_template, run
from evalkit.types import EvalkitError, Request

pytestmark = pytest.mark.engine
require("transformers", "'evalkit[hf]'")
require("llama_cpp", "'evalkit[llamacpp]'")  # the GGUF aliases and the peer answers


@pytest.fixture(scope="module")
def smollm2():
    return make_backend("hf", "smollm2-135m", {"max_batch_size": 4})


@pytest.fixture(scope="module")
def smollm2_llamacpp():
    return make_backend("llamacpp", "smollm2-135m", {})


def _gen(prompt: str, max_new_tokens: int = 10) -> Request:
    return Request(sample_id=prompt[:20], kind="generate", prompt=prompt,
                   max_new_tokens=max_new_tokens)


def _ll(prompt: str, continuation: str) -> Request:
    return Request(sample_id=continuation, kind="loglikelihood", prompt=prompt,
                   max_new_tokens=0, continuation=continuation)


def _passkey_requests(backend, n: int = 2) -> tuple[list, list[Request]]:
    spec = build_spec({"model": "smollm2-135m", "samples": n, "lengths": ["1k"],
                       "tasks": ["passkey"]})
    samples = plan_samples(spec, backend, backend.tokenizer())
    template = resolve_template(spec.tasks[0], backend)
    return samples, [Request(sample_id=s.id, kind="generate", prompt=template.render(s.prompt),
                             max_new_tokens=s.max_new_tokens) for s in samples]


def test_facts_and_token_ids_equal_llamacpps(smollm2, smollm2_llamacpp) -> None:
    assert smollm2.context_window() == 8192
    assert smollm2.special_tokens() == smollm2_llamacpp.special_tokens()
    assert smollm2.chat_template() == smollm2_llamacpp.chat_template()
    spec = build_spec({"model": "smollm2-135m", "samples": 1, "lengths": ["1k"],
                       "tasks": ["passkey", "lines"]})
    for task, sample in zip(spec.tasks, plan_samples(spec, smollm2, smollm2.tokenizer()),
                            strict=True):
        text = resolve_template(task, smollm2).render(sample.prompt)
        ids = smollm2.tokenizer().encode(text)
        assert ids == smollm2_llamacpp.tokenizer().encode(text)  # same ids, not only counts
        assert len(ids) == sample.input_tokens


def test_chat_template_has_no_doubled_bos(smollm2) -> None:
    spec = build_spec({"model": "smollm2-135m", "tasks": ["lines"], "lengths": ["1k"]})
    template = resolve_template(spec.tasks[0], smollm2)
    assert template.name == "chat"
    rendered = template.render("What is 2+2?")
    ids = smollm2.tokenizer().encode(rendered)
    bos = smollm2.tokenizer().encode("<|im_start|>")
    assert rendered.startswith("<|im_start|>") and ids[:1] == bos and ids[1] != bos[0]


def test_gemma_tokenizer_adds_one_bos() -> None:
    gemma = make_backend("hf", "gemma3-270m", {})  # tokenizer and config only: no weights
    ids = gemma.tokenizer().encode("hello")
    assert ids[0] == 2 and ids.count(2) == 1
    assert gemma.tokenizer().encode("<bos>hello") == ids
    assert gemma.context_window() == 32768


def test_counts_equal_what_generate_reports(smollm2) -> None:
    prompt = "The capital of France is"
    [resp] = smollm2.generate([_gen(prompt, 5)])
    assert resp.error is None and resp.latency_s > 0
    assert resp.input_tokens == len(smollm2.tokenizer().encode(prompt))
    assert 0 < resp.output_tokens <= 5


def test_greedy_passkey_equals_llamacpp(smollm2, smollm2_llamacpp) -> None:
    """Measured: the dequantized fp32 model and llama.cpp on the Q4_1 weights answer the
    1K passkey prompts with the same text, token for token."""
    samples, requests = _passkey_requests(smollm2)
    ours = smollm2.generate(requests)
    theirs = smollm2_llamacpp.generate(requests)
    for sample, a, b in zip(samples, ours, theirs, strict=True):
        assert a.error is None and a.input_tokens == sample.input_tokens == 1024
        assert sample.targets[0] in a.text
        assert (a.text, a.output_tokens) == (b.text, b.output_tokens)


def test_batched_left_padding_equals_unbatched(smollm2) -> None:
    prompts = ["The capital of France is", "Once upon a time, there was a little",
               "1, 2, 3, 4,"]  # three lengths: the shorter rows are padded on the left
    batched = smollm2.generate([_gen(p, 8) for p in prompts])
    single = [smollm2.generate([_gen(p, 8)])[0] for p in prompts]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.output_tokens for r in batched] == [r.output_tokens for r in single]
    assert batched[2].text.startswith(" 5, 6")


def test_loglikelihood_prefers_the_true_continuation(smollm2) -> None:
    model = Model(smollm2)  # which splits context and continuation tokens
    paris, berlin, count = model.loglikelihood([
        _ll("The capital of France is", " Paris"), _ll("The capital of France is", " Berlin"),
        _ll("One, two, three, four, five, six, seven,", " eight, nine")])
    assert paris.logprob > berlin.logprob + 3  # measured: -0.26 vs -6.9
    assert paris.is_greedy and not berlin.is_greedy
    assert paris.logprob < 0 and count.input_tokens > paris.input_tokens
    [alone] = model.loglikelihood([_ll("One, two, three, four, five, six, seven,",
                                         " eight, nine")])
    assert alone.logprob == pytest.approx(count.logprob, abs=1e-3)  # padding changes nothing


def test_answers_that_differ_in_their_last_token_share_one_forward_pass(
        smollm2, monkeypatch: pytest.MonkeyPatch) -> None:
    """MMLU's shape: one context, four one-token answers. They share a row (one pass of one
    row, not four rows) and score exactly as each scored alone."""
    model = Model(smollm2)
    question = "Q: Which planet is closest to the Sun?\nA. Venus\nB. Mercury\nC. Mars\n" \
               "D. Earth\nAnswer:"
    reqs = [_ll(question, f" {c}") for c in "ABCD"]
    passes: list[int] = []
    score_rows = smollm2._score_rows

    def counted(rows, conts):
        passes.append(len(rows))
        return score_rows(rows, conts)

    monkeypatch.setattr(smollm2, "_score_rows", counted)
    shared = model.loglikelihood(reqs)
    assert passes == [1]
    alone = [model.loglikelihood([r])[0] for r in reqs]
    assert [r.logprob for r in shared] == pytest.approx([r.logprob for r in alone], abs=1e-4)
    assert [r.is_greedy for r in shared] == [r.is_greedy for r in alone]
    assert sum(r.is_greedy for r in shared) <= 1
    assert len({r.input_tokens for r in shared}) == 1


def test_options_are_checked_and_overrides_applied() -> None:
    with pytest.raises(EvalkitError, match="unknown option 'rope_thta'"):
        make_backend("hf", "smollm2-135m", {"rope_thta": 1.0})
    be = make_backend("hf", "smollm2-135m", {"rope_theta": 20000, "sliding_window": 512})
    assert be._config.rope_parameters["rope_theta"] == 20000.0
    assert be._config.sliding_window == 512
    assert be.fingerprint() != make_backend("hf", "smollm2-135m", {}).fingerprint()


def test_runner_runs_passkey_and_lines_at_1k(tmp_path: Path) -> None:
    # lines' answer is a dozen tokens; 32 new tokens (not 100) keep the CPU run short
    spec = build_spec({"model": "smollm2-135m", "backend": "hf", "samples": 2,
                       "lengths": ["1k"],
                       "tasks": ["passkey", {"lines": {"max_new_tokens": 32}}]})
    result = run(spec, out=tmp_path / "r", progress=False, log=lambda m: None)
    assert result.summary.status == "complete" and result.summary.n_done == 4
    rows = {r.task: r for r in result.summary.rows if r.metric == "accuracy"}
    assert set(rows) == {"passkey", "lines"}
    assert rows["passkey"].value == 1.0  # SmolLM2 reads 1K passkeys back (llama.cpp too)
    for rec in store.read_records(result.run_dir):
        assert rec.response.input_tokens == rec.sample.input_tokens  # what the engine read


def test_the_model_goes_by_its_own_name(smollm2, smollm2_llamacpp) -> None:
    """The GGUF's general.name, read by gguf for transformers as llama.cpp reads it."""
    name = smollm2.describe()["model_name"]
    assert name and name == smollm2_llamacpp.describe()["model_name"]
