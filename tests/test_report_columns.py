"""What each model's column of a report says: its own measured input tokens, how many of
its answers came from the response cache; text tables whose columns line up and whose
model names are shown whole (show, compare)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from evalkit.report.compare import compare_runs, format_compare
from evalkit.report.html import build_index, build_report
from evalkit.report.tables import format_table
from evalkit.results import store
from evalkit.results.read import read_run, summary_of
from evalkit.runner.config import build_spec
from evalkit.runner.execute import run
from evalkit.types import Record, Response, Sample


def _scripted_run(tmp: Path, name: str, tasks: list[Any], lengths: list[int],
                  label: str | None = None, reply: str = "lookup") -> Path:
    data: dict[str, Any] = {"name": name, "backend": "scripted",
                            "backend_options": {"reply": reply}, "samples": 3,
                            "lengths": lengths, "tasks": tasks,
                            "models": [{"model": name, "label": label or name}]}
    return run(build_spec(data), out=tmp / name, progress=False, log=lambda m: None,
               cache_dir=tmp / "cache").run_dir


def _edit_records(run_dir: Path, edit: Any) -> None:
    """Rewrite samples.jsonl with edit(record dict, index) applied to every record."""
    path = run_dir / store.SAMPLES
    records = [json.loads(x) for x in path.read_text().splitlines()]
    for i, rec in enumerate(records):
        edit(rec, i)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


class _Tables(HTMLParser):
    """The text of every cell of every <table>, with the table's attributes:
    [(attrs, [[cell text, ...] per row])]."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[dict[str, str | None], list[list[str]]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append((dict(attrs), []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _by_column(html: str, metric: str) -> dict[tuple[str, str], dict[str, str]]:
    """The by-length table of `metric`: (task, length) -> {column header: cell text}."""
    parser = _Tables()
    parser.feed(html)
    (rows,) = [rows for attrs, rows in parser.tables if attrs.get("data-metric") == metric
               and "results" in (attrs.get("class") or "")]
    header, *body = rows
    return {(row[0], row[1]): dict(zip(header, row, strict=True)) for row in body}


def _glance(html: str) -> str:
    return html[html.index('id="glance"'):html.index('id="results"')]


def test_each_models_column_shows_its_own_measured_tokens(tmp_path: Path) -> None:
    """Gemma read 664 tokens at 1k and SmolLM2 703 (their own tokenizers): each column
    says its own, in the page and in the text table of both runs."""
    measured = {"gemma": {1000: 664, 2000: 1320}, "smollm2": {1000: 703, 2000: 1389}}
    dirs = []
    for name, tokens in measured.items():
        d = _scripted_run(tmp_path, name, ["passkey"], [1000, 2000])
        _edit_records(d, lambda rec, i, tokens=tokens: rec["sample"].update(
            input_tokens=tokens[rec["sample"]["target_tokens"]]))
        dirs.append(d)
    cells = _by_column(build_report(dirs, tmp_path / "rep").read_text(), "accuracy")
    for length in (1000, 2000):
        line = cells[("passkey", str(length))]
        for name, tokens in measured.items():
            other = next(v for k, v in measured.items() if k != name)
            assert f"{tokens[length]} tokens" in line[name]
            assert f"{other[length]} tokens" not in line[name]
    rows = [r for d in dirs for r in read_run(d).rows]
    text = format_table(rows).splitlines()
    header = re.split(r"\s{2,}", text[1].strip())
    assert header == ["task", "length", "tokens", "gemma", "tokens", "smollm2"]
    for line in text[3:]:
        task, length, tok_a, _, tok_b, _ = re.split(r"\s{2,}", line.strip())
        target = int(length)
        assert (tok_a, tok_b) == (str(measured["gemma"][target]),
                                  str(measured["smollm2"][target]))


def test_answers_from_the_response_cache_are_counted_per_cell_and_run(tmp_path: Path) -> None:
    """2 of the 3 answers at 1000 tokens and 1 of the 3 at 2000 came from the cache; a
    record written before answers were marked (no `cached`) counts as asked."""
    hit = tmp_path / "hit"
    a = _scripted_run(tmp_path, "a", ["passkey"], [1000, 2000])
    b = _scripted_run(tmp_path, "b", ["passkey"], [1000, 2000])
    from_cache: list[str] = []

    def mark(rec: dict[str, Any], i: int) -> None:
        target = rec["sample"]["target_tokens"]
        if sum(x.startswith(f"passkey/{target}/") for x in from_cache) < (
                2 if target == 1000 else 1):
            rec["response"]["cached"] = True
            from_cache.append(rec["sample"]["id"])
        elif i == 5:
            rec["response"].pop("cached", None)  # as written before answers were marked
        else:
            rec["response"]["cached"] = False

    _edit_records(a, mark)
    _edit_records(b, lambda rec, i: rec["response"].update(cached=False))
    assert len(from_cache) == 3 and all(x.startswith("passkey/") for x in from_cache)
    html = build_report([a, b], hit).read_text()
    cells = _by_column(html, "accuracy")
    assert "2 of 3 answers from the response cache" in cells[("passkey", "1000")]["a"]
    assert "1 of 3 answers from the response cache" in cells[("passkey", "2000")]["a"]
    assert all("response cache" not in line["b"] for line in cells.values())
    cards = _glance(html).split('class="run-card"')[1:]
    assert "3 of 6 answers from the response cache" in cards[0]
    assert "response cache" not in cards[1]
    samples = json.loads((hit / "samples.js").read_text().split("=", 1)[1].rstrip(";\n"))
    assert sorted(s["id"] for s in samples if s["cached"]) == sorted(from_cache)


