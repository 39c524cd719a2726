"""Core data types of evalkit. Standard library only; read this file first.

Data flows one way: generators make `Sample`s, the runner turns each into a `Request`,
a backend answers with a `Response`, scorers add scores, and the store appends one
`Record` per sample to samples.jsonl. `RunSummary` is derived from the records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, runtime_checkable

# 2: summary rows carry the metric's kind, the success count and whether the value is a
# mean of means (`kind`, `successes`, `derived`). Version-1 files are read too.
SCHEMA_VERSION = 2

RequestKind = Literal["generate", "loglikelihood"]
MetricKind = Literal["binary", "continuous"]
Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")

# A field that to_jsonable leaves out while it is None: one added after files were written
# without it, so that what was written before reads, hashes and compares the same.
_OMIT_NONE = {"omit_none": True}


Log = Callable[[str], None]  # where a step says what it did: one line of text a call


class EvalkitError(Exception):
    """A problem the user can fix. The CLI prints its message as one line and exits 2."""


class Unsupported(EvalkitError):
    """A backend cannot do what was asked (for example loglikelihood over a chat-only API)."""


class Interrupted(KeyboardInterrupt):
    """The work was stopped by a signal: Ctrl-C (SIGINT), SIGTERM (timeout, docker stop,
    Kubernetes, Slurm, a CI cancel) or SIGHUP (the terminal closed). The CLI exits with
    128 + the signal's number (130, 143, 129).

    `answered` holds the answers that had arrived when it came, by the index of their
    request in the interrupted call; each layer that passes it on re-indexes them for its
    own caller, so that the runner can record them (an answer that arrived is never lost)."""

    def __init__(self, signum: int = 2, answered: Mapping[int, Response] | None = None) -> None:
        super().__init__(signum)
        self.signum = signum
        self.answered: dict[int, Response] = dict(answered or {})

    @classmethod
    def of(cls, exc: BaseException, answered: Mapping[int, Response]) -> Interrupted:
        """`exc` (a KeyboardInterrupt or an Interrupted) with `answered` in place of the
        answers it carried."""
        return cls(getattr(exc, "signum", 2), answered)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared by the backend (see Backend.capabilities).

    generate: free generation; loglikelihood: log P(continuation | context) over token ids;
    chat: the model has a chat template (rendered by evalkit, or applied by the server);
    remote: answers come from a server, so that requests failing past their retries one
    after another mean the server is down and the run stops sending (evalkit.model)."""

    generate: bool
    loglikelihood: bool
    chat: bool
    remote: bool = False


@dataclass(frozen=True)
class MetricDef:
    """A metric a task declares. "binary" scores are 0 or 1 (a proportion: Wilson
    intervals, proportion tests); "continuous" ones any number (mean intervals, t-tests)."""

    name: str
    kind: MetricKind
    higher_is_better: bool = True
    description: str = ""  # how a sample's score is read off its answer (shown by reports)


