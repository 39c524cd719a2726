"""`evalkit run` (and its dry run), `evalkit tasks`."""

from __future__ import annotations

import dataclasses
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer

from evalkit.cli.app import EXIT_PARTIAL, _Command, _err, app
from evalkit.model.files import ALIASES, model_label
from evalkit.report.tables import counted, format_table
from evalkit.results import store
from evalkit.runner.config import (
    Overrides,
    build_specs,
    find_config,
    load_config_file,
    parse_shard,
)
from evalkit.runner.shards import Selection
from evalkit.tasks import TASKS, get_task, task_names
from evalkit.tasks.options import (
    CASES_HELP,
    CORPUS_HELP,
    DATA_HELP,
    LIMIT_HELP,
    QUALITY_HELP,
    apply_file_options,
)
from evalkit.types import EffectiveLength, SummaryRow


@app.command(cls=_Command)
def run(
    config: Annotated[Path | None, typer.Argument(
        help="run config: a YAML file, or the name of a bundled one (quickstart, smollm2, ...)")]
    = None,
    task: Annotated[list[str] | None, typer.Option("--task", "-t",
                    help="task to run (repeat); default: the config's")] = None,
    lengths: Annotated[str | None, typer.Option(
        help="target lengths, e.g. 1k,4k,16k,1m (k: 1024 tokens, m: 1024k)")] = None,
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
    data_files: Annotated[list[str] | None, typer.Option("--data", help=DATA_HELP)] = None,
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

    if config:  # else a link loop reads "config file not found"
        store.refuse_bad_link(config, "config")
    data: dict[str, Any] = load_config_file(find_config(config)) if config else {}
    ov = Overrides(tasks=list(task or []), lengths=lengths, samples=samples, seed=seed,
                   model=model, backend=backend, template=template, tokenizer=tokenizer,
                   cache=False if no_cache else None, limit=limit,
                   shard=parse_shard(shard) if shard else None)
    apply_file_options(ov.task_params, ov.tasks, ov.extra_tasks, task or [], bool(config),
                       corpus=corpus, quality=quality, cases=cases or [], data=data_files or [])
    specs = build_specs(data, ov, source=str(config) if config else "command line")
    if dry_run:
        for spec in specs:
            _dry_run(spec)
        return
    partial = _run_specs(specs, out, results, progress)
    if partial:
        _err(f"partial run ({'; '.join(partial)} samples not scored): run the same command "
             f"again to retry them (exit {EXIT_PARTIAL})")
        raise typer.Exit(EXIT_PARTIAL)


def _run_specs(specs: list[Any], out: Path | None, results: Path, progress: bool) -> list[str]:
    """Run each model's spec (a folder each under --out when there are several), print its
    table and errors; returns what each partial run left unscored."""
    from evalkit.runner import execute as runner

    results_rows: list[SummaryRow] = []
    effective: list[EffectiveLength] = []
    partial: list[str] = []
    for spec in specs:
        label = spec.label or model_label(spec.model)
        if len(specs) > 1:
            typer.echo(f"== {label} ({spec.backend})")
        run_out = out / store.safe_name(label) if out is not None and len(specs) > 1 else out
        result = runner.run(spec, out=run_out, results_root=results, progress=progress)
        s = result.summary
        results_rows.extend(s.rows)
        effective.extend(s.effective)
        typer.echo(format_table(s.rows, s.effective))
        typer.echo(f"\n{s.n_done}/{s.n_samples} samples scored"
                   + (f", {s.n_errors} with errors (rerun to retry them)" if s.n_errors else "")
                   + f"; results in {result.run_dir}")
        from evalkit.results.read import common_errors

        records = store.read_records(result.run_dir, prompts=False)
        for message, count in common_errors(records, 3):
            _err(f"error ({counted(count, 'sample')}): {message}")
        exhausted = sum(1 for r in records if r.response.reasoning_exhausted)
        if exhausted:
            _err(f"{counted(exhausted, 'sample')} used their whole reasoning budget without an "
                 "answer (scored on an empty answer): raise thinking.budget")
        if s.status != "complete":
            partial.append(f"{label}: {s.n_samples - s.n_done} of {s.n_samples}")
    if len(specs) > 1:
        typer.echo("\n== all models")
        typer.echo(format_table(results_rows, effective))
    return partial


def _dry_run(spec: Any) -> None:
    """Plan and measure the samples; load the model only if its tokenizer or chat template
    is needed (a named tokenizer with fixed templates needs no engine at all)."""
    from evalkit.runner import execute as runner

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
        rows = [row for t in whole
                for row in runner.whole_of(t).describe(runner.whole_run(t, spec, counter=counter))]
        width = max([len("task"), *(len(what) for what, _, _ in rows)])
        typer.echo(f"{'task':<{width}} {'cell':>8} {'documents':>10}")
        for what, cell, documents in rows:
            typer.echo(f"{what:<{width}} {cell:>8} {documents:>10}")


def _dry_run_samples(spec: Any, label: str) -> Any:
    """The dry run of the tasks planned per sample; returns the token counter it used."""
    from evalkit.backends import make_backend
    from evalkit.prompts.counters import get_counter
    from evalkit.runner import execute as runner
    from evalkit.runner.plans import Plans, plans_folder

    needs_model = spec.tokenizer == "auto" or any(
        runner.needs_model_template(t) for t in runner.sample_tasks(spec))
    be = make_backend(spec.backend, spec.model, spec.backend_options) if needs_model else None
    counter = be.tokenizer() if be is not None and spec.tokenizer == "auto" else get_counter(
        spec.tokenizer)
    window = be.context_window() if be is not None else None
    runner.check_lengths(spec, window, label)
    skipped: dict[str, str] = {}
    with Plans(plans_folder() if spec.cache else None) as kept:  # the run reads them again
        planned = runner.plan_samples(spec, be, counter, skipped=skipped, plans=kept)
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
    for sample_id, why in skipped.items():
        typer.echo(f"skipped {sample_id}: {why}")
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
    for prefix, said in TASKS.family_help.items():
        typer.echo(f"{prefix}NAME: {said}")
