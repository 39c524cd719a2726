"""The HTML report: files, escaping, and the page driven in headless Chromium."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.analysis import MetricInfo
from evalkit.config import build_spec
from evalkit.gate import cell_test, two_proportions
from evalkit.report.compare import compare_runs, format_compare
from evalkit.report.html import build_index, build_report
from evalkit.runner import run
from evalkit.types import SummaryRow

PAYLOAD = ('<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
           '"><svg onload=window.__pwned=3>')


def _scripted_run(tmp: Path, name: str, reply: str = "lookup", corpus: Path | None = None,
                  tasks: list | None = None) -> Path:
    data = {"name": name, "model": name, "backend": "scripted",
            "backend_options": {"reply": reply}, "samples": 3, "lengths": [1000, 2000],
            "tasks": tasks or [{"passkey": {"depths": [0.0, 0.5, 1.0]}}, "lines", "longqa"]}
    return run(build_spec(data), out=tmp / name, progress=False, log=lambda m: None).run_dir


def test_report_files_and_table(tmp_path: Path) -> None:
    d = _scripted_run(tmp_path, "oracle")
    page = build_report([d], tmp_path / "rep")
    html = page.read_text()
    assert "Accuracy by length" in html and "oracle" in html
    for rel in ("static/report.js", "static/report.css", "samples.js", "prompts/0000.js",
                "plots/accuracy_passkey.png", "plots/accuracy_passkey.svg",
                "plots/passkey_depth_0.png"):
        assert (tmp_path / "rep" / rel).is_file(), rel
    assert "http://" not in html and "https://" not in html  # no CDN: opens offline
    data = (tmp_path / "rep" / "samples.js").read_text()
    rows = json.loads(data.split("=", 1)[1].rstrip(";\n"))
    assert len(rows) == 3 * 2 * 3 + 2 * 3 * 2


def test_records_with_a_damaged_meta_or_an_empty_cell_still_report(tmp_path: Path) -> None:
    """Found by fuzzing: a needle depth of the wrong type broke the heatmap, and a cell with
    no scored sample divided by zero in compare."""
    d = _scripted_run(tmp_path, "oracle", tasks=[{"passkey": {"depths": [0.0, 1.0]}}])
    lines = (d / "samples.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["sample"]["meta"]["depth"] = None
    (d / "samples.jsonl").write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    assert build_report([d], tmp_path / "rep").is_file()
    empty = SummaryRow(model="m", task="passkey", length=1024, subset="all", metric="accuracy",
                       value=float("nan"), ci_low=0.0, ci_high=1.0, n=0, n_errors=2,
                       input_tokens_mean=0.0, successes=0)
    assert math.isnan(two_proportions(0, 0, 0, 0, 0.0))
    assert cell_test(empty, empty, MetricInfo("binary"), None, [], []).p is None


def test_untrusted_text_is_escaped_in_the_html(tmp_path: Path) -> None:
    d = _scripted_run(tmp_path, PAYLOAD[:20].replace("/", "-"), reply=PAYLOAD,
                      tasks=["passkey"])
    page = build_report([d], tmp_path / "rep", title=PAYLOAD)
    html = page.read_text()
    assert "<script>window.__pwned" not in html and "<img src=x" not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html  # the title, escaped
    js = (tmp_path / "rep" / "samples.js").read_text()
    assert "</script>" not in js


def test_index_of_runs(tmp_path: Path) -> None:
    _scripted_run(tmp_path / "results", "a")
    _scripted_run(tmp_path / "results", "b", reply="nothing")
    page = build_index(tmp_path / "results", tmp_path / "idx")
    html = page.read_text()
    assert html.count('href="runs/') == 2
    assert (tmp_path / "idx" / "runs" / "a" / "index.html").is_file()


def test_compare_marks_significant_cells(tmp_path: Path) -> None:
    good = _scripted_run(tmp_path, "good", tasks=[{"passkey": {"depths": [0, .25, .5, .75, 1]}}])
    bad = _scripted_run(tmp_path, "bad", reply="no idea",
                        tasks=[{"passkey": {"depths": [0, .25, .5, .75, 1]}}])
    la, lb, rows = compare_runs(good, bad, tmp_path / "plots")
    assert (la, lb) == ("good", "bad")
    assert all(r.delta == -1.0 and r.significant for r in rows)
    assert (tmp_path / "plots" / "compare_passkey.png").is_file()
    text = format_compare(la, lb, rows)
    assert "-1.00" in text and "yes" in text


# ---- in the browser -------------------------------------------------------------------

def _chrome():  # type: ignore[no-untyped-def]
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        message = ("headless browser tests need Debian's chromium and chromium-driver "
                   "(scripts/test.sh installs them)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--window-size=1280,1600",
                "--allow-file-access-from-files"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    drv = _chrome()
    yield drv
    drv.quit()


def _select(browser, name: str, value: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("css selector", f"select[name={name}]")).select_by_value(value)


def _count(browser) -> str:  # type: ignore[no-untyped-def]
    return browser.find_element("id", "count").text


@pytest.mark.browser
@pytest.mark.engine
def test_real_quickstart_report_in_chromium(browser, tmp_path: Path, root: Path) -> None:
    out = tmp_path / "qs"
    res = subprocess.run([sys.executable, "-m", "evalkit.cli", "run",
                          str(root / "configs" / "quickstart.yaml"), "--lengths", "1k,2k",
                          "--samples", "2", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    page = build_report([out], tmp_path / "rep")
    records = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    browser.get(page.as_uri())
    assert _count(browser) == f"{len(records)} of {len(records)} samples"
    # plots load from disk
    for img in browser.find_elements("css selector", "#plots img"):
        browser.execute_script("arguments[0].scrollIntoView()", img)
        assert browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", img)
    # filters: task, then outcome; counts agree with the records
    _select(browser, "task", "passkey")
    n_passkey = sum(r["sample"]["task"] == "passkey" for r in records)
    assert _count(browser).startswith(f"{n_passkey} of")
    _select(browser, "task", "")
    _select(browser, "outcome", "correct")
    n_right = sum(r["scores"].get("accuracy") == 1.0 for r in records)
    assert _count(browser).startswith(f"{n_right} of")
    cards = browser.find_elements("css selector", "#sample-list article")
    assert len(cards) == n_right and all("correct" in c.get_attribute("class") for c in cards)
    # a prompt opens (loaded lazily from prompts/NNNN.js)
    _select(browser, "outcome", "")
    first = browser.find_element("css selector", "#sample-list details.prompt")
    first.find_element("css selector", "summary").click()
    browser.implicitly_wait(5)
    pre = first.find_element("css selector", "pre")
    for _ in range(50):
        if pre.text and pre.text != "loading...":
            break
        browser.execute_script("return 1")
    assert pre.text.startswith(records[0]["sample"]["prompt"][:40])
    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


@pytest.mark.browser
def test_payloads_do_not_execute_in_chromium(browser, tmp_path: Path) -> None:
    corpus = tmp_path / "evil.jsonl"
    corpus.write_text("\n".join(json.dumps({
        "topic": f"Topic {i} {PAYLOAD}",
        "conversation": f"USER: I would like to discuss the topic of topic {i} {PAYLOAD}. "
                        + " \n ASSISTANT: " + "words " * 300}) for i in range(12)) + "\n")
    d = _scripted_run(tmp_path, "evil", reply=PAYLOAD,
                      tasks=["passkey", {"topics": {"corpus": str(corpus)}}])
    page = build_report([d], tmp_path / "rep", title=PAYLOAD)
    browser.get(page.as_uri())
    assert browser.execute_script("return window.__pwned === undefined")
    details = browser.find_elements("css selector", "#sample-list details.prompt")
    for det in details[:3] + details[-3:]:
        det.find_element("css selector", "summary").click()
    import time

    time.sleep(0.5)
    assert browser.execute_script("return window.__pwned === undefined")
    assert not browser.find_elements("css selector", "#sample-list img, #sample-list svg, "
                                                     "#sample-list script")
    outputs = [e.text for e in browser.find_elements("css selector", "#sample-list .output")]
    assert outputs and all(PAYLOAD.split('"><svg')[0] in o for o in outputs)
    expected = [e.text for e in browser.find_elements("css selector", "#sample-list .expected")]
    assert any("<script>window.__pwned=1</script>" in e for e in expected)
    prompts = [e.text for e in browser.find_elements("css selector", "#sample-list details pre")]
    assert any("<img src=x onerror=" in p for p in prompts)
    assert PAYLOAD in browser.title
