"""Plans requests, runs them through the Model by request kind, appends records, resumes.

A run is a RunSpec. Its samples are regenerated deterministically on every start, so that
resuming needs nothing but samples.jsonl: the ids already recorded (without error) are
skipped, the rest run, and each batch's records are fsynced before the next batch starts.
Ctrl-C, SIGTERM or SIGHUP lose no answer that arrived (evalkit.interrupts); a crash
(kill -9) loses at most the batch in flight. A task planned whole (TaskDef.whole: lm-eval,
which scores a task as a whole) runs through its own harness, which asks the Model: its
records are appended a unit at a time, and a unit cut short replays the answers it had
from the response cache (with the cache off, it is asked again). Retries, the response cache and
continuation tokens are the Model's (evalkit.model).
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
import time
from collections import deque
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from evalkit import interrupts
from evalkit.model import Model, make_model
from evalkit.model.files import model_label
from evalkit.model.reasoning import Thinking, split_reasoning
from evalkit.prompts.counters import get_counter
from evalkit.prompts.templates import (
    FIXED_TEMPLATES,
    PromptMeasure,
    Template,
    make_template,
    sent_of,
    transcript,
)
from evalkit.report.tables import counted
from evalkit.results import store
from evalkit.results.read import build_summary
from evalkit.results.schema import RunInfo
from evalkit.runner.config import RunSpec, TaskSpec, check_recorded_spec, recorded_spec_sha256
from evalkit.runner.plans import Planned, Plans, PlanStore, plan_key, plans_folder, prefix_key
from evalkit.runner.shards import Selection
from evalkit.tasks import Plan, get_task, make_params
from evalkit.tasks.base import Generate, WholeRun
from evalkit.types import (
    Backend,
    EvalkitError,
    Interrupted,
    Log,
    Record,
    Request,
    RequestKind,
    Response,
    RunSummary,
    Sample,
    TokenCounter,
)

T = TypeVar("T")


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    summary: RunSummary
    resumed_from: int  # samples already recorded when this invocation started


def needs_model_template(task: TaskSpec) -> bool:
    """Whether the task's template is the model's own (so the model must be loaded to
    render it): "chat", or "auto" on a task whose protocol applies the chat template."""
    return task.template == "chat" or (
        task.template == "auto" and get_task(task.name).default_template == "chat")


def resolve_template(task: TaskSpec, backend: Backend | None,
                     thinking: Thinking | None = None) -> Template:
    """"auto" is the protocol's choice (TaskDef.default_template): plain completion, or the
    model's chat template, or plain completion when the model has none. `backend` may be
    None where no task needs the model's template (a dry run with a named tokenizer)."""
    if backend is None:
        if needs_model_template(task):
            raise EvalkitError(f"{task.name}: template '{task.template}' needs the model's own "
                               "chat template: load the model, or name a fixed template")
        name = "raw" if task.template == "auto" else task.template
        return make_template(name)
    name = task.template
    if name == "auto":
        name = get_task(task.name).default_template
        if name == "chat" and not backend.chat_template():
            name = "raw"
    return make_template(name, backend.chat_template(), dict(backend.special_tokens()),
                         model=str(getattr(backend, "model", backend.name)),
                         options=thinking.template_options if thinking else None)


def check_lengths(spec: RunSpec, window: int | None, label: str) -> None:
    """Refuse targets that cannot fit the model, before anything runs."""
    if window is None:
        return
    reserve = reasoning_reserve(spec)
    for task in spec.tasks:
        budget = reserve + (0 if get_task(task.name).budget_in_length else task.max_new_tokens)
        for target in task.lengths:
            if target + budget > window:
                asked = f"length {target}" + (f" + {budget} new tokens" if budget else "")
                raise EvalkitError(
                    f"{task.name}: {asked} is over the context window of {label} ({window} "
                    f"tokens): use lengths up to {window - budget}"
                )


def reasoning_reserve(spec: RunSpec) -> int:
    """Tokens a generation may take beyond its answer budget: the thinking budget."""
    thinking = Thinking.of(spec.thinking)
    return thinking.budget if thinking else 0


