"""Every input file evalkit reads is checked field by field: a bad one is refused with one
line naming the file, the line and the field (EvalkitError, exit 2), never a traceback and
never a sample scored against the wrong answer.

First the bugs found, one test each; then property-based fuzzing (hypothesis) of every
file kind (QuALITY, LongEval lines and topics cases, topic corpus, run config) through the
loaders and through the CLI, accepting only clean outcomes.
"""

from __future__ import annotations

import codecs
import copy
import gzip
import itertools
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import reference_data, whitespace_plan
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from evalkit.cli import app
from evalkit.runner.config import load_config_file
from evalkit.tasks import get_task, importers, make_params
from evalkit.tasks.lines import build_prompt as lines_prompt
from evalkit.tasks.longqa import LETTERS
from evalkit.tasks.topics import build_prompt as topics_prompt
from evalkit.types import EvalkitError, Sample

DRY = ("--dry-run", "--tokenizer", "whitespace", "--template", "raw", "--no-progress")

# --- valid rows of each kind, as the published files write them ---------------------------


def quality_row(k: int = 0, article: str = "<p>Si retires.</p> He <b>leaves</b> &amp; goes.",
                ) -> dict[str, Any]:
    return {"article_id": f"5299{k}", "set_unique_id": f"5299{k}_A", "title": "Spaceman",
            "author": "Reynolds, Mack", "year": 1961, "article": article,
            "questions": [
                {"question": "Why does Si retire?", "question_unique_id": f"5299{k}_A_1",
                 "options": ["He is old", "He is rich", "He is tired", "He is bored"],
                 "writer_label": 3, "gold_label": 3, "difficult": 0,
                 "validation": [{"untimed_answer": 3}]},
                {"question": "Who is Gubelin?", "question_unique_id": f"5299{k}_A_2",
                 "options": ["A boss", "A friend", "A robot", "A bartender"],
                 "writer_label": 1, "gold_label": 1, "difficult": 1},
            ]}


def lines_row(k: int = 0, n: int = 5, asked: int = 2) -> dict[str, Any]:
    names = [f"torpid-kid{j}" for j in range(n)]
    values = [1000 + 37 * j + k for j in range(n)]
    return {"random_idx": [names[asked], asked], "expected_number": values[asked],
            "num_lines": n, "token_size": 60,
            "correct_line": f"line {names[asked]}: REGISTER_CONTENT is <{values[asked]}>\n",
            "prompt": lines_prompt(names, values, n, asked), "prompt_length": -1}


def topics_row(k: int = 0, topics: tuple[str, ...] = ("The psychology of creativity",
                                                      "The future of space tourism")
               ) -> dict[str, Any]:
    convs = [f"USER: I would like to discuss the topic of {t.lower()}. \n ASSISTANT: Sure! "
             for t in topics]
    return {"test_id": k, "prompt": topics_prompt(convs, len(convs)), "topics": list(topics),
            "prompt_length": -1}


