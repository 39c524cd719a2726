"""Planning once (evalkit.runner.plans): a resumed run fits only what it has not recorded,
and the plan cache gives a re-run, another shard or another model with the same tokenizer
and template the samples already fitted, exactly as fitting them would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from evalkit.results import store
from evalkit.runner import plans
from evalkit.runner.config import Overrides, build_spec
from evalkit.runner.execute import plan_samples, run
from evalkit.tasks import fitting, get_task

CONFIG: dict[str, Any] = {"name": "plans", "model": "scripted", "backend": "scripted",
                          "samples": 4, "lengths": [2000, 4000], "tasks": ["passkey", "lines"]}
N = 16


@pytest.fixture
def fits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The samples fitted (one entry per Fitter.fit call)."""
    calls: list[str] = []
    real = fitting.Fitter.fit

    def counted(self: fitting.Fitter, key: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(key)
        return real(self, key, *args, **kwargs)

    monkeypatch.setattr(fitting.Fitter, "fit", counted)
    return calls


def _run(tmp_path: Path, out: str, shard: tuple[int, int] | None = None,
         **over: Any) -> Path:
    spec = build_spec({**CONFIG, **over}, Overrides(shard=shard))
    return run(spec, out=tmp_path / out, progress=False, log=lambda m: None,
               cache_dir=tmp_path / "cache").run_dir


def _samples(run_dir: Path) -> dict[str, Any]:
    return {r.sample.id: r.sample for r in store.read_records(run_dir)}


def test_a_rerun_reads_the_samples_it_fitted(tmp_path: Path, fits: list[str]) -> None:
    first = _run(tmp_path, "a")
    assert len(fits) == N
    fits.clear()
    again = _run(tmp_path, "b")
    assert fits == []  # nothing fitted again
    assert _samples(again) == _samples(first)
    # without the cache, the same samples are fitted again, and equal
    fresh = _run(tmp_path, "c", cache=False)
    assert len(fits) == N and _samples(fresh) == _samples(first)
    # another tokenizer is another plan: fitted anew
    fits.clear()
    _run(tmp_path, "d", tokenizer="mistral-v1")
    assert len(fits) == N


def test_a_resumed_run_fits_only_the_samples_it_has_not_recorded(
        tmp_path: Path, fits: list[str]) -> None:
    out = _run(tmp_path, "a", cache=False)
    path = out / store.SAMPLES
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:11]))  # as if killed after 11 records
    (out / store.SUMMARY).unlink()
    fits.clear()
    _run(tmp_path, "a", cache=False)
    assert len(fits) == N - 11
    assert len(store.read_records(out)) == N


def test_another_shard_and_a_dry_run_read_the_cached_plan(
        tmp_path: Path, fits: list[str]) -> None:
    _run(tmp_path, "one", shard=(1, 2))
    first = len(fits)
    assert 0 < first < N
    fits.clear()
    _run(tmp_path, "two", shard=(2, 2))
    assert len(fits) == N - first
    fits.clear()
    spec = build_spec(CONFIG)
    from evalkit.backends import make_backend

    backend = make_backend("scripted", "scripted", {})
    with plans.Plans(tmp_path / "cache" / "plans") as kept:
        samples = plan_samples(spec, backend, backend.tokenizer(), plans=kept)
    assert len(samples) == N and fits == []


def test_a_damaged_cached_sample_is_fitted_again(tmp_path: Path, fits: list[str]) -> None:
    first = _run(tmp_path, "a")
    for folder in (tmp_path / "cache" / "plans").iterdir():
        path = folder / plans.PLANS
        lines = path.read_text().splitlines(keepends=True)
        d = json.loads(lines[0])
        d["sample"]["input_tokens"] = "many"  # not a sample any more
        path.write_text(json.dumps(d) + "\n" + "".join(lines[1:]))
        pack = folder / "texts.pack"
        pack.write_bytes(pack.read_bytes()[:-10])  # and a torn pack
    fits.clear()
    again = _run(tmp_path, "b")
    assert 2 <= len(fits) < N
    assert _samples(again) == _samples(first)


def test_the_key_follows_the_template_and_the_data_files(tmp_path: Path) -> None:
    from evalkit.prompts.counters import get_counter
    from evalkit.prompts.templates import make_template

    counter = get_counter("whitespace")
    essay = tmp_path / "essay.txt"
    essay.write_text("one")

    def key(template: str = "raw", source: dict[str, Any] | None = None,
            **params: Any) -> str:
        found = plans.plan_key("t", params, get_task("passkey").generate, seed=0,
                               max_new_tokens=8, window=None, reserve=0,
                               template=make_template(template),
                               template_source=source or {}, counter=counter)
        assert found is not None
        return found

    assert key() == key()
    assert key() != key("mistral-instruct")
    # the model's own template by its source: one branch the probe misses is another key
    assert key(source={"chat_template": "{{ a }}"}) != key(source={"chat_template": "{{ b }}"})
    assert key(essay=str(essay)) != key(essay=str(essay) + "x")
    before = key(essay=str(essay))
    essay.write_text("two")  # the same size, another content
    os.utime(essay, ns=(essay.stat().st_atime_ns, essay.stat().st_mtime_ns))
    assert key(essay=str(essay)) != before
    # a tokenizer is known by what it counts, the same in every process
    from evalkit.prompts.counters import WhitespaceCounter

    assert plans.counter_digest(WhitespaceCounter()) == plans.counter_digest(counter)
    code = "from evalkit.runner import plans; from evalkit.prompts.counters import get_counter;"\
           " print(plans.counter_digest(get_counter('whitespace')))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert other == plans.counter_digest(counter)