def iter_samples(spec: RunSpec, backend: Backend | None, counter: TokenCounter,
                 progress: bool = False, selection: Selection | None = None,
                 skipped: dict[str, str] | None = None, done: Collection[str] = (),
                 plans: Plans | None = None
                 ) -> Iterator[tuple[Sample, tuple[str, int, int] | None]]:
    """Every sample of the run (or of its shard: `selection`), in a stable order, measured
    with `counter`, one at a time, with where it is kept in `plans` (None without). A
    sample in `plans` already is read from there, not fitted again; one in `done` (a
    resumed run's recorded samples) is neither fitted nor made. `backend` is read for the
    model's chat template and its window (None: every template is a fixed one, the window
    unknown). `skipped` takes the samples a task leaves out (Plan.skip), by id, with why."""
    window = backend.context_window() if backend is not None else None
    reserve = reasoning_reserve(spec)
    seen: set[str] = set()
    for task in sample_tasks(spec):
        tdef = get_task(task.name)
        generate = tdef.generate
        assert generate is not None  # a task planned per sample has one
        template = resolve_template(task, backend, Thinking.of(spec.thinking))
        params = make_params(tdef, task.params)
        key = None if plans is None else plan_key(
            task.name, params, generate, seed=spec.seed, max_new_tokens=task.max_new_tokens,
            window=window, reserve=reserve, template=template,
            template_source=_template_source(template, backend, spec), counter=counter)
        kept = None if plans is None or key is None else plans.open(key)
        ready: deque[str] = deque()  # ids kept in `plans`, to read rather than fit

        def select(sample_id: str, haystack: str | None = None,
                   kept: PlanStore | None = kept, ready: deque[str] = ready) -> bool:
            if selection is not None and not selection(sample_id, haystack):
                return False
            if haystack is not None:  # a question over a shared haystack: its group is
                return True  # fitted whole (the recorded ones are left out after)
            if sample_id in done:
                return False
            if kept is not None and kept.get(sample_id) is not None:  # else fitted again
                ready.append(sample_id)
                return False
            return True

        measure = PromptMeasure(template, counter)  # user texts and conversations

        def count(text: str) -> int:
            return len(counter.encode(text))

        plan = Plan(task=task.name, lengths=task.lengths, samples=task.samples, seed=spec.seed,
                    template=template.name, max_new_tokens=task.max_new_tokens, measure=measure,
                    count=count, select=select, window=window, reserve=reserve,
                    on_skip=None if skipped is None else skipped.__setitem__,
                    memo=None if kept is None else kept.counts)

        def made(kept: PlanStore | None = kept, ready: deque[str] = ready, plan: Plan = plan,
                 generate: Generate = generate, params: Any = params
                 ) -> Iterator[tuple[Sample, tuple[str, int, int] | None]]:
            for sample in generate(params, plan):
                yield from _read_kept(kept, ready)
                # generators ask before fitting; samples read from files are sliced here
                if sample.id in done or (selection is not None
                                         and not selection(sample.id, sample.cluster)):
                    continue
                yield sample, None if kept is None else (kept.key, *kept.add(sample))
            yield from _read_kept(kept, ready)

        for sample, where in _progress(made(), progress, f"planning {task.name}",
                                       _expected_count(task, params)):
            if sample.id in seen:
                raise EvalkitError("two tasks made samples with the same id: list each task once")
            seen.add(sample.id)
            yield sample, where


def _template_source(template: Template, backend: Backend | None,
                     spec: RunSpec) -> dict[str, Any]:
    """Where a template comes from, for the plan key: the model's chat template, its
    special tokens and the template options of a thinking model, for the model's own."""
    if template.name in FIXED_TEMPLATES or backend is None:
        return {}
    thinking = Thinking.of(spec.thinking)
    return {"chat_template": backend.chat_template(),
            "special_tokens": dict(backend.special_tokens()),
            "options": thinking.template_options if thinking else None}


def _read_kept(kept: PlanStore | None, ready: deque[str]
               ) -> Iterator[tuple[Sample, tuple[str, int, int] | None]]:
    """The samples kept in a plan store that a generator was told not to fit."""
    while kept is not None and ready:
        sample_id = ready.popleft()
        sample = kept.get(sample_id)
        if sample is None:
            raise EvalkitError(f"{kept.folder} changed while the run read it: delete it (it "
                               "is a cache) and run the same command again")
        yield sample, (kept.key, *kept.index[sample_id])


