"""RULER's needle tasks made by evalkit: RULER's strings (as lm-eval's port copies them),
its draws and placements, its scoring (lm-eval's own functions), and lengths exact with the
model's tokenizer, chat template and answer prefix."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import itertools
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from servers import require

from evalkit.prompts.counters import WhitespaceCounter
from evalkit.prompts.templates import PromptMeasure, make_template
from evalkit.results import store
from evalkit.runner import execute
from evalkit.runner.config import build_spec
from evalkit.tasks import get_task, make_params
from evalkit.tasks.base import Plan
from evalkit.tasks.ruler import haystacks, niah, protocol
from evalkit.types import EvalkitError, Response

NIAH_TASKS = tuple(protocol.NIAH)
ESSAY_WORDS = ("river stone lantern meadow quiet harbor winter orchard candle mirror "
               "valley thunder paper garden silver window morning shadow bridge ocean").split()


def _essay(tmp_path: Path, words: int = 20_000) -> Path:
    """A text in the shape of an essay: sentences of 5-20 words, some ending with quotes."""
    rng = random.Random(1)
    out: list[str] = []
    while sum(len(s.split()) for s in out) < words:
        n = rng.randint(5, 20)
        sentence = " ".join(rng.choice(ESSAY_WORDS) for _ in range(n)).capitalize()
        out.append(sentence + rng.choice([".", ".", "?", '."', "!"]))
    path = tmp_path / "essay.txt"
    path.write_text("\n\n".join(" ".join(out[i:i + 7]) for i in range(0, len(out), 7)))
    return path


def _essay_params(task: str, tmp_path: Path) -> dict[str, Any]:
    """An essay file for the tasks whose haystack is one."""
    essay = protocol.NIAH.get(task) and protocol.NIAH[task].type_haystack == "essay"
    return {"essay": str(_essay(tmp_path))} if essay else {}


def _plan(task: str, lengths: tuple[int, ...] = (1024,), samples: int = 3,
          template: Any = None, counter: Any = None, max_new_tokens: int = 128) -> Plan:
    template = template or make_template("raw")
    counter = counter or WhitespaceCounter()
    return Plan(task=task, lengths=lengths, samples=samples, seed=0, template=template.name,
                max_new_tokens=max_new_tokens, measure=PromptMeasure(template, counter),
                count=lambda t: len(counter.encode(t)))


def _samples(task: str, params: dict[str, Any] | None = None, **kw: Any) -> list[Any]:
    tdef = get_task(task)
    assert tdef.generate is not None
    return list(tdef.generate(make_params(tdef, params or {}), _plan(task, **kw)))


# -- RULER's strings, as lm-eval's port copies them ----------------------------------------

def _lm_eval_strings(module: str) -> dict[str, Any]:
    """The string constants of one of lm-eval's RULER modules, read from its source (its
    import builds 6.2 million key words and asks nltk for a download)."""
    require("lm_eval", "evalkit[lmeval]")
    spec = importlib.util.find_spec("lm_eval")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).parent / "tasks" / "ruler" / f"{module}.py"
    out: dict[str, Any] = {}
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def test_the_task_texts_are_rulers_byte_for_byte() -> None:
    assert _lm_eval_strings("niah_utils")["TEMPLATE"] == protocol.NIAH_TEMPLATE
    vt = _lm_eval_strings("vt_utils")["CONFIG"]["variable_tracking"]
    assert vt["template"] == protocol.VT_TEMPLATE
    # lm-eval keeps the misspelling RULER fixed (NVIDIA/RULER 4a216f4): the one difference
    assert vt["answer_prefix"].replace("assgined", "assigned") == protocol.VT_ANSWER_PREFIX
    cwe = _lm_eval_strings("cwe_utils")["CONFIG"]
    assert (cwe["template"], cwe["answer_prefix"]) == (protocol.CWE_TEMPLATE,
                                                       protocol.CWE_ANSWER_PREFIX)
    fwe = _lm_eval_strings("fwe_utils")["CONFIG"]
    assert (fwe["template"], fwe["answer_prefix"]) == (protocol.FWE_TEMPLATE,
                                                       protocol.FWE_ANSWER_PREFIX)
    qa = _lm_eval_strings("qa_utils")["CONFIG"]
    assert qa["template"] == protocol.QA_TEMPLATE
    assert qa["answer_prefix"] == protocol.QA_ANSWER_PREFIX.strip()  # lm-eval strips it


def test_the_needle_tasks_are_rulers_synthetic_yaml() -> None:
    """The eight niah settings as RULER's scripts/synthetic.yaml has them."""
    table = {name: (t.type_haystack, t.type_needle_k, t.type_needle_v, t.num_needle_k,
                    t.num_needle_v, t.num_needle_q) for name, t in protocol.NIAH.items()}
    assert table == {
        "niah_single_1": ("noise", "words", "numbers", 1, 1, 1),
        "niah_single_2": ("essay", "words", "numbers", 1, 1, 1),
        "niah_single_3": ("essay", "words", "uuids", 1, 1, 1),
        "niah_multikey_1": ("essay", "words", "numbers", 4, 1, 1),
        "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1),
        "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
        "niah_multivalue": ("essay", "words", "numbers", 1, 4, 1),
        "niah_multiquery": ("essay", "words", "numbers", 1, 1, 4),
    }
    assert protocol.DEPTHS[:4] == (0, 3, 5, 8) and protocol.DEPTHS[-1] == 100
    assert len(protocol.DEPTHS) == 40


