"""The effective context length: its definition, in summary.json, `show`, the report (its
table and the mark on the length plot), `compare`, and the opt-in check of `gate`."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from clirun import in_proc, one_line_error
from test_gate import write_run

from evalkit.report.compare import compare_effective, compare_runs
from evalkit.report.html import build_report
from evalkit.results.effective import DEFAULT_THRESHOLD, effective_lengths, longest_passing
from evalkit.stats.gate import gate
from evalkit.types import EvalkitError, SummaryRow


def _row(length: int | str, value: float, lo: float, hi: float, task: str = "t",
         metric: str = "accuracy", subset: str = "all") -> SummaryRow:
    return SummaryRow(model="m", task=task, length=length, subset=subset, metric=metric,
                      value=value, ci_low=lo, ci_high=hi, n=10, n_errors=0,
                      input_tokens_mean=float(length) if isinstance(length, int) else 0.0)


def test_longest_passing_stops_at_the_first_length_below() -> None:
    assert longest_passing([(4096, 0.9), (8192, 0.86), (16384, 0.5)], 0.856) == 8192
    # a later length above the threshold again does not count: the score must stay up
    assert longest_passing([(4096, 0.9), (8192, 0.5), (16384, 0.9)], 0.856) == 4096
    assert longest_passing([(4096, 0.8), (8192, 0.9)], 0.856) is None
    assert longest_passing([(8192, 0.9), (4096, 0.9)], 0.856) == 8192  # order of lengths
    assert longest_passing([(4096, 0.856)], 0.856) == 4096  # at the threshold passes
    assert longest_passing([(4096, math.nan), (8192, 1.0)], 0.5) is None


def test_effective_lengths_by_scores_and_by_bounds() -> None:
    rows = [_row(4096, 0.95, 0.90, 0.99), _row(8192, 0.90, 0.80, 0.95),
            _row(16384, 0.80, 0.70, 0.90), _row(32768, 0.5, 0.4, 0.6),
            # other subsets and named bins take no part
            _row(65536, 1.0, 1.0, 1.0, subset="hard"), _row("long", 1.0, 1.0, 1.0),
            # a metric where lower is better is left out when told
            _row(4096, 0.1, 0.0, 0.2, metric="loss")]
    out = effective_lengths(rows, 0.856, lambda task, metric: metric != "loss")
    assert len(out) == 1
    e = out[0]
    assert (e.by_value, e.by_ci_low, e.by_ci_high) == (8192, 4096, 16384)
    assert (e.shortest, e.longest, e.threshold) == (4096, 32768, 0.856)
    assert effective_lengths(rows, 0.5, lambda t, m: m != "loss")[0].by_value == 32768
    with pytest.raises(EvalkitError):
        effective_lengths(rows, 1.5)


def test_missing_intervals_errored_lengths_and_unbounded_metrics() -> None:
    nan = math.nan
    # one sample of a continuous score has no interval: no bounds, said so
    [e] = effective_lengths([_row(4096, 0.9, nan, nan), _row(8192, 0.9, 0.8, 1.0)])
    assert (e.by_value, e.by_ci_low, e.by_ci_high, e.bounded) == (8192, None, None, False)
    # a length whose every sample errored is not measured
    [e] = effective_lengths([_row(4096, 0.9, 0.88, 0.95), _row(8192, nan, nan, nan)])
    assert (e.by_value, e.longest) == (4096, 4096)
    # a log-probability has no threshold to stay above
    assert effective_lengths([_row(4096, -3.2, -4.0, -2.0, metric="logprob")]) == []


def _by_length(good: dict[int, int], n: int = 40) -> dict[tuple[str, int], list[float | None]]:
    """A task 'passkey' scored `good[length]` of n right at each length (40 samples: at
    20, even 20 of 20 has a lower 95% bound below 0.856)."""
    return {("passkey", length): [1.0] * k + [0.0] * (n - k) for length, k in good.items()}


STRONG = {1024: 40, 2048: 40, 4096: 38, 8192: 20}  # effective 4k by the scores, 2k by bounds
WEAK = {1024: 40, 2048: 16, 4096: 10, 8192: 4}     # 1k by both


def test_summary_show_report_and_compare_give_the_effective_length(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    a = write_run(tmp_path / "a", "strong", _by_length(STRONG))
    b = write_run(tmp_path / "b", "weak", _by_length(WEAK))
    saved = json.loads((a / "summary.json").read_text())["effective"]
    assert [(e["task"], e["by_value"], e["by_ci_low"], e["longest"]) for e in saved] == [
        ("passkey", 4096, 2048, 8192)]  # 38/40's Wilson lower bound is 0.835

    code, out, err = in_proc(capsys, monkeypatch, "show", a)
    assert code == 0, err
    table = out[out.index("effective length"):]
    assert "stays >= 0.856" in table and "passkey" in table and "4k / 2k" in table
    code, out, _ = in_proc(capsys, monkeypatch, "show", a, "--threshold", "0.4")
    assert ">=8k / 4k" in out  # 20/40 passes 0.4; its lower bound (0.35) does not
    code, _, err = in_proc(capsys, monkeypatch, "show", a, "--threshold", "2")
    one_line_error(code, err, "--threshold 2", "between 0 and 1")

    page = build_report([a, b], tmp_path / "report").read_text()
    section = page[page.index('id="effective"'):page.index("</table>", page.index(
        'id="effective"'))]
    assert "<b>4k</b>" in section and "<b>1k</b>" in section and "by lower bound 2k" in section

    label_a, label_b, rows = compare_runs(a, b, tmp_path / "plots")
    eff = {e.model: e.by_value for e in compare_effective(rows)}
    assert eff == {label_a: 4096, label_b: 1024}
    code, out, err = in_proc(capsys, monkeypatch, "compare", a, b)
    assert code == 0, err
    assert "effective length" in out and "4k / 2k" in out and "1k / 1k" in out


def test_the_length_plot_marks_the_effective_length(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "strong", _by_length(STRONG))
    report = build_report([a], tmp_path / "report")
    svg = next((report.parent / "plots").glob("*passkey*.svg")).read_text()
    assert "effective 4k; by lower bound 2k" in svg
    assert "threshold 0.856" in svg
    bare = write_run(tmp_path / "c", "one", {("passkey", 1024): [1.0] * 5})
    svg = next((build_report([bare], tmp_path / "r2").parent / "plots").glob(
        "*passkey*.svg")).read_text()
    assert "effective" not in svg  # one length: nothing to mark


def test_gate_fails_a_fall_of_the_effective_length_only_when_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    base = write_run(tmp_path / "base", "m", _by_length(STRONG))
    # 4k, where the baseline's score passed, now 24/40: even its upper bound (0.74) falls
    # below the threshold
    fell = write_run(tmp_path / "fell", "m", _by_length({**STRONG, 4096: 24}))
    plain = gate(base, fell)
    assert plain.effective == []
    result = gate(base, fell, effective_threshold=DEFAULT_THRESHOLD)
    [verdict] = result.effective
    assert verdict.failed and "2k" in verdict.reason and result.exit_code == 1
    # within its interval: 32/40 at 4k (upper bound 0.90 >= 0.856) is no fall
    noisy = write_run(tmp_path / "noisy", "m", _by_length({**STRONG, 4096: 32}))
    result = gate(base, noisy, effective_threshold=DEFAULT_THRESHOLD)
    assert not result.effective[0].failed

    junit = tmp_path / "out" / "gate.xml"
    code, out, err = in_proc(capsys, monkeypatch, "gate", "--baseline", base, "--candidate",
                             fell, "--effective-length", "--junit", junit)
    assert code == 1, out + err
    assert "effective length passkey accuracy: 4k -> 2k: FAIL" in out
    assert "effective length: 1 of 1 fell" in out
    failures = ET.parse(junit).getroot().iter("failure")
    assert any(f.get("type") == "effective" for f in failures)
    code, out, err = in_proc(capsys, monkeypatch, "gate", "--baseline", base, "--candidate",
                             noisy, "--effective-length")
    assert code == 0, out + err
    code, out, err = in_proc(capsys, monkeypatch, "gate", "--baseline", base, "--candidate",
                             fell, "--effective-length", "--threshold", "-1")
    one_line_error(code, err, "threshold")
    # a candidate measured at fewer lengths did not fall: it was not measured
    short = write_run(tmp_path / "short", "m", _by_length({1024: 40, 2048: 40}))
    [verdict] = gate(base, short, effective_threshold=DEFAULT_THRESHOLD).effective
    assert verdict.failed and "not measured" in verdict.reason


def test_a_run_with_no_intervals_gated_against_itself_passes(tmp_path: Path) -> None:
    """One sample a length: no 95% interval anywhere, so the effective length's check is
    untested, not failed (as the cells are)."""
    one = write_run(tmp_path / "one", "m", {("passkey", 1024): [1.0], ("passkey", 2048): [1.0]})
    from evalkit.results.read import read_run

    assert not any(math.isnan(r.ci_low) for r in read_run(one).rows)  # Wilson at n=1
    cont = tmp_path / "cont"
    write_run(cont, "m", {("passkey", 1024): [0.5], ("passkey", 2048): [0.5]})
    result = gate(cont, cont, effective_threshold=0.4)
    assert result.exit_code == 0
    assert all(not e.failed for e in result.effective)
