"""Shards: a run split across machines by sample id, and joined again.

`evalkit run ... --shard i/n` makes the samples whose shard key hashes to slice i of n: the
sample id, or for the shared-context tasks the haystack its questions share (they stay on
one machine, where the prefix cache serves them), or for a task scored whole its name (its
harness scores it over all its data at once). The slice is a pure function of the ids, so
every machine agrees on it without talking to the others, and a shard resumes like any run.

`evalkit merge SHARD... --out DIR` joins the n shards of one run into the run the unsharded
command makes: the same run.json facts (spec, spec hash, sample count and id hash), the same
records. It refuses shards of different runs, a slice given twice, a missing slice and a
sample in two shards, each with one line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalkit.results import store
from evalkit.results.read import build_summary
from evalkit.runner.config import recorded_spec_sha256
from evalkit.types import EvalkitError, Record


def shard_of(key: str, count: int) -> int:
    """The slice (1-based) of `count` that a shard key falls in: stable across machines,
    Python versions and runs (sha256, not hash())."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % count + 1


class Selection:
    """Which samples a run makes: all, or those of one shard. It remembers every id it is
    asked about, in order: the whole run's ids, which a shard records to be merged."""

    def __init__(self, shard: tuple[int, int] | None) -> None:
        self.shard = shard
        self.seen: dict[str, None] = {}

    def __call__(self, sample_id: str, haystack: str | None = None) -> bool:
        self.seen[sample_id] = None
        return self.takes(haystack or sample_id)

    def takes(self, key: str) -> bool:
        return self.shard is None or shard_of(key, self.shard[1]) == self.shard[0]


Shard = tuple[Path, dict[str, Any]]  # a shard's folder and its run.json
MERGE_BATCH = 64  # records appended at a time by a merge, at most
MERGE_CHARS = 16 << 20  # and about this many characters of their prompts


