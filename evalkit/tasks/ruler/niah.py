"""RULER's eight needle-in-a-haystack tasks (niah_single_1/2/3, niah_multikey_1/2/3,
niah_multivalue, niah_multiquery), made by evalkit at exact lengths.

As RULER's scripts/data/synthetic/niah.py makes them: keys, values and needles drawn the
same way (numbers of 7 digits, adjective-noun words, version-4 UUIDs), the needles
shuffled by random.Random(42) as RULER's fixed seed does, put in the haystack where RULER
puts them (at random lines of a noise or needle haystack; between the sentences of an
essay at depths drawn from RULER's 40), the query and the answers, the singular rewrite of
the template where one value is asked, the task template and answer prefix byte for byte,
128 tokens to generate, scored by string_match_all on the postprocessed output.

What evalkit does its own way, said on every record (meta) and in `evalkit tasks`:
- the length is exact: a sample's prompt, rendered with the model's template and ending
  with the answer prefix, takes at most its length minus the generation budget, and one
  more haystack word would not fit (RULER's length counts input and budget the same way,
  but its builder settles on a size per length, steps down 25 lines or 500 words where a
  sample does not fit, and ends at whole lines); `whole_units` ends at whole lines instead;
- every random draw of a sample comes from a generator seeded by its id (evalkit's rule:
  adding samples or lengths changes none already made), so the samples are RULER's in
  distribution, not RULER's files;
- the essay haystack is the file given as `essay`, or evalkit's bundled public-domain
  essays, The Federalist Papers (RULER's are Paul Graham's, which it downloads and which
  are not public domain; a record names its essay file in meta["essay"]), split into
  sentences by evalkit's fixed rule instead of nltk's punkt model (haystacks.sentences).
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from evalkit.tasks.base import (
    Plan,
    Score,
    TaskDef,
    data_dir,
    found_marks,
    last_match,
    register_task,
    sample_rng,
)
from evalkit.tasks.fitting import SampledCounts
from evalkit.tasks.ruler import suite
from evalkit.tasks.ruler.haystacks import (
    Lines,
    SizeCounts,
    essay_words,
    first_words,
    fit_prompt,
    line_unit,
    line_units,
    lines_counts,
    needle_lines,
    noise_lines,
    random_value,
    sentences,
    word_units,
    words_counts,
)
from evalkit.tasks.ruler.protocol import (
    DEPTHS,
    NEEDLE,
    NIAH,
    NIAH_ANSWER_PREFIX,
    NIAH_TEMPLATE,
    Niah,
    postprocess_pred,
    string_match_all,
)
from evalkit.types import EvalkitError, MetricDef, Response, Sample

RULER_SEED = 42  # RULER's --random_seed: its needles are shuffled by Random(42) every time


@dataclass(frozen=True)
class RulerParams:
    essay: str | None = field(
        default=None, metadata={"help": "the essay haystack: a text file, or a JSON file "
                                        "{\"text\": ...} as RULER's PaulGrahamEssays.json; "
                                        "none: The Federalist Papers, bundled (public "
                                        "domain; not RULER's Paul Graham essays)"})
    whole_units: bool = field(
        default=False, metadata={"help": "end a noise or needle haystack at a whole line, as "
                                         "RULER does (prompts then fall up to a line short)"})


BUNDLED_ESSAY = "federalist.txt"  # The Federalist Papers (data/ruler/SOURCES.txt)


@functools.cache
def read_essay(path: str | None) -> tuple[str, tuple[str, ...]]:
    """The essay haystack's name (for the records) and its words: the file given, or
    evalkit's bundled public-domain essays."""
    file = Path(path).expanduser() if path is not None else data_dir() / "ruler" / BUNDLED_ESSAY
    try:
        raw = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalkitError(f"essay {path}: cannot be read ({exc}): give a UTF-8 text file "
                           "or RULER's PaulGrahamEssays.json") from None
    text = raw
    if file.suffix == ".json":
        try:
            text = json.loads(raw)["text"]
        except (ValueError, KeyError, TypeError):
            raise EvalkitError(f"essay {path}: a .json essay is RULER's format, an object "
                               "with the text under \"text\"") from None
        if not isinstance(text, str):
            raise EvalkitError(f"essay {path}: its \"text\" should be a string")
    words = tuple(w for w in essay_words(text.strip()) if w)
    if len(words) < 100:
        raise EvalkitError(f"essay {path}: {len(words)} words is too little text for a "
                           "haystack: give a longer one")
    return file.name, words


@dataclass(frozen=True)
class Needles:
    """A sample's draws that do not depend on the haystack's size."""

    keys: list[str]
    values: list[list[str]]
    needles: list[str]  # in the order they go into the haystack
    queries: list[str]
    answers: list[str]
    depths: list[int]  # essay: RULER's depths (percent) drawn for the needles


