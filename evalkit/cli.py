"""The `evalkit` command: a thin shell over the Python API (same names).

Bad input is one line on stderr and exit code 2; a run that ends with errored samples
exits 3; Ctrl-C, SIGTERM and SIGHUP keep every answer that arrived and say how to resume
(exit 128 + the signal: 130, 143, 129).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from evalkit import analysis, interrupts, store
from evalkit.config import (
    Overrides,
    build_specs,
    find_config,
    load_config_file,
    parse_shard,
)
from evalkit.generators import get_task, task_names
from evalkit.generators.options import (
    CASES_HELP,
    CORPUS_HELP,
    LIMIT_HELP,
    QUALITY_HELP,
    apply_file_options,
)
from evalkit.models import ALIASES, model_label
from evalkit.report.tables import counted, format_table
from evalkit.shards import Selection
from evalkit.types import EvalkitError, SummaryRow


def _untyped_flags(params: list[Any]) -> list[Any]:
    """Flags (--dry-run, --progress/--no-progress, --help) with a blank metavar: typer's
    rich help prints each option's value type, `<bool>` for a flag, which takes no value."""
    for p in params:
        if isinstance(p, TyperOption) and (p.is_flag or p.count) and p.metavar is None:
            p.metavar = ""
    return params


class _Command(TyperCommand):
    """A command whose help shows a flag as a flag (_untyped_flags)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


class _Group(TyperGroup):
    """`evalkit --help` likewise; and an interrupt of any command is one line and exit
    128 + the signal (typer would exit 130 without a word)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            code = _interrupted(exc)
            # at once: what arrived is recorded, and a server call still running in a
            # worker thread (SageMaker's pool) must not hold the exit up to its timeout
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


app = typer.Typer(cls=_Group, add_completion=False, pretty_exceptions_enable=False,
                  no_args_is_help=True, help="Long-context evaluation: accuracy by input length.")


# Exit codes: 0 done; 1 a regression (gate) or an internal error; 2 bad input or a fault
# that stopped the command (one line on stderr says what to do); 3 a run that finished
# partial (some samples errored: rerun to retry them); 128 + the signal when interrupted:
# 130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP (the same command resumes).
EXIT_BAD_INPUT = 2
EXIT_PARTIAL = 3


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


@app.command(cls=_Command)
def run(
    config: Annotated[Path | None, typer.Argument(
        help="run config: a YAML file, or the name of a bundled one (quickstart, smollm2, ...)")]
    = None,
    task: Annotated[list[str] | None, typer.Option("--task", "-t",
                    help="task to run (repeat); default: the config's")] = None,
    lengths: Annotated[str | None, typer.Option(help="target lengths, e.g. 1k,4k,16k")] = None,
    samples: Annotated[int | None, typer.Option(help="samples per task and length")] = None,
    limit: Annotated[int | None, typer.Option(help=LIMIT_HELP)] = None,
    seed: Annotated[int | None, typer.Option(help="seed of every random choice")] = None,
    model: Annotated[str | None, typer.Option(
        help=f"model alias ({', '.join(ALIASES)}) or a .gguf path")] = None,
    backend: Annotated[str | None, typer.Option(help="backend name")] = None,
    template: Annotated[str | None, typer.Option(
        help="auto, raw, mistral-instruct, mistrallite or chat")] = None,
    tokenizer: Annotated[str | None, typer.Option(
        help="count tokens with: auto (the backend's own) or mistral-v1")] = None,
    corpus: Annotated[Path | None, typer.Option(help=CORPUS_HELP)] = None,
    cases: Annotated[list[Path] | None, typer.Option(help=CASES_HELP)] = None,
    quality: Annotated[Path | None, typer.Option(help=QUALITY_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default: results/<run-id>)")]
    = None,
    results: Annotated[Path, typer.Option(help="where new runs go")] = Path("results"),
    dry_run: Annotated[bool, typer.Option("--dry-run",
                       help="plan and measure the samples, print their token counts, run nothing")]
    = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="ask the backend every prompt, even those whose answers are in the "
                           "response cache (~/.cache/evalkit/responses)")] = False,
    shard: Annotated[str | None, typer.Option(
        help="run slice I of N (e.g. 2/4), chosen by sample id; join the N run folders with "
             "`evalkit merge` (docs/scale.md)")] = None,
) -> None:
    """Run (or resume) an evaluation and print accuracy by input length."""
    from evalkit import runner

    if config:  # else a link loop reads "config file not found"
        store.refuse_bad_link(config, "config")
    data: dict[str, Any] = load_config_file(find_config(config)) if config else {}
    ov = Overrides(tasks=list(task or []), lengths=lengths, samples=samples, seed=seed,
                   model=model, backend=backend, template=template, tokenizer=tokenizer,
                   cache=False if no_cache else None, limit=limit,
                   shard=parse_shard(shard) if shard else None)
    apply_file_options(ov.task_params, ov.tasks, ov.extra_tasks, task or [], bool(config),
                       corpus=corpus, quality=quality, cases=cases or [])
    specs = build_specs(data, ov, source=str(config) if config else "command line")
    if dry_run:
        for spec in specs:
            _dry_run(spec)
        return
    results_rows: list[SummaryRow] = []
    partial: list[str] = []
    for spec in specs:
        label = spec.label or model_label(spec.model)
        if len(specs) > 1:
            typer.echo(f"== {label} ({spec.backend})")
        run_out = out / store.safe_name(label) if out is not None and len(specs) > 1 else out
        result = runner.run(spec, out=run_out, results_root=results, progress=progress)
        s = result.summary
        results_rows.extend(s.rows)
        typer.echo(format_table(s.rows))
        typer.echo(f"\n{s.n_done}/{s.n_samples} samples scored"
                   + (f", {s.n_errors} with errors (rerun to retry them)" if s.n_errors else "")
                   + f"; results in {result.run_dir}")
        for message, count in _errors(result.run_dir):
            _err(f"error ({counted(count, 'sample')}): {message}")
        if s.status != "complete":
            partial.append(f"{label}: {s.n_samples - s.n_done} of {s.n_samples}")
    if len(specs) > 1:
        typer.echo("\n== all models")
        typer.echo(format_table(results_rows))
    if partial:
        _err(f"partial run ({'; '.join(partial)} samples not scored): run the same command "
             f"again to retry them (exit {EXIT_PARTIAL})")
        raise typer.Exit(EXIT_PARTIAL)


