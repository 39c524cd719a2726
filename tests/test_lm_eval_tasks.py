"""Any lm-eval task as an evalkit task (`lm_eval:NAME`, evalkit.tasks.lm_eval.catalogue):
the TaskDef read off lm-eval's catalogue (groups, unknown names, data that are not here),
RULER's niah_single_1 on Gemma 3 270M at two lengths (its documents are the ones lm-eval's
own RULER makes with the same tokenizer), and a multiple-choice task from a data file."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from servers import require

from evalkit.types import EvalkitError, Record

require("lm_eval", "'evalkit[lmeval]'")

from evalkit.tasks.base import TASKS, WholeRun  # noqa: E402
from evalkit.tasks.lm_eval import catalogue as lt  # noqa: E402

LENGTHS = (1024, 2048)


def whole(**kw: Any) -> WholeRun:
    values: dict[str, Any] = {"params": lt.Params(), "lengths": (), "limit": None,
                              "progress": False, "log": lambda _: None}
    values.update(kw)
    return WholeRun(**values)


def records(task: Any, run: WholeRun) -> list[Record]:
    return [r for batch in task.whole.run(run) for r in batch]


# ---- the TaskDef, read off lm-eval's configs ---------------------------------------------

def test_a_task_is_declared_from_its_lm_eval_definition() -> None:
    task = TASKS.get("lm_eval:niah_single_1")  # through the registry's family
    assert task.name == "lm_eval:niah_single_1" and task.whole is not None
    assert task.kind == "generate" and task.limited and task.options == {"lengths"}
    assert task.default_template == "raw" and task.max_new_tokens == 0 and task.fixed
    assert [(m.name, m.kind, m.higher_is_better) for m in task.metrics] == [
        ("string_match", "binary", True)]
    arc = lt.make_task("arc_easy")
    assert arc.kind == "loglikelihood" and arc.options == frozenset()
    assert [(m.name, m.kind) for m in arc.metrics] == [("acc", "binary"),
                                                       ("acc_norm", "binary")]
    # rolling log-likelihoods: the adapter scores them; perplexities are lower-is-better
    wikitext = lt.make_task("wikitext")
    assert wikitext.kind == "loglikelihood"
    assert {m.name: (m.kind, m.higher_is_better) for m in wikitext.metrics} == {
        "word_perplexity": ("continuous", False), "byte_perplexity": ("continuous", False),
        "bits_per_byte": ("continuous", False)}
    # one metric per filter, named as lm-eval names them
    assert [m.name for m in lt.make_task("gsm8k").metrics] == [
        "exact_match,strict-match", "exact_match,flexible-extract"]


def test_a_group_expands_to_its_tasks() -> None:
    ruler = lt.make_task("ruler")
    names = [leaf.name for leaf in lt.leaves("ruler")]
    assert names[:3] == ["niah_single_1", "niah_single_2", "niah_single_3"]
    assert len(names) == 13 and all(leaf.ruler for leaf in lt.leaves("ruler"))
    assert ruler.name == "lm_eval:ruler" and ruler.options == {"lengths"}
    # some RULER tasks score a share of several needles: the group's metric is continuous
    assert [(m.name, m.kind) for m in ruler.metrics] == [("string_match", "continuous")]
    assert "13 tasks" in ruler.details[0]
    units = lt.units("ruler", whole(lengths=LENGTHS), resolve=False)
    assert len(units) == 26 and all(u.grouped for u in units)
    assert units[1].sample_id(3) == "lm_eval:niah_single_1/2048/3"
    # a group whose members are overridden by the group (mmlu: 57 subjects)
    mmlu = lt.leaves("mmlu")
    assert len(mmlu) == 57 and mmlu[0].name == "mmlu_abstract_algebra"
    # a tag too
    assert [leaf.name for leaf in lt.leaves("ai2_arc")] == ["arc_challenge", "arc_easy"]


def test_unknown_and_unsupported_names_are_one_line() -> None:
    with pytest.raises(EvalkitError) as err:
        lt.make_task("niah_singel_1")
    message = str(err.value)
    assert "unknown lm-eval task 'niah_singel_1'" in message and "niah_single_1" in message
    assert "\n" not in message
    with pytest.raises(EvalkitError, match="Python-class tasks.*--tasks squadv2"):
        lt.make_task("squadv2")


def test_data_that_are_not_here_are_one_line_saying_what_to_give(tmp_path: Path) -> None:
    task = lt.make_task("gsm8k")
    with pytest.raises(EvalkitError) as err:
        task.whole.plan(whole(limit=2))
    message = str(err.value)
    assert "dataset openai/gsm8k (main), not found offline" in message
    assert "{data: {test: FILE}}" in message and "online: true" in message
    assert "\n" not in message
    # a RULER task whose haystack is a dataset: nothing is downloaded, one line
    from evalkit.prompts.counters import WhitespaceCounter

    essay = lt.make_task("niah_single_2")
    with pytest.raises(EvalkitError) as err:
        essay.whole.plan(whole(lengths=(1024,), limit=1, counter=WhitespaceCounter()))
    message = str(err.value)
    assert "niah_single_2 at 1024 needs data that are not here" in message
    assert "baber/paul_graham_essays" in message and "online: true" in message


# ---- RULER on the real engine --------------------------------------------------------------

@pytest.fixture(scope="module")
def gemma() -> Any:
    require("llama_cpp", "'evalkit[llamacpp]'")
    require("wonderwords", "'evalkit[lmeval]'")
    from evalkit.model import make_model

    # the response cache is each test's own (conftest), so it is made per test below
    return make_model("llamacpp", "gemma3-270m", {}, use_cache=False, label="gemma3-270m")


@pytest.fixture
def cached_gemma(gemma: Any, response_cache: Path) -> Any:
    from evalkit.model import Model, ResponseCache

    return Model(gemma.backend, cache=ResponseCache(response_cache), label=gemma.label)


@pytest.mark.engine
def test_ruler_documents_are_the_ones_lm_evals_own_ruler_makes(
        gemma: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval's own dataset function (all 500 documents of a length, seeded as
    simple_evaluate seeds) with the same tokenizer gives the same first documents as the
    task limited to 2 a length; evalkit's patches are gone after."""
    import numpy as np

    counter = gemma.tokenizer()
    run = whole(lengths=LENGTHS, limit=2, counter=counter)
    ours = {u.cell: list(lt.build(u, run).task.eval_docs)
            for u in lt.units("niah_single_1", run, resolve=True)}
    generate = lt.leaves("niah_single_1", resolve=True)[0].cfg["custom_dataset"]
    assert generate.__globals__["get_tokenizer"].__module__.endswith("common_utils")

    class HFLike:  # what RULER calls on a Hugging Face tokenizer
        def __call__(self, text: str) -> Any:
            from types import SimpleNamespace

            return SimpleNamespace(input_ids=counter.encode(text))

    monkeypatch.setitem(generate.__globals__, "get_tokenizer", lambda *a, **k: HFLike())
    for cell in LENGTHS:
        random.seed(0)
        np.random.seed(1234)
        theirs = list(generate(max_seq_lengths=[cell])["test"])
        assert len(theirs) == 500
        assert ours[cell] == theirs[:2]
        assert all(d["max_length"] == cell and d["length"] <= cell for d in theirs)