def test_key_words_are_rulers_adjective_noun_set() -> None:
    """RULER's words: the sorted set of adjective-noun joins over wonderwords' lists; drawn
    as a uniform adjective and noun, every join is distinct (so the draw is uniform over
    that set)."""
    adjs, nouns = haystacks.key_words()
    assert len(adjs) * len(nouns) == 6_171_620  # len(sorted(set(RULER's words)))
    require("wonderwords", "evalkit[lmeval]")
    from wonderwords import RandomWord

    cats = RandomWord()._categories
    assert set(adjs) == set(cats["adjectives"]) and set(nouns) == set(cats["nouns"])


# -- what a sample holds -----------------------------------------------------------------

@pytest.mark.parametrize("task", NIAH_TASKS)
def test_needles_queries_and_answers_are_rulers(task: str, tmp_path: Path) -> None:
    spec = protocol.NIAH[task]
    for s in _samples(task, _essay_params(task, tmp_path)):
        keys, queries = s.meta["keys"], s.meta["queries"]
        n_keys = max(spec.num_needle_k, spec.num_needle_q)
        assert len(keys) == n_keys == len(set(keys)) and len(queries) == spec.num_needle_q
        assert len(s.targets) == spec.num_needle_q * spec.num_needle_v
        for key in keys:  # every needle is in the haystack once
            values = re.findall(f"One of the special magic {spec.type_needle_v} for "
                                f"{re.escape(key)} is: (\\S+)\\.", s.prompt)
            assert len(values) == spec.num_needle_v
        for q in queries:
            assert q in s.answer_prefix
        value_pattern = {"numbers": r"\d{7}", "uuids": r"[0-9a-f-]{36}",
                         "words": r"[a-z]+-[a-z]+"}[spec.type_needle_v]
        assert all(re.fullmatch(value_pattern, t) for t in s.targets)
        singular = spec.num_needle_q * spec.num_needle_v == 1
        head = "A special magic " if singular else "Some special magic "
        assert s.prompt.startswith(head + spec.type_needle_v[:-1 if singular else None])
        assert s.answer_prefix.endswith(" is" if singular else " are")
        assert s.answer_prefix.startswith(" The special magic ")
        if spec.type_haystack == "needle":  # distractor needles fill the haystack
            assert s.prompt.count("One of the special magic") > 20