def _errors(run_dir: Path, most: int = 3) -> list[tuple[str, int]]:
    """The commonest error messages of a run's latest records, most frequent first."""
    from evalkit.analysis import common_errors

    return common_errors(store.read_records(run_dir, prompts=False), most)


def _dry_run(spec: Any) -> None:
    """Plan and measure the samples; load the model only if its tokenizer or chat template
    is needed (a named tokenizer with fixed templates needs no engine at all)."""
    from evalkit import runner

    label = spec.label or model_label(spec.model)
    counter = None
    if runner.sample_tasks(spec):
        counter = _dry_run_samples(spec, label)
    shard = Selection(spec.shard)
    whole = [t for t in runner.whole_tasks(spec) if shard.takes(t.name)]
    if whole:
        limit = f"--limit {spec.limit}" if spec.limit else "no --limit: all documents"
        typer.echo(f"dry run for model label {label}: tasks scored whole by lm-eval "
                   f"({limit}):")
        typer.echo(f"{'task':<16} {'shots':>7} {'documents':>10}")
        for t in whole:
            run = runner.whole_run(t, spec, counter=counter)
            for line in runner.whole_of(t).describe(run):
                typer.echo(line)


def _dry_run_samples(spec: Any, label: str) -> Any:
    """The dry run of the tasks planned per sample; returns the token counter it used."""
    from evalkit import runner
    from evalkit.backends import make_backend
    from evalkit.tokenizers import get_counter

    needs_model = spec.tokenizer == "auto" or any(
        runner.needs_model_template(t) for t in runner.sample_tasks(spec))
    be = make_backend(spec.backend, spec.model, spec.backend_options) if needs_model else None
    counter = be.tokenizer() if be is not None and spec.tokenizer == "auto" else get_counter(
        spec.tokenizer)
    window = be.context_window() if be is not None else None
    runner.check_lengths(spec, window, label)
    planned = runner.plan_samples(spec, be, counter)
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for smp in planned:
        groups[(smp.task, str(smp.cell), smp.template)].append(smp.input_tokens)
    engine = (f"{spec.backend} loaded" if be is not None
              else "no engine loaded, context window not checked")
    typer.echo(f"dry run for model label {label}: {len(planned)} samples, tokens counted with "
               f"{counter.name} ({engine}):")
    typer.echo(f"{'task':<8} {'length':>12} {'template':<17} {'n':>4} {'min':>7} {'mean':>9}"
               f" {'max':>7}")
    for (t, length, tmpl), toks in groups.items():
        typer.echo(f"{t:<8} {length:>12} {tmpl:<17} {len(toks):>4} {min(toks):>7} "
                   f"{statistics.fmean(toks):>9.1f} {max(toks):>7}")
    return counter


