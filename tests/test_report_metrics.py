"""Reports, show and compare over every metric a run carries, not only "accuracy".

The runs here are written through evalkit.results.store as a leaderboard run writes them: records
whose scores carry acc and acc_norm (0/1), or TruthfulQA's mc2 score, which lm-eval names
"acc" too but is continuous; MMLU subjects as subsets; each task at its few-shot bin; and
summary rows as the runner derives them (evalkit.results.read.summary_of: MMLU's unweighted mean
over subjects, the average of the four tasks), beside a long-context task with lengths.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evalkit.cli import app
from evalkit.report.compare import compare_runs, format_compare
from evalkit.report.html import build_index, build_report
from evalkit.report.tables import format_table
from evalkit.results import store
from evalkit.results.read import summary_of
from evalkit.results.summary import aggregate
from evalkit.stats.gate import paired_t, welch
from evalkit.stats.intervals import interval, mean_interval, wilson
from evalkit.tasks.lm_eval.leaderboard import MMLU_SUBJECTS
from evalkit.types import Record, Response, Sample, SummaryRow

PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
SUBJECTS = list(MMLU_SUBJECTS)


SHOTS = {"arc_challenge": 25, "hellaswag": 10, "truthfulqa_mc2": 0, "mmlu": 5}


def _record(model: str, task: str, sid: str, scores: dict[str, float], *,
            target_tokens: int | None = None, subsets: tuple[str, ...] = (),
            text: str = "") -> Record:
    meta: dict[str, object] = {"subsets": list(subsets)} if subsets else {}
    if task in SHOTS:
        meta["bin"] = f"{SHOTS[task]}-shot"
    sample = Sample(id=sid, task=task, prompt=f"Question {sid}?", targets=(" A",),
                    target_tokens=target_tokens, input_tokens=target_tokens or 120,
                    template="raw", max_new_tokens=0 if target_tokens is None else 10,
                    meta=meta)
    # a leaderboard sample is a loglikelihood one: a log-probability, no text to parse
    response = Response(text=text, latency_s=0.01,
                        logprob=-1.5 if target_tokens is None else None)
    return Record(sample=sample, response=response, scores=scores,
                  model=model, prompt_sha256="0" * 64, cache_key="0" * 64,
                  parsed=None if target_tokens is None else text)


def _records(model: str, skill: float, seed: int) -> list[Record]:
    """A leaderboard run plus passkey at two lengths; `skill` moves every score."""
    rng = random.Random(seed)

    def hit(p: float) -> float:
        return 1.0 if rng.random() < p else 0.0

    out = []
    for task, n in (("arc_challenge", 120), ("hellaswag", 120)):
        for i in range(n):
            out.append(_record(model, task, f"{task}/{i}", {"acc": hit(skill - 0.05),
                                                            "acc_norm": hit(skill)},
                               text=PAYLOAD if i == 0 else ""))
    for i in range(80):  # continuous: a probability mass in [0, 1], named "acc" by lm-eval
        mc2 = min(1.0, max(0.0, rng.gauss(skill - 0.1, 0.15)))
        out.append(_record(model, "truthfulqa_mc2", f"truthfulqa_mc2/{i}", {"acc": mc2}))
    for j, subject in enumerate(SUBJECTS):  # the harder subjects are the bigger ones:
        for i in range(9 if j % 2 else 3):      # the pooled mean is below the unweighted one
            p = skill - 0.2 if j % 2 else skill + 0.1
            out.append(_record(model, "mmlu", f"mmlu/{subject}/{i}", {"acc": hit(p)},
                               subsets=(subject,)))
    for length in (1024, 2048):
        for i in range(6):
            out.append(_record(model, "passkey", f"passkey/{length}/0/{i}",
                               {"accuracy": hit(skill)}, target_tokens=length, text="12345"))
    return out


def write_run(folder: Path, model: str, skill: float, seed: int) -> Path:
    """A finished run folder, written through evalkit.results.store as the runner writes one."""
    records = _records(model, skill, seed)
    store.prepare_run_dir(folder)
    store.write_run(folder, {"run_id": folder.name, "spec_hash": f"{seed:06d}abcdef",
                             "n_samples": len(records), "model_label": model,
                             "spec": {"model": model, "backend": "scripted", "seed": seed}})
    store.append_records(folder, records)
    store.write_summary(folder, summary_of(folder, store.read_run(folder), records))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("runs")
    return (write_run(base / "run-a", "model-a", 0.55, seed=1),
            write_run(base / "run-b", "model-b", 0.85, seed=2))


def _row(run: Path, task: str, metric: str) -> SummaryRow:
    summary = store.read_summary(run)
    assert summary is not None
    return next(r for r in summary.rows
                if (r.task, r.metric, r.subset) == (task, metric, "all"))


def test_the_synthetic_run_holds_what_the_report_must_show(runs: tuple[Path, Path]) -> None:
    a, _ = runs
    summary = store.read_summary(a)
    assert summary is not None
    records = store.read_records(a)
    pooled = statistics.fmean(r.scores["acc"] for r in records if r.sample.task == "mmlu")
    unweighted = _row(a, "mmlu", "acc").value
    assert abs(pooled - unweighted) > 0.01  # the report cannot pass by pooling the samples
    assert {r.metric for r in summary.rows} == {"acc", "acc_norm", "accuracy", "average"}
    assert {r.length for r in summary.rows if r.task == "hellaswag"} == {"10-shot"}


def test_html_report_renders_every_metric_and_the_leaderboard(runs: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    a, _ = runs
    page = build_report([a], tmp_path / "rep")
    html = page.read_text()
    # the long-context table, by length, as before
    assert "Accuracy by length" in html
    # the leaderboard table: one line per (task, metric), the average set apart and last
    lb = html.split('<table class="results leaderboard">', 1)[1].split("</table>", 1)[0]
    lines = [(x.split('data-task="', 1)[1].split('"', 1)[0],
              x.split('data-metric="', 1)[1].split('"', 1)[0])
             for x in lb.split("<tr")[2:]]
    assert lines == [("arc_challenge", "acc"), ("arc_challenge", "acc_norm"),
                     ("hellaswag", "acc"), ("hellaswag", "acc_norm"),
                     ("truthfulqa_mc2", "acc"), ("mmlu", "acc"), ("leaderboard-v1", "average")]
    assert 'class="average"' in lb
    mmlu, avg = _row(a, "mmlu", "acc"), _row(a, "leaderboard-v1", "average")
    assert f"<b>{mmlu.value:.4f}</b>" in lb  # the unweighted mean, as the summary gives it
    assert f"<b>{avg.value:.4f}</b>" in lb
    mc2 = _row(a, "truthfulqa_mc2", "acc")
    assert not math.isnan(mc2.ci_low) and f"[{mc2.ci_low:.4f}, {mc2.ci_high:.4f}]" in lb
    assert "57 subsets" in lb and all(f"<td>{s}</td>" in html for s in SUBJECTS)
    # no plot for a task without a length axis; the long-context task keeps its own
    plots = sorted(p.name for p in (tmp_path / "rep" / "plots").iterdir())
    assert plots == ["accuracy_passkey.png", "accuracy_passkey.svg", "passkey_depth_0.png",
                     "passkey_depth_0.svg"]
    # the sample browser: every score of every sample, the outcome by the task's metric
    data = (tmp_path / "rep" / "samples.js").read_text()
    samples = json.loads(data.split("=", 1)[1].rstrip(";\n"))
    by_task = {s["task"]: s for s in samples}
    assert set(by_task["arc_challenge"]["scores"]) == {"acc", "acc_norm"}
    assert by_task["truthfulqa_mc2"]["outcome"] == "scored"
    assert {s["outcome"] for s in samples if s["task"] == "hellaswag"} == {"correct", "wrong"}
    assert "</script>" not in data and "<script>window.__pwned" not in html


def test_a_run_without_lengths_has_no_plots_section(tmp_path: Path) -> None:
    records = [r for r in _records("lb-only", 0.6, 3) if r.sample.task != "passkey"]
    folder = tmp_path / "lb"
    store.prepare_run_dir(folder)
    store.write_run(folder, {"run_id": "lb", "spec_hash": "x" * 12, "n_samples": len(records),
                             "model_label": "lb-only", "spec": {}})
    store.append_records(folder, records)  # no summary.json: rows rebuilt from the records
    html = build_report([folder], tmp_path / "rep").read_text()
    assert 'id="plots"' not in html and "by length</h2>" not in html
    assert not (tmp_path / "rep" / "plots").exists()
    for task, metric in (("arc_challenge", "acc"), ("arc_challenge", "acc_norm"),
                         ("truthfulqa_mc2", "acc"), ("mmlu", "acc")):
        assert f'data-task="{task}" data-metric="{metric}"' in html
    # rows rebuilt from the records are the writer's: the unweighted MMLU mean, the average
    rows = summary_of(folder, store.read_run(folder), records).rows
    avg = next(r for r in rows if (r.task, r.metric) == ("leaderboard-v1", "average"))
    assert f"{avg.value:.4f}" in html and 'data-task="leaderboard-v1"' in html


def test_a_metric_outside_0_1_is_shown_as_a_number_not_a_percentage(tmp_path: Path) -> None:
    """passkey_ll's logprob (a mean log-probability) beside its accuracy."""
    records = [_record("m", "passkey_ll", f"passkey_ll/1024/{i}",
                       {"accuracy": 1.0, "logprob": -3.0 - i}, target_tokens=1024)
               for i in range(3)]
    folder = tmp_path / "ll"
    store.prepare_run_dir(folder)
    store.write_run(folder, {"run_id": "ll", "spec_hash": "y" * 12, "n_samples": 3,
                             "model_label": "m", "spec": {}})
    store.append_records(folder, records)
    html = build_report([folder], tmp_path / "rep").read_text()
    assert "<b>-4.00</b>" in html and "%" not in html.split('data-metric="logprob"', 1)[1][:600]
    assert "<b>100%</b>" in html


