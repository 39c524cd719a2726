"""OpenAI's MRCR read from files in its published schema (which these tests build): its
grade against OpenAI's own code, the reader's checks, binning by the model's tokens, the
needle counts as subsets, and rows over the window skipped and listed, never truncated."""

from __future__ import annotations

import json
import random
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import pytest
from clirun import in_proc, one_line_error
from servers import require

from evalkit.backends import make_backend
from evalkit.report.html import build_report
from evalkit.results import store
from evalkit.runner import execute
from evalkit.runner.config import build_spec
from evalkit.tasks import mrcr

RANDOM = "mWEa9DrPT3"
TOPICS = ("tapirs", "rivers", "lanterns", "glaciers", "violins")
FORMS = ("poem", "short essay", "email")


def openai_grade(response: str, answer: str, random_string_to_prepend: str) -> float:
    """The grader of openai/mrcr's dataset card, as published."""
    if not response.startswith(random_string_to_prepend):
        return 0
    response = response.removeprefix(random_string_to_prepend)
    answer = answer.removeprefix(random_string_to_prepend)
    return float(SequenceMatcher(None, response, answer).ratio())


def mrcr_row(seed: int, turns: int, n_needles: int = 2, random_string: str = RANDOM,
             words: int = 12) -> dict[str, Any]:
    """A row in MRCR's schema: `turns` requests and answers, `n_needles` of them the same
    request, the last user turn asking for one of those with a random string."""
    rng = random.Random(seed)
    ask = f"write a {rng.choice(FORMS)} about {rng.choice(TOPICS)}"
    spots = sorted(rng.sample(range(turns), n_needles))
    messages, needles = [], []
    for t in range(turns):
        request = ask if t in spots else f"write a {rng.choice(FORMS)} about {rng.choice(TOPICS)}"
        if t not in spots and request == ask:
            request += " at night"
        reply = " ".join(rng.choice(("moss", "stone", "light", "river", "wind", "quiet", "old",
                                     "bright", "slow", "green")) for _ in range(words))
        messages += [{"role": "user", "content": request},
                     {"role": "assistant", "content": reply}]
        if t in spots:
            needles.append((len(messages) - 1, reply))
    k = rng.randrange(n_needles)
    ordinal = ("1st", "2nd", "3rd", "4th", "5th", "6th", "7th", "8th")[k]
    messages.append({"role": "user", "content": (
        f"Prepend {random_string} to the {ordinal} (1 indexed) {ask.removeprefix('write a ')}. "
        "Do not include any other text in your response.")})
    index, reply = needles[k]
    prompt = json.dumps(messages)
    return {"prompt": prompt, "answer": random_string + reply,
            "random_string_to_prepend": random_string, "n_needles": n_needles,
            "desired_msg_index": index, "total_messages": len(messages),
            "n_chars": len(prompt), "date_added": "04-12-2025"}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path)
    return path


# -- the grade -----------------------------------------------------------------------------

@pytest.mark.parametrize("response", [
    RANDOM + "moss stone light", RANDOM + "moss stone", "moss stone light",
    " " + RANDOM + "moss stone light", RANDOM, "", RANDOM + "entirely different words"])
def test_grade_is_openais(response: str) -> None:
    answer = RANDOM + "moss stone light"
    assert mrcr.grade(response, answer, RANDOM) == openai_grade(response, answer, RANDOM)


def test_bins_are_mrcrs_eight_by_upper_edge() -> None:
    assert mrcr.BINS == (8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576)
    assert [mrcr.bin_of(n) for n in (100, 8192, 8193, 1048576, 1048577)] == [
        8192, 8192, 16384, 1048576, None]
    assert mrcr.edge_of("16k") == mrcr.edge_of("16K") == 16384
    assert mrcr.edge_of("1m") == mrcr.edge_of(1048576) == 1048576
    with pytest.raises(ValueError, match="not one of MRCR's bins"):
        mrcr.edge_of("12k")


# -- the reader ----------------------------------------------------------------------------