def draw(task: Niah, rng: random.Random) -> Needles:
    """RULER's generate_input_output, the draws that come before the haystack."""
    num_k = max(task.num_needle_k, task.num_needle_q)
    keys: list[str] = []
    values: list[list[str]] = []
    needles: list[str] = []
    for _ in range(num_k):
        keys.append(random_value(task.type_needle_k, rng))
        value: list[str] = []
        for _ in range(task.num_needle_v):
            value.append(random_value(task.type_needle_v, rng))
            needles.append(NEEDLE.format(type_needle_v=task.type_needle_v, key=keys[-1],
                                         value=value[-1]))
        values.append(value)
    random.Random(RULER_SEED).shuffle(needles)
    depths = rng.sample(DEPTHS, len(needles)) if task.type_haystack == "essay" else []
    indices = rng.sample(range(num_k), task.num_needle_q)
    queries = [keys[i] for i in indices]
    answers = [a for i in indices for a in values[i]]
    return Needles(keys, values, needles, queries, answers, depths)


def texts(task: Niah, queries: list[str]) -> tuple[str, str]:
    """The task template and the answer prefix, with RULER's singular rewrite where one
    value is asked (applied, as RULER applies it, to the template and prefix together)."""
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    type_v: str = task.type_needle_v
    template, prefix = NIAH_TEMPLATE, NIAH_ANSWER_PREFIX
    if task.num_needle_q * task.num_needle_v == 1:
        def singular(t: str) -> str:
            t = t.replace("Some", "A").replace("are all", "is").replace("are", "is")
            return t.replace("answers", "answer")

        template, prefix = singular(template), singular(prefix)
        type_v = type_v[:-1]
    return (template.replace("{query}", query).replace("{type_needle_v}", type_v),
            prefix.format(type_needle_v=type_v, query=query))


def line_context(lines: list[str], needles: list[str], seed: str) -> str:
    """RULER's noise and needle haystacks: the needles inserted at random lines (a draw of
    its own for each size, as RULER draws anew at every size it tries)."""
    rng = random.Random(f"{seed}/{len(lines)}")
    indexes = sorted(rng.sample(range(len(lines)), len(needles)), reverse=True)
    out = list(lines)
    for index, element in zip(indexes, needles, strict=False):
        out.insert(index, element)
    return "\n".join(out)


def essay_context(words: tuple[str, ...], k: int, draws: Needles) -> str:
    """RULER's essay haystack: the first k words, the needles between sentences at their
    depths."""
    sents = sentences(first_words(words, k))
    positions = [0, *sorted(int(len(sents) * (d / 100)) for d in draws.depths), len(sents)]
    parts: list[str] = []
    for i in range(1, len(positions)):
        parts.append(" ".join(sents[positions[i - 1]:positions[i]]))
        if i - 1 < len(draws.needles):
            parts.append(draws.needles[i - 1])
    return " ".join(parts)


def generate(task: Niah, params: RulerParams, plan: Plan) -> Iterator[Sample]:
    if not plan.lengths:
        raise EvalkitError(f"{task.name} needs lengths: pass --lengths, e.g. 4k,8k,16k")
    if params.essay is not None and task.type_haystack != "essay":
        raise EvalkitError(f"{task.name}: its haystack is {task.type_haystack}, not an "
                           "essay: drop its essay parameter (the essay tasks are "
                           "niah_single_2/3, niah_multikey_1, niah_multivalue, "
                           "niah_multiquery)")
    essay = read_essay(params.essay) if task.type_haystack == "essay" else None
    for target in plan.lengths:
        budget = target - plan.max_new_tokens
        for i in range(plan.samples):
            sid = f"{task.name}/{target}/{plan.seed}/{i}"
            if plan.wants(sid):
                yield _sample(task, params, plan, sid, target, budget, essay)


