"""Readers of published test cases and corpora: the only file I/O of the generators.

- LongEval lines rows: {random_idx: [idx, position], expected_number, num_lines, token_size,
  correct_line, prompt, prompt_length}
- LongEval topics rows: {test_id, prompt, topics, prompt_length}
- LongEval topic corpus rows: {topic_id, topic, conversation}
- QuALITY rows: {article_id, set_unique_id, title, article, questions: [{question, options,
  gold_label (1-indexed), difficult, question_unique_id?}]}
The prompts of published rows are used as they are; only the template is applied.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from evalkit.types import EvalkitError, Sample


def read_jsonl(path: str | Path, required: tuple[str, ...], what: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file, each checked for the fields it must have."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise EvalkitError(f"{what} file not found: {p}")
    rows: list[dict[str, Any]] = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalkitError(f"{p}:{lineno}: not valid JSON ({exc.msg}): is this a "
                                   f"{what} JSONL file?") from None
            missing = [k for k in required if k not in row]
            if missing:
                raise EvalkitError(f"{p}:{lineno}: a {what} row needs field "
                                   f"'{missing[0]}' (has {', '.join(sorted(row)) or 'none'})")
            rows.append(row)
    if not rows:
        raise EvalkitError(f"{p}: no rows: is this a {what} JSONL file?")
    return rows


def detect_longeval_kind(path: str | Path) -> str:
    """'lines' or 'topics', from the first row's fields."""
    row = read_jsonl(path, (), "LongEval test-case")[0]
    if "expected_number" in row and "random_idx" in row:
        return "lines"
    if "topics" in row and "test_id" in row:
        return "topics"
    raise EvalkitError(f"{path}: neither a LongEval lines row (random_idx, expected_number) "
                       "nor a topics row (test_id, topics)")


def read_longeval_lines(path: str, plan: Any) -> Iterator[Sample]:
    rows = read_jsonl(path, ("random_idx", "expected_number", "num_lines", "prompt"),
                      "LongEval lines test-case")
    for i, row in enumerate(rows):
        n = int(row["num_lines"])
        prompt = str(row["prompt"])
        yield Sample(
            id=f"lines/longeval-n{n}/{i}", task="lines", prompt=prompt,
            targets=(str(row["expected_number"]),), target_tokens=None,
            input_tokens=plan.measure(prompt), template=plan.template,
            max_new_tokens=plan.max_new_tokens,
            meta={"bin": f"{n} lines", "num_lines": n, "line_index": row["random_idx"][0],
                  "position": row["random_idx"][1], "published_tokens": row.get("token_size"),
                  "source": Path(path).name},
        )


def read_longeval_topics(path: str, plan: Any) -> Iterator[Sample]:
    rows = read_jsonl(path, ("test_id", "prompt", "topics"), "LongEval topics test-case")
    for row in rows:
        n = len(row["topics"])
        prompt = str(row["prompt"])
        yield Sample(
            id=f"topics/longeval-n{n}/{row['test_id']}", task="topics", prompt=prompt,
            targets=(str(row["topics"][0]),), target_tokens=None,
            input_tokens=plan.measure(prompt), template=plan.template,
            max_new_tokens=plan.max_new_tokens,
            meta={"bin": f"{n} topics", "num_topics": n, "topics": list(row["topics"]),
                  "source": Path(path).name},
        )


def read_topic_corpus(path: str | Path) -> list[tuple[str, str]]:
    """(topic, conversation) pairs of a LongEval-style topic corpus."""
    rows = read_jsonl(path, ("topic", "conversation"), "topic corpus")
    return [(str(r["topic"]), str(r["conversation"])) for r in rows]


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def strip_html(text: str) -> str:
    if "<" not in text:
        return text
    parser = _TextOnly()
    parser.feed(text)
    return "".join(parser.parts)


def read_quality(path: str) -> list[dict[str, Any]]:
    """QuALITY question sets, articles as plain text."""
    rows = read_jsonl(path, ("article", "questions"), "QuALITY")
    for row in rows:
        row["article"] = strip_html(str(row["article"])).strip()
        for q in row["questions"]:
            if "gold_label" not in q:
                raise EvalkitError(f"{path}: questions have no gold_label (the test split hides "
                                   "its labels): use the train or dev file")
    return rows
