"""Readers of published test cases and corpora: the only file I/O of the generators.

- LongEval lines rows: {random_idx: [idx, position], expected_number, num_lines, token_size,
  correct_line, prompt, prompt_length}
- LongEval topics rows: {test_id, prompt, topics, prompt_length}
- LongEval topic corpus rows: {topic_id, topic, conversation}
- QuALITY rows: {article_id, set_unique_id, title, article, questions: [{question, options,
  gold_label (1-indexed), difficult, question_unique_id?}]}
- OpenAI MRCR rows (parquet, or JSONL of the same columns): {prompt (a JSON string of
  [{role, content}] messages), answer, random_string_to_prepend, n_needles,
  desired_msg_index?, total_messages?, n_chars?, date_added?}
The prompts of published rows are used as they are; only the template is applied.

Every file is untrusted input and is checked whole, field by field, before a sample is
made: a bad file is refused with one line naming the file, the line and the field (an
EvalkitError), never a traceback and never a sample scored against the wrong answer.
Fields evalkit does not use (title, validation, ...) are left alone.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from evalkit.tasks.base import Plan
from evalkit.tasks.parsers import normalize
from evalkit.types import ROLES, EvalkitError, Message, Sample

LINES, TOPICS, CORPUS, QUALITY = ("LongEval lines", "LongEval topics", "topic corpus", "QuALITY")
# the fields that tell one kind of row from another, and the option that takes that kind
_SIGNATURES: dict[str, tuple[frozenset[str], str]] = {
    LINES: (frozenset({"random_idx", "expected_number", "num_lines", "correct_line"}),
            "--cases"),
    TOPICS: (frozenset({"test_id", "topics"}), "--cases"),
    CORPUS: (frozenset({"topic", "conversation"}), "--corpus"),
    QUALITY: (frozenset({"article", "questions"}), "--quality"),
}
# ids become part of sample ids (and so of file names and joins): plain characters only
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
_MAGIC = {b"\x1f\x8b": "gzip-compressed: decompress it first",
          b"PK\x03\x04": "a zip archive: unzip it and pass the .jsonl file inside",
          codecs.BOM_UTF16_LE: "UTF-16 text: save it as UTF-8",
          codecs.BOM_UTF16_BE: "UTF-16 text: save it as UTF-8"}


@dataclass(frozen=True)
class Row:
    """One JSON object of a JSONL file and where it stands, for error messages."""

    path: Path
    line: int
    data: dict[str, Any]
    what: str

    def error(self, name: str, problem: str) -> EvalkitError:
        return EvalkitError(f"{self.path}:{self.line}: {self.what} field '{name}' {problem}")


def _brief(value: Any) -> str:
    """A value as JSON, short and on one line."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _json_kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return {dict: "an object", list: "an array", str: "a string", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def _need(row: Row, obj: dict[str, Any], key: str, name: str | None = None) -> Any:
    """A field that must be there (null counts as there: the type check refuses it)."""
    if key in obj:
        return obj[key]
    has = ", ".join(sorted(obj)[:8]) + (", ..." if len(obj) > 8 else "") if obj else "none"
    looks = _looks_like(obj) if name is None else None  # a whole row of another kind?
    hint = (f"; it looks like a {looks} row: pass that file with {_SIGNATURES[looks][1]}"
            if looks and looks != row.what else "")
    name = name or key
    raise EvalkitError(f"{row.path}:{row.line}: a {row.what} row needs field '{name}' "
                       f"(it has {has}){hint}")


def _optional(obj: dict[str, Any], key: str) -> Any:
    """An optional field: absent and null are the same."""
    return obj.get(key)