def _lb_record(model: str, i: int, cached: bool, task: str = "arc_challenge") -> Record:
    meta: dict[str, Any] = {"bin": "25-shot"} if task == "arc_challenge" else {
        "bin": "5-shot", "subsets": ["anatomy"]}
    sample = Sample(id=f"{task}/{i}", task=task, prompt=f"Q{i}?", targets=(" A",),
                    target_tokens=None, input_tokens=120, template="raw", max_new_tokens=0,
                    meta=meta)
    return Record(sample=sample, response=Response(logprob=-1.0, cached=cached),
                  scores={"acc": float(i % 2)}, model=model, prompt_sha256="0" * 64,
                  cache_key="0" * 64)


def test_the_leaderboard_counts_cached_answers_too(tmp_path: Path) -> None:
    """A task scored once over all its data: one answer of four from the cache; MMLU of
    one subject: "1 subset" (counts take their noun in the number they need)."""
    folder = tmp_path / "results" / "lb"
    records = [_lb_record("m", i, cached=i == 0) for i in range(4)]
    records += [_lb_record("m", i, cached=False, task="mmlu") for i in range(2)]
    store.prepare_run_dir(folder)
    store.write_run(folder, {"run_id": "lb", "spec_hash": "x" * 12, "n_samples": 4,
                             "model_label": "m", "spec": {}})
    store.append_records(folder, records)
    store.write_summary(folder, summary_of(folder, store.read_run(folder), records))
    html = build_report([folder], tmp_path / "rep").read_text()
    board = html[html.index('<table class="results leaderboard">'):]
    board = board[:board.index("</table>")]
    assert "1 of 4 answers from the response cache" in board
    assert "1 of 6 answers from the response cache" in _glance(html)
    assert re.search(r"mmlu <span class=\"tag\">1 subset</span>", board)
    assert "1 subsets" not in html and "1 samples" not in html
    assert "(1 subset)" in format_table(read_run(folder).rows)
    index = build_index(tmp_path / "results", tmp_path / "idx").read_text()
    assert "1 run under" in index


def _fields(line: str) -> list[tuple[int, int]]:
    """(start, end) of each field of a text table line: fields are 2+ spaces apart and
    hold single spaces only."""
    return [m.span() for m in re.finditer(r"\S+(?: \S+)*", line)]


def test_compare_lines_up_every_metric_and_shows_labels_whole(tmp_path: Path) -> None:
    """topics has accuracy and exact_match (longer than the old 10-character column), and
    the labels are longer than the old 18 characters."""
    labels = ("Qwen2.5 Coder 0.5B Instruct (qwen-q4_k_m.gguf)",
              "Qwen2.5 Coder 0.5B Instruct (qwen-q8_0.gguf)")
    a = _scripted_run(tmp_path, "a", ["topics"], [2000, 4000], label=labels[0])
    b = _scripted_run(tmp_path, "b", ["topics"], [2000, 4000], label=labels[1],
                      reply="no idea")
    la, lb, rows = compare_runs(a, b)
    assert (la, lb) == labels and {r.metric for r in rows} == {"accuracy", "exact_match"}
    header, rule, *body = format_compare(la, lb, rows).splitlines()
    assert set(rule) == {"-"} and len(body) == len(rows) == 4
    names = ["task", "length", "metric", *labels, "delta", "p", "sig"]
    assert [header[s:e] for s, e in _fields(header)] == names  # the labels whole
    # a left-aligned column starts, a right-aligned one ends, where its header does
    columns = _fields(header)
    for line in body:
        fields = _fields(line)
        assert len(fields) == len(names), line
        for (start, end), (h_start, h_end), align in zip(fields, columns, "lrlrrrrl",
                                                         strict=True):
            assert (start == h_start) if align == "l" else (end == h_end), line
    assert sorted(line[slice(*_fields(line)[2])] for line in body) == [
        "accuracy", "accuracy", "exact_match", "exact_match"]


def test_show_of_several_runs_shows_model_names_whole(tmp_path: Path) -> None:
    long = "A model whose name is longer than any column was (SmolLM2-135M-Instruct)"
    dirs = [_scripted_run(tmp_path, "a", ["topics"], [2000], label=long),
            _scripted_run(tmp_path, "b", ["topics"], [2000])]
    lines = format_table([r for d in dirs for r in read_run(d).rows]).splitlines()
    tables = [lines[i + 1:i + 4] for i, x in enumerate(lines) if x.endswith("by length")]
    assert len(tables) == 2  # accuracy, exact_match
    for header, _, row in tables:
        assert long in header
        assert len(_fields(header)) == len(_fields(row)) == 6
        # right-aligned: each value column ends where its header does
        assert [e for _, e in _fields(row)][1:] == [e for _, e in _fields(header)][1:]


def test_one_answer_from_the_cache_is_said_in_the_singular(tmp_path: Path) -> None:
    data = {"name": "one", "backend": "scripted", "model": "m", "samples": 1,
            "lengths": [1000], "tasks": ["passkey"]}
    lines: list[str] = []
    for out in ("first", "second"):  # the second run's one answer comes from the cache
        run(build_spec(data), out=tmp_path / out, progress=False, log=lines.append,
            cache_dir=tmp_path / "cache")
    said = [x for x in lines if "from the response cache" in x]
    assert len(said) == 1 and said[0].startswith("1 answer came from the response cache")