def test_the_needles_keep_rulers_fixed_shuffle_and_the_essay_its_depths(
        tmp_path: Path) -> None:
    (s,) = _samples("niah_multivalue", {"essay": str(_essay(tmp_path))}, samples=1)
    spec = protocol.NIAH["niah_multivalue"]
    draws = niah.draw(spec, niah.sample_rng(s.id))
    order = list(range(4))
    random.Random(42).shuffle(order)  # RULER shuffles with Random(42) whatever the sample
    assert draws.needles == [protocol.NEEDLE.format(type_needle_v="numbers", key=draws.keys[0],
                                                    value=draws.values[0][i]) for i in order]
    assert len(set(draws.depths)) == 4 and set(draws.depths) <= set(protocol.DEPTHS)
    spots = [s.prompt.index(n) for n in draws.needles]
    assert spots == sorted(spots)  # placed in depth order, each between two sentences
    for n in draws.needles:
        before = s.prompt[:s.prompt.index(n)].rstrip()
        assert before.endswith((".", "?", "!", '"', "\n"))


def test_a_sample_is_made_by_its_id_alone() -> None:
    one = _samples("niah_single_1", lengths=(1024,), samples=2)
    more = _samples("niah_single_1", lengths=(1024, 2048), samples=3)
    assert one == more[:2]


# -- lengths -----------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["niah_single_1", "niah_multikey_2", "niah_multikey_3",
                                  "niah_multiquery"])
def test_lengths_are_exact_in_words_counted(task: str, tmp_path: Path) -> None:
    """One word one token (and a BOS): every prompt, answer prefix included, is its length
    less the 128 tokens to generate, to the token."""
    for s in _samples(task, _essay_params(task, tmp_path), lengths=(1024, 3000)):
        assert s.input_tokens == s.target_tokens - 128
        assert len(WhitespaceCounter().encode(s.prompt + s.answer_prefix)) == s.input_tokens


def test_whole_units_end_the_haystack_at_a_line_as_ruler_does() -> None:
    for s in _samples("niah_single_1", {"whole_units": True}, lengths=(2048,)):
        lines = s.prompt.split("\n")[1:-1]  # the haystack's lines
        assert all(line == protocol.NOISE or line.startswith("One of") for line in lines)
        assert s.target_tokens - 128 - 19 < s.input_tokens <= s.target_tokens - 128
        assert s.meta["whole_units"] is True


def test_lengths_are_exact_with_gemmas_tokenizer_and_chat_template(tmp_path: Path) -> None:
    """Gemma 3's own tokenizer and Gemma's chat template: the prompt as the model reads it, with the
    answer prefix after the assistant start, takes at most its length less the budget, and
    the haystack one word longer would not fit."""
    require("llama_cpp", "evalkit[llamacpp]")
    from evalkit.backends import make_backend

    gemma = make_backend("llamacpp", "gemma3-270m", {})  # its tokenizer (a base model: no
    counter = gemma.tokenizer()  # chat template of its own; Gemma's is in tests/data)
    chat = make_template("chat", (Path(__file__).parent / "data" / "chat_templates" /
                                  "gemma2.jinja").read_text(), {"bos_token": "<bos>"})
    essay = str(_essay(tmp_path))
    for task in ("niah_single_1", "niah_multikey_3", "niah_single_2"):
        tdef = get_task(task)
        assert tdef.generate is not None
        plan = _plan(task, lengths=(2048,), samples=2, template=chat, counter=counter)
        params = niah.RulerParams(essay=essay if task == "niah_single_2" else None)
        for s in tdef.generate(params, plan):
            rendered = chat.render_sample(s)
            assert rendered.endswith("<start_of_turn>model\n" + s.answer_prefix)
            assert len(counter.encode(rendered)) == s.input_tokens <= 2048 - 128
            assert 2048 - 128 - s.input_tokens <= 8  # within a word or two


def test_a_length_too_short_for_the_needles_is_one_line() -> None:
    with pytest.raises(EvalkitError, match="too short for this task"):
        _samples("niah_multikey_2", lengths=(140,))


def test_an_essay_task_without_an_essay_file_or_a_bad_one_says_what_to_give(
        tmp_path: Path) -> None:
    bad = tmp_path / "essay.json"
    bad.write_text('{"essays": []}')
    with pytest.raises(EvalkitError, match="RULER's format, an object with the text"):
        _samples("niah_single_2", {"essay": str(bad)})
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    with pytest.raises(EvalkitError, match="too little text"):
        _samples("niah_single_2", {"essay": str(short)})