@app.command(cls=_Command)
def tasks() -> None:
    """List the tasks and their parameters."""
    for name in task_names():
        t = get_task(name)
        typer.echo(f"{name}: {t.description}")
        if t.whole is None:
            typer.echo(f"  template: {t.default_template} (protocol default), "
                       f"max_new_tokens: {t.max_new_tokens}")
            for f in dataclasses.fields(t.params_type):
                typer.echo(f"  {f.name} = {f.default!r}: {f.metadata.get('help', '')}")
        for line in t.details:
            typer.echo(f"  {line}")


@app.command(cls=_Command)
def show(run_dir: Annotated[Path, typer.Argument(
        help="a run folder under results/, or a summary.json")]) -> None:
    """Print a run's tables again, every metric (computed from samples.jsonl). Reads only:
    writes nothing into the run folder."""
    from evalkit.analysis import read_run

    run = read_run(run_dir)
    typer.echo(f"{run.info.get('run_id', run.path.name)}  model={run.label}  "
               f"status={run.status} ({run.n_done}/{run.n_samples})")
    typer.echo(format_table(run.rows))


@app.command(cls=_Command)
def report(
    run_dirs: Annotated[list[Path] | None, typer.Argument(help="run folders to report together")]
    = None,
    out: Annotated[Path | None, typer.Option(help="report folder (default reports/<name>)")]
    = None,
    index: Annotated[Path | None, typer.Option(
        help="write an index page of every run under this folder (e.g. results/)")] = None,
    title: Annotated[str | None, typer.Option(help="the report's title")] = None,
) -> None:
    """Write a static HTML report (tables, plots, sample browser) of one or more runs."""
    from evalkit.report.html import build_index, build_report

    if index is not None:
        # a run folder that cannot be read is listed (here and on the page), not fatal
        page = build_index(index, out or Path("reports") / "index", log=_err)
    elif run_dirs:
        name = "_vs_".join(d.name for d in run_dirs) if len(run_dirs) > 1 else run_dirs[0].name
        page = build_report(list(run_dirs), out or Path("reports") / name[:120], title)
    else:
        raise EvalkitError("report needs run folders (results/<run-id>) or --index results/")
    typer.echo(f"report: {page}")


@app.command(cls=_Command)
def compare(
    run_a: Annotated[Path, typer.Argument(help="the baseline run folder")],
    run_b: Annotated[Path, typer.Argument(help="the candidate run folder")],
    out: Annotated[Path | None, typer.Option(
        help="also write the side-by-side HTML report and combined plots here")] = None,
) -> None:
    """Side-by-side scores of two runs: per task, length or subset and metric, the delta
    and its significance."""
    from evalkit.report.compare import LEGEND, compare_runs, format_compare
    from evalkit.report.html import build_report, check_out

    if out is not None:  # checked before the plots go into it
        check_out(out)
    label_a, label_b, rows = compare_runs(run_a, run_b, out / "plots" if out else None)
    typer.echo(format_compare(label_a, label_b, rows))
    typer.echo(f"\n{LEGEND}")
    if out is not None:
        page = build_report([run_a, run_b], out, f"{label_a} vs {label_b}")
        typer.echo(f"report: {page}")