def _text(row: Row, name: str, value: Any, what: str = "text") -> str:
    """A non-blank string of valid Unicode."""
    if not isinstance(value, str):
        raise row.error(name, f"must be {what} (a JSON string), got {_brief(value)}")
    if not value.strip():
        raise row.error(name, f"is blank: it must hold {what}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate escape such as \ud800
        raise row.error(name, f"holds an invalid character ({_brief(value[exc.start])}, an "
                              "unpaired surrogate): fix the escape") from None
    return value


def _whole(row: Row, name: str, value: Any, low: int, high: int | None = None,
           note: str = "") -> int:
    """A JSON integer in [low, high]: never a bool, a float (even 3.0) or a string."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise row.error(name, f"must be a whole number {span}{note}, got {_brief(value)}")
    return value


def _id(row: Row, name: str, value: Any) -> str | int:
    """An identifier: a whole number, or a short string of letters, digits and _.:-"""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and _ID.fullmatch(value):
        return value
    raise row.error(name, "must be a whole number or a short id of letters, digits and _.:- "
                          f"(at most 200), got {_brief(value)}")


def _array(row: Row, name: str, value: Any, length: int | None = None) -> list[Any]:
    """A non-empty JSON array (of exactly `length` items, if given)."""
    if not isinstance(value, list):
        raise row.error(name, f"must be an array, got {_json_kind(value)} {_brief(value)}")
    if not value:
        raise row.error(name, "is an empty array")
    if length is not None and len(value) != length:
        raise row.error(name, f"must hold exactly {length} items, got {len(value)}")
    return value


def _label_text(row: Row, name: str, value: Any) -> str:
    """Text an answer is scored against by a normalised match: it needs letters or digits,
    or every answer would silently score wrong."""
    text = _text(row, name, value)
    if not normalize(text):
        raise row.error(name, f"has no letters or digits to match an answer against, got "
                              f"{_brief(value)}")
    return text


def _looks_like(obj: dict[str, Any]) -> str | None:
    """The kind of row whose signature fields this object has most of, if any."""
    best, hits = None, 0
    for kind, (keys, _) in _SIGNATURES.items():
        n = len(keys & set(obj))
        if n > hits:
            best, hits = kind, n
    return best


def _check_file(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        raise EvalkitError(f"{p} is a directory: pass the {what} file (JSONL) itself")
    if not p.exists():
        raise EvalkitError(f"{what} file not found: {p}")
    if not p.is_file():
        raise EvalkitError(f"{p} is not a regular file (a pipe or device?): pass the {what} "
                           "file (JSONL) itself")
    return p


def read_rows(path: str | Path, what: str) -> list[Row]:
    """The JSON objects of a JSONL file, one a line, with their line numbers; blank lines
    are skipped. Refuses, by line, what is not UTF-8, not JSON, or not a JSON object."""
    p = _check_file(path, what)
    rows: list[Row] = []
    try:
        with p.open("rb") as f:  # bytes: lines split at \n only, and bad UTF-8 found by line
            for lineno, raw in enumerate(f, 1):
                if lineno == 1:
                    for magic, problem in _MAGIC.items():
                        if raw.startswith(magic):
                            raise EvalkitError(f"{p}: this {what} file is {problem}")
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                rows.extend(_parse_line(p, lineno, raw, what))
    except OSError as exc:
        raise EvalkitError(f"{p}: cannot read the {what} file ({exc.strerror or exc})") from None
    if not rows:
        raise EvalkitError(f"{p}: no rows: a {what} file holds one JSON object a line")
    return rows


def _parse_line(p: Path, lineno: int, raw: bytes, what: str) -> list[Row]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvalkitError(f"{p}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                           f"column {exc.start + 1}): save the {what} file as UTF-8") from None
    if not text.strip():
        return []
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalkitError(f"{p}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}): "
                           f"a {what} file holds one JSON object a line") from None
    except (ValueError, RecursionError):  # a number of over 4300 digits, or deep nesting
        raise EvalkitError(f"{p}:{lineno}: JSON too large to read (a number of thousands of "
                           f"digits, or arrays nested too deep): is this a {what} file?"
                           ) from None
    if not isinstance(obj, dict):
        raise EvalkitError(f"{p}:{lineno}: {_json_kind(obj)}, not a JSON object: a {what} "
                           "file holds one object {...} a line")
    return [Row(p, lineno, obj, what)]


def detect_longeval_kind(path: str | Path) -> str:
    """'lines' or 'topics', from the first row's fields; the whole file is then checked as
    that kind, so a bad file is refused before any model loads."""
    rows = read_rows(path, "LongEval test-case")
    first = rows[0]
    kind = _looks_like(first.data)
    if kind == LINES:
        load_longeval_lines(path)
        return "lines"
    if kind == TOPICS:
        load_longeval_topics(path)
        return "topics"
    if kind is not None:
        raise EvalkitError(f"{first.path}:{first.line}: a {kind} row, not a LongEval test "
                           f"case: pass that file with {_SIGNATURES[kind][1]}")
    raise EvalkitError(f"{first.path}:{first.line}: neither a LongEval lines row (random_idx, "
                       "expected_number, ...) nor a topics row (test_id, topics): pass "
                       "LongEval's published test-case files")


@dataclass(frozen=True)
class LinesCase:
    """One checked LongEval lines row."""

    line: int  # in the file
    line_index: str | int
    position: int
    expected_number: int
    num_lines: int
    prompt: str
    token_size: int | None


def load_longeval_lines(path: str | Path) -> list[LinesCase]:
    cases = []
    for row in read_rows(path, LINES):
        d = row.data
        num_lines = _whole(row, "num_lines", _need(row, d, "num_lines"), 1)
        pair = _array(row, "random_idx", _need(row, d, "random_idx"), 2)
        index = _id(row, "random_idx[0]", pair[0])
        position = _whole(row, "random_idx[1]", pair[1], 0, num_lines - 1,
                          " (the asked line's place, counted from 0, below num_lines)")
        expected = _whole(row, "expected_number", _need(row, d, "expected_number"), 0)
        prompt = _text(row, "prompt", _need(row, d, "prompt"), "the prompt text")
        if str(expected) not in prompt:
            raise row.error("expected_number", f"is {expected}, which is nowhere in the "
                                               "prompt: the row's answer and prompt disagree")
        correct_line = _optional(d, "correct_line")
        if correct_line is not None and str(expected) not in _text(row, "correct_line",
                                                                   correct_line):
            raise row.error("correct_line", f"does not hold expected_number {expected}: the "
                                            "row disagrees with itself")
        token_size = _optional(d, "token_size")
        if token_size is not None:
            _whole(row, "token_size", token_size, 0)
        if _optional(d, "prompt_length") is not None:  # LongEval writes -1 there
            _whole(row, "prompt_length", d["prompt_length"], -1)
        cases.append(LinesCase(row.line, index, position, expected, num_lines, prompt,
                               token_size))
    return cases


def read_longeval_lines(path: str, plan: Plan) -> Iterator[Sample]:
    for i, case in enumerate(load_longeval_lines(path)):
        n = case.num_lines
        yield Sample(
            id=f"lines/longeval-n{n}/{i}", task="lines", prompt=case.prompt,
            targets=(str(case.expected_number),), target_tokens=None,
            input_tokens=plan.measure(case.prompt), template=plan.template,
            max_new_tokens=plan.max_new_tokens,
            meta={"bin": f"{n} lines", "num_lines": n, "line_index": case.line_index,
                  "position": case.position, "published_tokens": case.token_size,
                  "source": Path(path).name},
        )


@dataclass(frozen=True)
class TopicsCase:
    """One checked LongEval topics row."""

    line: int
    test_id: str | int
    prompt: str
    topics: tuple[str, ...]


def load_longeval_topics(path: str | Path) -> list[TopicsCase]:
    cases = []
    seen: dict[tuple[str, int], int] = {}  # (test_id, n) -> line: what the sample id holds
    for row in read_rows(path, TOPICS):
        d = row.data
        test_id = _id(row, "test_id", _need(row, d, "test_id"))
        prompt = _text(row, "prompt", _need(row, d, "prompt"), "the prompt text")
        raw = _array(row, "topics", _need(row, d, "topics"))
        topics = tuple(_label_text(row, f"topics[{j}]", t) for j, t in enumerate(raw))
        if f" {normalize(topics[0])} " not in f" {normalize(prompt)} ":
            raise row.error("topics[0]", f"{_brief(topics[0])} (the label) is nowhere in the "
                                         "prompt: the row's topics and prompt disagree")
        if _optional(d, "prompt_length") is not None:
            _whole(row, "prompt_length", d["prompt_length"], -1)
        key = (str(test_id), len(topics))
        if key in seen:
            raise row.error("test_id", f"{_brief(test_id)} repeats line {seen[key]} (with as "
                                       "many topics): give each case a distinct test_id")
        seen[key] = row.line
        cases.append(TopicsCase(row.line, test_id, prompt, topics))
    return cases


def read_longeval_topics(path: str, plan: Plan) -> Iterator[Sample]:
    for case in load_longeval_topics(path):
        n = len(case.topics)
        yield Sample(
            id=f"topics/longeval-n{n}/{case.test_id}", task="topics", prompt=case.prompt,
            targets=(case.topics[0],), target_tokens=None,
            input_tokens=plan.measure(case.prompt), template=plan.template,
            max_new_tokens=plan.max_new_tokens,
            meta={"bin": f"{n} topics", "num_topics": n, "topics": list(case.topics),
                  "source": Path(path).name},
        )


def read_case_files(paths: Iterable[str], read: Callable[[str, Plan], Iterator[Sample]],
                    plan: Plan) -> Iterator[Sample]:
    """The samples of several case files, each file checked whole before its samples go.
    Refuses a file given twice, and two files whose cases would share sample ids (which
    would otherwise be merged or refused later with a message naming neither file)."""
    files: dict[Path, str] = {}
    owner: dict[str, str] = {}  # sample id -> the file that made it
    for path in paths:
        key = Path(path).expanduser().resolve()
        if key in files:
            raise EvalkitError(f"the case file {path} is given twice"
                               + (f" (also as {files[key]})" if files[key] != path else "")
                               + ": give each case file once")
        files[key] = path
        samples = list(read(path, plan))
        for s in samples:
            if s.id in owner:
                raise EvalkitError(f"{path}: its cases make sample ids that {owner[s.id]} makes "
                                   f"too ({s.id}): the two files hold the same cases; merge "
                                   "them into one file or give one of them")
        owner.update((s.id, path) for s in samples)
        yield from samples


def read_topic_corpus(path: str | Path) -> list[tuple[str, str]]:
    """(topic, conversation) pairs of a LongEval-style topic corpus."""
    pairs = []
    for row in read_rows(path, CORPUS):
        d = row.data
        topic = _label_text(row, "topic", _need(row, d, "topic"))
        conversation = _text(row, "conversation", _need(row, d, "conversation"),
                             "the conversation text")
        if _optional(d, "topic_id") is not None:
            _id(row, "topic_id", d["topic_id"])
        pairs.append((topic, conversation))
    return pairs


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        # the standard library asserts on an unknown `<![keyword` section; keep it as text
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            self.handle_data(self.rawdata[i:i + 3])
            return i + 3


def strip_html(text: str) -> str:
    if "<" not in text:
        return text
    parser = _TextOnly()
    parser.feed(text)
    parser.close()  # flushes the text after the last tag, which feed() may hold back
    return "".join(parser.parts)


@dataclass(frozen=True)
class QualityQuestion:
    key: str  # question_unique_id, or the set id and the question's place: the sample id
    question: str
    options: tuple[str, ...]
    gold_label: int  # 1-based, as QuALITY writes it
    difficult: int


@dataclass(frozen=True)
class QualitySet:
    """One checked QuALITY row: an article (plain text) and its questions."""

    line: int
    article_id: str | int | None
    set_unique_id: str | int | None
    article: str
    questions: tuple[QualityQuestion, ...]


def read_quality(path: str | Path) -> list[QualitySet]:
    """QuALITY question sets, articles as plain text, every question checked."""
    sets = []
    seen: dict[str, int] = {}  # question key -> line
    for row in read_rows(path, QUALITY):
        d = row.data
        ids = {k: _id(row, k, d[k]) if d.get(k) is not None else None
               for k in ("article_id", "set_unique_id")}
        article = strip_html(_text(row, "article", _need(row, d, "article"),
                                   "the article text")).strip()
        if not article:
            raise row.error("article", "holds no text once its HTML tags are stripped")
        set_id = ids["set_unique_id"] if ids["set_unique_id"] is not None else ids["article_id"]
        questions = []
        for qi, q in enumerate(_array(row, "questions", _need(row, d, "questions"))):
            question = _quality_question(row, qi, q, set_id)
            if question.key in seen:
                raise row.error(f"questions[{qi}]", f"has the id {question.key} of a question "
                                f"on line {seen[question.key]}: give each question once")
            seen[question.key] = row.line
            questions.append(question)
        sets.append(QualitySet(row.line, ids["article_id"], ids["set_unique_id"], article,
                               tuple(questions)))
    return sets


def _quality_question(row: Row, qi: int, q: Any, set_id: str | int | None) -> QualityQuestion:
    at = f"questions[{qi}]"
    if not isinstance(q, dict):
        raise row.error(at, f"must be an object {{question, options, gold_label, ...}}, got "
                            f"{_json_kind(q)} {_brief(q)}")
    if "gold_label" not in q:
        raise EvalkitError(f"{row.path}:{row.line}: {at} has no gold_label (QuALITY's test "
                           "split hides its labels): use the train or dev file")
    question = _text(row, f"{at}.question", _need(row, q, "question", f"{at}.question"),
                     "the question text")
    raw = _array(row, f"{at}.options", _need(row, q, "options", f"{at}.options"), 4)
    options = tuple(_text(row, f"{at}.options[{j}]", o, "option text")
                    for j, o in enumerate(raw))
    gold = _whole(row, f"{at}.gold_label", q["gold_label"], 1, 4,
                  " (labels count from 1)")
    difficult = 0
    if q.get("difficult") is not None:
        difficult = _whole(row, f"{at}.difficult", q["difficult"], 0, 1, " (1 = hard)")
    qid = q.get("question_unique_id")
    if qid is not None:
        key = str(_id(row, f"{at}.question_unique_id", qid))
    else:
        key = f"{set_id if set_id is not None else f'line{row.line}'}-{qi}"
    return QualityQuestion(key, question, options, gold, difficult)


# ---- OpenAI MRCR -------------------------------------------------------------------------

MRCR = "MRCR"
MRCR_FIELDS = ("prompt", "answer", "random_string_to_prepend", "n_needles")


@dataclass(frozen=True)
class MrcrCase:
    """One checked row of OpenAI's MRCR: the conversation (`prompt`, parsed), the answer
    (which starts with the random string), the string, and the row's own counts."""

    source: str  # the file's name (its path inside a folder given)
    row: int     # its place in the file, from 0
    messages: tuple[Message, ...]
    answer: str
    random_string: str
    n_needles: int
    desired_msg_index: int | None
    total_messages: int | None
    n_chars: int | None


def mrcr_files(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """The MRCR files given, with the names their rows' ids take: files (their names), or
    folders whose *.parquet and *.jsonl files, in subfolders too (the hub's
    2needle/2needle_0.parquet), are read in path order (their paths in the folder)."""
    out: list[tuple[Path, str]] = []
    for given in paths:
        p = Path(given).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in (".parquet", ".jsonl")
                           and f.is_file())
            if not found:
                raise EvalkitError(f"{p}: no .parquet or .jsonl file in this folder: pass the "
                                   "folder of MRCR's files (2needle.parquet, ...) or the files")
            out += [(f, f.relative_to(p).as_posix()) for f in found]
        elif p.is_file():
            out.append((p, p.name))
        else:
            raise EvalkitError(f"MRCR data not found: {p}: pass MRCR's files (openai/mrcr: "
                               "2needle.parquet, 4needle.parquet, 8needle.parquet) or their "
                               "folder")
    return out


def _parquet_rows(p: Path) -> list[Row]:
    """The rows of a parquet file, as JSON-like objects (needs pyarrow)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise EvalkitError(f"{p}: reading parquet needs pyarrow: pip install pyarrow, or pass "
                           "the rows as JSONL") from None
    try:
        table = pq.read_table(p)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise EvalkitError(f"{p}: not a readable parquet file ({str(exc)[:120]})") from None
    return [Row(p, i + 1, d, MRCR) for i, d in enumerate(table.to_pylist())]


def _mrcr_messages(row: Row) -> tuple[Message, ...]:
    """The row's `prompt`: a JSON string of [{role, content}, ...]."""
    text = _text(row, "prompt", _need(row, row.data, "prompt"), "a JSON list of messages")
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raise row.error("prompt", "is not JSON: MRCR's prompt is a JSON string of "
                                  "[{\"role\": ..., \"content\": ...}] messages") from None
    if not isinstance(raw, list) or not raw:
        raise row.error("prompt", "must be a JSON list of messages, got "
                                  f"{_json_kind(raw)}")
    out = []
    for i, m in enumerate(raw):
        if not (isinstance(m, dict) and m.get("role") in ROLES
                and isinstance(m.get("content"), str)):
            raise row.error("prompt", f"message {i} is not {{\"role\": user, assistant or "
                                      f"system, \"content\": text}}: {_brief(m)}")
        out.append(Message(m["role"], m["content"]))
    if out[-1].role != "user":
        raise row.error("prompt", "must end with the user's request (its last message is "
                                  f"the {out[-1].role}'s)")
    return tuple(out)


def load_mrcr(paths: Iterable[str | Path]) -> list[MrcrCase]:
    """Every row of MRCR's files (parquet, or JSONL of the same columns), checked whole:
    a bad row is one line naming the file, the row and the field."""
    cases = []
    for p, name in mrcr_files(paths):
        rows = _parquet_rows(p) if p.suffix == ".parquet" else read_rows(p, MRCR)
        for i, row in enumerate(rows):
            d = row.data
            if not isinstance(d.get("prompt"), str) and all(k not in d for k in MRCR_FIELDS[1:]):
                raise EvalkitError(f"{p}: not MRCR rows (no {', '.join(MRCR_FIELDS)}): pass "
                                   "openai/mrcr's files")
            random_string = _text(row, "random_string_to_prepend",
                                  _need(row, d, "random_string_to_prepend"))
            answer = _need(row, d, "answer")
            if not isinstance(answer, str) or not answer.startswith(random_string):
                raise row.error("answer", "must be text that starts with "
                                          "random_string_to_prepend, got " + _brief(answer))
            optional = {k: None if _optional(d, k) is None else _whole(row, k, d[k], 0)
                        for k in ("desired_msg_index", "total_messages", "n_chars")}
            cases.append(MrcrCase(
                source=name, row=i, messages=_mrcr_messages(row), answer=answer,
                random_string=random_string,
                n_needles=_whole(row, "n_needles", _need(row, d, "n_needles"), 1),
                **optional))
    return cases