# -- scoring -----------------------------------------------------------------------------

def test_scores_are_lm_evals_string_match_all_on_rulers_postprocessed_output() -> None:
    require("lm_eval", "evalkit[lmeval]")
    from lm_eval.tasks.ruler import common_utils

    rng = random.Random(3)
    refs = ["1234567", "Lively-Goat", "9f1c2d3e-aaaa-4bbb-8ccc-1234567890ab", "7654321"]
    sample = _samples("niah_single_1", samples=1, lengths=(512,))[0]
    for _ in range(200):
        k = rng.randint(1, 4)
        targets = tuple(rng.sample(refs, k))
        said = rng.sample(refs, rng.randint(0, 4))
        text = rng.choice(["", " ", "\n"]) + ", ".join(
            r.upper() if rng.random() < 0.3 else r for r in said) + rng.choice(["", "\x07 ."])
        got = niah.score(dataclasses.replace(sample, targets=targets), Response(text=text))
        want = common_utils.string_match_all(common_utils.postprocess_pred([text]),
                                             [list(targets)])
        assert got.scores["string_match_all"] == pytest.approx(want)


# -- through the runner ------------------------------------------------------------------

def test_a_run_records_the_answer_prefix_and_scores_every_task(tmp_path: Path) -> None:
    """The scripted backend reads the asked needles' values back: every task scores 1, and
    each record keeps the prefix, in the sample and at the end of the prompt as sent."""
    spec = build_spec({"model": "x", "backend": "scripted", "lengths": ["1k"], "samples": 2,
                       "tasks": list(NIAH_TASKS)})
    result = execute.run(spec, results_root=tmp_path / "results", progress=False)
    records = store.read_records(result.run_dir)
    assert len(records) == 2 * len(NIAH_TASKS)
    for r in records:
        assert r.scores == {"string_match_all": 1.0}, (r.sample.id, r.response.text)
        assert r.sent is not None and r.sent["after"].endswith(r.sample.answer_prefix)
        assert r.sample.input_tokens == 1024 - 128
        if protocol.NIAH[r.sample.task].type_haystack == "essay":  # the bundled essays
            assert r.sample.meta["essay"] == "federalist.txt"
            assert "the State of New York" in r.sample.prompt
    assert {row.task for row in result.summary.rows} == set(NIAH_TASKS)


@pytest.mark.engine
def test_gemma_answers_a_needle_prompt_fitted_to_its_own_tokens(tmp_path: Path) -> None:
    """The real engine: the embedded Gemma 3 270M (llama.cpp) reads niah_single_1 prompts
    of exactly 1024 - 128 of its tokens, answer prefix included, and its answers are
    scored."""
    require("llama_cpp", "evalkit[llamacpp]")
    spec = build_spec({"model": "gemma3-270m", "backend": "llamacpp", "lengths": ["1k"],
                       "samples": 2, "tasks": ["niah_single_1"]})
    result = execute.run(spec, results_root=tmp_path / "results", progress=False)
    records = store.read_records(result.run_dir)
    assert len(records) == 2
    for r in records:
        assert r.ok and r.response.text.strip()
        assert r.sample.input_tokens == r.response.input_tokens == 1024 - 128
        assert r.sent is not None and r.sent["after"].endswith(r.sample.answer_prefix)
        assert 0 < r.response.output_tokens <= 128
        assert "string_match_all" in r.scores


# -- cwe and fwe -------------------------------------------------------------------------

def _numbered(text: str) -> list[str]:
    return re.findall(r"\d+\. (\S+)", text)