@pytest.mark.engine
def test_niah_single_1_at_two_lengths_on_gemma(cached_gemma: Any) -> None:
    from lm_eval.tasks.ruler.common_utils import postprocess_pred, string_match_all

    task = lt.make_task("niah_single_1")
    counter = cached_gemma.tokenizer()
    run = whole(lengths=LENGTHS, limit=2, counter=counter, model=cached_gemma, label="g")
    planned = task.whole.plan(run)
    assert planned == {f"lm_eval:niah_single_1/{n}/{i}": n for n in LENGTHS for i in (0, 1)}
    assert len(task.whole.describe(run)) == 2
    got = records(task, run)
    assert [r.sample.id for r in got] == list(planned)
    for r in got:
        cell = r.sample.cell
        assert cell == r.sample.target_tokens and cell in LENGTHS
        assert r.sample.task == "lm_eval:niah_single_1" and r.sample.subsets == ()
        tokens = len(counter.encode(r.sample.prompt))
        # RULER keeps input + its 128-token answer budget within the length; the prompt adds
        # lm-eval's answer prefix ("The special magic number for ... is")
        assert cell - 300 <= tokens <= cell - 100, (cell, tokens)
        assert r.sample.input_tokens == tokens == r.response.input_tokens
        assert r.sample.meta["ruler_length"] <= cell
        assert r.sample.prompt.endswith("mentioned in the provided text is")
        needle = r.sample.targets[0]
        assert len(r.sample.targets) == 1 and needle.isdigit() and needle in r.sample.prompt
        assert r.ok and r.response.output_tokens
        expected = string_match_all(postprocess_pred([r.response.text]), [[needle]])
        assert r.scores == {"string_match": expected}
        assert r.sample.meta["lm_eval_metrics"][str(cell)] == expected
        assert r.sent == {"before": "", "after": ""} and len(r.cache_key) == 64
        assert r.sample.max_new_tokens == 128  # lm-eval's budget for niah
    assert sum(r.scores["string_match"] for r in got) >= 2  # measured: 4 of 4
    # resume: nothing recorded again, nothing asked; a unit part done asks only the cache
    calls = cached_gemma.backend_calls
    assert records(task, whole(lengths=LENGTHS, limit=2, counter=counter, model=cached_gemma,
                               done=frozenset(planned))) == []
    again = records(task, whole(lengths=LENGTHS, limit=2, counter=counter, model=cached_gemma,
                                done=frozenset(list(planned)[:3])))
    assert [r.sample.id for r in again] == list(planned)[3:]
    assert again[0].response.text == got[3].response.text
    assert cached_gemma.backend_calls == calls