def corpus_row(k: int = 0, words: int = 30) -> dict[str, Any]:
    return {"topic_id": k, "topic": f"The history of topic {k}",
            "conversation": f"USER: I would like to discuss the topic of the history of topic "
                            f"{k}. \n ASSISTANT: " + "Sure, here we go. " * (words // 4)}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- how each kind is loaded, the way a run loads it ---------------------------------------


def load_quality(path: Path) -> list[Sample]:
    task = get_task("longqa")
    return list(task.generate(make_params(task, {"quality": str(path)}),
                              whitespace_plan("longqa", lengths=())))


def load_cases(path: Path, kind: str) -> list[Sample]:
    task = get_task(kind)
    return list(task.generate(make_params(task, {"cases": [str(path)]}),
                              whitespace_plan(kind, lengths=())))


def load_corpus(path: Path) -> list[tuple[str, str]]:
    return importers.read_topic_corpus(path)


LOADERS: dict[str, Callable[[Path], Any]] = {
    "quality": load_quality,
    "lines": lambda p: load_cases(p, "lines"),
    "topics": lambda p: load_cases(p, "topics"),
    "corpus": load_corpus,
}
VALID: dict[str, Callable[[int], dict[str, Any]]] = {
    "quality": quality_row, "lines": lines_row, "topics": topics_row, "corpus": corpus_row}


def refused(call: Callable[[], Any], path: Path | None, *fragments: str) -> str:
    """The one-line message `call` is refused with, checked for the file and fragments."""
    with pytest.raises(EvalkitError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg, msg
    if path is not None:
        assert str(path) in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def cli(*args: str) -> tuple[int, str, str]:
    """The CLI in process, an EvalkitError turned into exit 2 as evalkit.cli.main does; any
    other exception is re-raised, so that the test fails with its traceback."""
    result = CliRunner().invoke(app, list(args))
    exc = result.exception
    if isinstance(exc, EvalkitError):
        return 2, result.stdout, f"error: {exc}\n"
    if exc is not None and not isinstance(exc, SystemExit):
        raise exc
    return result.exit_code, result.stdout, result.stderr


def assert_clean(code: int, out: str, err: str) -> None:
    assert "Traceback" not in out + err
    assert code in (0, 2), (code, out, err)
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1, err


def setpath(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value
    return obj


# --- 1. QuALITY ----------------------------------------------------------------------------


def test_quality_rows_make_samples_with_the_right_answers(tmp_path: Path) -> None:
    end = "<p>Si retires.</p> He leaves, says AT&T"  # text after the last tag, then a bare &
    path = write_jsonl(tmp_path / "q.jsonl", [quality_row(0), quality_row(1, article=end)])
    samples = load_quality(path)
    assert [s.targets for s in samples] == [("C",), ("A",)] * 2
    assert [s.meta["difficult"] for s in samples] == [0, 1, 0, 1]
    assert [s.id for s in samples][:2] == ["longqa/quality/52990_A_1", "longqa/quality/52990_A_2"]
    assert "Si retires. He leaves & goes." in samples[0].prompt
    assert "He leaves, says AT&T" in samples[2].prompt  # was dropped: the parser held it back
    task = get_task("longqa")
    hard = list(task.generate(make_params(task, {"quality": str(path), "hard_only": True}),
                              whitespace_plan("longqa", lengths=())))
    assert [s.targets for s in hard] == [("A",), ("A",)]
    easy = quality_row(0)
    for question in easy["questions"]:
        question["difficult"] = 0
    easy_path = write_jsonl(tmp_path / "easy.jsonl", [easy])
    refused(lambda: list(task.generate(make_params(task, {"quality": str(easy_path),
                                                          "hard_only": True}),
                                       whitespace_plan("longqa", lengths=()))),
            easy_path, "no question has difficult == 1")


QUALITY_BAD = [  # (path in the row, value or None to delete, fragment of the message)
    (("questions", 0, "question"), None, "'questions[0].question'"),
    (("questions", 1, "options"), None, "'questions[1].options'"),
    (("questions", 0, "options"), ["a", "b", "c"], "exactly 4"),
    (("questions", 0, "options"), "abcd", "'questions[0].options' must be an array"),
    (("questions", 0, "options"), ["a", "b", "c", 4], "'questions[0].options[3]'"),
    (("questions", 0, "options"), ["a", "b", "c", " "], "is blank"),
    (("questions", 0, "gold_label"), 0, "count from 1), got 0"),
    (("questions", 0, "gold_label"), 5, "from 1 to 4"),
    (("questions", 0, "gold_label"), True, "got true"),
    (("questions", 0, "gold_label"), 2.0, "got 2.0"),
    (("questions", 0, "gold_label"), "2", 'got "2"'),
    (("questions", 0, "gold_label"), None, "no gold_label"),
    (("questions", 1, "difficult"), 2, "'questions[1].difficult'"),
    (("questions", 1, "difficult"), "1", "'questions[1].difficult'"),
    (("questions", 1, "question_unique_id"), "52990_A_1", "give each question once"),
    (("questions", 1), "a question", "'questions[1]' must be an object"),
    (("questions",), [], "'questions' is an empty array"),
    (("questions",), {"question": "q"}, "'questions' must be an array"),
    (("article",), 5, "'article' must be the article text"),
    (("article",), "<p> </p>", "no text once its HTML tags are stripped"),
    (("article",), None, "needs field 'article'"),
    (("article_id",), ["x"], "'article_id'"),
]


@pytest.mark.parametrize(("where", "value", "fragment"), QUALITY_BAD,
                         ids=[f"{'.'.join(map(str, w))}={v!r}" for w, v, _ in QUALITY_BAD])
def test_quality_bad_field_is_refused_by_line_and_field(tmp_path: Path, where: tuple[Any, ...],
                                                        value: Any, fragment: str) -> None:
    row = quality_row(0)
    if value is None:
        del setpath(row, where, None)[where[-1]]
    else:
        setpath(row, where, value)
    path = write_jsonl(tmp_path / "q.jsonl", [quality_row(1), row])
    refused(lambda: load_quality(path), path, f"{path}:2:", fragment)


# --- 2. LongEval lines, topics, corpus --------------------------------------------------


LINES_BAD = [
    (("expected_number",), "1074", "'expected_number' must be a whole number"),
    (("expected_number",), True, "got true"),
    (("expected_number",), 1074.0, "got 1074.0"),
    (("expected_number",), -1074, "at least 0"),
    (("expected_number",), 77777, "nowhere in the prompt"),
    (("expected_number",), None, "needs field 'expected_number'"),
    (("num_lines",), "5", "'num_lines'"),
    (("num_lines",), 0, "'num_lines'"),
    (("random_idx",), "torpid-kid2", "'random_idx' must be an array"),
    (("random_idx",), ["torpid-kid2"], "exactly 2"),
    (("random_idx", 1), 9, "'random_idx[1]'"),
    (("random_idx", 1), "2", "'random_idx[1]'"),
    (("random_idx", 0), None, "'random_idx[0]'"),
    (("prompt",), 5, "'prompt' must be the prompt text"),
    (("prompt",), "", "'prompt' is blank"),
    (("prompt",), "line a: \ud800 1074", "unpaired surrogate"),
    (("correct_line",), "line x: REGISTER_CONTENT is <1>\n", "'correct_line'"),
    (("token_size",), "60", "'token_size'"),
]


@pytest.mark.parametrize(("where", "value", "fragment"), LINES_BAD,
                         ids=[f"{'.'.join(map(str, w))}={v!r}" for w, v, _ in LINES_BAD])
def test_lines_bad_field_is_refused_by_line_and_field(tmp_path: Path, where: tuple[Any, ...],
                                                      value: Any, fragment: str) -> None:
    row = lines_row(2)
    if value is None and where == ("expected_number",):
        del row["expected_number"]
    else:
        setpath(row, where, value)
    path = write_jsonl(tmp_path / "lines.jsonl", [lines_row(0), lines_row(1), row])
    refused(lambda: load_cases(path, "lines"), path, f"{path}:3:", fragment)


TOPICS_BAD = [
    (("topics",), [], "'topics' is an empty array"),
    (("topics",), "The psychology of creativity", "'topics' must be an array"),
    (("topics",), [5, "x"], "'topics[0]'"),
    (("topics",), ["!!!", "x"], "no letters or digits"),
    (("topics",), ["The psychology of creativity", None], "'topics[1]'"),
    (("topics",), ["The art of war", "The future of space tourism"], "nowhere in the prompt"),
    (("test_id",), None, "'test_id'"),
    (("test_id",), [1], "'test_id'"),
    (("test_id",), "a/b", "'test_id'"),
    (("test_id",), 0, "repeats line 1"),
    (("prompt",), 7, "'prompt'"),
]


@pytest.mark.parametrize(("where", "value", "fragment"), TOPICS_BAD,
                         ids=[f"{'.'.join(map(str, w))}={v!r}" for w, v, _ in TOPICS_BAD])
def test_topics_bad_field_is_refused_by_line_and_field(tmp_path: Path, where: tuple[Any, ...],
                                                       value: Any, fragment: str) -> None:
    row = setpath(topics_row(1), where, value)
    path = write_jsonl(tmp_path / "topics.jsonl", [topics_row(0), row])
    refused(lambda: load_cases(path, "topics"), path, f"{path}:2:", fragment)


CORPUS_BAD = [
    ("topic", 5, "'topic' must be text"),
    ("topic", "", "'topic' is blank"),
    ("topic", "???", "no letters or digits"),
    ("conversation", None, "'conversation' must be"),
    ("conversation", ["USER: hi"], "'conversation' must be"),
    ("topic_id", 1.5, "'topic_id'"),
]


@pytest.mark.parametrize(("key", "value", "fragment"), CORPUS_BAD)
def test_corpus_bad_field_is_refused_by_line_and_field(tmp_path: Path, key: str, value: Any,
                                                       fragment: str) -> None:
    row = corpus_row(1)
    row[key] = value
    path = write_jsonl(tmp_path / "corpus.jsonl", [corpus_row(0), row])
    refused(lambda: load_corpus(path), path, f"{path}:2:", fragment)
    del row[key]
    if key != "topic_id":
        path = write_jsonl(tmp_path / "corpus2.jsonl", [corpus_row(0), row])
        refused(lambda: load_corpus(path), path, f"{path}:2:", f"needs field '{key}'")


def test_published_longeval_rows_pass_every_check() -> None:
    lines = importers.load_longeval_lines(reference_data("longeval", "lines_200_first3.jsonl"))
    assert [c.expected_number for c in lines][:1] == [2416] and len(lines) == 3
    topics = importers.load_longeval_topics(reference_data("longeval", "topics_5_first3.jsonl"))
    assert [len(c.topics) for c in topics] == [5, 5, 5]
    assert len(load_corpus(reference_data("longeval", "conversations.jsonl"))) == 30


def test_a_row_of_another_kind_is_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "lines.jsonl", [topics_row(0)])
    refused(lambda: load_cases(path, "lines"), path, f"{path}:1:",
            "looks like a LongEval topics row")
    corpus = write_jsonl(tmp_path / "c.jsonl", [corpus_row(0)])
    refused(lambda: importers.detect_longeval_kind(corpus), corpus, "topic corpus row",
            "--corpus")
    quality = write_jsonl(tmp_path / "q.jsonl", [quality_row(0)])
    refused(lambda: importers.detect_longeval_kind(quality), quality, "QuALITY row",
            "--quality")


# --- 3. case files on the command line ------------------------------------------------------


def test_cli_refuses_case_files_of_a_task_not_run(tmp_path: Path) -> None:
    topics = write_jsonl(tmp_path / "5_topics.jsonl", [topics_row(0)])
    code, out, err = cli("run", "--task", "lines", "--cases", str(topics), *DRY)
    assert code == 2 and "holds LongEval topics cases" in err and "--task topics" in err, out
    corpus = write_jsonl(tmp_path / "conv.jsonl", [corpus_row(0)])
    code, out, err = cli("run", "--task", "lines", "--corpus", str(corpus), *DRY)
    assert code == 2 and "--corpus" in err and "topics" in err, out
    code, out, err = cli("run", "--task", "lines", "--task", "topics", "--cases", str(topics),
                         "--lengths", "1k", *DRY)
    assert code == 0 and "2 topics" in out and "lines" in out, err


def test_cli_says_a_case_file_is_given_twice(tmp_path: Path) -> None:
    lines = write_jsonl(tmp_path / "200_lines.jsonl", [lines_row(0), lines_row(1)])
    code, _, err = cli("run", "--cases", str(lines), "--cases", str(lines), *DRY)
    assert code == 2 and "given twice" in err and str(lines) in err
    code, _, err = cli("run", "--cases", str(lines), "--cases",
                       f"{tmp_path}/./200_lines.jsonl", *DRY)
    assert code == 2 and "given twice" in err


def test_two_files_holding_the_same_cases_are_named(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [lines_row(0), lines_row(1)])
    b = write_jsonl(tmp_path / "b.jsonl", [lines_row(0)])
    code, _, err = cli("run", "--cases", str(a), "--cases", str(b), *DRY)
    assert code == 2 and str(a) in err and str(b) in err and "same cases" in err, err


# --- 4. files that are not what they claim ---------------------------------------------------


def _not_utf8(kind: str) -> bytes:
    """A valid row with "café" written in Latin-1 at the start of its first string."""
    text = json.dumps(VALID[kind](0)).replace('": "', '": "caf\u00e9 ', 1)
    return (text + "\n").encode("latin-1")


FILE_PROBLEMS: dict[str, tuple[Callable[[str], bytes], str]] = {
    "not UTF-8": (_not_utf8, ":1: not UTF-8 text (byte 0xe9"),
    "a JSON number": (lambda k: b"5\n", ":1: a number, not a JSON object"),
    "a JSON list": (lambda k: b"\n[1, 2]\n", ":2: an array, not a JSON object"),
    "a JSON string": (lambda k: b'"row"\n', ":1: a string, not a JSON object"),
    "broken JSON": (lambda k: b'{"a": \n', ":1: not valid JSON"),
    "empty": (lambda k: b"", "no rows"),
    "blank lines only": (lambda k: b"\n  \n\n", "no rows"),
    "gzip": (lambda k: gzip.compress(b"{}\n"), "gzip-compressed"),
    "UTF-16": (lambda k: json.dumps(VALID[k](0)).encode("utf-16"), "UTF-16"),
    "a huge number": (lambda k: b'{"x": ' + b"9" * 5000 + b"}\n", ":1: JSON too large"),
    "deep nesting": (lambda k: b"[" * 100_000 + b"]" * 100_000 + b"\n", ":1: JSON too large"),
}


@pytest.mark.parametrize("kind", list(LOADERS))
@pytest.mark.parametrize("problem", list(FILE_PROBLEMS))
def test_a_file_that_is_not_jsonl_objects_is_one_line(tmp_path: Path, kind: str,
                                                      problem: str) -> None:
    make, fragment = FILE_PROBLEMS[problem]
    path = tmp_path / f"{kind}.jsonl"
    path.write_bytes(make(kind))
    refused(lambda: LOADERS[kind](path), path, fragment)


@pytest.mark.parametrize("kind", list(LOADERS))
def test_a_directory_or_a_missing_file_is_named(tmp_path: Path, kind: str) -> None:
    refused(lambda: LOADERS[kind](tmp_path), tmp_path, "is a directory")
    refused(lambda: LOADERS[kind](tmp_path / "nope.jsonl"), tmp_path / "nope.jsonl",
            "not found")


@pytest.mark.parametrize("kind", list(LOADERS))
def test_bom_crlf_and_blank_lines_are_fine(tmp_path: Path, kind: str) -> None:
    rows = [VALID[kind](0), VALID[kind](1)]
    text = "\r\n\r\n".join(json.dumps(r) for r in rows) + "\r\n"
    path = tmp_path / f"{kind}.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + text.encode())
    assert LOADERS[kind](path)
    bad = tmp_path / "bad.jsonl"  # line numbers count blank lines: what an editor shows
    bad.write_bytes(text.encode() + b"\r\n[]\r\n")
    refused(lambda: LOADERS[kind](bad), bad, f"{bad}:5: an array")


CONFIG_PROBLEMS = {
    "not UTF-8": (b"name: caf\xe9\nmodel: x\n", ":1: not UTF-8 text (byte 0xe9)"),
    "not UTF-8 further on": (b"name: a\n\nmodel: \xff\n", ":3: not UTF-8"),
    "a bad date": (b"name: a\nwhen: 2024-02-30\n", "a value YAML cannot read"),
    "a huge number": (b"seed: " + b"9" * 5000 + b"\n", "a value YAML cannot read"),
    "malformed": (b"name: [a\n", "malformed YAML"),
    "a list": (b"- a\n- b\n", "not a list"),
}


@pytest.mark.parametrize("problem", list(CONFIG_PROBLEMS))
def test_a_bad_config_file_is_one_line(tmp_path: Path, problem: str) -> None:
    content, fragment = CONFIG_PROBLEMS[problem]
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    refused(lambda: load_config_file(path), path, fragment)
    code, out, err = cli("run", str(path), *DRY)
    assert code == 2 and fragment in err, err


def test_a_config_with_a_bom_loads_and_a_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(codecs.BOM_UTF8 + b"name: caf\xc3\xa9\n")
    assert load_config_file(path) == {"name": "caf\u00e9"}
    refused(lambda: load_config_file(tmp_path), tmp_path, "is a directory")


@pytest.mark.parametrize("args", [
    ("--cases", "{lines}"),
    ("--task", "longqa", "--quality", "{quality}"),
    ("{config}",),
], ids=["bad lines row", "QuALITY not UTF-8", "config not UTF-8"])
def test_the_real_command_exits_2_with_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    row = lines_row(0)
    row["random_idx"] = ["torpid-kid2", 7]
    files = {"lines": write_jsonl(tmp_path / "lines.jsonl", [row]),
             "quality": tmp_path / "q.jsonl", "config": tmp_path / "run.yaml"}
    files["quality"].write_bytes(_not_utf8("quality"))
    files["config"].write_bytes(b"name: caf\xe9\n")
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    res = subprocess.run([sys.executable, "-m", "evalkit.cli", "run", *argv, *DRY],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr + res.stdout


# --- 5. fuzzing ------------------------------------------------------------------------------

# values that confuse a loose reader: bools for ints, floats for ints, numbers as strings,
# blanks, a lone surrogate, empties of each container
TRICKY: st.SearchStrategy[Any] = st.sampled_from([
    None, True, False, 0, -1, 1, 2, 3, 4, 5, 7, 2.0, 1e300, float("nan"), float("inf"),
    10**30, "", " ", "1", "2", "\ud800", "!!!", "x", "a/b", "<p>", "&amp", [], {}, [1, 2],
    ["a", "b", "c", "d"], ["x", 1], {"a": 1}, [[]],
])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=8)
JUNK = st.one_of(TRICKY, TRICKY, JSON_VALUES)
# the ways a file as a whole can go wrong (or right: bom, crlf, blanks are valid)
DAMAGE = ["none"] * 6 + ["bom", "crlf", "blanks", "bad byte", "truncate", "junk line",
                         "empty"]
HARMLESS = {"none", "bom", "crlf", "blanks"}


def junk(data: st.DataObject) -> Any:
    # a copy: TRICKY's lists and dicts are shared objects, and mutations append to them
    return copy.deepcopy(data.draw(JUNK))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, list) else ()
    for key, child in items:
        yield from _paths(child, (*prefix, key))


def mutate(data: st.DataObject, row: dict[str, Any]) -> bool:
    """Applies 0-3 random mutations to a row in place; True if any."""
    n = data.draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))
    for _ in range(n):
        paths = list(_paths(row))
        if not paths:
            break
        where = data.draw(st.sampled_from(paths))
        parent = row
        for key in where[:-1]:
            parent = parent[key]
        op = data.draw(st.sampled_from(["replace", "replace", "delete", "append", "rename"]))
        if op == "delete":
            del parent[where[-1]]
        elif op == "append" and isinstance(parent[where[-1]], list):
            parent[where[-1]].append(junk(data))
        elif op == "rename" and isinstance(parent, dict):
            parent[where[-1] + "_"] = parent.pop(where[-1])
        else:
            parent[where[-1]] = junk(data)
    return n > 0