@pytest.mark.parametrize("target,common,uncommon", [(2048, 6, 1), (5000, 30, 3)])
def test_cwe_lists_common_words_as_ruler_does(target: int, common: int,
                                              uncommon: int) -> None:
    from collections import Counter

    for s in _samples("cwe", lengths=(target,), samples=2, max_new_tokens=120):
        # one few-shot example first: the task template, its answer prefix and its answer
        assert s.prompt.startswith(protocol.CWE_TEMPLATE.split("{context}")[0])
        assert protocol.CWE_ANSWER_PREFIX + " 1. " in s.prompt
        listed = s.prompt.rsplit(protocol.CWE_TEMPLATE.split("{context}")[0], 1)[1]
        counts = Counter(_numbered(listed.split("\nQuestion:")[0]))
        assert {w for w, n in counts.items() if n == common} == set(s.targets)
        assert len(s.targets) == 10 and set(counts.values()) == {common, uncommon}
        assert len(counts) == s.meta["size"]
        assert s.answer_prefix == protocol.CWE_ANSWER_PREFIX
        # the largest list that fits: one word more (uncommon times listed) would not
        assert s.target_tokens - 120 - 3 * uncommon < s.input_tokens <= s.target_tokens - 120


def test_fwe_writes_a_zipf_text_whose_top_words_are_the_answer() -> None:
    from collections import Counter

    for s in _samples("fwe", lengths=(4096,), samples=2, max_new_tokens=50):
        text = s.prompt.split("coded words. ", 1)[1].split("\nQuestion:")[0]
        ranked = [w for w, _ in Counter(text.split(" ")).most_common()]
        assert ranked[0] == "..." and tuple(ranked[1:4]) == s.targets
        assert all(re.fullmatch("[a-z]{6}", w) for w in ranked[1:])
        assert s.input_tokens == 4096 - 50  # one word more is one token more here
        assert s.answer_prefix == protocol.FWE_ANSWER_PREFIX