def test_parquet_and_jsonl_read_the_same(tmp_path: Path) -> None:
    rows = [mrcr_row(i, 6) for i in range(3)]
    from evalkit.tasks.importers import load_mrcr

    a = load_mrcr([write_parquet(tmp_path / "2needle.parquet", rows)])
    b = load_mrcr([write_jsonl(tmp_path / "2needle.jsonl", rows)])
    assert [(c.messages, c.answer, c.n_needles) for c in a] == [
        (c.messages, c.answer, c.n_needles) for c in b]
    assert a[0].messages[-1].role == "user" and len(a[0].messages) == 13
    assert a[0].desired_msg_index == rows[0]["desired_msg_index"]


@pytest.mark.parametrize("change,needle", [
    ({"prompt": "not json"}, "field 'prompt' is not JSON"),
    ({"prompt": json.dumps([{"role": "robot", "content": "x"}])}, "message 0"),
    ({"prompt": json.dumps([{"role": "user", "content": "a"},
                            {"role": "assistant", "content": "b"}])}, "must end with the user"),
    ({"answer": "no random string first"}, "field 'answer' must be text that starts with"),
    ({"n_needles": "two"}, "field 'n_needles' must be a whole number"),
    ({"random_string_to_prepend": None}, "random_string_to_prepend"),
])
def test_a_bad_row_is_one_line_naming_file_row_and_field(
        tmp_path: Path, change: dict[str, Any], needle: str,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [mrcr_row(0, 4), {**mrcr_row(1, 4), **change}]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    code, _, err = in_proc(capsys, monkeypatch, "run", "--task", "mrcr", "--backend",
                           "scripted", "--model", "x", "--out", tmp_path / "run",
                           "--data", f"mrcr={data}", "--no-progress")
    one_line_error(code, err, "rows.jsonl:2", needle)
    assert not (tmp_path / "run" / "samples.jsonl").exists()


def test_missing_data_says_what_to_pass(capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    code, _, err = in_proc(capsys, monkeypatch, "run", "--task", "mrcr", "--backend",
                           "scripted", "--model", "x", "--out", tmp_path / "run",
                           "--no-progress")
    one_line_error(code, err, "mrcr", "data", "2needle.parquet")
    code, _, err = in_proc(capsys, monkeypatch, "run", "--backend", "scripted", "--model",
                           "x", "--out", tmp_path / "run", "--no-progress",
                           "--data", f"mrcr={tmp_path / 'nothing.parquet'}")
    one_line_error(code, err, "MRCR data not found", "nothing.parquet")
    code, _, err = in_proc(capsys, monkeypatch, "run", "--backend", "scripted", "--model",
                           "x", "--out", tmp_path / "run", "--data", "mrcr")
    one_line_error(code, err, "--data mrcr: write TASK=PATH")


# -- through the runner --------------------------------------------------------------------

def _rows_in_two_bins(tmp_path: Path) -> Path:
    """2- and 4-needle rows: short ones (the 8k bin by whitespace tokens) and long ones
    (16k), in two files of one folder."""
    folder = tmp_path / "mrcr"
    folder.mkdir()
    short = [mrcr_row(i, 8, 2) for i in range(3)] + [mrcr_row(10 + i, 8, 4) for i in range(2)]
    long = [mrcr_row(20 + i, 400, 2, words=25) for i in range(2)]
    write_parquet(folder / "2needle.parquet", [short[0], long[0], short[1], short[2], long[1]])
    write_jsonl(folder / "4needle.jsonl", short[3:])
    return folder


def test_a_run_bins_by_the_models_tokens_and_grades_each_row(tmp_path: Path) -> None:
    folder = _rows_in_two_bins(tmp_path)
    first = json.loads((folder / "4needle.jsonl").read_text().splitlines()[0])
    reply = first["answer"]  # a right answer to one row; a partial match for the others
    spec = build_spec({"model": "x", "backend": "scripted", "backend_options": {"reply": reply},
                       "samples": 10, "tasks": [{"mrcr": {"data": [str(folder)]}}]})
    result = execute.run(spec, results_root=tmp_path / "results", progress=False)
    records = {r.sample.id: r for r in store.read_records(result.run_dir)}
    cases = {f"mrcr/{c.source}/{c.row}": c for c in mrcr.load_mrcr([folder])}
    assert set(records) == set(cases)
    for sid, r in records.items():
        case = cases[sid]
        assert r.sample.messages == case.messages  # sent whole, never cut
        assert r.sample.cell == mrcr.bin_of(r.sample.input_tokens)
        assert r.sample.subsets == (f"{case.n_needles}needle",)
        assert r.scores["match_ratio"] == openai_grade(reply, case.answer, case.random_string)
    assert {r.sample.cell for r in records.values()} == {8192, 16384}
    assert any(r.scores["match_ratio"] == 1.0 for r in records.values())
    rows = {(row.length, row.subset, row.metric): row for row in result.summary.rows}
    assert rows[(8192, "4needle", "match_ratio")].n == 2
    assert rows[(16384, "all", "match_ratio")].kind == "continuous"
    assert rows[(8192, "all", "prefixed")].n == 5


def test_samples_and_bins_pick_rows_in_file_order(tmp_path: Path) -> None:
    folder = _rows_in_two_bins(tmp_path)
    spec = build_spec({"model": "x", "backend": "scripted", "samples": 1,
                       "tasks": [{"mrcr": {"data": [str(folder)], "bins": ["8k"],
                                           "needles": [2]}}]})
    backend = make_backend("scripted", "x", {})
    samples = execute.plan_samples(spec, backend, backend.tokenizer())
    assert [s.id for s in samples] == ["mrcr/2needle.parquet/0"]


def test_rows_over_the_window_are_skipped_and_listed(tmp_path: Path) -> None:
    folder = _rows_in_two_bins(tmp_path)
    spec = build_spec({"model": "x", "backend": "scripted",
                       "backend_options": {"context_window": 9000}, "samples": 10,
                       "tasks": [{"mrcr": {"data": [str(folder)], "max_new_tokens": 64}}]})
    logged: list[str] = []
    result = execute.run(spec, results_root=tmp_path / "results", progress=False,
                         log=logged.append)
    info = store.read_run(result.run_dir)
    records = store.read_records(result.run_dir)
    rows = sorted(k for k in info["skipped"] if not k.startswith("mrcr/bin/"))
    assert rows == ["mrcr/2needle.parquet/1", "mrcr/2needle.parquet/4"]
    assert all("over the window (9000)" in info["skipped"][k] for k in rows)
    # the bins past the window are said once each, their rows never read
    bins = sorted(k for k in info["skipped"] if k.startswith("mrcr/bin/"))
    assert bins == sorted(f"mrcr/bin/{b // 1024}k" for b in mrcr.BINS[2:])
    assert len(records) == info["n_samples"] == 5 and result.summary.status == "complete"
    assert any("8 samples skipped, not truncated" in line for line in logged)
    page = build_report([result.run_dir], tmp_path / "report").read_text()
    assert "8 samples left out, not truncated" in page
    assert "mrcr/2needle.parquet/4</code>: " in page


@pytest.mark.engine
def test_smollm2_answers_mrcr_rows_rendered_by_its_chat_template(tmp_path: Path) -> None:
    """The real engine: SmolLM2-135M-Instruct (llama.cpp) reads each conversation rendered
    by its own chat template (ChatML), counted by its own tokenizer, and is graded."""
    require("llama_cpp", "evalkit[llamacpp]")
    data = write_jsonl(tmp_path / "2needle.jsonl", [mrcr_row(i, 6) for i in range(2)])
    spec = build_spec({"model": "smollm2-135m", "backend": "llamacpp", "samples": 5,
                       "tasks": [{"mrcr": {"data": [str(data)], "max_new_tokens": 48}}]})
    result = execute.run(spec, results_root=tmp_path / "results", progress=False)
    records = store.read_records(result.run_dir)
    assert len(records) == 2
    for r in records:
        assert r.ok and r.sample.cell == 8192
        assert r.sample.input_tokens == r.response.input_tokens
        assert r.sent is not None and r.sent["after"].endswith("<|im_start|>assistant\n")
        assert r.sent["before"].count("<|im_start|>assistant\n") == 6  # every earlier turn
        assert 0.0 <= r.scores["match_ratio"] <= 1.0
        assert r.scores["match_ratio"] == openai_grade(
            r.response.text or "", r.sample.targets[0],
            str(r.sample.meta["random_string_to_prepend"]))