@dataclass(frozen=True)
class Message:
    """One turn of a conversation: who speaks ("system", "user" or "assistant") and what."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"a message's role is one of {', '.join(ROLES)}, "
                             f"not {self.role!r}")


def last_user_text(messages: Sequence[Message]) -> str:
    """The content of a conversation's last user message: a conversation sample's `prompt`
    (the text a report highlights as the user's). ValueError when no message is the user's."""
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    raise ValueError("a conversation needs a user message")


@dataclass(frozen=True)
class Sample:
    """One test case, before any model saw it.

    `id` is stable across runs (task/length/seed/index), never a list position, so that
    resume and comparison match samples by id. `template` names the template the generator
    fitted the length with. `target_tokens` is the length asked for (None for natural-length
    cases such as imported or QuALITY rows); `input_tokens` is the measured length of the
    rendered prompt.

    A sample is one user text or a conversation. One text: `prompt` is the user text before
    the prompt template, and `messages` is None. A conversation: `messages` are its turns
    (system, user and assistant messages, in order, usually ending with the user's), which
    the template renders as one prompt (evalkit.prompts.templates.Template.render_sample), and
    `prompt` is the content of the last user message (`last_user_text(messages)`): the
    user text that the record's `sent` and the report single out, the earlier turns being
    part of the rendered text before it. (A reader that drops prompts, such as
    store.read_records(prompts=False), may leave `prompt` empty.)

    `answer_prefix`: where the benchmark starts the model's answer itself (an answer
    prefix, lm-eval's gen_prefix), the text written after the rendered prompt, past the
    chat template's assistant start, for the model to continue. It is part of the prompt
    as sent, counted in `input_tokens`; None (the JSON leaves it out) where there is none.
    """

    id: str
    task: str
    prompt: str
    targets: tuple[str, ...]
    target_tokens: int | None
    input_tokens: int
    template: str
    max_new_tokens: int
    meta: Mapping[str, Any] = field(default_factory=dict)
    # left out of the JSON while None: one-text samples are written as they always were
    messages: tuple[Message, ...] | None = field(default=None, metadata=_OMIT_NONE)
    answer_prefix: str | None = field(default=None, metadata=_OMIT_NONE)

    def __post_init__(self) -> None:
        if self.messages is not None:
            if not self.messages:
                raise ValueError(f"sample {self.id}: a conversation needs a message")
            if not isinstance(self.messages, tuple):  # a list given: the same sample as read
                object.__setattr__(self, "messages", tuple(self.messages))

    # The sample's cell axes, read here and nowhere else. They live in `meta` under the
    # names every run folder has written them with ("bin", "subsets", "haystack"), so that
    # samples saved by any version read the same.

    @property
    def cell(self) -> int | str:
        """The length cell: the target length asked for, else the case's bin (a
        natural-length case's length bucket: a name, or the upper edge in tokens of a bin
        of lengths; the shots of a task scored whole), else "all"."""
        if self.target_tokens is not None:
            return self.target_tokens
        named = self.meta.get("bin", "all")
        if isinstance(named, int) and not isinstance(named, bool):
            return named  # a bin of lengths in tokens, named by its upper edge
        return str(named)

    @property
    def subsets(self) -> tuple[str, ...]:
        """The subsets the sample is counted in besides "all" (a subject of a task of
        several subjects)."""
        return tuple(str(s) for s in self.meta.get("subsets", ()))

    @property
    def cluster(self) -> str | None:
        """The haystack the sample shares with others (shared-context tasks): its interval
        is clustered by it. None: the sample stands alone."""
        haystack = self.meta.get("haystack")
        return None if haystack is None else str(haystack)

    def axis(self, name: str) -> float | None:
        """A numeric axis a task declares (TaskDef.axes, e.g. a needle's depth)."""
        value = self.meta.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)


@dataclass(frozen=True)
class Request:
    """What a backend is asked: the rendered prompt and the decoding parameters.

    loglikelihood: `prompt` is the context text and `continuation` the text scored,
    log P(continuation | prompt). The Model fills `context_tokens` / `continuation_tokens`
    (lm-eval's split, see evalkit.model.split_continuation) before a backend sees the
    request, so every backend scores the same tokens; a request made of token ids alone
    (loglikelihood_rolling windows) has empty texts. `time_left_s` is set by the Model for
    one attempt: the rest of the request's time budget (None: no limit); a backend that can
    bound a call by it does. It is no part of the cache key.

    `messages`: the request's sample is a conversation. `prompt` is still the conversation
    as evalkit rendered it, which backends that take a prompt send; a chat endpoint that
    applies the model's template itself (backend openai, endpoint chat) sends the messages
    instead. The cache key holds them only when set, so one-text requests keep their keys.

    `answer_prefix`: the sample's (Sample.answer_prefix), already at the end of `prompt`;
    a chat endpoint sends it as the start of the assistant's turn for the model to go on
    from. In the cache key only when set."""

    sample_id: str
    kind: RequestKind
    prompt: str
    max_new_tokens: int
    temperature: float = 0.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    continuation: str = ""  # loglikelihood only: score log P(continuation | prompt)
    context_tokens: tuple[int, ...] | None = None
    continuation_tokens: tuple[int, ...] | None = None
    time_left_s: float | None = None
    messages: tuple[Message, ...] | None = field(default=None, metadata=_OMIT_NONE)
    answer_prefix: str | None = field(default=None, metadata=_OMIT_NONE)

    def cache_key(self, backend_fingerprint: str) -> str:
        parts: list[Any] = [backend_fingerprint, self.kind, self.prompt, self.continuation,
                            self.max_new_tokens, self.temperature, self.seed, list(self.stop)]
        if self.context_tokens is not None or self.continuation_tokens is not None:
            # only when the caller gave them: tokens the Model derives from the texts are a
            # function of the texts and the tokenizer (part of the fingerprint) already
            parts += [list(self.context_tokens or ()), list(self.continuation_tokens or ())]
        if self.messages is not None:
            # what a chat endpoint is sent; tagged, so that no other list reads the same
            parts.append(["messages", [[m.role, m.content] for m in self.messages]])
        if self.answer_prefix is not None:
            parts.append(["answer_prefix", self.answer_prefix])
        payload = json.dumps(parts, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Response:
    """A backend's answer. `error` is a message, never a swallowed exception.

    A failed answer says, as data, whether another attempt may succeed (`retryable`: a
    timeout, a dropped connection, HTTP 429 or 5xx, an engine's transient fault) and how
    long the server asked to wait (`retry_after_s`, from Retry-After). Backends never retry
    themselves: the Model's one retry policy decides (evalkit.model.RetryPolicy).

    `cached`: the Model answered from the response cache (the same request to a backend of
    the same identity) instead of asking the backend. `truncated`: the server sent more
    than evalkit reads for the request's budget, and `text` is the part that was read.

    A thinking model's answer (evalkit.model.reasoning): `text` is the answer alone,
    `reasoning` what came before it (handed over apart by a server, or split off by the
    template's markers), `reasoning_tokens` its length in the model's tokens, and
    `reasoning_exhausted` is True where the reasoning used the whole budget without an
    answer. All three are left out of the JSON while None."""

    text: str = ""
    logprob: float | None = None
    is_greedy: bool | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_s: float = 0.0
    error: str | None = None
    retryable: bool = False
    retry_after_s: float | None = None
    cached: bool = False
    truncated: bool = False
    reasoning: str | None = field(default=None, metadata=_OMIT_NONE)
    reasoning_tokens: int | None = field(default=None, metadata=_OMIT_NONE)
    reasoning_exhausted: bool | None = field(default=None, metadata=_OMIT_NONE)


@dataclass(frozen=True)
class Record:
    """One line of samples.jsonl: the sample, the answer, its scores."""

    sample: Sample
    response: Response
    scores: Mapping[str, float]
    model: str
    prompt_sha256: str
    cache_key: str
    parsed: str | None = None  # what the scorer read out of the output (None: unparseable)
    # the prompt as sent around the user text: {"before", "after"}, and "user" ([start,
    # end] of the user text) where the template took only part of it (see
    # evalkit.prompts.templates.split_sent); None in records written before it was kept
    sent: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.response.error is None


@dataclass(frozen=True)
class SummaryRow:
    """One cell of the accuracy table. `length` is target_tokens, or a bin label for
    natural-length cases; `input_tokens_mean` is what the model actually read.

    `kind` is the metric's (binary: every score 0 or 1; continuous). `successes` is the
    count of samples scored 1 where `value` is successes / n (a binary metric's plain
    mean), else None. `derived` marks a value that is not a mean of its samples (a mean of
    subset means, an average over tasks): tests read it by its interval.
    `clusters` is set where samples share a haystack (the shared-context tasks): the
    number of haystacks; the interval is then clustered by haystack, and tests read it."""

    model: str
    task: str
    length: int | str
    subset: str
    metric: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    n_errors: int
    input_tokens_mean: float
    kind: MetricKind = "binary"
    successes: int | None = None
    derived: bool = False
    clusters: int | None = None


@dataclass(frozen=True)
class EffectiveLength:
    """A task's effective context length (evalkit.results.effective): the longest length in
    tokens up to which its metric stays at or above `threshold`, by the point estimates
    (`by_value`), by the lower 95% bounds (`by_ci_low`, the length one can claim) and by the
    upper ones (`by_ci_high`, the longest not ruled out). None where the shortest length
    measured falls below, or (the bounds) where a length has no interval (`bounded`);
    equal to `longest` where every length measured passes."""

    model: str
    task: str
    metric: str
    threshold: float
    by_value: int | None
    by_ci_low: int | None
    by_ci_high: int | None
    shortest: int
    longest: int
    bounded: bool = True  # every length has a 95% interval (else the bounds are None)


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    status: Literal["complete", "partial"]
    rows: tuple[SummaryRow, ...]
    n_samples: int
    n_done: int
    n_errors: int
    schema_version: int = SCHEMA_VERSION
    # at the default threshold; readers recompute it from the rows at any other
    effective: tuple[EffectiveLength, ...] = ()


@runtime_checkable
class TokenCounter(Protocol):
    """Counts tokens exactly as the model will see them (no doubled BOS)."""

    name: str

    def encode(self, text: str) -> list[int]: ...


class Backend(Protocol):
    """One inference engine: its engine calls and nothing else. Batching, retries and the
    response cache live in evalkit.model.Model, the too-long check in the runner, so that
    a backend stays small. A failed request comes back as a Response with `error` (and
    `retryable`, `retry_after_s`), never as a retry loop of its own. `loglikelihood`
    receives requests whose context_tokens and continuation_tokens are filled in."""

    name: str
    max_batch_size: int

    def capabilities(self) -> Capabilities: ...

    def tokenizer(self) -> TokenCounter: ...

    def context_window(self) -> int | None: ...

    def chat_template(self) -> str | None: ...

    def special_tokens(self) -> Mapping[str, str]: ...  # bos_token / eos_token texts

    def generate(self, requests: Sequence[Request]) -> list[Response]: ...

    def loglikelihood(self, requests: Sequence[Request]) -> list[Response]: ...

    def fingerprint(self) -> str: ...

    def describe(self) -> Mapping[str, Any]: ...


def to_jsonable(obj: Any) -> Any:
    """Dataclasses to plain JSON values (tuples become lists). A field declared with
    metadata omit_none (Sample.messages) is left out while it is None."""
    if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in fields(obj)
                if not (f.metadata.get("omit_none") and getattr(obj, f.name) is None)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def messages_from_json(value: Any) -> tuple[Message, ...]:
    """A conversation as samples.jsonl holds it: [{"role", "content"}, ...]. Anything else
    is one EvalkitError line saying what is wrong."""
    if not isinstance(value, list) or not value:
        raise EvalkitError("sample.messages should be a non-empty list of {role, content} "
                           f"objects, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not (isinstance(m, Mapping) and set(m) == {"role", "content"}
                and m["role"] in ROLES and isinstance(m["content"], str)):
            raise EvalkitError(f"sample.messages[{i}] should be {{role, content}} with role "
                               f"one of {', '.join(ROLES)} and content a string")
        out.append(Message(m["role"], m["content"]))
    return tuple(out)


def sample_from_json(d: Mapping[str, Any]) -> Sample:
    """A sample as to_jsonable wrote it; one without "messages" (every one-text sample, and
    every sample written before conversations) is a one-text sample."""
    messages = d.get("messages")
    return Sample(
        id=d["id"], task=d["task"], prompt=d["prompt"], targets=tuple(d["targets"]),
        target_tokens=d["target_tokens"], input_tokens=d["input_tokens"],
        template=d["template"], max_new_tokens=d["max_new_tokens"], meta=dict(d["meta"]),
        messages=None if messages is None else messages_from_json(messages),
        answer_prefix=d.get("answer_prefix"),
    )


def record_from_json(d: Mapping[str, Any]) -> Record:
    return Record(
        sample=sample_from_json(d["sample"]),
        response=Response(**d["response"]),
        scores=dict(d["scores"]),
        model=d["model"],
        prompt_sha256=d["prompt_sha256"],
        cache_key=d["cache_key"],
        parsed=d.get("parsed"),
        sent=d.get("sent"),
    )