def plan_samples(spec: RunSpec, backend: Backend | None, counter: TokenCounter,
                 progress: bool = False, skipped: dict[str, str] | None = None,
                 plans: Plans | None = None) -> list[Sample]:
    """Every sample of the run (of its shard, for a shard), in a list (a dry run, tests);
    runs stream them. `skipped` takes those a task leaves out, with why; `plans` keeps
    them (and gives those it has)."""
    return [s for s, _ in iter_samples(spec, backend, counter, progress, Selection(spec.shard),
                                       skipped, plans=plans)]


def sample_tasks(spec: RunSpec) -> list[TaskSpec]:
    """The run's tasks planned per sample (made, fitted and sent here); the others are
    planned whole (TaskDef.whole)."""
    return [t for t in spec.tasks if get_task(t.name).whole is None]


def whole_tasks(spec: RunSpec) -> list[TaskSpec]:
    return [t for t in spec.tasks if get_task(t.name).whole is not None]


def whole_run(task: TaskSpec, spec: RunSpec, **more: Any) -> WholeRun:
    """What a task planned whole plans, describes or runs with."""
    return WholeRun(params=make_params(get_task(task.name), task.params),
                    lengths=task.lengths, limit=spec.limit, **more)


def plan_whole(spec: RunSpec, counter: TokenCounter | None, shard_only: bool = False
               ) -> dict[str, dict[str, int | str]]:
    """task -> sample id -> length cell, of each task planned whole of the whole run (or,
    `shard_only`, of this shard): its data, no model. A task planned whole is one shard's."""
    selection = Selection(spec.shard if shard_only else None)
    return {t.name: dict(whole_of(t).plan(whole_run(t, spec, counter=counter)))
            for t in whole_tasks(spec) if selection.takes(t.name)}


def whole_of(task: TaskSpec) -> Any:
    whole = get_task(task.name).whole
    assert whole is not None
    return whole


def _expected_count(task: TaskSpec, params: Any) -> int | None:
    if task.lengths:
        depths = getattr(params, "depths", None)
        return (len(task.lengths) * task.samples * (len(depths) if depths else 1)
                * getattr(params, "questions", 1))
    return None