def test_the_key_digests_a_one_file_task_module_alone_and_no_key_for_code_in_no_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task whose generator is a module of its own (a script, a one-file plugin) is
    known by that file, not by the folder it sits in (site-packages, a project with its
    results); one whose code is in no file (a notebook's) is not kept: an edit to it
    could not change the key."""
    import importlib.util

    from evalkit.prompts.counters import get_counter
    from evalkit.prompts.templates import make_template

    module = tmp_path / "mytask.py"

    def key_of(source: str) -> str | None:
        module.write_text(source)
        spec = importlib.util.spec_from_file_location("mytask", module)
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "mytask", loaded)  # imported, as a plugin is
        spec.loader.exec_module(loaded)
        plans._code_digest.cache_clear()
        return plans.plan_key("t", {}, loaded.generate, seed=0, max_new_tokens=8,
                              window=None, reserve=0, template=make_template("raw"),
                              template_source={}, counter=get_counter("whitespace"))

    first = key_of("def generate(params, plan):\n    return iter(())\n")
    (tmp_path / "results.jsonl").write_text("a run's output beside the script")
    assert first is not None and key_of("def generate(params, plan):\n    return iter(())\n"
                                        ) == first
    assert key_of("def generate(params, plan):\n    return iter([])\n") != first
    namespace: dict[str, Any] = {}
    exec("def generate(params, plan):\n    return iter(())\n", namespace)  # a notebook's
    assert plans.plan_key("t", {}, namespace["generate"], seed=0, max_new_tokens=8,
                          window=None, reserve=0, template=make_template("raw"),
                          template_source={}, counter=get_counter("whitespace")) is None


def test_mrcr_counts_each_row_once_across_runs(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """MRCR counts every row to bin it, a 1M-token conversation included: the plan cache
    keeps the counts, so a second run counts none (other data, all again)."""
    from test_mrcr import _rows_in_two_bins

    counted: list[int] = []
    real = fitting.Fitter.measure_messages

    def counting(self: fitting.Fitter, messages: Any) -> int:
        counted.append(1)
        return real(self, messages)

    monkeypatch.setattr(fitting.Fitter, "measure_messages", counting)
    folder = _rows_in_two_bins(tmp_path)
    cfg = {"name": "m", "model": "x", "backend": "scripted", "samples": 10,
           "tasks": [{"mrcr": {"data": [str(folder)]}}]}
    first = _samples(run(build_spec(cfg), out=tmp_path / "a", progress=False,
                         log=lambda m: None, cache_dir=tmp_path / "cache").run_dir)
    assert counted and first
    counted.clear()
    again = _samples(run(build_spec(cfg), out=tmp_path / "b", progress=False,
                         log=lambda m: None, cache_dir=tmp_path / "cache").run_dir)
    assert counted == [] and again == first
    for path in folder.iterdir():  # the same files copied again: known by their content
        path.write_bytes(path.read_bytes())
        os.utime(path, ns=(1, 1))
    run(build_spec(cfg), out=tmp_path / "c", progress=False, log=lambda m: None,
        cache_dir=tmp_path / "cache")
    assert counted == []
    kept = sorted(folder.iterdir())[0]  # other data: counted anew
    for path in sorted(folder.iterdir())[1:]:
        path.unlink()
    run(build_spec(cfg), out=tmp_path / "d", progress=False, log=lambda m: None,
        cache_dir=tmp_path / "cache")
    assert counted and kept.exists()


@pytest.mark.parametrize("cut", ["records", "plan cache"])
def test_a_shared_haystack_group_cut_short_is_planned_whole_again(
        tmp_path: Path, cut: str) -> None:
    """Questions over one haystack are fitted as a group: a group partly recorded (a run
    killed mid-group) or partly kept (a plan cut short) is made whole, never left
    partial or dropped in silence."""
    cfg = {"name": "s", "model": "scripted", "backend": "scripted", "samples": 2,
           "lengths": [2000], "tasks": [{"passkey_shared": {"questions": 4}}]}
    out = _run(tmp_path, "a", **{k: v for k, v in cfg.items()})
    assert store.read_summary(out).n_done == 8
    if cut == "records":
        path = out / store.SAMPLES
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))
        (out / store.SUMMARY).unlink()
        again = _run(tmp_path, "a", **cfg)
    else:
        (plan,) = (tmp_path / "cache" / "plans").iterdir()
        lines = (plan / plans.PLANS).read_text().splitlines(keepends=True)
        (plan / plans.PLANS).write_text("".join(lines[:3]))
        again = _run(tmp_path, "b", **cfg)
    summary = store.read_summary(again)
    assert (summary.status, summary.n_samples, summary.n_done) == ("complete", 8, 8)
    assert _samples(again) == _samples(out)


def test_a_damaged_plan_cache_is_fitted_again_not_failed(tmp_path: Path,
                                                         fits: list[str]) -> None:
    first = _run(tmp_path, "a")
    for pack in (tmp_path / "cache" / "plans").glob("*/texts.pack"):
        data = bytearray(pack.read_bytes())
        data[data.index(b"\n") + 30] ^= 0x55  # a byte inside the first frame
        pack.write_bytes(bytes(data))
    for name in ("b", "c"):  # the damaged chunks are written again, not named again
        fits.clear()
        assert _samples(_run(tmp_path, name)) == _samples(first)
    assert fits == []
