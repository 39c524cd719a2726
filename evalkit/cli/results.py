"""What reads runs: `evalkit show`, `report`, `compare`, `gate`, `merge`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from evalkit.cli.app import EXIT_PARTIAL, _Command, _err, app
from evalkit.report.tables import format_effective_table, format_table
from evalkit.results import read, store
from evalkit.results.effective import DEFAULT_THRESHOLD, check_threshold
from evalkit.types import EvalkitError

THRESHOLD_HELP = ("the score a task's effective length must stay at or above (by default "
                  f"{DEFAULT_THRESHOLD}, Llama-2-7B's average at 4K, as the measure was defined)")


@app.command(cls=_Command)
def show(run_dir: Annotated[Path, typer.Argument(
        help="a run folder under results/, or a summary.json")],
         threshold: Annotated[float, typer.Option(
             help=THRESHOLD_HELP)] = DEFAULT_THRESHOLD) -> None:
    """Print a run's tables again, every metric (computed from samples.jsonl), with each
    task's effective length. Reads only: writes nothing into the run folder."""
    from evalkit.results.read import effective_of, read_run

    check_threshold(threshold)
    run = read_run(run_dir, prompts=False)
    typer.echo(f"{run.info.get('run_id', run.path.name)}  model={run.label}  "
               f"status={run.status} ({run.n_done}/{run.n_samples})")
    typer.echo(format_table(run.rows, effective_of(run.rows, run.records, threshold)))


@app.command(cls=_Command)
def report(
    run_dirs: Annotated[list[Path] | None, typer.Argument(help="run folders to report together")]
    = None,
    out: Annotated[Path | None, typer.Option(help="report folder (default reports/<name>)")]
    = None,
    index: Annotated[Path | None, typer.Option(
        help="write an index page of every run under this folder (e.g. results/)")] = None,
    title: Annotated[str | None, typer.Option(help="the report's title")] = None,
    threshold: Annotated[float, typer.Option(
        help=THRESHOLD_HELP)] = DEFAULT_THRESHOLD,
) -> None:
    """Write a static HTML report (tables, plots, sample browser) of one or more runs."""
    from evalkit.report.html import build_index, build_report

    if index is not None:
        # a run folder that cannot be read is listed (here and on the page), not fatal
        page = build_index(index, out or Path("reports") / "index", log=_err)
    elif run_dirs:
        name = "_vs_".join(d.name for d in run_dirs) if len(run_dirs) > 1 else run_dirs[0].name
        page = build_report(list(run_dirs), out or Path("reports") / name[:120], title,
                            threshold)
    else:
        raise EvalkitError("report needs run folders (results/<run-id>) or --index results/")
    typer.echo(f"report: {page}")


@app.command(cls=_Command)
def compare(
    run_a: Annotated[Path, typer.Argument(help="the baseline run folder")],
    run_b: Annotated[Path, typer.Argument(help="the candidate run folder")],
    out: Annotated[Path | None, typer.Option(
        help="also write the side-by-side HTML report and combined plots here")] = None,
    threshold: Annotated[float, typer.Option(
        help=THRESHOLD_HELP)] = DEFAULT_THRESHOLD,
) -> None:
    """Side-by-side scores of two runs: per task, length or subset and metric, the delta
    and its significance; and each task's effective length in both."""
    from evalkit.report.compare import LEGEND, compare_effective, compare_runs, format_compare
    from evalkit.report.html import build_report, check_out

    check_threshold(threshold)
    if out is not None:  # checked before the plots go into it
        check_out(out)
    label_a, label_b, rows = compare_runs(run_a, run_b, out / "plots" if out else None,
                                          threshold)
    typer.echo(format_compare(label_a, label_b, rows))
    effective = format_effective_table(compare_effective(rows, threshold), [label_a, label_b])
    if effective:
        typer.echo(f"\n{effective}")
    typer.echo(f"\n{LEGEND}")
    if out is not None:
        page = build_report([run_a, run_b], out, f"{label_a} vs {label_b}", threshold)
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
    effective_length: Annotated[bool, typer.Option(
        "--effective-length",
        help="also fail a task whose effective length fell: the candidate's upper 95% "
             "bounds drop below --threshold at a length the baseline's scores still "
             "reach")] = False,
    threshold: Annotated[float, typer.Option(
        help=THRESHOLD_HELP + " (with --effective-length)")]
    = DEFAULT_THRESHOLD,
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
    z-test on the 95% intervals for derived values such as a mean over subsets. Holm's
    correction over the cells keeps the suite's false-alarm rate at --alpha. It assumes a cell's
    samples are independent test cases. Also exit 1 when the candidate lacks a cell of
    the baseline, has errored samples in one, or is not complete; exit 0 otherwise; exit 2
    on bad input. See docs/ci.md for sample counts per cell and CI examples.
    """

    from evalkit.stats.gate import format_gate, junit_xml
    from evalkit.stats.gate import gate as run_gate
    from evalkit.stats.gate import markdown as markdown_text

    result = run_gate(baseline, candidate, margin=margin, alpha=alpha, metrics=metric or (),
                      effective_threshold=threshold if effective_length else None)
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
    from evalkit.runner.shards import merge as merge_shards

    run_dir = merge_shards(shards, out)
    summary = read.build_summary(run_dir)
    typer.echo(format_table(summary.rows, summary.effective))
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