@pytest.mark.parametrize("task", ["cwe", "fwe"])
def test_cwe_and_fwe_score_the_words_named(task: str) -> None:
    (s,) = _samples(task, lengths=(2048,), samples=1, max_new_tokens=50)
    named = " " + ", ".join(s.targets)
    assert get_task(task).score(s, Response(text=named)).scores == {"string_match_all": 1.0}
    half = " " + ", ".join(s.targets[: len(s.targets) // 2 + 1])
    got = get_task(task).score(s, Response(text=half)).scores["string_match_all"]
    assert got == pytest.approx((len(s.targets) // 2 + 1) / len(s.targets))


# -- vt ----------------------------------------------------------------------------------

def test_vt_hides_a_chain_of_four_hops_after_rulers_example() -> None:
    from evalkit.tasks.ruler import vt

    samples = _samples("vt", lengths=(1024, 3000), samples=2, max_new_tokens=30)
    examples = set()
    for s in samples:
        # the example, then a blank line, then the task: RULER's icl_example ends with a
        # newline and is joined to the task by another
        shot = s.prompt.split("\n\n" + protocol.VT_TEMPLATE[:20], 1)[0]
        # the example: RULER's task template, its answer prefix, its 5 renamed answers (after
        # the prefix's own trailing space, a second one, as RULER joins them)
        assert shot.startswith(protocol.VT_TEMPLATE[:40]) and "they are:  " in shot
        example_names = shot.split("they are: ")[1].split()
        assert len(example_names) == 5 and all(re.fullmatch("[A-Z]{3}", n)
                                                 for n in example_names)
        assert "12345" not in shot  # its value was replaced too
        assert len(WhitespaceCounter().encode(shot)) <= 500 + 8
        examples.add(shot)
        # the chain: VAR A = value, then each next name = the one before (trailing space)
        names = list(s.targets)
        value = s.meta["value"]
        assert f"\nVAR {names[0]} = {value}\n" in s.prompt
        for a, b in itertools.pairwise(names):
            assert f"\nVAR {b} = VAR {a} \n" in s.prompt
        lines = [i for i, line in enumerate(s.prompt.split("\n")) if line.startswith("VAR ")
                 and any(n in line for n in names)]
        assert lines == sorted(lines)  # in chain order
        assert s.answer_prefix == protocol.VT_ANSWER_PREFIX.format(num_v=5, query=value)
        assert s.input_tokens == s.target_tokens - 30
        assert vt.score(s, Response(text=" " + " ".join(names))).scores == {
            "string_match_all": 1.0}
    assert len(examples) == len(samples)  # one example, renamed for every sample


# -- qa_1, qa_2: small files in SQuAD's and HotpotQA's formats, built here ----------------

def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(ESSAY_WORDS) for _ in range(n)).capitalize() + "."


def squad_file(tmp_path: Path, articles: int = 12, paragraphs: int = 4) -> Path:
    """SQuAD v2.0's layout: articles of paragraphs, each with questions, some unanswerable."""
    rng = random.Random(5)
    data = []
    for a in range(articles):
        paras = []
        for p in range(paragraphs):
            answer = f"Answer{a}x{p}"
            context = " ".join(_sentence(rng, 12) for _ in range(4)) + f" It was {answer}."
            paras.append({"context": context, "qas": [
                {"id": f"{a}-{p}", "question": f"What was it in article {a}, part {p}?",
                 "answers": [{"text": answer, "answer_start": context.index(answer)}],
                 "is_impossible": False},
                {"id": f"{a}-{p}-x", "question": "What is unanswerable here?", "answers": [],
                 "plausible_answers": [{"text": "x", "answer_start": 0}],
                 "is_impossible": True}]})
        data.append({"title": f"Article_{a}", "paragraphs": paras})
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps({"version": "v2.0", "data": data}))
    return path


def hotpot_file(tmp_path: Path, questions: int = 15) -> Path:
    """HotpotQA's distractor layout: each question with 10 [title, sentences] paragraphs."""
    rng = random.Random(6)
    data = []
    for q in range(questions):
        context = [[f"Title {q}-{p}", [" " + _sentence(rng, 10) for _ in range(3)]]
                   for p in range(10)]
        context[3][1].append(f" The bridge was built by Builder{q}.")
        data.append({"_id": f"q{q}", "question": f"Who built the bridge of question {q}?",
                     "answer": f"Builder{q}", "type": "bridge", "level": "hard",
                     "supporting_facts": [[f"Title {q}-3", 3]], "context": context})
    path = tmp_path / "hotpot_dev_distractor_v1.json"
    path.write_text(json.dumps(data))
    return path


def test_qa_1_reads_squad_and_places_the_gold_paragraph_among_distractors(
        tmp_path: Path) -> None:
    from evalkit.tasks.ruler import qa

    path = squad_file(tmp_path)
    qset = qa.read_set("squad", str(path))
    assert len(qset.questions) == 48 and len(qset.docs) == 48  # unanswerable ones left out
    samples = _samples("qa_1", {"data": str(path)}, lengths=(1024, 2048), samples=3,
                       max_new_tokens=32)
    for s in samples:
        i = s.meta["question"]
        q = qset.questions[i]
        assert s.targets == q.outputs and s.prompt.endswith(f"Question: {q.query}")
        docs = re.findall(r"Document (\d+):\n", s.prompt)
        assert docs == [str(n + 1) for n in range(s.meta["documents"])]
        assert qset.docs[q.context[0]] in s.prompt  # the gold paragraph is always there
        assert s.answer_prefix == protocol.QA_ANSWER_PREFIX
        assert s.input_tokens <= s.target_tokens - 32
        # one document more would not fit (each is about 60 tokens here)
        assert s.target_tokens - 32 - s.input_tokens < 80
        got = qa.score(s, Response(text=f" {s.targets[0].upper()}"))
        assert got.scores == {"string_match_part": 1.0}
    assert [s.meta["question"] for s in samples[:3]] == [0, 1, 2]  # question i of the file


def test_qa_2_reads_hotpotqa_with_titled_documents(tmp_path: Path) -> None:
    from evalkit.tasks.ruler import qa

    path = hotpot_file(tmp_path)
    (s,) = _samples("qa_2", {"data": str(path)}, lengths=(3000,), samples=1,
                    max_new_tokens=32)
    assert "Document 1:\nTitle " in s.prompt and "built by Builder0." in s.prompt
    for title, sentences in json.loads(path.read_text())[0]["context"]:
        assert f"{title}\n{''.join(sentences)}" in s.prompt  # every gold document
    assert s.targets == ("Builder0",)
    assert qa.score(s, Response(text=" I do not know")).scores == {"string_match_part": 0.0}


@pytest.mark.parametrize("task,content,message", [
    ("qa_1", None, "qa_1 reads SQuAD's dev-v2.0.json"),
    ("qa_1", "[1, 2]", "not SQuAD's format"),
    ("qa_2", '{"data": []}', "not HotpotQA's format"),
    ("qa_2", "not json", "cannot be read as JSON"),
    ("qa_1", "missing", "no such file"),
])
def test_qa_data_missing_or_wrong_is_one_line(tmp_path: Path, task: str,
                                              content: str | None, message: str) -> None:
    params: dict[str, Any] = {}
    if content is not None:
        path = tmp_path / "data.json"
        if content != "missing":
            path.write_text(content)
        params["data"] = str(path)
    with pytest.raises(EvalkitError, match=re.escape(message)):
        _samples(task, params, max_new_tokens=32)


# -- the suite ---------------------------------------------------------------------------

def test_the_ruler_config_runs_the_13_tasks_and_averages_them_per_length(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/ruler.yaml's tasks, at 1K on the scripted backend (qa on the files built
    here): a row per task and length, and RULER's average where all 13 ran."""
    from evalkit.runner.config import Overrides, load_config_file
    from evalkit.tasks.ruler import suite

    (tmp_path / "squad").mkdir()
    (tmp_path / "hotpotqa").mkdir()
    squad_file(tmp_path / "squad")
    hotpot_file(tmp_path / "hotpotqa")
    monkeypatch.chdir(tmp_path)  # the config's data paths are read from here
    config = load_config_file(Path(__file__).resolve().parents[1] / "configs" / "ruler.yaml")
    assert tuple(t if isinstance(t, str) else next(iter(t)) for t in config["tasks"]) == \
        suite.TASK_NAMES
    spec = build_spec({**config, "model": "x", "backend": "scripted"},
                      Overrides(lengths="1k", samples=2))
    result = execute.run(spec, results_root=tmp_path / "results", progress=False)
    rows = result.summary.rows
    tasks = {r.task: r for r in rows if r.length == 1024 and r.subset == "all"}
    assert set(tasks) == {*suite.TASK_NAMES, "ruler"}
    average = tasks["ruler"]
    assert average.metric == "average" and average.derived
    assert average.value == pytest.approx(
        sum(tasks[t].value for t in suite.TASK_NAMES) / 13)
    assert all(tasks[t].value == 1.0 for t in suite.TASK_NAMES if t.startswith("niah"))
    # a run of fewer tasks has no suite average: it would not be RULER's number
    fewer = build_spec({"model": "x", "backend": "scripted", "lengths": ["1k"],
                        "samples": 1, "tasks": ["niah_single_1", "vt"]})
    part = execute.run(fewer, results_root=tmp_path / "results", progress=False)
    assert "ruler" not in {r.task for r in part.summary.rows}


def test_vt_draws_distinct_names_where_ruler_would_draw_again() -> None:
    """A name drawn twice leaves RULER's chain short (its sample loop then draws again):
    the example of seed 1199 draws one; its chain still has 5 distinct names."""
    from evalkit.tasks.ruler import vt

    found = vt.chains(random.Random("vt/icl/1199"), icl=True)
    assert [len(set(n)) for n in found.names] == [5]
    plan = _plan("vt", lengths=(1024,), samples=1, max_new_tokens=30)
    (s,) = get_task("vt").generate(make_params(get_task("vt"), {}),  # type: ignore[misc]
                                   dataclasses.replace(plan, seed=1199))
    assert len(set(s.targets)) == 5


@pytest.mark.parametrize("task", ["niah_single_1", "vt", "cwe", "qa_1"])
def test_a_length_within_the_budget_is_one_line(task: str, tmp_path: Path) -> None:
    params = {"data": str(squad_file(tmp_path))} if task == "qa_1" else {}
    with pytest.raises(EvalkitError, match="leaves nothing beside the .* tokens to generate"):
        _samples(task, params, lengths=(20,), max_new_tokens=get_task(task).max_new_tokens)


def test_an_essay_given_to_a_task_without_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EvalkitError, match="niah_single_1: its haystack is noise, not an essay"):
        _samples("niah_single_1", {"essay": str(_essay(tmp_path))})