def _progress(it: Iterator[T], on: bool, desc: str, total: int | None) -> Iterator[T]:
    if not on:
        return it
    from tqdm import tqdm

    return iter(tqdm(it, desc=desc, total=total, unit="sample", leave=False))


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("evalkit", "llama-cpp-python", "transformers", "torch", "vllm", "lm-eval"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _run_dir(spec: RunSpec, out: Path | None, results_root: Path, log: Log) -> Path:
    spec_hash = spec.spec_hash()
    if out is not None:
        if (out / store.RUN_JSON).is_file():
            existing = store.read_run(out)
            if existing.get("spec_hash") != spec_hash:
                raise EvalkitError(
                    f"{out} holds another run (its spec differs from this one): pass a new "
                    "--out, or the same options as that run to resume it")
            check_recorded_spec(out / store.RUN_JSON, existing, spec)
        return out
    found = store.find_run(results_root, spec_hash)
    if found is not None:
        check_recorded_spec(found / store.RUN_JSON, store.read_run(found), spec)
        return found
    name = spec.name if spec.shard is None else "{}-shard{}of{}".format(spec.name, *spec.shard)
    return results_root / store.make_run_id(name, spec.label or model_label(spec.model),
                                            spec_hash)


def run(spec: RunSpec, *, out: Path | None = None, results_root: Path = Path("results"),
        progress: bool = True, log: Log = print, cache_dir: Path | None = None) -> RunResult:
    """Run (or resume) a spec; returns where it went and its summary.

    The run folder comes first: unless the run is finished and summarized already (then
    nothing is written, and its folder may be read-only), the folder is created and takes
    a probe write before any backend is made, so an unwritable folder or a full disk is
    one line before planning and model load. A folder this call created and that never got
    a run.json is removed again when the run fails to start. The Model answers from the
    response cache (`cache_dir`, default ~/.cache/evalkit/responses) unless spec.cache is
    off; a backend that cannot do a task's request kind is one line before planning."""
    started = time.time()
    label = spec.label or model_label(spec.model)
    if out is not None:  # another tool's folder is refused before anything reads or writes it
        store.check_run_folder(out)
    run_dir = _run_dir(spec, out, results_root, log)
    fresh = not run_dir.exists()
    try:
        if fresh or not _up_to_date(run_dir):
            store.prepare_run_dir(run_dir)
        with store.run_lock(run_dir):
            store.remove_stale_temporaries(run_dir)
            model = make_model(spec.backend, spec.model, spec.backend_options,
                               cache_dir=cache_dir, use_cache=spec.cache, retries=spec.retries,
                               label=label)
            for kind in dict.fromkeys(task_kind(t) for t in spec.tasks):
                model.require(kind)
            backend = model.backend
            counter = (backend.tokenizer() if spec.tokenizer == "auto"
                       else get_counter(spec.tokenizer))
            store.repair_tail(run_dir)
            # a resumed run fits only the samples it has not recorded
            done = {r.sample.id for r in store.read_records(run_dir, prompts=False) if r.ok}
            with Plans(plans_folder(cache_dir) if spec.cache else None, run_dir) as plans:
                selection = Selection(spec.shard)
                skipped: dict[str, str] = {}
                samples = _plan_checked(spec, backend, counter, label, progress, selection,
                                        plans, skipped, done)
                scored_once = plan_whole(spec, counter)  # planned whole: one shard's
                whole_ids = [*selection.seen, *(i for ids in scored_once.values() for i in ids)]
                planned = {name: ids for name, ids in scored_once.items()
                           if selection.takes(name)}
                return _run_locked(spec, model, counter, label, samples, planned, whole_ids,
                                   plans, run_dir, progress, log, started, skipped, done)
    except BaseException:
        if fresh:
            store.discard_if_unused(run_dir)
        raise


def task_kind(task: TaskSpec) -> RequestKind:
    """The request kind a task's samples become (TaskDef.kind)."""
    return get_task(task.name).kind


def _plan_checked(spec: RunSpec, backend: Backend, counter: TokenCounter, label: str,
                  progress: bool, selection: Selection, plans: Plans,
                  skipped: dict[str, str], done: Collection[str]) -> list[Planned]:
    window = backend.context_window()
    check_lengths(spec, window, label)
    planned: list[Planned] = []
    too_long = 0
    example = ""
    reserve = reasoning_reserve(spec)
    for s, where in iter_samples(spec, backend, counter, progress, selection, skipped, done,
                                 plans):
        if window and s.input_tokens + s.max_new_tokens + reserve > window:
            too_long += 1
            example = example or (f"{s.id} with {s.input_tokens} + {s.max_new_tokens} new "
                                  "tokens" + (f" + {reserve} for reasoning" if reserve else ""))
            continue
        assert where is not None  # every sample is kept in `plans`
        text = s.prompt if s.messages is None else transcript(s.messages)  # shared turns first
        planned.append(Planned(s.id, (s.task, prefix_key(text)), where, s.cell))
    if too_long:
        raise EvalkitError(
            f"{too_long} sample(s) are over the context window of {label} ({window} "
            f"tokens), e.g. {example}: drop those cases or use a model with a longer context")
    return planned


def _up_to_date(run_dir: Path) -> bool:
    """The run is finished and its summary files say so already: a re-run writes nothing.
    Reads only; a damaged file is one EvalkitError naming it."""
    if not (run_dir / store.RUN_JSON).is_file() or store.torn_tail(run_dir):
        return False
    try:
        on_disk = store.read_summary(run_dir)
    except EvalkitError:
        return False  # a damaged summary.json is rebuilt, which is a write
    if on_disk is None or on_disk.status != "complete":
        return False
    summary = build_summary(run_dir)
    return summary.status == "complete" and store.summary_is_current(run_dir, summary)


def _run_locked(spec: RunSpec, model: Model, counter: TokenCounter, label: str,
                samples: list[Planned], planned: Mapping[str, Mapping[str, int | str]],
                whole_ids: Sequence[str], plans: Plans, run_dir: Path, progress: bool,
                log: Log, started: float, skipped: Mapping[str, str],
                done: set[str]) -> RunResult:
    """`samples`: those to run (the recorded ones were not planned again)."""
    ids = [s.id for s in samples] + [i for task_ids in planned.values() for i in task_ids]
    if not (run_dir / store.RUN_JSON).is_file():
        store.write_run(run_dir, run_info(spec, run_dir, label, model.backend, counter, ids,
                                          planned_cells(samples, planned), whole_ids,
                                          skipped))
    if skipped:
        first, why = next(iter(skipped.items()))
        log(f"{counted(len(skipped), 'sample')} skipped, not truncated (listed in run.json), "
            f"e.g. {first}: {why}")
    todo = sorted(samples, key=lambda s: s.order)
    if done:
        log(f"resuming {run_dir}: {len(done)} of {store.read_run(run_dir)['n_samples']} "
            "samples already done")
    scored_once = [task for task in whole_tasks(spec) if task.name in planned
                   and not all(i in done for i in planned[task.name])]  # not another shard's
    if todo or scored_once:
        with store.session(run_dir, started):
            _execute(spec, model, label, run_dir, todo, plans, progress)
            for task in scored_once:
                _execute_whole(task, spec, model, counter, label, run_dir, done, log, progress)
    if model.cache is not None and model.cache.hits:
        log(f"{counted(model.cache.hits, 'answer')} came from the response cache "
            f"({model.cache.root}; --no-cache asks the backend again)")
    summary = summarize(run_dir)
    return RunResult(run_dir=run_dir, summary=summary, resumed_from=len(done))


def _execute_whole(task: TaskSpec, spec: RunSpec, model: Model, counter: TokenCounter,
                   label: str, run_dir: Path, done: set[str], log: Log, progress: bool) -> None:
    """A task planned whole: its harness asks the Model; its records are appended a unit
    at a time, as they come."""
    run = whole_run(task, spec, counter=counter, model=model, label=label,
                    done=frozenset(done), log=log, progress=progress)
    for records in whole_of(task).run(run):
        store.append_records(run_dir, records)


def run_info(spec: RunSpec, run_dir: Path, label: str, backend: Backend, counter: TokenCounter,
             ids: Sequence[str], cells: Mapping[str, Mapping[str, int]],
             whole_ids: Sequence[str], skipped: Mapping[str, str] | None = None) -> RunInfo:
    """run.json of a run starting: its spec, where its answers come from, what it plans
    (a shard: also which run it is a slice of)."""
    shard = None if spec.shard is None else {
        "index": spec.shard[0], "count": spec.shard[1],
        "whole_spec_hash": spec.whole().spec_hash(), "whole_n_samples": len(whole_ids),
        "whole_sample_ids_sha256": _ids_hash(whole_ids)}
    return RunInfo(
        run_id=run_dir.name, spec=spec.redacted(), spec_hash=spec.spec_hash(),
        spec_redacted_sha256=recorded_spec_sha256(spec.redacted()),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), model_label=label,
        backend=dict(backend.describe()), tokenizer=counter.name,
        templates={t.name: resolve_template(t, backend).name for t in spec.tasks},
        n_samples=len(ids), cells=cells, sample_ids_sha256=_ids_hash(ids),
        git_sha=_git_sha(), versions=_versions(), argv=tuple(sys.argv[1:]), shard=shard,
        skipped=dict(skipped) if skipped else None)