def damage(data: st.DataObject, text: str) -> tuple[bytes, str]:
    how = data.draw(st.sampled_from(DAMAGE))
    raw = text.encode("utf-8")
    if how == "bom":
        raw = codecs.BOM_UTF8 + raw
    elif how == "crlf":
        raw = raw.replace(b"\n", b"\r\n")
    elif how == "blanks":
        raw = raw.replace(b"\n", b"\n \n\n")
    elif how == "bad byte":
        at = data.draw(st.integers(0, len(raw)))
        raw = raw[:at] + data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xe9", b"\x80"])) + raw[at:]
    elif how == "truncate":
        raw = raw[:data.draw(st.integers(0, max(0, len(raw) - 1)))]
    elif how == "junk line":
        lines = raw.split(b"\n")
        at = data.draw(st.integers(0, len(lines) - 1))
        lines[at] = data.draw(st.sampled_from([b"5", b"[1]", b'"x"', b"null", b"{", b"true"]))
        raw = b"\n".join(lines)
    elif how == "empty":
        raw = b""
    return raw, how


def reread(raw: bytes) -> list[Any]:
    """The file's rows as an independent, lenient reader sees them (for the oracles)."""
    text = raw.decode("utf-8-sig")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def check_refusal(exc: EvalkitError, path: Path, raw: bytes) -> None:
    msg = str(exc)
    assert "\n" not in msg and "\r" not in msg, msg
    assert str(path) in msg, msg
    m = re.match(re.escape(str(path)) + r":(\d+):", msg)
    if m:  # a line is named: it exists and holds something
        lines = raw.split(b"\n")
        assert 1 <= int(m.group(1)) <= len(lines), msg
        assert lines[int(m.group(1)) - 1].strip(), msg


