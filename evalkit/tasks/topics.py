"""Topic retrieval (LongChat LongEval "topics"), fitted to token lengths or by topic count.

The prompt is LongEval's, to the character; conversations are joined as LongEval joins
them. The default corpus (evalkit/tasks/data/topics/) is ours, in LongEval's format: part*.jsonl
holds conversations of LongEval's size (about 550-650 tokens), short*.jsonl shorter ones
(about 170-230), drawn below SHORT_BELOW (2K) tokens, where three of LongEval's size do not
fit, so that a 1K case still asks for the first of several topics: a 1K case holds 4
short conversations, a 2K case 3 of LongEval's size. The corpus is chosen by the length
alone, so every model gets the same cases at a length. Cases of LongEval's size (2K and
longer) and cases by topic count are the ones made before short*.jsonl existed. `corpus`
takes LongEval's conversations.jsonl to reproduce it. A fitted case holds at least
MIN_TOPICS topics: a shorter length is refused, naming the shortest that works. Scored by a
normalised match of the first topic (accuracy) and by an exact match of the answer's first
line (exact_match).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from evalkit.tasks.base import (
    Plan,
    Score,
    TaskDef,
    accuracy,
    data_dir,
    register_task,
    sample_rng,
)
from evalkit.tasks.importers import (
    read_case_files,
    read_longeval_topics,
    read_topic_corpus,
)
from evalkit.tasks.parsers import first_line, topic_match
from evalkit.types import EvalkitError, MetricDef, Response, Sample

HEADER = (
    "Below is a record of our previous conversation on {n} different topics. You are the "
    "ASSISTANT, and I am the USER. At the beginning of each topic, the USER will say 'I would "
    "like to discuss the topic of <TOPIC>'. Memorize each <TOPIC>. At the end of the record, I "
    "will ask you to retrieve the first topic. Now the record start. "
)
QUESTION = (" Now the record ends. What is the first topic we discussed? Only give me the topic "
            "name. Do not summarize yourself.")
MIN_TOPICS = 3  # LongEval's cases hold 5 to 25; with one or two, "the first" is no search
# Below this length cases are drawn from our short conversations: three of LongEval's size
# take 2010 tokens with Gemma 3 270M's tokenizer, 2046 with SmolLM2's chat template.
SHORT_BELOW = 2048

Corpus = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TopicsParams:
    corpus: str | None = field(
        default=None, metadata={"help": "topic corpus JSONL {topic, conversation} (LongEval's "
                                        "conversations.jsonl); none: ours, in "
                                        "evalkit/tasks/data/topics"})
    num_topics: list[int] | None = field(
        default=None, metadata={"help": "make cases by topic count (LongEval: 5..25) instead of"
                                        " by token length"})
    cases: list[str] | None = field(
        default=None, metadata={"help": "LongEval published topics test-case files (JSONL)"})

    def __post_init__(self) -> None:
        if isinstance(self.cases, str):
            object.__setattr__(self, "cases", [self.cases])
        if self.num_topics is not None and not all(1 <= n <= 10_000 for n in self.num_topics):
            raise ValueError(f"num_topics must lie in 1..10000, got {self.num_topics}")


@lru_cache(maxsize=4)
def load_corpus(path: str | None, short: bool = False) -> Corpus:
    """(topic, conversation) pairs of a LongEval-style file, or ours: the conversations of
    LongEval's size, or with `short` the shorter ones."""
    if path is not None:
        return tuple(read_topic_corpus(path))
    files = sorted((data_dir() / "topics").glob("short*.jsonl" if short
                                                          else "part*.jsonl"))
    if not files:
        raise EvalkitError(f"the built-in topic corpus is missing under {data_dir()}: "
                           "reinstall evalkit (pip install evalkit)")
    return tuple(pair for f in files for pair in read_topic_corpus(f))


def _fewest_tokens(corpus: Corpus, plan: Plan, n: int = MIN_TOPICS) -> int:
    """Tokens of a prompt of the corpus's n longest conversations: at that length or more
    every case holds at least n topics (cases are drawn from the whole corpus)."""
    longest = sorted((c for _, c in corpus), key=plan.fitter.estimator, reverse=True)
    return plan.measure(build_prompt(longest[:n], n))


def _corpus_for(params: TopicsParams, target: int) -> Corpus:
    """The corpus a case of `target` tokens is drawn from: a given one; else ours short
    below SHORT_BELOW tokens, ours of LongEval's size from there. A function of the length
    alone, so that every model gets the same cases at a length."""
    if params.corpus is not None:
        return load_corpus(params.corpus)
    return load_corpus(None, short=target < SHORT_BELOW)


