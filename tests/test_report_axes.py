"""Heatmaps of a metric by a sample axis (TaskDef.axes) x length, for any task that declares
axes: named from the task and the axis, left out for a task this installation does not
know, and drawn on a scale of its own for a value that is not a rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit import build_spec, run
from evalkit.report.html import _axes_of, build_report
from evalkit.report.plots import axis_bin, axis_heatmap
from evalkit.types import Record, Response, Sample


def _record(i: int, meta: dict[str, Any], score: float, task: str = "made_up",
            target: int | None = 1024, error: str | None = None) -> Record:
    sample = Sample(id=f"{task}/{i}", task=task, prompt="p", targets=("t",),
                    target_tokens=target, input_tokens=target or 100, template="raw",
                    max_new_tokens=4, meta=meta)
    return Record(sample=sample, response=Response(text="t", error=error),
                  scores={} if error else {"m": score}, model="model", prompt_sha256="",
                  cache_key="")


def _texts(svg: Path) -> list[str]:
    """The text a plot's SVG draws (matplotlib writes each text as a comment beside it)."""
    return [line.strip()[5:-4] for line in svg.read_text().splitlines()
            if line.strip().startswith("<!-- ") and line.strip().endswith(" -->")]


def test_an_axis_heatmap_bins_the_axis_and_leaves_out_samples_without_a_usable_value(
        tmp_path: Path) -> None:
    records = [_record(0, {"where": 0.1}, 1.0), _record(1, {"where": 0.0}, 0.0),
               _record(2, {"where": 1}, 1.0), _record(3, {}, 1.0),
               _record(4, {"where": None}, 1.0), _record(5, {"where": 1.5}, 1.0),
               _record(6, {"where": "0.5"}, 1.0), _record(7, {"where": 0.5}, 1.0, target=None),
               _record(8, {"where": 0.5}, 1.0, error="timeout"),
               _record(9, {"where": 0.5}, 1.0, task="another")]
    paths = axis_heatmap(records, "model", "made_up", "where", "m", tmp_path / "h")
    assert paths is not None and [p.name for p in paths] == ["h.png", "h.svg"]
    texts = _texts(paths[1])
    assert "made_up m: model" in texts and "where" in texts  # an axis named as declared
    # 0.1, 0.0 and no value at all share the first bin; 1 has the last to itself
    assert texts.count("n=3") == 1 and texts.count("n=1") == 1
    assert "67%" in texts and "100%" in texts
    assert axis_bin(0.1) == 0.0 and axis_bin(0.9) == 1.0
    unusable = [_record(0, {"where": None}, 1.0), _record(1, {"where": -0.5}, 1.0)]
    assert axis_heatmap(unusable, "model", "made_up", "where", "m", tmp_path / "x") is None
    assert axis_heatmap(records, "other", "made_up", "where", "m", tmp_path / "y") is None
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


def test_a_value_beyond_0_1_is_shown_as_itself(tmp_path: Path) -> None:
    records = [_record(0, {"where": 0.0}, -2.5), _record(1, {"where": 1.0}, -0.5)]
    paths = axis_heatmap(records, "model", "made_up", "where", "m", tmp_path / "h")
    assert paths is not None
    texts = _texts(paths[1])
    assert "-2.50" in texts and "-0.50" in texts and "-250%" not in texts


def test_axes_come_from_the_task_and_an_unknown_task_has_none() -> None:
    assert _axes_of("passkey_ll") == ("depth",)
    assert _axes_of("no_such_task_here") == ()


def test_every_task_declaring_an_axis_gets_its_heatmaps(tmp_path: Path) -> None:
    data = {"name": "m", "model": "m", "backend": "scripted", "tokenizer": "whitespace",
            "backend_options": {"reply": "lookup", "loglikelihood": "oracle"}, "samples": 2,
            "lengths": [600], "cache": False,
            "tasks": [{"passkey": {"depths": [0.0, 1.0]}}, "passkey_ll", "lines"]}
    d = run(build_spec(data), out=tmp_path / "m", progress=False, log=lambda m: None).run_dir
    build_report([d], tmp_path / "rep")
    names = {p.name for p in (tmp_path / "rep" / "plots").iterdir() if p.suffix == ".png"}
    # one metric: TASK_AXIS_I, as ever; several: TASK_AXIS_I_METRIC; none for a task
    # without axes
    assert {n for n in names if "_depth_" in n} == {
        "passkey_depth_0.png", "passkey_ll_depth_0_accuracy.png",
        "passkey_ll_depth_0_logprob.png"}
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "passkey accuracy, depth x length: m" in html
    assert "passkey_ll logprob, depth x length: m" in html