def oracle(kind: str, result: Any, rows: list[Any]) -> None:
    """What a successful load must agree with: the file's own values, of the right types
    (so that no sample is scored against an answer the file does not give)."""
    def whole(v: Any) -> bool:
        return type(v) is int

    if kind == "quality":
        want = []
        for row in rows:
            assert isinstance(row["article"], str) and isinstance(row["questions"], list)
            for q in row["questions"]:
                g, opts = q["gold_label"], q["options"]
                assert whole(g) and 1 <= g <= 4, g
                assert isinstance(opts, list) and len(opts) == 4
                assert all(isinstance(o, str) and o.strip() for o in opts)
                assert isinstance(q["question"], str) and q["question"] in "".join(
                    s.prompt for s in result)
                want.append((LETTERS[g - 1], opts))
        assert [(s.targets[0], s.meta["options"]) for s in result] == want
    elif kind == "lines":
        assert len(result) == len(rows)
        for s, row in zip(result, rows, strict=True):
            e, n = row["expected_number"], row["num_lines"]
            assert whole(e) and e >= 0 and whole(n) and n >= 1
            assert s.targets == (str(e),) and s.prompt == row["prompt"]
            assert whole(row["random_idx"][1]) and 0 <= row["random_idx"][1] < n
    elif kind == "topics":
        assert len(result) == len(rows)
        for s, row in zip(result, rows, strict=True):
            topics = row["topics"]
            assert isinstance(topics, list) and topics
            assert all(isinstance(t, str) for t in topics)
            assert s.targets == (topics[0],) and s.prompt == row["prompt"]
        assert len({s.id for s in result}) == len(result)
    else:
        assert result == [(r["topic"], r["conversation"]) for r in rows]
        assert all(isinstance(t, str) and isinstance(c, str) for t, c in result)