# ---- a multiple-choice task from a data file ------------------------------------------------

ARC_ROWS = [
    {"id": "q1", "question": "What color is the sky on a clear day?",
     "choices": {"text": ["blue", "green", "red", "black"], "label": ["A", "B", "C", "D"]},
     "answerKey": "A"},
    {"id": "q2", "question": "How many legs does a dog have?",
     "choices": {"text": ["two", "four", "six"], "label": ["A", "B", "C"]}, "answerKey": "B"},
    {"id": "q3", "question": "Which one is a fruit?",
     "choices": {"text": ["a stone", "a chair", "an apple", "a car"],
                 "label": ["1", "2", "3", "4"]}, "answerKey": "3"},
]


@pytest.mark.engine
def test_a_multiple_choice_task_from_files_on_gemma(tmp_path: Path, gemma: Any) -> None:
    data = tmp_path / "validation.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ARC_ROWS), encoding="utf-8")
    task = lt.make_task("arc_easy")
    params = lt.Params(data={"validation": str(data)})
    run = whole(params=params, limit=2, counter=gemma.tokenizer(), model=gemma, label="g")
    assert task.whole.plan(run) == {"lm_eval:arc_easy/0": "0-shot", "lm_eval:arc_easy/1": "0-shot"}
    got = records(task, run)
    assert [r.sample.id for r in got] == ["lm_eval:arc_easy/0", "lm_eval:arc_easy/1"]
    for r, row in zip(got, ARC_ROWS, strict=False):
        meta = r.sample.meta
        assert r.sample.prompt == f"Question: {row['question']}\nAnswer:"
        gold = row["choices"]["label"].index(row["answerKey"])
        assert r.sample.targets == (row["choices"]["text"][gold],)
        assert r.response.text in row["choices"]["text"]
        # lm-eval's scores, read back off the logprobs it got
        lls = meta["logprobs"]
        assert r.scores["acc"] == float(max(range(len(lls)), key=lls.__getitem__) == gold)
        assert r.scores["acc_norm"] == float(meta["pick_norm"] == gold)
        assert r.response.text == row["choices"]["text"][meta["pick_norm"]]
        assert r.response.logprob == lls[gold]
        # the task's test split is not in the file: scored on validation, and said so
        assert meta["split"] == "validation" and meta["faithful"] is False
        assert r.sample.cell == "0-shot" and r.sample.target_tokens is None
    # a group: one folder of split files per task; records name their task as a subset
    group = lt.make_task("ai2_arc")
    with pytest.raises(EvalkitError, match="data for a group is a folder"):
        group.whole.plan(whole(params=params, limit=1))
    for name in ("arc_challenge", "arc_easy"):
        (tmp_path / "arc" / name).mkdir(parents=True)
        (tmp_path / "arc" / name / "validation.jsonl").write_text(
            data.read_text(encoding="utf-8"), encoding="utf-8")
    run = whole(params=lt.Params(data=str(tmp_path / "arc")), limit=1, model=gemma, label="g")
    got = records(group, run)
    assert [(r.sample.id, r.sample.task, r.sample.subsets) for r in got] == [
        ("lm_eval:arc_challenge/0", "lm_eval:ai2_arc", ("arc_challenge",)),
        ("lm_eval:arc_easy/0", "lm_eval:ai2_arc", ("arc_easy",))]