def planned_cells(samples: Sequence[Planned],
                  scored_once: Mapping[str, Mapping[str, int | str]]
                  ) -> dict[str, dict[str, int]]:
    """task -> length cell -> the number of samples planned (what ran, whatever the spec's
    `samples` says: case files bring their own count), for a task planned whole as its
    plan gives its cells."""
    cells: dict[str, dict[str, int]] = {}
    pairs = [*((p.order[0], p.cell) for p in samples),
             *((name, cell) for name, ids in scored_once.items() for cell in ids.values())]
    for name, cell in pairs:
        task = cells.setdefault(name, {})
        task[str(cell)] = task.get(str(cell), 0) + 1
    return cells


def _ids_hash(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _execute(spec: RunSpec, model: Model, label: str, run_dir: Path,
             todo: Sequence[Planned], plans: Plans, progress: bool) -> None:
    """Ask the model for `todo`, in the order given (the schedule), a batch at a time;
    each batch's records are on disk before the next is asked. A signal is taken only
    while the model is asked (interrupts.allowed, in the Model), never between an
    answer's arrival and its record: the answers that arrived are recorded, then it stops."""
    if not todo:
        return
    thinking = Thinking.of(spec.thinking)
    templates = {t.name: resolve_template(t, model.backend, thinking) for t in spec.tasks}
    counter = model.backend.tokenizer() if thinking else None  # counts reasoning tokens
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"{label}", unit="sample", smoothing=0.1)
    try:
        with interrupts.deferred():
            size = model.max_batch_size
            for start in range(0, len(todo), size):
                batch = [plans.read(p.where) for p in todo[start:start + size]]
                rendered = [templates[s.task].render_sample(s) for s in batch]
                requests = [request_for(s, p, spec)
                            for s, p in zip(batch, rendered, strict=True)]
                try:
                    responses: Sequence[Response | None] = model.run(requests)
                except Interrupted as exc:
                    responses = [exc.answered.get(i) for i in range(len(batch))]
                    _append(run_dir, model, label, batch, rendered, responses, requests,
                            thinking, counter)
                    raise
                _append(run_dir, model, label, batch, rendered, responses, requests, thinking,
                        counter)
                if bar is not None:
                    bar.update(len(batch))
                    bar.set_postfix_str(batch[-1].task)
    finally:
        if bar is not None:
            bar.close()