@app.command(cls=_Command)
def gate(
    baseline: Annotated[Path, typer.Option(
        help="the baseline: a run folder, or a summary.json alone (a committed baseline)")],
    candidate: Annotated[Path, typer.Option(help="the candidate run folder")],
    margin: Annotated[float, typer.Option(
        help="the loss to tolerate, in the metric's units (0.05 = five points of accuracy); "
             "a cell fails only when it is significantly worse by more than this")] = 0.0,
    alpha: Annotated[float, typer.Option(
        help="the chance of a false alarm over the whole suite (Holm over every cell)")]
    = 0.05,
    metric: Annotated[list[str] | None, typer.Option(
        help="gate only this metric (repeat); default: every metric")] = None,
    junit: Annotated[Path | None, typer.Option(help="write JUnit XML here")] = None,
    markdown: Annotated[Path | None, typer.Option(
        help="write the markdown summary here (it is also appended to "
             "$GITHUB_STEP_SUMMARY when that is set)")] = None,
) -> None:
    """Fail (exit 1) when the candidate is significantly worse than the baseline.

    Per cell (task, length, subset, metric) a one-sided test of "the candidate is worse by
    more than --margin": where both runs scored the same sample ids, exact McNemar on the
    discordant pairs (Tango's score test above margin 0; a paired t-test for continuous
    scores); where they did not (another seed, a summary.json baseline), Fisher's exact
    test (Farrington-Manning above margin 0; Welch's t-test for continuous scores); a
    z-test on the 95% intervals for derived values such as MMLU's mean. Holm's correction
    over the cells keeps the suite's false-alarm rate at --alpha. It assumes a cell's
    samples are independent test cases. Also exit 1 when the candidate lacks a cell of
    the baseline, has errored samples in one, or is not complete; exit 0 otherwise; exit 2
    on bad input. See docs/ci.md for sample counts per cell and CI examples.
    """

    from evalkit.gate import format_gate, junit_xml
    from evalkit.gate import gate as run_gate
    from evalkit.gate import markdown as markdown_text

    result = run_gate(baseline, candidate, margin=margin, alpha=alpha, metrics=metric or ())
    typer.echo(format_gate(result))
    md = markdown_text(result)
    outputs = [(junit, junit_xml(result), "w"), (markdown, md, "w")]
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        outputs.append((Path(step_summary), md, "a"))
    written = [(path, text, mode) for path, text, mode in outputs if path is not None]
    for path, _, _ in written:  # all checked before any is written
        _refuse_run_paths(path, (baseline, candidate))
    for path, text, mode in written:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open(mode, encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise EvalkitError(f"cannot write {path}: {exc.strerror or exc}: pass another "
                               "path") from None
    raise typer.Exit(result.exit_code)


@app.command(cls=_Command)
def merge(
    shards: Annotated[list[Path], typer.Argument(
        help="the run folders of `evalkit run ... --shard I/N`, all N of them")],
    out: Annotated[Path, typer.Option(help="the merged run's folder (new)")],
) -> None:
    """Join the shards of one run into the run the unsharded command makes."""
    from evalkit.shards import merge as merge_shards

    run_dir = merge_shards(shards, out)
    summary = analysis.build_summary(run_dir)
    typer.echo(format_table(summary.rows))
    typer.echo(f"\n{summary.n_done}/{summary.n_samples} samples scored, from {len(shards)} "
               f"shards; merged run in {run_dir}")
    if summary.status != "complete":
        _err(f"partial run ({summary.n_samples - summary.n_done} of {summary.n_samples} samples "
             "not scored): run the unfinished shards' commands again, then merge again "
             f"(exit {EXIT_PARTIAL})")
        raise typer.Exit(EXIT_PARTIAL)


def _refuse_run_paths(path: Path, runs: tuple[Path, ...]) -> None:
    """A gate's output never goes into a run or a baseline: not inside a folder it reads,
    nor inside any folder that holds a run.json or a summary.json."""
    store.refuse_bad_link(path.expanduser(), "path", file_ok=True)
    target = path.expanduser().resolve()
    folders = [(r if r.is_dir() else r.parent).expanduser().resolve() for r in runs]
    inside = next((f for f in folders if target == f or f in target.parents), None)
    if inside is None:
        inside = next((d for d in target.parents
                       if (d / store.RUN_JSON).is_file() or (d / store.SUMMARY).is_file()),
                      None)
    if inside is not None:
        raise EvalkitError(f"{path} is inside the run folder {inside}: write it elsewhere "
                           "(the gate never writes into a run or a baseline)")


@app.command("convert-gguf", cls=_Command)
def convert_gguf(
    gguf: Annotated[str, typer.Argument(help=f"a .gguf file or a model alias "
                                             f"({', '.join(ALIASES)})")],
    out_dir: Annotated[Path, typer.Argument(help="the new Hugging Face folder")],
) -> None:
    """Write a plain Hugging Face folder (safetensors, config, tokenizer) from a GGUF file,
    dequantized to fp32: for the vllm backend, or any HF tool."""
    from evalkit.convert import convert_gguf as convert
    from evalkit.models import resolve_gguf

    typer.echo(str(convert(resolve_gguf(gguf), out_dir)))


def _interrupted(exc: KeyboardInterrupt) -> int:
    """Say that the command was interrupted, and by what; its exit code (128 + signal)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        _err(f"\ninterrupted ({signal.Signals(signum).name}): every finished sample is saved; "
             "run the same command again to resume")
    return 128 + int(signum)


def main() -> None:
    """The console script: every failure is one line on stderr and an exit code, never a
    traceback (EVALKIT_DEBUG=1 shows the traceback of an internal error)."""
    interrupts.install()
    try:
        app()
    except EvalkitError as exc:
        _err(f"error: {exc}")
        sys.exit(EXIT_BAD_INPUT)
    except OSError as exc:  # disk full, permission denied, a vanished file: say which
        where = f" ({exc.filename})" if exc.filename else ""
        _err(f"error: {exc.strerror or exc}{where}: fix that and run the same command again")
        sys.exit(EXIT_BAD_INPUT)
    except Exception as exc:
        if os.environ.get("EVALKIT_DEBUG"):
            raise
        text = " ".join(str(exc).split())[:300]
        _err(f"internal error (a bug in evalkit, please report it): {type(exc).__name__}: "
             f"{text} (EVALKIT_DEBUG=1 shows the traceback)")
        sys.exit(1)


if __name__ == "__main__":
    main()
