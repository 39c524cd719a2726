"""RULER's two QA tasks, made by evalkit: qa_1 over SQuAD (v2.0 dev, as RULER downloads it)
and qa_2 over HotpotQA (dev, distractor setting): a question, its gold paragraphs among as
many distractor paragraphs as fit, numbered "Document i:"
(scripts/data/synthetic/qa.py).

As RULER makes them: the files read as its read_squad and read_hotpotqa read them (every
distinct paragraph a document, sorted; SQuAD's unanswerable questions left out; a HotpotQA
document is its title, a newline and its sentences joined), sample i asks question i of the
file, the gold documents first, then (SQuAD) the other paragraphs of the same article, then
random ones from the rest, all shuffled by Random(42) as RULER's fixed seed does, the task
template and answer prefix byte for byte, 32 tokens to generate, scored by
string_match_part (any of the answers found in the output).

evalkit's own: the number of documents is the largest whose prompt fits the sample's length
(rendered with the model's template, answer prefix included); a document is the unit, so a
prompt falls short of its length by less than one document. The distractors a sample draws
are a prefix of its own shuffle of them, so a longer prompt only adds documents. The data
are the files given (`data`); the sets are downloads evalkit does not make.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from evalkit.tasks.base import Plan, Score, TaskDef, register_task, sample_rng
from evalkit.tasks.ruler import suite
from evalkit.tasks.ruler.haystacks import fit_prompt
from evalkit.tasks.ruler.niah import RULER_SEED
from evalkit.tasks.ruler.protocol import (
    QA_ANSWER_PREFIX,
    QA_TEMPLATE,
    postprocess_pred,
    string_match_part,
)
from evalkit.types import EvalkitError, MetricDef, Response, Sample

QA_BUDGET = 32
DOCUMENT = "Document {i}:\n{document}"
Dataset = Literal["squad", "hotpotqa"]
WHERE = {"squad": "SQuAD's dev-v2.0.json (https://rajpurkar.github.io/SQuAD-explorer/)",
         "hotpotqa": "HotpotQA's hotpot_dev_distractor_v1.json (https://hotpotqa.github.io/)"}


@dataclass(frozen=True)
class QaParams:
    data: str | None = field(
        default=None, metadata={"help": "the dataset file in its official format: SQuAD "
                                        "dev-v2.0.json (qa_1), HotpotQA "
                                        "hotpot_dev_distractor_v1.json (qa_2)"})


@dataclass(frozen=True)
class Question:
    query: str
    outputs: tuple[str, ...]
    context: tuple[int, ...]  # the gold documents
    more_context: tuple[int, ...] = ()  # SQuAD: the other paragraphs of the same article


@dataclass(frozen=True)
class QaSet:
    name: str
    questions: tuple[Question, ...]
    docs: tuple[str, ...]


def _bad(dataset: Dataset, path: str, what: str) -> EvalkitError:
    return EvalkitError(f"{path}: {what}: give {WHERE[dataset]} as it is published")


def read_squad(data: Any, path: str) -> QaSet:
    """RULER's read_squad (a question without is_impossible, as in SQuAD v1.1, is one with
    an answer)."""
    try:
        articles = data["data"]
        docs = sorted({p["context"] for d in articles for p in d["paragraphs"]})
        index = {c: i for i, c in enumerate(docs)}
        questions = []
        for d in articles:
            more = [index[p["context"]] for p in d["paragraphs"]]
            for p in d["paragraphs"]:
                for qa in p["qas"]:
                    if not qa.get("is_impossible", False):
                        here = index[p["context"]]
                        questions.append(Question(
                            qa["question"], tuple(a["text"] for a in qa["answers"]), (here,),
                            tuple(i for i in more if i != here)))
    except KeyError as exc:
        raise _bad("squad", path, f"not SQuAD's format (no {exc} field)") from None
    except TypeError:
        raise _bad("squad", path, "not SQuAD's format (data.paragraphs.qas expected)") from None
    return QaSet(Path(path).name, tuple(questions), tuple(docs))


def read_hotpotqa(data: Any, path: str) -> QaSet:
    """RULER's read_hotpotqa."""
    try:
        docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
        index = {c: i for i, c in enumerate(docs)}
        questions = tuple(Question(d["question"], (d["answer"],), tuple(
            index[f"{t}\n{''.join(p)}"] for t, p in d["context"])) for d in data)
    except KeyError as exc:
        raise _bad("hotpotqa", path, f"not HotpotQA's format (no {exc} field)") from None
    except (TypeError, ValueError):
        raise _bad("hotpotqa", path, "not HotpotQA's format (a list of questions, each with "
                                     "context [[title, sentences], ...])") from None
    return QaSet(Path(path).name, questions, tuple(docs))


