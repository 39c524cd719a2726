"""The HTML report: files, escaping, and the page driven in headless Chromium."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from evalkit.report.compare import compare_runs, format_compare
from evalkit.report.html import build_index, build_report
from evalkit.results import store
from evalkit.results.read import MetricInfo
from evalkit.runner.config import build_spec
from evalkit.runner.execute import run
from evalkit.stats.gate import cell_test, two_proportions
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
    # the build's files are asked for by its id: a cached samples.js of another build
    # never meets this build's prompt files
    build = re.search(r'<script src="samples.js\?b=(\w+)"></script>', html)
    assert build and f'prompts/files.js?b={build[1]}' in html
    assert build[1] in (tmp_path / "rep" / "prompts" / "files.js").read_text()
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


def _page_data(rep: Path) -> tuple[list[dict], list[list[str]]]:
    """The sample rows the page reads (samples.js) and the prompt parts each row names
    (its chunks in prompts/*.js), in the rows' order."""
    def payload(path: Path, variable: str) -> Any:
        return json.loads(path.read_text().split(f"{variable}=", 1)[1].split(";\n", 1)[0])

    rows = payload(rep / "samples.js", "window.EVALKIT_SAMPLES")
    files = payload(rep / "prompts" / "files.js", "window.EVALKIT_CHUNK_FILES")
    chunks = [c for i in range(len(files)) for c in payload(
        rep / "prompts" / f"{i:04d}.js", f"window.EVALKIT_CHUNKS[{i}]")]
    assert files == sorted(files) and files[0] == 0  # the first chunk of each file
    parts = [["".join(chunks[n] for n in part) for part in row["pc"]] for row in rows]
    return rows, parts


def _records(d: Path) -> list[dict[str, Any]]:
    """samples.jsonl's lines with their stored texts read back (evalkit.results.texts)."""
    from evalkit.results import texts

    return [texts.internalize_record(json.loads(x), texts.store_of(d))
            for x in (d / "samples.jsonl").read_text().splitlines()]


def test_the_prompt_shown_is_the_prompt_sent(tmp_path: Path) -> None:
    """Template text and user text together are the string whose sha256 the record holds:
    kept by the record, rendered again for an older record of a fixed template, and the
    user text alone, said so, for an older record of the model's own template."""
    d = _scripted_run(tmp_path, "m", tasks=[{"passkey": {"template": "mistral-instruct"}},
                                            {"lines": {"template": "raw"}}])
    records = _records(d)
    rows, parts = _page_data(build_report([d], tmp_path / "rep").parent)
    by_id = {r["sample"]["id"]: r for r in records}
    for row, shown in zip(rows, parts, strict=True):
        rec = by_id[row["id"]]
        assert hashlib.sha256("".join(shown).encode()).hexdigest() == rec["prompt_sha256"]
        assert row["sent"] == "exact" and shown[1] == rec["sample"]["prompt"]
        if row["task"] == "passkey":
            assert shown[0] == "<s>[INST] " and shown[2] == " [/INST]" and row["framed"]
        else:
            assert shown[0] == shown[2] == "" and not row["framed"]
    # records made before the prompt as sent was kept; one that lies about it
    old = [{k: v for k, v in r.items() if k != "sent"} for r in records]
    fixed, lying = [r for r in old if r["sample"]["task"] == "passkey"][:2]
    chat = next(r for r in old if r["sample"]["task"] == "lines")
    chat["sample"]["template"] = "chat"
    lying["sent"] = {"before": "<s>", "after": ""}
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    rows, parts = _page_data(build_report([d], tmp_path / "rep2").parent)
    sent = {row["id"]: (row["sent"], shown) for row, shown in zip(rows, parts, strict=True)}
    assert sent[fixed["sample"]["id"]] == ("exact", ["<s>[INST] ", fixed["sample"]["prompt"],
                                                     " [/INST]"])
    assert sent[chat["sample"]["id"]] == ("user", ["", chat["sample"]["prompt"], ""])
    assert sent[lying["sample"]["id"]][0] == "differs"


def test_the_user_text_is_found_where_the_template_put_it() -> None:
    from test_chat_templates import SPECIAL_TOKENS, _template

    from evalkit.prompts.templates import make_template, sent_user, split_sent

    assert split_sent("<s>[INST] hi [/INST]", "hi") == {"before": "<s>[INST] ",
                                                        "after": " [/INST]"}
    # the user turn comes after the template's own text, which may hold the same words
    assert split_sent("<|im_start|>user\nuser<|im_end|>", "user")["before"] == \
        "<|im_start|>user\n"
    assert split_sent("<x>", "absent") == {"before": "<x>", "after": "", "user": [0, 0]}
    # Llama 3.2's template trims the user text: the record keeps where, not a copy
    prompt = "  Now the record ends. What is the number?  \n"
    for family in ("llama3.2", "gemma2"):
        rendered = make_template("chat", _template(family), SPECIAL_TOKENS.get(family, {})
                                 ).render(prompt)
        sent = split_sent(rendered, prompt)
        assert sent["user"] == [2, 2 + len(prompt.strip())]
        assert sent["before"] + sent_user(prompt, sent) + sent["after"] == rendered


def test_a_template_that_rewrote_the_user_text_is_shown_whole(tmp_path: Path) -> None:
    d = _scripted_run(tmp_path, "m", tasks=["passkey"])
    records = _records(d)
    rec = records[0]
    rendered = rec["sample"]["prompt"].upper()  # as if a template had rewritten it
    rec["sent"] = {"before": rendered, "after": "", "user": [0, 0]}
    rec["prompt_sha256"] = hashlib.sha256(rendered.encode()).hexdigest()
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows, parts = _page_data(build_report([d], tmp_path / "rep").parent)
    row, shown = next((r, p) for r, p in zip(rows, parts, strict=True)
                      if r["id"] == rec["sample"]["id"])
    assert row["sent"] == "unsplit" and shown == ["", rendered, ""]


def test_the_run_at_a_glance_opens_the_report(tmp_path: Path) -> None:
    """Model, backend, templates, tokenizer, what ran per task and cell (case files bring
    their own count, whatever `samples` says), errors, duration and evalkit's version come
    before the tables."""
    from test_inputs import lines_row, write_jsonl

    cases = write_jsonl(tmp_path / "cases.jsonl", [lines_row(k) for k in range(7)])
    d = _scripted_run(tmp_path, "m", tasks=["passkey", {"lines": {"cases": [str(cases)]}}])
    info = json.loads((d / "run.json").read_text())
    assert info["cells"] == {"passkey": {"1000": 3, "2000": 3}, "lines": {"5 lines": 7}}
    html = build_report([d], tmp_path / "rep").read_text()
    top = html[html.index('id="glance"'):html.index('id="results"')]
    assert "13/13 scored" in top and "no errors" in top
    assert 'data-task="lines"><td>lines</td><td class="num">7</td>' in top
    assert "5 lines: 7" in top and "1000: 3 · 2000: 3" in top
    assert "passkey: raw" in top and "scripted" in top
    assert re.search(r'class="duration">\d+(\.\d)? s<', top)
    from importlib.metadata import version

    assert f"<dd>{version('evalkit')} · " in top


def test_models_go_by_their_own_name_with_the_file_beside(tmp_path: Path) -> None:
    from evalkit.results.read import load_runs

    runs = []
    for name, file in (("q4", "qwen-q4.gguf"), ("q8", "qwen-q8.gguf")):
        d = _scripted_run(tmp_path, name, tasks=["passkey"])
        info = json.loads((d / "run.json").read_text())
        info["backend"].update(model_name="Qwen2.5 Coder 0.5B Instruct", model_file=file)
        (d / "run.json").write_text(json.dumps(info))
        runs.append(d)
    assert [r.label for r in load_runs(runs[:1])] == ["Qwen2.5 Coder 0.5B Instruct"]
    assert [r.label for r in load_runs(runs)] == ["Qwen2.5 Coder 0.5B Instruct (qwen-q4.gguf)",
                                                  "Qwen2.5 Coder 0.5B Instruct (qwen-q8.gguf)"]
    html = build_report(runs[:1], tmp_path / "rep").read_text()
    assert '<h2 class="model">Qwen2.5 Coder 0.5B Instruct</h2>' in html
    assert '<span class="file">qwen-q4.gguf</span>' in html


def test_runs_of_one_model_with_disjoint_tasks_share_a_column(tmp_path: Path) -> None:
    """The long-context tasks in one run and others in another: one column in the report
    (two cards on top); runs of one model whose tasks overlap stay apart."""
    a = _scripted_run(tmp_path, "a", tasks=["passkey"])
    b = _scripted_run(tmp_path, "b", tasks=["lines"])
    c = _scripted_run(tmp_path, "c", tasks=["lines"])
    for d in (a, b, c):
        info = json.loads((d / "run.json").read_text())
        info["backend"].update(model_name="M", model_file="m.gguf")
        (d / "run.json").write_text(json.dumps(info))
    html = build_report([a, b], tmp_path / "rep").read_text()
    assert html.count('<h2 class="model">M</h2>') == 2
    table = html[html.index('<table class="results"'):]
    assert table[:table.index("</thead>")].count("<th>M</th>") == 1
    html = build_report([a, b, c], tmp_path / "rep2").read_text()
    head = html[html.index('<table class="results"'):]
    head = head[:head.index("</thead>")]
    assert "<th>M@a</th>" in head and "<th>M@b</th>" in head and "<th>M@c</th>" in head


def test_an_hf_folder_is_named_by_the_hub_id_it_was_saved_from(tmp_path: Path) -> None:
    from evalkit.backends.hf_common import model_name

    for saved, name in (("mistralai/Mistral-7B-Instruct-v0.1",
                         "mistralai/Mistral-7B-Instruct-v0.1"),
                        ("/home/someone/models/mistral", None),  # a path: never shown
                        ("", None), (None, None)):
        (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": saved}))
        assert model_name(tmp_path) == name
    (tmp_path / "config.json").write_text("not json")
    assert model_name(tmp_path) is None


def test_a_column_of_joined_runs_keeps_one_label_beside_another_file(tmp_path: Path) -> None:
    from evalkit.results.read import load_runs

    dirs = []
    for name, file, task in (("a", "m.gguf", "passkey"), ("b", "m.gguf", "lines"),
                             ("c", "other.gguf", "passkey")):
        d = _scripted_run(tmp_path, name, tasks=[task])
        info = json.loads((d / "run.json").read_text())
        info["backend"].update(model_name="M", model_file=file)
        (d / "run.json").write_text(json.dumps(info))
        dirs.append(d)
    assert [r.label for r in load_runs(dirs, join_disjoint=True)] == [
        "M (m.gguf)", "M (m.gguf)", "M (other.gguf)"]
    assert [r.label for r in load_runs(dirs)] == ["M@a", "M@b", "M (other.gguf)"]


def test_damaged_timing_and_counts_do_not_stop_a_report(tmp_path: Path) -> None:
    """sessions.jsonl and run.json's cells only describe a run: a bad value in them is
    passed over (the run is still reported, and so is the index of runs)."""
    d = _scripted_run(tmp_path / "results", "m", tasks=["passkey"])
    (d / "sessions.jsonl").write_text(
        "".join(f'{{"started": "x", "seconds": {v}}}\n'
                for v in ("NaN", "Infinity", "1e400", "-5", "1" + "0" * 400, "true"))
        + "not json\n" + '{"started": "x", "seconds": 2.5}\n')
    assert [s["seconds"] for s in store.read_sessions(d)] == [2.5]
    info = json.loads((d / "run.json").read_text())
    info.update(cells={"passkey": {"²": 3, "1000": True}}, merged_from=[1, 2])
    (d / "run.json").write_text(json.dumps(info))
    html = build_report([d], tmp_path / "rep").read_text()
    assert 'class="duration">2.5 s (summed over 2 shards)<' in html
    assert "1000: 3 · 2000: 3" in html  # the cells of the records
    assert "<dd>1, 2</dd>" in html
    assert build_index(tmp_path / "results", tmp_path / "idx").is_file()


def test_a_baseline_summary_alone_still_says_how_it_was_scored(tmp_path: Path) -> None:
    d = _scripted_run(tmp_path, "m", tasks=["topics"])
    alone = tmp_path / "baseline"
    alone.mkdir()
    shutil.copy(d / "summary.json", alone / "summary.json")
    html = build_report([alone], tmp_path / "rep").read_text()
    assert "GPT judge" in html and "None" not in html[html.index('id="glance"'):
                                                      html.index('id="results"')]


def test_a_single_length_is_drawn_with_error_bars(tmp_path: Path) -> None:
    d = _scripted_run(tmp_path, "m", tasks=[{"passkey": {"lengths": [1000]}}])
    build_report([d], tmp_path / "rep")
    svg = (tmp_path / "rep" / "plots" / "accuracy_passkey.svg").read_text()
    assert "LineCollection" in svg  # the error bar (a band needs two lengths)


def test_topics_rules_sit_under_the_tables(tmp_path: Path) -> None:
    d = _scripted_run(tmp_path, "m", tasks=["topics"])
    html = build_report([d], tmp_path / "rep").read_text()
    assert "Exact match by length" in html
    rules = html[html.index('<dl class="rules" data-metric="accuracy">'):]
    assert "GPT judge" in rules[:rules.index("</dl>")]


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


def _real_run(config: Path, out: Path, lengths: str, samples: int) -> Path:
    """`evalkit run` of a bundled config on its real engine, as a user runs it."""
    res = subprocess.run([sys.executable, "-m", "evalkit.cli", "run", str(config), "--lengths",
                          lengths, "--samples", str(samples), "--out", str(out),
                          "--no-progress"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.browser
@pytest.mark.engine
def test_real_quickstart_report_in_chromium(browser, tmp_path: Path, root: Path) -> None:
    out = _real_run(root / "configs" / "quickstart.yaml", tmp_path / "qs", "1k,2k", 2)
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
                        + " \n ASSISTANT: " + "words " * 200}) for i in range(12)) + "\n")
    d = _scripted_run(tmp_path, "evil", reply=PAYLOAD,
                      tasks=["passkey", {"topics": {"corpus": str(corpus)}}])
    page = build_report([d], tmp_path / "rep", title=PAYLOAD)
    browser.get(page.as_uri())
    assert browser.execute_script("return window.__pwned === undefined")
    details = browser.find_elements("css selector", "#sample-list details.prompt")
    for det in details[:3] + details[-3:]:
        det.find_element("css selector", "summary").click()
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


@pytest.mark.browser
@pytest.mark.engine
def test_the_prompt_shown_in_chromium_is_the_prompt_sent(browser, tmp_path: Path,
                                                         root: Path) -> None:
    """A chat model (SmolLM2-Instruct on llama.cpp, its own chat template): each prompt the
    page shows reads, character for character, the string whose sha256 the record holds,
    the chat markers marked apart from the task's text; the model goes by its GGUF name.
    EVALKIT_SCREENSHOTS=DIR keeps the page's screenshots (top, an opened prompt)."""
    out = _real_run(root / "configs" / "smollm2.yaml", tmp_path / "chat", "1k", 1)
    records = {r["sample"]["id"]: r for r in map(json.loads,
                                                  (out / "samples.jsonl").read_text().splitlines())}
    info = json.loads((out / "run.json").read_text())
    page = build_report([out], tmp_path / "rep")
    browser.get(page.as_uri())
    shots = os.environ.get("EVALKIT_SCREENSHOTS")
    if shots:
        browser.save_screenshot(str(Path(shots) / "report-top.png"))
    assert browser.find_element("css selector", "#glance h2.model").text == \
        info["backend"]["model_name"]
    assert browser.find_element("css selector", "#glance .file").text.endswith(".gguf")
    cards = browser.find_elements("css selector", "#sample-list article")
    assert len(cards) == len(records)
    chat_seen = 0
    for card in cards:
        rec = records[card.find_element("css selector", ".id").text]
        det = card.find_element("css selector", "details.prompt")
        browser.execute_script("arguments[0].open = true", det)
        pre = det.find_element("css selector", "pre.sent")
        for _ in range(100):
            if pre.get_attribute("data-loaded"):
                break
            time.sleep(0.05)
        text = browser.execute_script("return arguments[0].textContent", pre)
        assert hashlib.sha256(text.encode("utf-8")).hexdigest() == rec["prompt_sha256"]
        marked = [e.get_attribute("textContent")
                  for e in pre.find_elements("css selector", ".tmpl")]
        user = pre.find_element("css selector", ".user").get_attribute("textContent")
        sent = rec["sent"]
        assert user == sent.get("user", rec["sample"]["prompt"])
        assert marked == [x for x in (sent["before"], sent["after"]) if x]
        assert rec["prompt_sha256"] in det.text
        if rec["sample"]["template"] == "chat":
            chat_seen += 1
            assert marked[0].startswith("<|im_start|>") and "<|im_end|>" in marked[-1]
            if shots and chat_seen == 1:
                browser.execute_script("arguments[0].scrollIntoView()", card)
                card.screenshot(str(Path(shots) / "report-prompt.png"))
                browser.execute_script("arguments[0].scrollTop = arguments[0].scrollHeight", pre)
                card.screenshot(str(Path(shots) / "report-prompt-end.png"))
    assert chat_seen == 3  # lines, topics, longqa (passkey is plain completion)
    if shots:  # one length: each model's point with its error bar
        figure = browser.find_element("css selector", "#plots figure")
        browser.execute_script("arguments[0].scrollIntoView()", figure)
        figure.screenshot(str(Path(shots) / "report-plot.png"))
