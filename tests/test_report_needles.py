"""The sample browser for long haystacks: a task that knows its needles has them and its
question marked in the prompt as sent, with buttons that scroll to each; prompt files are
sized so that opening a long prompt loads only a few others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_report import _chrome

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
    for row in rows.values():  # every mark is text of the prompt as sent
        prompt = "".join(json.loads((tmp_path / "rep" / "prompts" / f"{row['pf']:04d}.js")
                                    .read_text().split("=", 2)[2].rstrip(";\n"))[row["pi"]])
        assert all(text in prompt for _, text in row["marks"])


def test_long_prompts_get_files_of_their_own() -> None:
    size = html.PROMPT_FILE_CHARS
    places = html._prompt_files([100] * 3 + [size] + [size // 2] * 3 + [10] * 60)
    assert places[:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]  # the long one starts a file
    assert places[4:7] == [(2, 0), (2, 1), (3, 0)]           # two halves share one
    assert places[7] == (3, 1) and places[-1][0] == 4        # at most PROMPT_CHUNK a file
    assert sum(1 for f, _ in places if f == 3) == html.PROMPT_CHUNK


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
