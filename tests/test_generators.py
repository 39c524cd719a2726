"""Generators: pure, seeded, fitted to exact lengths, pinned by golden hashes."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from conftest import reference_data, whitespace_plan

from evalkit.tasks import get_task, make_params
from evalkit.tasks import lines as lines_mod
from evalkit.tasks import passkey as passkey_mod
from evalkit.tasks import topics as topics_mod
from evalkit.types import EvalkitError, to_jsonable

# sha256 of the JSON of the first two samples per task at 1000 and 2000 whitespace tokens,
# seed 0. A change here changes every published number: bump deliberately, say why.
GOLDEN = {
    "passkey": "d4dd1ba9eace7922533d661565b1608211261109039e13c75569473d24a1f6fb",
    "lines": "2ac09cc6ac1a889d0a4376188ad5d36173c90620c2888b59cfabaa74a8969b60",
    "topics": "c432949adbeeb1c35fdde27912c3d6689b47ef3b27a098f67b2aef62944acff5",
    "longqa": "cd9df221d97b846a49aead6bb05596d18b0a01595a74b1eb850841ed66956ab5",
}


def _samples(task: str, lengths: tuple[int, ...] = (1000, 2000), samples: int = 2,
             seed: int = 0, **params: object) -> list:
    tdef = get_task(task)
    plan = whitespace_plan(task, lengths, samples, seed=seed,
                           max_new_tokens=tdef.max_new_tokens)
    return list(tdef.generate(make_params(tdef, params), plan))


def _digest(samples: list) -> str:
    blob = json.dumps([to_jsonable(s) for s in samples], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@pytest.mark.parametrize("task", sorted(GOLDEN))
def test_golden_hash(task: str) -> None:
    assert _digest(_samples(task)) == GOLDEN[task]


@pytest.mark.parametrize("task", sorted(GOLDEN))
def test_deterministic_and_independent_of_sample_count(task: str) -> None:
    few = _samples(task, lengths=(2000,), samples=2)
    more = _samples(task, lengths=(2000,), samples=4)
    assert [s.id for s in few] == [s.id for s in more[:2]]
    assert _digest(few) == _digest(more[:2])
    other_seed = _samples(task, lengths=(2000,), samples=2, seed=1)
    assert [s.prompt for s in few] != [s.prompt for s in other_seed]


@pytest.mark.parametrize("task", sorted(GOLDEN))
def test_lengths_fit_the_target(task: str) -> None:
    for s in _samples(task, lengths=(1000, 3000, 9000), samples=2):
        assert s.input_tokens <= s.target_tokens
        if task == "passkey":
            assert s.target_tokens - s.input_tokens <= 0.01 * s.target_tokens
        elif task == "topics":  # within one conversation below
            assert s.target_tokens - s.input_tokens <= 700
        else:  # within one line / one profile below
            assert s.target_tokens - s.input_tokens <= 80


def test_passkey_prompt_is_landmarks() -> None:
    s = _samples("passkey", lengths=(800,), samples=1)[0]
    parts = s.prompt.split("\n")
    assert len(parts) == 5
    assert parts[0] == passkey_mod.TASK_DESCRIPTION
    key = s.targets[0]
    assert parts[2] == f"The pass key is {key}. Remember it. {key} is the pass key."
    assert parts[4] == "What is the pass key? The pass key is"
    assert 1 <= int(s.targets[0]) <= 50000
    assert passkey_mod.filler(len(parts[1])) == parts[1]


def test_passkey_depth_sweep_places_the_needle() -> None:
    out = _samples("passkey", lengths=(2000,), samples=1, depths=[0.0, 0.5, 1.0])
    assert [s.meta["depth"] for s in out] == [0.0, 0.5, 1.0]
    prefixes = [len(s.prompt.split("\n")[1]) for s in out]
    totals = [s.meta["n_garbage_chars"] for s in out]
    assert prefixes[0] == 0 and prefixes[2] == totals[2]
    assert abs(prefixes[1] - totals[1] / 2) <= 1
    assert len({s.id for s in out}) == 3


def test_passkey_key_digits() -> None:
    for s in _samples("passkey", lengths=(600,), samples=5, key_digits=5):
        assert len(s.targets[0]) == 5


def test_lines_default_index_names_are_adjective_noun() -> None:
    s = _samples("lines", lengths=(1500,), samples=1)[0]
    names = re.findall(r"^line (\S+): REGISTER_CONTENT is <(\d+)>$", s.prompt, re.M)
    assert len(names) == s.meta["num_lines"]
    assert all(re.fullmatch(r"[a-z]+-[a-z]+", n) for n, _ in names)
    assert len({n for n, _ in names}) == len(names)
    assert dict(names)[s.meta["line_index"]] == s.targets[0]
    assert s.prompt.startswith(lines_mod.HEADER)


def test_lines_by_count() -> None:
    out = _samples("lines", samples=2, num_lines=[20, 30])
    assert [s.meta["num_lines"] for s in out] == [20, 20, 30, 30]
    assert all(s.target_tokens is None and s.meta["bin"] == f"{s.meta['num_lines']} lines"
               for s in out)


def test_topics_label_is_the_first_topic() -> None:
    s = _samples("topics", lengths=(3000,), samples=1)[0]
    first = s.meta["topics"][0]
    assert s.targets == (first,)
    opening = f"USER: I would like to discuss the topic of {first[0].lower() + first[1:]}."
    assert s.prompt.index(opening) == len(topics_mod.HEADER.format(n=s.meta["num_topics"]))
    assert f"on {s.meta['num_topics']} different topics" in s.prompt


def test_builtin_topic_corpus_is_long_enough_for_32k() -> None:
    corpus = topics_mod.load_corpus(None)
    assert len({t for t, _ in corpus}) == len(corpus) >= 60
    words = sum(len(c.split()) for _, c in corpus)
    assert words > 26000  # ~1.3 tokens a word: over 32K tokens


def test_builtin_short_conversations_are_longevals_format() -> None:
    long_corpus = topics_mod.load_corpus(None)
    short = topics_mod.load_corpus(None, short=True)
    assert len({t for t, _ in short}) == len(short) >= 24
    assert not {t for t, _ in short} & {t for t, _ in long_corpus}
    for topic, conversation in (*long_corpus, *short):
        assert conversation.startswith(
            f"USER: I would like to discuss the topic of {topic[0].lower() + topic[1:]}. \n "
            "ASSISTANT: ")
        assert conversation.endswith(
            f" \n USER: Great, this is the end of our discussion on the topic {topic}, let's "
            "talk about the next topic.")
    # shorter than any of LongEval's size by at least a third
    assert 1.5 * max(len(c.split()) for _, c in short) < min(
        len(c.split()) for _, c in long_corpus)


def test_topics_cases_hold_at_least_three_topics() -> None:
    """Below 2K tokens (where two or three conversations of LongEval's size fill the
    prompt) cases are drawn from the short ones, from 2K from those of LongEval's size:
    by the length alone, whatever the tokenizer."""
    long_topics = {t for t, _ in topics_mod.load_corpus(None)}
    short_topics = {t for t, _ in topics_mod.load_corpus(None, short=True)}
    out = _samples("topics", lengths=(1000, 2047, 2048, 9000), samples=3)
    assert len(out) == 12 and topics_mod.SHORT_BELOW == 2048
    for s in out:
        assert s.meta["num_topics"] >= topics_mod.MIN_TOPICS == 3
        assert f"on {s.meta['num_topics']} different topics" in s.prompt
        assert set(s.meta["topics"]) <= (short_topics if s.target_tokens < 2048
                                         else long_topics)


def test_topics_refuses_a_length_where_a_case_holds_fewer_than_three() -> None:
    tdef = get_task("topics")
    plan = whitespace_plan("topics", (2000, 400), 2, max_new_tokens=tdef.max_new_tokens)
    with pytest.raises(EvalkitError) as err:  # before the first sample, of any length
        next(iter(tdef.generate(make_params(tdef, {}), plan)))
    found = re.fullmatch(r"topics: at 400 tokens a case may hold only (\d) topics?, LongEval's "
                         r"task needs at least 3: use lengths of at least (\d+)", str(err.value))
    assert found, str(err.value)
    held, shortest = int(found[1]), int(found[2])
    assert held == 1 and 400 < shortest < 1000
    assert {s.meta["num_topics"] for s in _samples("topics", lengths=(shortest,),
                                                    samples=20)} == {3}
    with pytest.raises(EvalkitError, match=f"at {shortest - 1} tokens .* at least {shortest}$"):
        _samples("topics", lengths=(shortest - 1,), samples=1)
    # cases by topic count are LongEval's own sizes, asked for: unchanged
    assert [s.meta["num_topics"] for s in _samples("topics", num_topics=[2])] == [2, 2]


def test_topics_refuses_a_short_length_for_longevals_corpus() -> None:
    corpus = str(reference_data("longeval", "conversations.jsonl"))
    with pytest.raises(EvalkitError, match=r"^topics: at 1000 tokens a case may hold only 1 "
                                           r"topic, .* at least \d+$") as err:
        _samples("topics", lengths=(1000,), corpus=corpus)
    shortest = int(str(err.value).rsplit(" ", 1)[1])
    assert all(s.meta["num_topics"] >= 3
               for s in _samples("topics", lengths=(shortest,), samples=5, corpus=corpus))


def test_longqa_synthetic_options_and_answer() -> None:
    for s in _samples("longqa", lengths=(1500,), samples=4):
        options = s.meta["options"]
        assert len(options) == len(set(options)) == 4
        right = options["ABCD".index(s.targets[0])]
        person = s.meta["person"]
        profile = next(p for p in s.prompt.split("\n\n") if person in p)
        assert right in profile


def test_tiny_target_is_refused() -> None:
    with pytest.raises(EvalkitError, match="too short"):
        _samples("passkey", lengths=(10,), samples=1)


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(EvalkitError, match="unknown parameter 'dpeths' for task passkey"):
        make_params(get_task("passkey"), {"dpeths": [0.5]})


def test_longeval_lines_prompts_are_reproduced_exactly() -> None:
    path = reference_data("longeval", "lines_200_first3.jsonl")
    for row in map(json.loads, path.read_text().splitlines()):
        pairs = re.findall(r"^line (.+?): REGISTER_CONTENT is <(\d+)>$", row["prompt"], re.M)
        idx, vals = [p[0] for p in pairs], [int(p[1]) for p in pairs]
        rebuilt = lines_mod.build_prompt(idx, vals, len(idx), row["random_idx"][1])
        assert rebuilt == row["prompt"]
        assert vals[row["random_idx"][1]] == row["expected_number"]


def test_longeval_topics_prompts_are_reproduced_exactly() -> None:
    corpus = dict(topics_mod.load_corpus(str(reference_data("longeval", "conversations.jsonl"))))
    path = reference_data("longeval", "topics_5_first3.jsonl")
    for row in map(json.loads, path.read_text().splitlines()):
        convs = [corpus[t] for t in row["topics"]]
        assert topics_mod.build_prompt(convs, len(convs)) == row["prompt"]


def test_longeval_importers_read_published_rows() -> None:
    from evalkit.tasks.importers import read_longeval_lines, read_longeval_topics

    plan = whitespace_plan("lines")
    rows = list(read_longeval_lines(str(reference_data("longeval", "lines_200_first3.jsonl")),
                                    plan))
    assert [r.targets[0] for r in rows] == ["2416"] + [r.targets[0] for r in rows[1:]]
    assert all(r.meta["bin"] == "200 lines" and r.target_tokens is None for r in rows)
    topics = list(read_longeval_topics(str(reference_data("longeval", "topics_5_first3.jsonl")),
                                       plan))
    assert topics[0].targets == ("The psychology of creativity",)
    assert len({t.id for t in topics}) == 3