@functools.cache
def read_set(dataset: Dataset, path: str | None) -> QaSet:
    if path is None:
        task = "qa_1" if dataset == "squad" else "qa_2"
        raise EvalkitError(f"{task} reads {WHERE[dataset]}: download it and give it as "
                           f"tasks: [{{{task}: {{data: FILE}}}}]")
    file = Path(path).expanduser()
    if not file.is_file():
        raise _bad(dataset, path, f"no such file ({file.resolve()}; a relative path is read "
                                  "from the folder evalkit runs in)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _bad(dataset, path, f"cannot be read as JSON ({type(exc).__name__})") from None
    qa = read_squad(data, path) if dataset == "squad" else read_hotpotqa(data, path)
    if not qa.questions or len(qa.docs) < 2:
        raise _bad(dataset, path, "no question with an answer in it")
    return qa


def documents(qa: QaSet, q: Question, order: list[int], more: list[int], n: int) -> list[str]:
    """RULER's choice of n documents for a question, the distractors drawn as a prefix of
    the sample's shuffles (`more`: of the article's other paragraphs; `order`: of the rest),
    then shuffled by Random(42)."""
    gold = list(q.context)
    if n < len(qa.docs):
        if n - len(gold) > len(more):
            chosen = gold + more + order[:max(0, n - len(gold) - len(more))]
        else:
            chosen = gold + more[:n - len(gold)]
        docs = [qa.docs[i] for i in chosen]
    else:
        docs = (list(qa.docs) * -(-n // len(qa.docs)))[:n]
    random.Random(RULER_SEED).shuffle(docs)
    return docs


def build_text(docs: list[str], query: str) -> str:
    context = "\n\n".join(DOCUMENT.format(i=i + 1, document=d) for i, d in enumerate(docs))
    return QA_TEMPLATE.format(context=context, query=query)


def generate(dataset: Dataset, name: str, params: QaParams, plan: Plan) -> Iterator[Sample]:
    if not plan.lengths:
        raise EvalkitError(f"{name} needs lengths: pass --lengths, e.g. 4k,8k,16k")
    qa = read_set(dataset, params.data)
    if plan.samples > len(qa.questions):
        raise EvalkitError(f"{name}: {qa.name} has {len(qa.questions)} questions with an "
                           f"answer; ask for at most that many samples")
    for target in plan.lengths:
        for i in range(plan.samples):
            sid = f"{name}/{target}/{plan.seed}/{i}"
            if plan.wants(sid):
                yield _sample(name, qa, i, plan, sid, target)


def _sample(name: str, qa: QaSet, i: int, plan: Plan, sid: str, target: int) -> Sample:
    q = qa.questions[i]  # RULER: sample i asks question i of the file
    rng = sample_rng(sid)
    more = rng.sample(list(q.more_context), len(q.more_context))
    taken = set(q.context) | set(q.more_context)
    rest = [j for j in range(len(qa.docs)) if j not in taken]
    order = rng.sample(rest, len(rest))

    def build(n: int) -> str:
        return build_text(documents(qa, q, order, more, n), q.query)

    lo = len(q.context)
    fit = fit_prompt(plan, name, build, QA_ANSWER_PREFIX, target - plan.max_new_tokens,
                     lo=lo, hi=max(lo, (target - plan.max_new_tokens) // 8), what="documents")
    return Sample(id=sid, task=name, prompt=fit.prompt, targets=q.outputs,
                  target_tokens=target, input_tokens=fit.tokens, template=plan.template,
                  max_new_tokens=plan.max_new_tokens, answer_prefix=QA_ANSWER_PREFIX,
                  meta={"dataset": qa.name, "question": i, "documents": fit.size})


def score(sample: Sample, response: Response) -> Score:
    pred = postprocess_pred(response.text)
    return Score({"string_match_part": string_match_part(pred, sample.targets)}, pred)


def _task(name: str, dataset: Dataset) -> TaskDef:
    return register_task(TaskDef(
        name=name,
        description=f"RULER's {name}: a {'SQuAD' if dataset == 'squad' else 'HotpotQA'} "
                    "question over its paragraphs among distractors (needs the data file)",
        params_type=QaParams, default_template="chat", max_new_tokens=QA_BUDGET,
        generate=functools.partial(generate, dataset, name), score=score, kind="generate",
        metrics=(MetricDef("string_match_part", "binary", description="one of the answers "
                           "is found in the output (RULER's string_match_part)"),),
        budget_in_length=True, summarize=suite.rows,
        details=(f"data: {WHERE[dataset]}; lengths count the prompt and the 32 tokens to "
                 "generate; as many documents as fit",)))


QA_1 = _task("qa_1", "squad")
QA_2 = _task("qa_2", "hotpotqa")