def _append(run_dir: Path, model: Model, label: str, batch: Sequence[Sample],
            rendered: Sequence[str], responses: Sequence[Response | None],
            requests: Sequence[Request], thinking: Thinking | None,
            counter: TokenCounter | None) -> None:
    """Append the records of a batch's answers (None: not answered, not recorded), a
    thinking model's reasoning split off each answer."""
    store.append_records(run_dir, [
        _record(s, p, r if thinking is None or counter is None
                else split_reasoning(r, thinking, p, counter, req.max_new_tokens),
                label, model.cache_key(req))
        for s, p, r, req in zip(batch, rendered, responses, requests, strict=True)
        if r is not None])


def request_for(sample: Sample, rendered: str, spec: RunSpec) -> Request:
    """The request a sample becomes, by its task's kind: a generation of up to
    max_new_tokens, or the loglikelihood of its first target after the prompt."""
    if get_task(sample.task).kind == "loglikelihood":
        # no decoding parameters: the same prompt scores the same under any seed
        return Request(sample_id=sample.id, kind="loglikelihood", prompt=rendered,
                       messages=sample.messages, answer_prefix=sample.answer_prefix,
                       max_new_tokens=0, continuation=sample.targets[0])
    return Request(sample_id=sample.id, kind="generate", prompt=rendered,
                   messages=sample.messages, answer_prefix=sample.answer_prefix,
                   max_new_tokens=sample.max_new_tokens + reasoning_reserve(spec),
                   temperature=spec.temperature, seed=spec.seed)


def _record(sample: Sample, rendered: str, response: Response, label: str,
            cache_key: str) -> Record:
    prompt_sha = hashlib.sha256(rendered.encode("utf-8")).hexdigest()
    sent = sent_of(rendered, sample)
    if response.error is not None:
        return Record(sample=sample, response=response, scores={}, model=label,
                      prompt_sha256=prompt_sha, cache_key=cache_key, parsed=None, sent=sent)
    score = get_task(sample.task).score
    assert score is not None  # a sample made here is of a task planned per sample
    result = score(sample, response)
    return Record(sample=sample, response=response, scores=dict(result.scores), model=label,
                  prompt_sha256=prompt_sha, cache_key=cache_key, parsed=result.parsed,
                  sent=sent)


def summarize(run_dir: Path) -> RunSummary:
    """(Re)build summary.json and table.csv from samples.jsonl. Each file is written only
    when its content changes, so a finished run is never rewritten; when a write is needed
    and the folder refuses it, that is one EvalkitError line."""
    summary = build_summary(run_dir)
    store.write_summary(run_dir, summary)
    return summary