def cli_args(kind: str, path: Path) -> list[str]:
    if kind == "quality":
        return ["run", "--task", "longqa", "--quality", str(path), *DRY]
    if kind == "corpus":
        return ["run", "--task", "topics", "--corpus", str(path), "--lengths", "150",
                "--samples", "1", *DRY]
    return ["run", "--cases", str(path), *DRY]


FUZZ_EXAMPLES = {"quality": 150, "lines": 150, "topics": 150, "corpus": 100}


@pytest.mark.parametrize("kind", list(FUZZ_EXAMPLES))
def test_fuzzed_files_load_cleanly_or_are_refused_in_one_line(
        tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    tally: Counter[str] = Counter()
    names = itertools.count()

    @settings(max_examples=FUZZ_EXAMPLES[kind], deadline=None, database=None,
              derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        rows = [VALID[kind](k) for k in range(data.draw(st.integers(1, 3)))]
        changed = [mutate(data, row) for row in rows]
        raw, how = damage(data, "".join(json.dumps(r) + "\n" for r in rows))
        # a new name each time: the corpus loader caches by path
        path = tmp_path / f"{kind}-{next(names)}.jsonl"
        path.write_bytes(raw)
        try:
            result = LOADERS[kind](path)
        except EvalkitError as exc:
            check_refusal(exc, path, raw)
            assert any(changed) or how not in HARMLESS, f"a valid file was refused: {exc}"
            loaded = False
            tally["refused"] += 1
        else:
            oracle(kind, result, reread(raw))
            loaded = True
            tally["loaded"] += 1
        code, out, err = cli(*cli_args(kind, path))
        assert_clean(code, out, err)
        if kind != "corpus":  # a good corpus may still be too short for the length
            assert (code == 0) == loaded, (code, err)
        elif not loaded:
            assert code == 2
        tally["cli exit 0" if code == 0 else "cli exit 2"] += 1

    check()
    with capsys.disabled():
        print(f"\nfuzzed {sum(tally[k] for k in ('loaded', 'refused'))} {kind} files: "
              f"{dict(tally)}")
    assert tally["loaded"] >= 5 and tally["refused"] >= 20, tally  # both sides exercised


def test_fuzzed_config_files_load_cleanly_or_are_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tally: Counter[str] = Counter()
    path = tmp_path / "run.yaml"
    good = "name: fuzz\nsamples: 2\nlengths: [1k]\ntasks:\n  - passkey\n  - lines\n"

    @settings(max_examples=100, deadline=None, database=None, derandomize=True)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        raw = good.encode()
        for _ in range(data.draw(st.integers(0, 3))):
            at = data.draw(st.integers(0, len(raw)))
            piece = data.draw(st.binary(max_size=4) | st.sampled_from(
                [b"\xe9", b": ", b"\n  ", b"[", b"- ", b"2024-02-30", b"!!python/none", b"*a",
                 b"&a ", b"9" * 5000, b"\t"]))
            raw = raw[:at] + piece + raw[at:]
        path.write_bytes(raw)
        try:
            load_config_file(path)
            tally["loaded"] += 1
        except EvalkitError as exc:
            check_refusal(exc, path, raw)
            tally["refused"] += 1

    check()
    with capsys.disabled():
        print(f"\nfuzzed {sum(tally.values())} config files: {dict(tally)}")
    assert tally["loaded"] >= 5 and tally["refused"] >= 5, tally