def _check_lengths(params: TopicsParams, plan: Plan) -> None:
    """Refuse, in one line, a length at which a case may hold fewer than MIN_TOPICS."""
    for target in plan.lengths:
        corpus = _corpus_for(params, target)
        if len(corpus) < MIN_TOPICS:
            raise EvalkitError(f"topics: the corpus has {len(corpus)} conversations, "
                               f"LongEval's task needs at least {MIN_TOPICS}: pass a larger "
                               "--corpus")
        shortest = _fewest_tokens(corpus, plan)
        if target < shortest:
            longest = sorted((c for _, c in corpus), key=plan.fitter.estimator, reverse=True)
            held = sum(plan.measure(build_prompt(longest[:k], k)) <= target
                       for k in range(1, MIN_TOPICS))
            raise EvalkitError(
                f"topics: at {target} tokens a case may hold only {held} "
                f"topic{'' if held == 1 else 's'}, LongEval's task needs at least {MIN_TOPICS}:"
                f" use lengths of at least {shortest}"
                + (f" (or below {SHORT_BELOW}, where its short conversations are drawn)"
                   if params.corpus is None and target >= SHORT_BELOW else ""))


def build_prompt(conversations: Sequence[str], n: int) -> str:
    return HEADER.format(n=n) + "".join(conversations[:n]) + QUESTION


def _case(sid: str, corpus: Corpus, plan: Plan, n: int | None,
          target: int | None) -> Sample:
    rng = sample_rng(sid)
    order = rng.sample(range(len(corpus)), len(corpus) if n is None else n)
    convs = [corpus[j][1] for j in order]
    if target is None:
        assert n is not None
        prompt = build_prompt(convs, n)
        tokens = plan.measure(prompt)
    else:
        units = plan.fitter.units(convs.__getitem__, lambda k: HEADER.format(n=k),
                                  lambda k: QUESTION)
        fit = plan.fitter.fit("topics", lambda k: build_prompt(convs, k), units, target, lo=1,
                              hi=len(convs), what="conversations")
        if fit.size == len(convs):
            raise EvalkitError(
                f"topics: the corpus ({len(corpus)} conversations, {fit.tokens} tokens) is too "
                f"short for {target} tokens: pass a larger --corpus or a shorter length")
        if fit.size < MIN_TOPICS:  # _pools measured the longest; joins may count apart
            raise EvalkitError(
                f"topics: at {target} tokens case {sid} holds only {fit.size} topics, "
                f"LongEval's task needs at least {MIN_TOPICS}: use a longer length")
        n, prompt, tokens = fit.size, fit.prompt, fit.tokens
    topics = [corpus[j][0] for j in order[:n]]
    return Sample(
        id=sid, task="topics", prompt=prompt, targets=(topics[0],), target_tokens=target,
        input_tokens=tokens, template=plan.template, max_new_tokens=plan.max_new_tokens,
        meta={"num_topics": n, "topics": topics,
              **({} if target is not None else {"bin": f"{n} topics"})},
    )


def generate(params: TopicsParams, plan: Plan) -> Iterator[Sample]:
    if params.cases:
        yield from read_case_files(params.cases, read_longeval_topics, plan)
        return
    corpus = load_corpus(params.corpus)
    if params.num_topics:
        for n in params.num_topics:
            if n > len(corpus):
                raise EvalkitError(f"topics: {n} topics asked, the corpus has {len(corpus)}")
            for i in range(plan.samples):
                sid = f"topics/n{n}/{plan.seed}/{i}"
                if plan.wants(sid):
                    yield _case(sid, corpus, plan, n, None)
        return
    if not plan.lengths:
        raise EvalkitError("topics needs lengths or num_topics: pass --lengths, e.g. 2k,4k")
    _check_lengths(params, plan)
    for target in plan.lengths:
        corpus = _corpus_for(params, target)
        for i in range(plan.samples):
            sid = f"topics/{target}/{plan.seed}/{i}"
            if plan.wants(sid):
                yield _case(sid, corpus, plan, None, target)


def score(sample: Sample, response: Response) -> Score:
    """accuracy (lenient, see topic_match) and exact_match (the answer's first line is the
    topic, character for character); the parsed answer is that first line."""
    answer = first_line(response.text)
    topic = sample.targets[0]
    return Score({"accuracy": float(topic_match(response.text, topic)),
                  "exact_match": float(answer == topic.strip())},
                 None if answer is None else answer[:200])


TASK = register_task(TaskDef(
    name="topics",
    description="name the first of several conversation topics (LongEval topics)",
    params_type=TopicsParams, default_template="chat", max_new_tokens=50,
    generate=generate, score=score,
    fitted=lambda p: not (p.cases or p.num_topics),
    kind="generate", metrics=(
        accuracy("lenient: the first topic appears in the output as whole words, both "
                 "lower-cased with punctuation read as spaces and a leading 'the', 'a' or "
                 "'an' dropped. LongEval left this task to a GPT judge told to accept "
                 "paraphrases; a paraphrase counts here only when it holds the topic's words"),
        MetricDef("exact_match", "binary",
                  description="the output's first line, spaces trimmed, is the first topic "
                              "character for character")),
))