def test_index_lists_a_score_per_task_and_metric(runs: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    results = tmp_path / "results"
    for run in runs:
        shutil.copytree(run, results / run.name)
    html = build_index(results, tmp_path / "idx").read_text()
    a = runs[0]
    mmlu = _row(a, "mmlu", "acc")
    assert f"mmlu acc {mmlu.value:.0%}" in html  # the unweighted mean, not the pooled one
    for tag in ("arc_challenge acc_norm", "truthfulqa_mc2 acc", "passkey accuracy",
                "leaderboard-v1 average"):
        assert tag in html


def test_show_prints_every_metric_and_the_leaderboard(runs: tuple[Path, Path]) -> None:
    a, _ = runs
    res = CliRunner().invoke(app, ["show", str(a)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "accuracy by length" in out and "scores (tasks without a length axis" in out
    for task, metric in (("arc_challenge", "acc_norm"), ("hellaswag", "acc_norm"),
                         ("truthfulqa_mc2", "acc"), ("mmlu", "acc"),
                         ("leaderboard-v1", "average")):
        row = _row(a, task, metric)
        line = next(x for x in out.splitlines() if x.split()[:2] == [task, metric])
        assert f"{row.value:.4f}" in line and f"n={row.n}" in line
    assert "(57 subsets)" in out
    # the average is the last line, below a rule
    lines = out.rstrip().splitlines()
    assert lines[-1].startswith("leaderboard-v1") and set(lines[-2]) == {"-"}


def test_format_table_of_a_long_context_run_is_unchanged_in_shape() -> None:
    rows = aggregate(r for r in _records("m", 0.7, 4) if r.sample.task == "passkey")
    text = format_table(rows)
    assert text.splitlines()[0] == "accuracy by length"
    assert "leaderboard" not in text
    assert [x.split()[1] for x in text.splitlines()[3:]] == ["1k", "2k"]


def test_compare_gives_deltas_per_metric_with_fitting_tests(runs: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    a, b = runs
    la, lb, rows = compare_runs(a, b, tmp_path / "plots")
    assert (la, lb) == ("model-a", "model-b")
    cells = {(r.task, r.subset, r.metric): r for r in rows}
    # every metric of every task, every MMLU subject included
    assert {m for (_, _, m) in cells} == {"acc", "acc_norm", "accuracy", "average"}
    assert sum(1 for (t, s, _) in cells if t == "mmlu" and s != "all") == 57
    for key, test in (
        (("arc_challenge", "all", "acc_norm"), "mcnemar"),    # 0/1 scores, same ids
        (("hellaswag", "all", "acc"), "mcnemar"),
        (("truthfulqa_mc2", "all", "acc"), "paired-t"),       # continuous, same sample ids
        (("mmlu", "all", "acc"), "z-ci"),                     # unweighted mean of means
        (("leaderboard-v1", "all", "average"), "z-ci"),       # derived: no samples of its own
    ):
        r = cells[key]
        assert r.test == test, (key, r.test)
        assert r.a is not None and r.b is not None and r.delta is not None
        assert r.delta == pytest.approx(r.b.value - r.a.value)
    # model-b is much better: the big cells are significant and said so
    for key in (("arc_challenge", "all", "acc_norm"), ("truthfulqa_mc2", "all", "acc"),
                ("mmlu", "all", "acc"), ("leaderboard-v1", "all", "average")):
        assert cells[key].significant and cells[key].verdict == "better", key
    # "acc" is 0/1 for arc but a continuous score for truthfulqa_mc2: kinds are per task
    assert cells[("truthfulqa_mc2", "all", "acc")].kind == "continuous"
    assert cells[("arc_challenge", "all", "acc")].kind == "binary"
    # a small MMLU subject is binary and paired: exact McNemar, whatever its size
    small = cells[("mmlu", SUBJECTS[0], "acc")]
    assert small.test == "mcnemar" and small.kind == "binary"
    # the long-context task keeps its plot; the leaderboard tasks get none
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "compare_passkey.png", "compare_passkey.svg"]
    text = format_compare(la, lb, rows)
    for task, metric in (("arc_challenge", "acc_norm"), ("truthfulqa_mc2", "acc"),
                         ("mmlu", "acc"), ("leaderboard-v1", "average"), ("passkey", "accuracy")):
        line = next(x for x in text.splitlines() if x.split()[0] == task
                    and metric in x.split())
        r = cells[(task, "all", metric)] if task != "passkey" else next(
            c for c in rows if c.task == "passkey")
        assert f"{r.delta:+.3f}" in line


def test_compare_cli_prints_deltas_per_metric(runs: tuple[Path, Path]) -> None:
    a, b = runs
    res = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert res.exit_code == 0, res.output
    for needle in ("acc_norm", "truthfulqa_mc2", "paired-t", "z-ci", f"mmlu:{SUBJECTS[56]}",
                   "leaderboard-v1"):
        assert needle in res.output, needle
    assert "welch-t = Welch's t-test" in res.output  # the legend names every test


def test_welch_when_the_samples_do_not_pair(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "model-a", 0.6, seed=5)
    b = tmp_path / "b"
    records = [r for r in _records("model-b", 0.6, seed=6)
               if not r.sample.id.endswith("/0")]  # other ids: no pairs
    store.prepare_run_dir(b)
    store.write_run(b, {"run_id": "b", "spec_hash": "y" * 12, "n_samples": len(records),
                        "model_label": "model-b", "spec": {}})
    store.append_records(b, records)
    rows = compare_runs(a, b)[2]
    mc2 = next(r for r in rows if (r.task, r.subset, r.metric) == ("truthfulqa_mc2", "all",
                                                                    "acc"))
    assert mc2.test == "welch-t" and mc2.p_value is not None and 0.0 <= mc2.p_value <= 1.0
    arc = next(r for r in rows if (r.task, r.subset, r.metric) == ("arc_challenge", "all",
                                                                    "acc_norm"))
    assert arc.test == "fisher"  # 0/1 scores that do not pair


def test_rows_of_the_leaderboard_writer_render_and_compare(tmp_path: Path) -> None:
    """A leaderboard-only run of each model, summarized by the runner: the score table ends
    in the average, MMLU is its unweighted mean, compare tests every cell (subjects too)."""
    from evalkit.tasks.lm_eval import leaderboard

    folders = []
    for name, skill, seed in (("lb-a", 0.5, 8), ("lb-b", 0.8, 9)):
        records = [r for r in _records(name, skill, seed) if r.sample.task != "passkey"]
        folder = tmp_path / name
        store.prepare_run_dir(folder)
        store.write_run(folder, {"run_id": name, "spec_hash": f"{seed:012d}",
                                 "n_samples": len(records), "model_label": name, "spec": {}})
        store.append_records(folder, records)
        store.write_summary(folder, summary_of(folder, store.read_run(folder), records))
        folders.append(folder)
    html = build_report(folders, tmp_path / "rep").read_text()
    lb = html.split('<table class="results leaderboard">', 1)[1].split("</table>", 1)[0]
    tasks = [x.split('data-task="', 1)[1].split('"', 1)[0] for x in lb.split("<tr")[2:]]
    assert tasks[-1] == leaderboard.AVERAGE_TASK and 'class="average"' in lb
    assert set(tasks[:-1]) == set(leaderboard.TASKS)
    summary = store.read_summary(folders[0])
    assert summary is not None
    mmlu = next(r for r in summary.rows if (r.task, r.subset) == ("mmlu", "all"))
    assert f"<b>{mmlu.value:.4f}</b>" in lb and "57 subsets" in lb
    assert 'id="plots"' not in html  # few-shot bins are no length axis
    rows = compare_runs(folders[0], folders[1])[2]
    tests = {(r.task, r.subset, r.metric): r.test for r in rows}
    assert tests[("truthfulqa_mc2", "all", "acc")] == "paired-t"
    assert tests[("mmlu", "all", "acc")] == "z-ci"
    assert tests[("arc_challenge", "all", "acc_norm")] == "mcnemar"
    assert tests[(leaderboard.AVERAGE_TASK, "all", leaderboard.AVERAGE_METRIC)] == "z-ci"
    assert sum(1 for task, subset, _ in tests if task == "mmlu" and subset != "all") == 57


# ---- degenerate cells ---------------------------------------------------------------------

def test_degenerate_samples_have_defined_p_values() -> None:
    assert paired_t([0.0, 0.0], 0.0, "two-sided") == 1.0
    assert paired_t([0.25, 0.25], 0.0, "two-sided") == 0.0  # the same shift on every sample
    assert paired_t([0.25, 0.25], 0.3) == 1.0  # ... but within the margin
    assert welch([1.0, 1.0], [1.0, 1.0], 0.0, "two-sided") == 1.0
    assert math.isnan(welch([0.5], [0.4, 0.6], 0.0))


def test_intervals_of_continuous_scores() -> None:
    lo, hi = mean_interval([0.2, 0.4, 0.6])
    assert lo == pytest.approx(0.4 - 1.959963984540054 * 0.2 / math.sqrt(3))
    assert hi == pytest.approx(0.4 + 1.959963984540054 * 0.2 / math.sqrt(3))
    assert all(math.isnan(x) for x in mean_interval([0.3]))
    rows = aggregate([_record("m", "t", f"t/{i}", {"mc2": v, "acc": float(v > 0.5)})
                      for i, v in enumerate((0.2, 0.7, 0.9))])
    by_metric = {r.metric: r for r in rows}
    assert (by_metric["acc"].ci_low, by_metric["acc"].ci_high) == wilson(2, 3)
    assert by_metric["mc2"].ci_low == pytest.approx(mean_interval([0.2, 0.7, 0.9])[0])
    # a mean of probabilities keeps its interval inside [0, 1]; a mean logprob does not
    assert interval([0.0, 0.05, 0.2]) == (0.0, pytest.approx(mean_interval([0.0, 0.05, 0.2])[1]))
    assert interval([-3.0, -2.0, -9.0]) == mean_interval([-3.0, -2.0, -9.0])


# ---- in the browser -------------------------------------------------------------------

@pytest.mark.browser
def test_leaderboard_report_in_chromium(runs: tuple[Path, Path], tmp_path: Path) -> None:
    from test_report import _chrome, _count, _select

    a, b = runs
    page = build_report([a, b], tmp_path / "rep", title=PAYLOAD)
    drv = _chrome()
    try:
        drv.get(page.as_uri())
        assert drv.execute_script("return window.__pwned === undefined")
        n_all = len(store.read_records(a)) + len(store.read_records(b))
        assert _count(drv) == f"{n_all} of {n_all} samples"
        _select(drv, "outcome", "scored")
        assert _count(drv).startswith(f"{2 * 80} of")
        _select(drv, "outcome", "")
        _select(drv, "task", "arc_challenge")
        cards = drv.find_elements("css selector", "#sample-list article")
        scores = cards[0].find_element("css selector", ".scores").text
        assert "acc_norm" in scores and "acc " in scores
        outputs = [e.text for e in drv.find_elements("css selector", "#sample-list .output")]
        assert any("<script>window.__pwned=1</script>" in o for o in outputs)  # text, not markup
        assert not drv.find_elements("css selector", "#sample-list img, #sample-list script")
        # both models' leaderboard columns, the average last
        heads = [e.text for e in drv.find_elements(
            "css selector", "table.leaderboard thead th")]
        assert heads == ["task", "metric", "model-a", "model-b"]
        last = drv.find_elements("css selector", "table.leaderboard tbody tr")[-1]
        assert last.get_attribute("data-task") == "leaderboard-v1"
        assert drv.execute_script("return window.__pwned === undefined")
    finally:
        drv.quit()
