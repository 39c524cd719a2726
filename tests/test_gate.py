"""The regression gate (evalkit gate) and the read side it stands on (evalkit.results.read).

Runs are written through evalkit.results.store with chosen outcomes per sample, so each test
knows which cells lost what. The tests themselves are checked against their definitions
(scipy, statsmodels) and their false-alarm rate by simulation.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from typer.testing import CliRunner

from evalkit.cli import app
from evalkit.report.compare import compare_runs
from evalkit.report.html import build_report
from evalkit.results import store
from evalkit.results.read import MetricInfo, load_runs, paired_frame, read_run, upgrade_row
from evalkit.stats.gate import (
    cell_test,
    gate,
    holm,
    junit_xml,
    markdown,
    mcnemar_exact,
    tango_score,
    two_proportions,
)
from evalkit.types import Record, Response, Sample, SummaryRow

TASKS = ("passkey", "topics")


def _record(label: str, task: str, length: int, sid: str, correct: float | None,
            prompt: str = "p") -> Record:
    sample = Sample(id=sid, task=task, prompt=f"{prompt} {sid}", targets=("1",),
                    target_tokens=length, input_tokens=length, template="raw",
                    max_new_tokens=8, meta={})
    error = "server said no" if correct is None else None
    response = Response(text="1" if correct else "0", latency_s=0.01, error=error)
    import hashlib

    return Record(sample=sample, response=response,
                  scores={} if correct is None else {"accuracy": float(correct)},
                  model=label, prompt_sha256=hashlib.sha256(sample.prompt.encode()).hexdigest(),
                  cache_key="0" * 64)


def write_run(folder: Path, label: str, outcomes: Mapping[tuple[str, int], Sequence[float | None]],
              seed: int = 0, prompt: str = "p") -> Path:
    """A finished run: outcomes per (task, length), one per sample (None: an error)."""
    records = [_record(label, task, length, f"{task}/{length}/{seed}/{i}", c, prompt)
               for (task, length), cs in outcomes.items() for i, c in enumerate(cs)]
    store.prepare_run_dir(folder)
    store.write_run(folder, {"run_id": folder.name, "spec_hash": "x" * 12,
                             "n_samples": len(records), "model_label": label, "spec": {}})
    store.append_records(folder, records)
    from evalkit.results.read import build_summary

    store.write_summary(folder, build_summary(folder))
    return folder


def _outcomes(acc: Mapping[tuple[str, int], float], n: int, rng: random.Random
              ) -> dict[tuple[str, int], list[float | None]]:
    return {cell: [float(rng.random() < p) for _ in range(n)] for cell, p in acc.items()}


BASE = {("passkey", 1024): [1.0] * 20, ("passkey", 2048): [1.0] * 18 + [0.0] * 2,
        ("topics", 1024): [1.0] * 14 + [0.0] * 6}


def _snapshot(*folders: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns)
            for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


# ---- the tests, against their definitions ------------------------------------------------

def test_mcnemar_is_the_binomial_tail_of_the_discordant_pairs() -> None:
    assert mcnemar_exact(5, 0) == pytest.approx(0.5 ** 5)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(7, 3) == pytest.approx(float(stats.binom.sf(6, 10, 0.5)))
    assert mcnemar_exact(3, 7, "two-sided") == pytest.approx(
        float(stats.binomtest(3, 10, 0.5).pvalue))


@given(st.integers(0, 30), st.integers(0, 30), st.integers(0, 40))
@settings(max_examples=200, deadline=None)
def test_tango_at_margin_zero_is_mcnemars_z(lost: int, won: int, concordant: int) -> None:
    n = lost + won + concordant
    p = tango_score(lost, won, n, 0.0)
    if lost + won == 0:
        assert p == 1.0 if n == 0 else p in (0.0, 1.0)
    else:
        z = (lost - won) / math.sqrt(lost + won)
        assert p == pytest.approx(float(stats.norm.sf(z)), abs=1e-12)


@given(st.integers(0, 20), st.integers(0, 20), st.integers(1, 40),
       st.floats(0.01, 0.3))
@settings(max_examples=200, deadline=None)
def test_tango_is_a_p_value_and_a_wider_margin_forgives_more(lost: int, won: int,
                                                            concordant: int,
                                                            margin: float) -> None:
    n = lost + won + concordant
    p = tango_score(lost, won, n, margin)
    assert 0.0 <= p <= 1.0
    assert tango_score(lost, won, n, margin + 0.05) >= p - 1e-12
    assert tango_score(lost + 1, won, n + 1, margin) <= tango_score(lost, won, n + 1, margin) \
        + 1e-12


def test_unpaired_tests_are_scipy_and_statsmodels() -> None:
    assert two_proportions(18, 20, 10, 20, 0.0) == pytest.approx(
        float(stats.fisher_exact([[18, 2], [10, 10]], alternative="greater").pvalue))
    from statsmodels.stats.proportion import test_proportions_2indep

    want = test_proportions_2indep(18, 20, 10, 20, value=0.1, method="score", compare="diff",
                                   alternative="larger", correction=False).pvalue  # F-M
    assert two_proportions(18, 20, 10, 20, 0.1) == pytest.approx(float(want))
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


@pytest.mark.parametrize("margin", [0.0, 0.1])
def test_paired_tests_hold_their_size_at_the_null(margin: float) -> None:
    """Simulated pairs whose true loss is exactly the margin: the test rejects at most
    about alpha of the time (exact McNemar is conservative; Tango's is near nominal)."""
    rng = random.Random(1)
    n, trials, alpha = 60, 1500, 0.05
    p_lost, p_won = 0.1 + margin, 0.1  # loss = p_lost - p_won = margin
    rejected = 0
    for _ in range(trials):
        lost = won = 0
        for _ in range(n):
            u = rng.random()
            lost += u < p_lost
            won += p_lost <= u < p_lost + p_won
        p = mcnemar_exact(lost, won) if margin == 0 else tango_score(lost, won, n, margin)
        rejected += p < alpha
    assert rejected / trials <= alpha + 0.02


def test_unpaired_test_holds_its_size_at_the_null() -> None:
    rng = random.Random(2)
    rejected = 0
    for _ in range(1000):
        ka = sum(rng.random() < 0.7 for _ in range(40))
        kb = sum(rng.random() < 0.7 for _ in range(40))
        rejected += two_proportions(ka, 40, kb, 40, 0.0) < 0.05
    assert rejected / 1000 <= 0.05


# ---- the read side -----------------------------------------------------------------------

def test_summary_rows_carry_kind_successes_and_derived(tmp_path: Path) -> None:
    run = read_run(write_run(tmp_path / "a", "m", BASE))
    row = next(r for r in run.rows if (r.task, r.length) == ("topics", 1024))
    assert (row.kind, row.successes, row.n, row.derived) == ("binary", 14, 20, False)
    saved = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert saved["schema_version"] == 2 and saved["rows"][0]["successes"] is not None


def test_version_1_summaries_are_read_and_upgraded(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "a", "m", BASE)
    data = json.loads((folder / "summary.json").read_text())
    data["schema_version"] = 1
    for row in data["rows"]:
        for key in ("kind", "successes", "derived"):
            del row[key]
    alone = tmp_path / "v1"
    alone.mkdir()
    (alone / "summary.json").write_text(json.dumps(data))
    run = read_run(alone / "summary.json")
    topics = next(r for r in run.rows if r.task == "topics")
    assert (topics.kind, topics.successes, topics.derived) == ("binary", 14, False)
    # a whole version-1 run (records and summary) is read, gated and compared
    lines = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
    (folder / "samples.jsonl").write_text("".join(
        json.dumps({**x, "schema_version": 1}) + "\n" for x in lines))
    (folder / "summary.json").write_text(json.dumps(data))
    assert gate(folder, folder).passed and gate(alone / "summary.json", folder).passed
    assert all(r.a is not None and r.a.n == 20 for r in compare_runs(folder, alone)[2])
    # a value that is not k/n with Wilson's interval is tested by its interval
    odd = SummaryRow("m", "mmlu", "5-shot", "all", "acc", 0.4321, 0.40, 0.46, 100, 0, 50.0)
    assert upgrade_row(odd).derived and upgrade_row(odd).successes is None


def test_paired_frame_joins_by_sample_id_and_reports_changed_prompts(tmp_path: Path) -> None:
    a = read_run(write_run(tmp_path / "a", "m", BASE))
    b = read_run(write_run(tmp_path / "b", "m", BASE, prompt="q"))
    frame = paired_frame(a, b)
    assert len(frame) == 60 and frame["prompt_changed"].all()
    assert not paired_frame(a, a)["prompt_changed"].any()


def test_reading_never_writes_into_a_run(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "m", BASE)
    b = write_run(tmp_path / "b", "m2", BASE, seed=1)
    (a / "summary.json").unlink()  # a reader must not rebuild it
    before = _snapshot(a, b)
    gate(a, b)
    compare_runs(a, b)
    build_report([a, b], tmp_path / "rep")
    assert CliRunner().invoke(app, ["show", str(a)]).exit_code == 0
    assert CliRunner().invoke(app, ["gate", "--baseline", str(a), "--candidate", str(b)]
                              ).exit_code == 0
    assert _snapshot(a, b) == before


def test_compare_of_a_run_with_itself_counts_each_sample_once(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "m", BASE)
    la, lb, rows = compare_runs(a, a)
    assert la != lb
    assert all(r.a is not None and r.b is not None and r.a.n == r.b.n == 20 for r in rows
               if r.task == "passkey" and r.length == 1024)
    assert all(r.delta == 0 and not r.significant and r.test == "mcnemar" for r in rows)
    assert [run.label for run in load_runs([a, a])] == ["m@a#1", "m@a#2"]


# ---- the gate ----------------------------------------------------------------------------

def test_the_same_run_passes(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "m", BASE)
    result = gate(a, a)
    assert result.passed and result.exit_code == 0
    assert {v.test for v in result.verdicts} == {"mcnemar"}


def test_a_paired_drop_fails_its_cell_only(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "m", BASE)
    worse = dict(BASE)
    worse[("passkey", 2048)] = [0.0] * 10 + [1.0] * 8 + [0.0] * 2  # lost 10 pairs, won none
    b = write_run(tmp_path / "b", "m", worse)
    result = gate(a, b)
    assert not result.passed and result.exit_code == 1
    failed = {(v.task, v.length) for v in result.failed}
    assert failed == {("passkey", 2048)}
    v = result.failed[0]
    assert v.test == "mcnemar" and v.p == pytest.approx(0.5 ** 10)
    assert v.p_holm == pytest.approx(min(1.0, 3 * 0.5 ** 10))
    # a margin above the loss forgives it
    assert gate(a, b, margin=0.6).passed


def test_a_small_paired_drop_does_not_trip_the_gate(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "m", BASE)
    worse = dict(BASE)
    worse[("topics", 1024)] = [1.0] * 12 + [0.0] * 8  # 2 pairs lost
    assert gate(a, write_run(tmp_path / "b", "m", worse)).passed


def test_other_seeds_are_tested_unpaired(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "m", BASE)
    worse = dict(BASE)
    worse[("topics", 1024)] = [0.0] * 20
    result = gate(a, write_run(tmp_path / "b", "m", worse, seed=7))
    topics = next(v for v in result.verdicts if v.task == "topics")
    assert topics.test == "fisher" and topics.status == "fail" and topics.n_pairs == 0
    assert topics.p == pytest.approx(float(stats.fisher_exact(
        [[14, 6], [0, 20]], alternative="greater").pvalue))


def test_a_summary_json_alone_is_a_baseline(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "m", BASE)
    committed = tmp_path / "baselines" / "smoke"
    committed.mkdir(parents=True)
    shutil.copy(a / "summary.json", committed / "summary.json")
    same = gate(committed / "summary.json", a)
    assert same.passed and {v.test for v in same.verdicts} == {"fisher"}
    worse = dict(BASE)
    worse[("topics", 1024)] = [0.0] * 20
    b = write_run(tmp_path / "b", "m", worse)
    assert [v.task for v in gate(committed, b).failed] == ["topics"]


def test_a_missing_cell_and_errored_samples_fail(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "m", BASE)
    fewer = {k: v for k, v in BASE.items() if k != ("passkey", 2048)}
    fewer[("topics", 1024)] = [*BASE[("topics", 1024)][:-1], None]
    fewer[("lines", 1024)] = [1.0] * 5  # new in the candidate: said, not failed
    result = gate(a, write_run(tmp_path / "b", "m", fewer))
    status = {(v.task, v.length): v.status for v in result.verdicts}
    assert status == {("passkey", 1024): "pass", ("passkey", 2048): "missing",
                      ("topics", 1024): "errors", ("lines", 1024): "new"}
    assert result.exit_code == 1


def test_a_partial_candidate_fails(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "m", BASE)
    b = write_run(tmp_path / "b", "m", BASE)
    info = json.loads((b / "run.json").read_text())
    info["n_samples"] += 5  # planned more than it scored
    (b / "run.json").write_text(json.dumps(info))
    result = gate(a, b)
    assert result.exit_code == 1 and "partial" in result.problems[0]


def test_outputs_junit_markdown_and_the_step_summary(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    a = write_run(tmp_path / "a", "m", BASE)
    worse = dict(BASE)
    worse[("passkey", 2048)] = [0.0] * 20
    b = write_run(tmp_path / "b", "evil|<b>label</b>", worse)
    step = tmp_path / "step.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    res = CliRunner().invoke(app, ["gate", "--baseline", str(a), "--candidate", str(b),
                                   "--junit", str(tmp_path / "out" / "gate.xml"),
                                   "--markdown", str(tmp_path / "gate.md")])
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.output and "passkey" in res.output
    suite = ET.parse(tmp_path / "out" / "gate.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("3", "1")
    failing = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failing == ["passkey 2k accuracy"]
    md = (tmp_path / "gate.md").read_text()
    assert md.startswith("### evalkit gate: FAIL") and step.read_text() == "earlier step\n" + md
    result = gate(a, b)
    assert "<b>" not in markdown(result) and "<b>" not in junit_xml(result).replace(
        "&lt;b&gt;", "")


@pytest.mark.parametrize("args, needle", [
    (["--margin", "-0.1"], "--margin"),
    (["--alpha", "1.5"], "--alpha"),
    (["--metric", "bleu"], "--metric bleu"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], needle: str,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import evalkit.cli

    a = write_run(tmp_path / "a", "m", BASE)
    for extra, want in ((args, needle), ([], "does not exist")):
        cand = str(a) if extra else str(tmp_path / "nope")
        monkeypatch.setattr(sys, "argv", ["evalkit", "gate", "--baseline", str(a),
                                          "--candidate", cand, *extra])
        with pytest.raises(SystemExit) as exc:
            evalkit.cli.main()
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and want in err, err
    monkeypatch.setattr(sys, "argv", ["evalkit", "gate", "--baseline", str(a), "--candidate",
                                      str(a), "--junit", str(a / "gate.xml")])
    with pytest.raises(SystemExit) as exc:
        evalkit.cli.main()
    assert exc.value.code == 2 and "inside the run folder" in capsys.readouterr().err
    # nor over a baseline kept as summary.json alone, checked before anything is written
    alone = tmp_path / "baseline"
    alone.mkdir()
    shutil.copy(a / "summary.json", alone / "summary.json")
    kept = (alone / "summary.json").read_bytes()
    monkeypatch.setattr(sys, "argv", ["evalkit", "gate", "--baseline", str(alone / "summary.json"),
                                      "--candidate", str(a), "--junit", str(tmp_path / "g.xml"),
                                      "--markdown", str(alone / "summary.json")])
    with pytest.raises(SystemExit) as exc:
        evalkit.cli.main()
    assert exc.value.code == 2 and "inside the run folder" in capsys.readouterr().err
    assert (alone / "summary.json").read_bytes() == kept and not (tmp_path / "g.xml").exists()


def test_cell_test_picks_the_test_the_cell_allows() -> None:
    def row(value: float, n: int, successes: int | None, derived: bool = False,
            kind: str = "binary") -> SummaryRow:
        lo, hi = (value - 0.1, value + 0.1)
        return SummaryRow("m", "t", 1024, "all", "x", value, lo, hi, n, 0, 1.0,
                          kind, successes, derived)  # type: ignore[arg-type]

    binary = MetricInfo("binary")
    assert cell_test(row(0.9, 10, 9), row(0.5, 10, 5), binary, None, [], []).test == "fisher"
    assert cell_test(row(0.9, 10, 9), row(0.5, 10, 5), binary, None, [], [],
                     margin=0.1).test == "score"
    assert cell_test(row(0.9, 10, None, True), row(0.5, 10, None, True), binary, None, [],
                     []).test == "z-ci"
    cont = MetricInfo("continuous")
    assert cell_test(row(0.5, 3, None, kind="continuous"), row(0.4, 3, None, kind="continuous"),
                     cont, None, [0.5, 0.4, 0.6], [0.4, 0.3, 0.5]).test == "welch-t"


def test_runs_of_token_lengths_and_of_named_bins_gate_without_a_crash(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "m", BASE)
    records = [_record("m", "longqa", 0, f"longqa/all/0/{i}", 1.0) for i in range(5)]
    b = tmp_path / "b"
    store.prepare_run_dir(b)
    store.write_run(b, {"run_id": "b", "spec_hash": "y" * 12, "n_samples": 5,
                        "model_label": "m", "spec": {}})
    store.append_records(b, [Record(**{**r.__dict__, "sample": Sample(
        **{**r.sample.__dict__, "target_tokens": None, "meta": {"bin": "all"}})})
        for r in records])
    result = gate(a, b)
    assert {v.status for v in result.verdicts} == {"missing", "new"}
    assert result.exit_code == 1 and len(compare_runs(a, b)[2]) == 4


def test_a_candidate_cell_with_no_scored_value_fails(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "m", BASE)
    b = write_run(tmp_path / "b", "m", BASE)
    data = json.loads((b / "summary.json").read_text())
    data["rows"][0]["value"] = float("nan")
    alone = tmp_path / "cand"
    alone.mkdir()
    (alone / "summary.json").write_text(json.dumps(data))
    result = gate(a, alone / "summary.json")
    assert [v.status for v in result.verdicts].count("fail") == 1 and result.exit_code == 1
    assert result.n_tested == 2 and "Holm over 2 tested cells" in markdown(result).replace(
        "\\", "")


def test_margins_of_a_whole_proportion_or_more_never_fail_a_binary_cell() -> None:
    assert tango_score(22, 2, 24, 1.2) == 1.0
    assert two_proportions(20, 20, 0, 20, 1.0) == 1.0


def test_untrusted_labels_cannot_form_links_or_break_the_xml(tmp_path: Path) -> None:
    evil = "x](http://e.vil)![i](http://t/p.png)\x01`"
    a = write_run(tmp_path / "a", "m", {(evil, 1024): [1.0] * 10})
    b = write_run(tmp_path / "b", "m", {(evil, 1024): [0.0] * 10})
    result = gate(a, b)
    md = markdown(result)
    assert "](http" not in md and "![" not in md
    ET.fromstring(junit_xml(result).split("?>", 1)[1])  # parses: no control character