def _sample(task: Niah, params: RulerParams, plan: Plan, sid: str, target: int,
            budget: int, essay: tuple[str, tuple[str, ...]] | None) -> Sample:
    draws = draw(task, sample_rng(sid))
    template, prefix = texts(task, draws.queries)
    lines: Lines | None = None
    if task.type_haystack == "noise":
        lines = noise_lines(params.whole_units)
    elif task.type_haystack == "needle":
        lines = needle_lines(f"{sid}/haystack", task.type_needle_k, task.type_needle_v,
                             params.whole_units)

    def build(k: int) -> str:
        if lines is not None:
            context = line_context(lines.lines(k * lines.step()), draws.needles, sid)
        else:
            assert essay is not None
            context = essay_context(essay[1], k, draws)
        return template.replace("{context}", context)

    step = lines.step() if lines is not None else 1
    lo = -(-len(draws.needles) * lines.words_per_line // step) if lines is not None else 1
    hi = max(lo, budget // step + 1)

    est = plan.fitter.estimator
    counts: SizeCounts
    if task.type_haystack == "needle":  # each sample's own distractors
        assert lines is not None
        counts = lines_counts(lines, SampledCounts(est, functools.partial(line_unit, lines)),
                              est)
    elif lines is not None:  # noise: one text for every sample
        counts = lines_counts(lines, plan.fitter.unit_counts("noise", lambda: line_units(
            noise_lines())), est)
    else:
        assert essay is not None
        counts = words_counts(plan.fitter.unit_counts(f"essay/{essay[0]}",
                                                      lambda: word_units(essay[1])),
                              essay[1], est)
    fit = fit_prompt(plan, task.name, build, prefix, budget, lo=lo, hi=hi,
                     what="haystack words", haystack=counts)
    start = template.index("{context}")
    size = len(fit.prompt) - len(template) + len("{context}")  # the context's characters
    at = fit.prompt.find(f" is: {draws.answers[0]}.", start)  # the first answer's needle
    meta: dict[str, object] = {
        "haystack_type": task.type_haystack,
        "haystack_words": (sum(len(x.split(" ")) for x in lines.lines(fit.size * step))
                           if lines is not None else fit.size),
        # where the first answer's needle stands in the haystack: 0 its start, 1 its end
        "depth": round((at - start) / max(1, size), 4),
        "keys": draws.keys, "queries": draws.queries, "needles": len(draws.needles),
    }
    if essay is not None:
        meta["essay"] = essay[0]
    if params.whole_units:
        meta["whole_units"] = True
    return Sample(id=sid, task=task.name, prompt=fit.prompt, targets=tuple(draws.answers),
                  target_tokens=target, input_tokens=fit.tokens, template=plan.template,
                  max_new_tokens=plan.max_new_tokens, meta=meta, answer_prefix=prefix)


def score(sample: Sample, response: Response) -> Score:
    pred = postprocess_pred(response.text)
    return Score({"string_match_all": string_match_all(pred, sample.targets)}, pred)


def marks(sample: Sample) -> list[tuple[str, str]]:
    """The needles of the keys asked about and the question, for the report."""
    keys = [str(k) for k in sample.meta.get("queries") or sample.meta.get("keys") or ()]
    return found_marks(
        sample, question=last_match(r"What (?:is|are) (?:all )?the special magic [^?]*\?",
                                    sample.prompt),
        patterns=[r"One of the special magic [\w ]+ for " + re.escape(k) + r" is: [^\n]*?\."
                  for k in keys])


def _task(spec: Niah) -> TaskDef:
    answers = spec.num_needle_q * spec.num_needle_v
    metric = MetricDef(
        "string_match_all", "binary" if answers == 1 else "continuous",
        description="the share of the answers found in the output, case-insensitively "
                    "(RULER's string_match_all)")
    what = {"noise": "repeated noise sentences", "essay": "essay text",
            "needle": "distractor needles"}[spec.type_haystack]
    keys = max(spec.num_needle_k, spec.num_needle_q)
    return register_task(TaskDef(
        name=spec.name,
        description=f"RULER's {spec.name}: {keys} needle key(s) ({spec.type_needle_k}) of "
                    f"{spec.num_needle_v} value(s) ({spec.type_needle_v}) in {what}; "
                    f"{answers} value(s) to name",
        params_type=RulerParams, default_template="chat",
        max_new_tokens=spec.tokens_to_generate,
        generate=functools.partial(generate, spec), score=score, fitted=lambda p: True,
        kind="generate", metrics=(metric,), axes=("depth",), budget_in_length=True,
        marks=marks,
        summarize=suite.rows,
        details=("lengths count the prompt and the 128 tokens to generate (RULER's "
                 "max_seq_length); the prompt is fitted to the rest exactly",)))


NIAH_SINGLE_1 = _task(NIAH["niah_single_1"])
NIAH_SINGLE_2 = _task(NIAH["niah_single_2"])
NIAH_SINGLE_3 = _task(NIAH["niah_single_3"])
NIAH_MULTIKEY_1 = _task(NIAH["niah_multikey_1"])
NIAH_MULTIKEY_2 = _task(NIAH["niah_multikey_2"])
NIAH_MULTIKEY_3 = _task(NIAH["niah_multikey_3"])
NIAH_MULTIVALUE = _task(NIAH["niah_multivalue"])
NIAH_MULTIQUERY = _task(NIAH["niah_multiquery"])