@pytest.mark.engine
def test_rolling_loglikelihood_task_from_a_file_on_gemma(tmp_path: Path, gemma: Any) -> None:
    """wikitext (loglikelihood_rolling): the adapter's rolling windows; a corpus metric is
    recorded as lm-eval's aggregation of the one document."""
    import math

    page = (" = Valkyria Chronicles = \n\n The game is a tactical role-playing game "
            "developed by Sega for the PlayStation 3 .\n")
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"page": page}) + "\n", encoding="utf-8")
    task = lt.make_task("wikitext")
    run = whole(params=lt.Params(data={"test": str(data)}), model=gemma, label="g")
    (r,) = records(task, run)
    detokenize = lt.leaves("wikitext", resolve=True)[0].cfg["doc_to_target"]
    assert r.sample.id == "lm_eval:wikitext/0"
    assert r.sample.prompt == detokenize({"page": page}) != page  # the text lm-eval scores
    ll = r.response.logprob
    assert ll is not None and ll < 0
    assert r.scores["bits_per_byte"] == pytest.approx(-ll / len(page.encode()) / math.log(2))
    assert r.scores["byte_perplexity"] == pytest.approx(math.exp(-ll / len(page.encode())))
    assert set(r.scores) == {"word_perplexity", "byte_perplexity", "bits_per_byte"}


def test_an_lm_eval_task_runs_resumes_reports_and_gates_through_the_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`evalkit run` of an lm_eval:NAME task named in a config (its data in a file of the
    task's own format), on the scripted backend: its records, run.json's cells, a second run
    that asks nothing, `show`, `report` and `gate` against itself, as for any other task."""
    from clirun import in_proc

    from evalkit.results import store

    data = tmp_path / "validation.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ARC_ROWS), encoding="utf-8")
    cfg = tmp_path / "arc.yaml"
    cfg.write_text(f"name: arc\nmodel: m\nbackend: scripted\nbackend_options: "
                   f"{{loglikelihood: oracle}}\ntasks:\n  - lm_eval:arc_easy:\n"
                   f"      data: {{validation: {data}}}\n", encoding="utf-8")
    run = tmp_path / "run"
    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(tmp_path / "cache"))
    code, out, err = in_proc(capsys, monkeypatch, "run", cfg, "--limit", "2", "--out", run,
                             "--no-progress")
    assert code == 0, err
    recs = store.read_records(run)
    assert sorted(r.sample.id for r in recs) == ["lm_eval:arc_easy/0", "lm_eval:arc_easy/1"]
    assert {r.sample.task for r in recs} == {"lm_eval:arc_easy"}
    info = store.read_run(run)
    assert info["cells"] == {"lm_eval:arc_easy": {"0-shot": 2}}
    assert info["spec"]["limit"] == 2 and info["templates"] == {"lm_eval:arc_easy": "raw"}
    assert "lm_eval:arc_easy" in out and "2/2 samples scored" in out
    # the same command again: finished, nothing asked, nothing written
    before = (run / store.SAMPLES).read_bytes()
    code, out, err = in_proc(capsys, monkeypatch, "run", cfg, "--limit", "2", "--out", run,
                             "--no-progress")
    assert code == 0 and (run / store.SAMPLES).read_bytes() == before
    code, out, err = in_proc(capsys, monkeypatch, "report", run, "--out", tmp_path / "rep")
    assert code == 0, err
    assert "lm_eval:arc_easy" in (tmp_path / "rep" / "index.html").read_text(encoding="utf-8")
    code, out, err = in_proc(capsys, monkeypatch, "gate", "--baseline", run, "--candidate",
                             run)
    assert code == 0, out + err
    assert "acc" in out
