"""The sample browser for long haystacks: a task that knows its needles has them and its
question marked in the prompt as sent, with buttons that scroll to each; prompt files are
sized so that opening a long prompt loads only a few others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_report import _chrome, _page_data

from evalkit.report import html
from evalkit.report.html import build_report
from evalkit.runner.config import build_spec
from evalkit.runner.execute import run


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    drv = _chrome()
    yield drv
    drv.quit()


def _rows(report: Path) -> list[dict[str, Any]]:
    data = (report.parent / "samples.js").read_text()
    rows: list[dict[str, Any]] = json.loads(data.split("=", 1)[1].rstrip(";\n"))
    return rows


def test_rows_carry_the_marks_their_task_knows(tmp_path: Path) -> None:
    spec = build_spec({"model": "x", "backend": "scripted", "lengths": [1000], "samples": 1,
                       "tasks": ["passkey", "lines", "niah_multivalue", "vt", "cwe"]})
    d = run(spec, out=tmp_path / "run", progress=False, log=lambda m: None).run_dir
    rows = {r["task"]: r for r in _rows(build_report([d], tmp_path / "rep"))}
    assert rows["passkey"]["marks"][0][0] == "needle"
    assert rows["passkey"]["marks"][-1] == ["question", "What is the pass key?"]
    assert [k for k, _ in rows["niah_multivalue"]["marks"]] == ["needle"] * 4 + ["question"]
    assert len([k for k, _ in rows["vt"]["marks"] if k == "needle"]) == 5
    assert [k for k, _ in rows["lines"]["marks"]] == ["needle", "question"]
    assert rows["cwe"]["marks"] == []  # a task that names no needle marks nothing
    page_rows, parts = _page_data(tmp_path / "rep")
    for row, shown in zip(page_rows, parts, strict=True):  # every mark is text of the prompt
        assert all(text in "".join(shown) for _, text in row["marks"])


def test_prompt_files_hold_each_chunk_once_and_about_a_megabyte(tmp_path: Path) -> None:
    """Prompts sharing a haystack write it once; files stop near PROMPT_FILE_CHARS, so that
    opening one prompt loads about its own size."""
    spec = build_spec({"model": "x", "backend": "scripted", "lengths": [16000], "samples": 6,
                       "tasks": ["passkey", "niah_single_1", "niah_single_2"]})
    d = run(spec, out=tmp_path / "run", progress=False, log=lambda m: None).run_dir
    rep = build_report([d], tmp_path / "rep").parent
    rows, parts = _page_data(rep)
    raw = sum(len("".join(p)) for p in parts)
    files = sorted((rep / "prompts").glob("*.js"))
    written = sum(f.stat().st_size for f in files)
    assert written < 0.3 * raw, (written, raw)  # the shared haystacks, once
    chunks = [n for row in rows for part in row["pc"] for n in part]
    assert max(chunks) + 1 == len(set(chunks))  # numbered as first met, each kept
    assert all(f.stat().st_size < 1.2 * html.PROMPT_FILE_CHARS for f in files)


@pytest.mark.browser
def test_needles_are_marked_and_jumped_to_in_chromium(browser, tmp_path: Path) -> None:
    spec = build_spec({"model": "x", "backend": "scripted", "lengths": [4000], "samples": 1,
                       "tasks": [{"passkey": {"depths": [0.9]}}, "niah_multiquery"]})
    d = run(spec, out=tmp_path / "run", progress=False, log=lambda m: None).run_dir
    page = build_report([d], tmp_path / "rep")
    browser.get(page.as_uri())
    for card in browser.find_elements("css selector", "#sample-list article"):
        det = card.find_element("css selector", "details.prompt")
        det.find_element("css selector", "summary").click()
        pre = det.find_element("css selector", "pre.sent")
        browser.implicitly_wait(5)
        det.find_element("css selector", "pre.sent mark")  # waits until the prompt is in
        needles = pre.find_elements("css selector", "mark.needle")
        questions = pre.find_elements("css selector", "mark.question")
        assert needles and len(questions) == 1
        buttons = det.find_elements("css selector", ".jumps button")
        assert len(buttons) == len(needles) + 1
        assert browser.execute_script("return arguments[0].scrollTop", pre) == 0
        buttons[0].click()  # the first needle, deep in the haystack
        top = browser.execute_script("return arguments[0].scrollTop", pre)
        assert top > 0
        visible = browser.execute_script(
            "const p = arguments[0].getBoundingClientRect(), m = arguments[1]"
            ".getBoundingClientRect(); return m.top >= p.top && m.bottom <= p.bottom",
            pre, needles[0])
        assert visible
        # the whole <pre> still reads exactly the prompt as sent
        assert "The pass key is" in pre.text or "special magic" in pre.text