def merge(shard_dirs: Sequence[Path], out: Path) -> Path:
    """Join the shards of one run into `out` (new, or an empty folder); returns it. The
    merge is written beside `out` and renamed into place whole, so a failed merge leaves
    nothing behind. Any other `out` (a file, a run, another tool's files) is one line
    before anything is read or written."""
    if not shard_dirs:
        raise EvalkitError("evalkit merge: give the shard folders to join")
    _check_out(out)
    infos = [(Path(d), store.read_run(Path(d))) for d in shard_dirs]
    whole, ordered = _whole_run(infos)
    work = out.parent / f".{out.name}.merging-{os.getpid()}"
    try:
        _write_merged(work, _merged_info(out.name, infos[0][1], whole, ordered),
                      [d for d, _ in ordered])
        _move_into(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def _check_out(out: Path) -> None:
    """Refuse an `out` that is not a new or empty folder, in one line."""
    store.refuse_bad_link(out, "--out")
    if out.exists() and not out.is_dir():
        raise EvalkitError(f"{out} is a file, not a folder: merge into a new folder")
    names = store.foreign_names(out)
    if names and store.is_run_folder(out):
        raise EvalkitError(f"{out} holds a run ({store.listed(names)}), not an empty folder: "
                           "merge into a new folder")
    if names:
        raise EvalkitError(f"{out} holds files evalkit did not write ({store.listed(names)}): "
                           "pass an empty or new folder as --out")


def _whole_run(infos: Sequence[Shard]) -> tuple[dict[str, Any], list[Shard]]:
    """The whole run's facts that every shard records alike (its spec hash, sample count
    and id hash, the shard count), and the shards in slice order. Refuses shards of
    different runs, a slice given twice, a missing slice and shards planning another
    sample count than the run's."""
    first_dir, first = infos[0]
    whole = _run_facts(_shard(first_dir, first))
    by_index: dict[int, Shard] = {}
    for d, info in infos:
        shard = _shard(d, info)
        if _run_facts(shard) != whole:
            raise EvalkitError(f"{d} is not a shard of the same run as {first_dir} (another "
                               "spec, sample set or shard count): merge the shards of one "
                               "command only")
        index = shard["index"]
        if index in by_index:
            raise EvalkitError(f"shard {index}/{whole['count']} is given twice "
                               f"({by_index[index][0]} and {d}): give each shard folder once")
        by_index[index] = (d, info)
    ordered = _in_slice_order(by_index, whole["count"])
    planned = sum(int(info["n_samples"]) for _, info in ordered)
    if planned != whole["whole_n_samples"]:
        raise EvalkitError(f"the shards plan {planned} samples, the run {whole['whole_n_samples']}"
                           ": they were made by different versions of evalkit; run them again")
    return whole, ordered


def _run_facts(shard: dict[str, Any]) -> dict[str, Any]:
    """What a shard's run.json says of the whole run: all but its own slice."""
    return {k: v for k, v in shard.items() if k != "index"}


def _in_slice_order(by_index: dict[int, Shard], count: int) -> list[Shard]:
    """The shards of slices 1..count in order; a missing slice is one line naming it."""
    missing = [i for i in range(1, count + 1) if i not in by_index]
    if missing:
        raise EvalkitError(f"shard{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(f'{i}/{count}' for i in missing)} missing: pass all "
                           f"{count} shard folders (run the missing ones with --shard)")
    return [by_index[i] for i in range(1, count + 1)]


def _merged_info(run_id: str, first: dict[str, Any], whole: dict[str, Any],
                 ordered: Sequence[Shard]) -> dict[str, Any]:
    """The merged run's run.json: the first given shard's, with the whole run's facts in
    place of the shard's, the shards' run ids and their planned cells summed."""
    info = dict(first)
    del info["shard"]
    spec = {**first["spec"], "shard": None}
    info.update(run_id=run_id, spec=spec, spec_redacted_sha256=recorded_spec_sha256(spec),
                spec_hash=whole["whole_spec_hash"], n_samples=whole["whole_n_samples"],
                sample_ids_sha256=whole["whole_sample_ids_sha256"],
                merged_from=[shard_info["run_id"] for _, shard_info in ordered])
    info.pop("cells", None)
    cells = _summed_cells([store.run_cells(shard_info) for _, shard_info in ordered])
    if cells is not None:
        info["cells"] = cells
    return info


def _summed_cells(shard_cells: Sequence[dict[str, dict[str, int]] | None]
                  ) -> dict[str, dict[str, int]] | None:
    """Task -> length cell -> samples planned, over all shards; None when a shard has none
    (its run predates them)."""
    if not all(c is not None for c in shard_cells):
        return None
    cells: dict[str, dict[str, int]] = {}
    for counts_of in shard_cells:
        for task, counts in (counts_of or {}).items():
            into = cells.setdefault(task, {})
            for cell, n in counts.items():
                into[cell] = into.get(cell, 0) + n
    return cells


def _write_merged(work: Path, info: dict[str, Any], ordered: Sequence[Path]) -> None:
    """The merged run in `work`: run.json, the shards' sessions (their time, for the
    report's duration), their records and the summary."""
    store.prepare_run_dir(work)
    store.write_run(work, info)
    store.append_sessions(work, [s for d in ordered for s in store.read_sessions(d)])
    _append_records(work, ordered)
    store.write_summary(work, build_summary(work))


def _append_records(work: Path, ordered: Sequence[Path]) -> None:
    """Each shard's records appended in turn (the last record of each id), a few at a time
    with their prompts, so that a merge of long prompts holds few in memory; a sample in
    two shards is one line naming both."""
    owner: dict[str, Path] = {}
    for d in ordered:
        left = Counter(rec.sample.id for rec in store.iter_records(d, prompts=False))
        for sample_id in left:
            if sample_id in owner:
                raise EvalkitError(f"sample {sample_id} is in both {owner[sample_id]} and "
                                   f"{d}: these shards overlap; merge the shards of one "
                                   "command only")
            owner[sample_id] = d
        batch: list[Record] = []
        chars = 0
        for rec in store.iter_records(d):
            left[rec.sample.id] -= 1
            if not left[rec.sample.id]:  # the record of this id that counts
                batch.append(rec)
                chars += len(rec.sample.prompt) + sum(len(m.content)
                                                      for m in rec.sample.messages or ())
            if len(batch) >= MERGE_BATCH or chars >= MERGE_CHARS:
                store.append_records(work, batch)
                batch, chars = [], 0
        store.append_records(work, batch)


def _move_into(work: Path, out: Path) -> None:
    """The finished merge renamed into place (`out` is missing, or empty but for evalkit's
    .lock or *.tmp)."""
    if out.exists():
        store.remove_leftovers(out)
        out.rmdir()
    os.replace(work, out)


def _shard(folder: Path, info: dict[str, Any]) -> dict[str, Any]:
    shard = info.get("shard")
    if not isinstance(shard, dict):
        raise EvalkitError(f"{folder} is not a shard (its run was made without --shard): "
                           "merge the folders of `evalkit run ... --shard i/n`")
    index, count = shard.get("index"), shard.get("count")
    if not (isinstance(index, int) and isinstance(count, int)
            and not isinstance(index, bool) and not isinstance(count, bool)
            and 1 <= index <= count):
        raise EvalkitError(f"{folder}/run.json: its 'shard' is damaged (index {index!r} of "
                           f"{count!r}): rerun that shard with --shard i/n into a new folder")
    return shard
