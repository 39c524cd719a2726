"""Scale: shards that merge into the unsharded run, the prefix schedule, shared context."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import whitespace_plan

from evalkit.results import store
from evalkit.results.summary import aggregate
from evalkit.runner.execute import prefix_key
from evalkit.runner.shards import Selection, shard_of
from evalkit.stats.intervals import wilson
from evalkit.tasks import get_task, make_params
from evalkit.types import Record, Response, Sample

CONFIG = {
    "name": "scale", "model": "scripted", "backend": "scripted", "tokenizer": "whitespace",
    "backend_options": {"loglikelihood": "oracle"},
    "samples": 4, "lengths": [600, 1200], "cache": False,
    "tasks": ["passkey", "passkey_ll", "lines", "longqa", {"lines_shared": {"questions": 3}},
              {"passkey_shared": {"questions": 2}}, {"topics": {"num_topics": [3, 5]}}],
}


def _cli(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evalkit.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def _records(run_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for line in (run_dir / store.SAMPLES).read_text().splitlines():
        rec = json.loads(line)
        rec["response"].pop("latency_s")  # wall-clock time: the one field runs differ in
        out[rec["sample"]["id"]] = rec
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("scale")
    cfg = root / "scale.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    whole = _cli("run", cfg, "--out", root / "whole", "--no-progress")
    assert whole.returncode == 0, whole.stderr
    shards = []
    for i in (1, 2, 3):
        res = _cli("run", cfg, "--shard", f"{i}/3", "--results", root / "results",
                   "--no-progress")
        assert res.returncode == 0, res.stderr
        shards.append(Path(res.stdout.strip().rsplit("results in ", 1)[1]))
    return {"root": root, "cfg": cfg, "whole": root / "whole", "shards": shards}


def test_three_shards_merged_equal_the_unsharded_run_record_for_record(runs) -> None:
    whole, shards = runs["whole"], runs["shards"]
    sizes = [len(_records(s)) for s in shards]
    assert all(sizes) and sum(sizes) == len(_records(whole))  # a real split, no sample twice
    merged = runs["root"] / "merged"
    res = _cli("merge", *shards, "--out", merged)
    assert res.returncode == 0, res.stderr
    assert f"{sum(sizes)}/{sum(sizes)} samples scored, from 3 shards" in res.stdout
    assert _records(merged) == _records(whole)
    a, b = store.read_run(whole), store.read_run(merged)
    for key in ("spec", "spec_hash", "n_samples", "sample_ids_sha256", "model_label",
                "tokenizer", "templates", "cells"):
        assert a[key] == b[key], key
    assert len(store.read_sessions(merged)) == 3  # each shard's time
    assert json.loads((merged / store.SUMMARY).read_text())["rows"] == \
        json.loads((whole / store.SUMMARY).read_text())["rows"]
    assert (merged / store.TABLE).read_text() == (whole / store.TABLE).read_text()
    # the questions of one haystack stay in one shard
    for s in shards:
        for rec in _records(s).values():
            if "haystack" in rec["sample"]["meta"]:
                assert shard_of(rec["sample"]["meta"]["haystack"], 3) == \
                    store.read_run(s)["shard"]["index"]


def test_a_run_without_shared_context_writes_its_summary_as_before(tmp_path: Path) -> None:
    """The committed baseline (made before `clusters` existed) is still up to date: a
    re-run of a finished run writes nothing."""
    from evalkit.runner.execute import _up_to_date

    baseline = Path(__file__).resolve().parents[1] / "results" / "baselines" / "smoke"
    copy = tmp_path / "smoke"
    shutil.copytree(baseline, copy)
    assert _up_to_date(copy)


def test_merge_refuses_what_is_not_one_whole_run(runs, tmp_path: Path) -> None:
    shards, whole = runs["shards"], runs["whole"]

    def refused(*args: Any) -> str:
        res = _cli("merge", *args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        return lines[0]

    assert "shard 3/3 missing" in refused(*shards[:2], "--out", tmp_path / "a")
    assert "given twice" in refused(shards[0], shards[0], *shards[1:], "--out", tmp_path / "b")
    assert "is not a shard" in refused(whole, *shards, "--out", tmp_path / "c")
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**CONFIG, "seed": 1}))
    res = _cli("run", other, "--shard", "3/3", "--out", tmp_path / "o3", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "not a shard of the same run" in refused(*shards[:2], tmp_path / "o3", "--out",
                                                    tmp_path / "d")
    overlap = tmp_path / "overlap"
    shutil.copytree(shards[1], overlap)
    with (overlap / store.SAMPLES).open("a") as f:  # a record of shard 1 in shard 2 too
        f.write((shards[0] / store.SAMPLES).read_text().splitlines()[0] + "\n")
    assert "overlap" in refused(shards[0], overlap, shards[2], "--out", tmp_path / "e")
    assert "not an empty folder" in refused(*shards, "--out", whole)
    damaged = tmp_path / "damaged"
    shutil.copytree(shards[1], damaged)
    info = json.loads((damaged / store.RUN_JSON).read_text())
    del info["shard"]["index"]  # run.json's shard only describes the run: merge checks it
    (damaged / store.RUN_JSON).write_text(json.dumps(info))
    assert "its 'shard' is damaged" in refused(shards[0], damaged, shards[2], "--out",
                                               tmp_path / "f")
    for bad in ("0/3", "4/3", "1/0", "a/b", "2"):
        res = _cli("run", runs["cfg"], "--shard", bad, "--out", tmp_path / "x")
        assert res.returncode == 2 and "--shard" in res.stderr and "Traceback" not in res.stderr


def test_a_shard_resumes_and_the_merge_still_equals_the_whole_run(runs, tmp_path) -> None:
    shard = tmp_path / "s2"
    shutil.copytree(runs["shards"][1], shard)
    lines = (shard / store.SAMPLES).read_text().splitlines(keepends=True)
    (shard / store.SAMPLES).write_text("".join(lines[: len(lines) // 2]))  # cut short
    res = _cli("run", runs["cfg"], "--shard", "2/3", "--out", shard, "--no-progress")
    assert res.returncode == 0 and "resuming" in res.stdout, res.stderr
    merged = tmp_path / "merged"
    res = _cli("merge", runs["shards"][0], shard, runs["shards"][2], "--out", merged)
    assert res.returncode == 0, res.stderr
    assert _records(merged) == _records(runs["whole"])


def test_the_schedule_runs_shared_prefixes_back_to_back(runs) -> None:
    """samples.jsonl is in the order the samples were asked: each haystack's questions
    together, and every sample present once."""
    order = [rec["sample"] for rec in _records(runs["whole"]).values()]
    seen: list[str] = []
    for s in order:
        h = s["meta"].get("haystack")
        if h and (not seen or seen[-1] != h):
            assert h not in seen, f"{h} is asked in two places"
            seen.append(h)


def test_prefix_key_sorts_by_longest_shared_prefix() -> None:
    rng = random.Random(0)
    trunks = ["".join(rng.choices("ab \n", k=5000)) for _ in range(4)]
    texts = [t[: rng.randrange(2048, 5000)] + f" question {j}" for t in trunks for j in range(5)]
    rng.shuffle(texts)
    ordered = sorted(texts, key=prefix_key)
    groups = [next(i for i, t in enumerate(trunks) if x.startswith(t[:2048])) for x in ordered]
    assert groups == sorted(groups, key=groups.index)  # each trunk's texts contiguous


def test_shards_partition_by_id_and_haystack() -> None:
    ids = [f"lines/4096/0/{i}" for i in range(300)]
    parts = [[i for i in ids if Selection((k, 3))(i)] for k in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(ids) and all(len(p) > 60 for p in parts)
    whole = Selection(None)
    assert all(whole(i) for i in ids) and list(whole.seen) == ids
    sel = Selection((2, 3))
    group = [sel("lines_shared/1000/0/7/q0", "lines_shared/1000/0/7"),
             sel("lines_shared/1000/0/7/q1", "lines_shared/1000/0/7")]
    assert len(set(group)) == 1


@pytest.mark.parametrize("task", ["lines_shared", "passkey_shared"])
def test_shared_prompts_share_the_haystack_and_fit(task: str) -> None:
    tdef = get_task(task)
    samples = list(tdef.generate(make_params(tdef, {"questions": 4}),
                                 whitespace_plan(task, (900, 1800), 2)))
    assert len(samples) == 2 * 2 * 4
    for start in range(0, len(samples), 4):
        group = samples[start:start + 4]
        assert len({s.meta["haystack"] for s in group}) == 1
        assert len({s.targets[0] for s in group}) == 4  # four different answers
        assert all(s.input_tokens <= s.target_tokens for s in group)
        assert max(s.input_tokens for s in group) >= group[0].target_tokens - 40
        stem = group[0].prompt[: group[0].prompt.rindex("\n")]
        assert all(s.prompt.startswith(stem) for s in group)  # only the question differs
        for s in group:
            assert s.targets[0] in s.prompt[: len(stem)]  # its answer is in the haystack


def _rec(i: int, haystack: str, ok: bool) -> Record:
    sample = Sample(id=f"t/1000/0/{haystack}/q{i}", task="lines_shared", prompt="",
                    targets=("1",), target_tokens=1000, input_tokens=1000, template="raw",
                    max_new_tokens=10, meta={"haystack": haystack})
    return Record(sample=sample, response=Response(text="1" if ok else "2"),
                  scores={"accuracy": float(ok)}, model="m", prompt_sha256="", cache_key="")


def test_clustered_intervals_are_wider_when_haystacks_decide() -> None:
    """Ten haystacks of ten questions, each haystack all right or all wrong: the answers
    are ten draws, not a hundred, and the interval says so."""
    recs = [_rec(i, f"h{h}", h < 6) for h in range(10) for i in range(10)]
    (row,) = aggregate(recs)
    assert row.value == 0.6 and row.n == 100 and row.clusters == 10
    assert (row.ci_low, row.ci_high) == pytest.approx(wilson(6, 10), abs=0.02)
    independent = [_rec(i, f"h{h}", (h + i) % 5 < 3) for h in range(10) for i in range(10)]
    (row2,) = aggregate(independent)
    assert row2.value == 0.6
    assert (row2.ci_low, row2.ci_high) == pytest.approx(wilson(60, 100), abs=0.02)


def test_merge_keeps_no_cells_when_a_shard_predates_them(runs, tmp_path: Path) -> None:
    """A shard started by an evalkit that did not record its cells: the merged run says
    nothing rather than counting only the other shards."""
    shards = [tmp_path / f"s{i}" for i in range(3)]
    for src, dst in zip(runs["shards"], shards, strict=True):
        shutil.copytree(src, dst)
    info = store.read_run(shards[1])
    del info["cells"]
    (shards[1] / store.RUN_JSON).write_text(json.dumps(info))
    res = _cli("merge", *shards, "--out", tmp_path / "merged")
    assert res.returncode == 0, res.stderr
    assert "cells" not in store.read_run(tmp_path / "merged")
