"""Long texts stored once (evalkit.results.texts): chunks that realign around a needle,
records that read back their exact prompts, damage said in one line, resume and old runs."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from evalkit.results import store, texts
from evalkit.runner.config import build_spec
from evalkit.runner.execute import run
from evalkit.types import EvalkitError, Message, Record, Response, Sample, to_jsonable

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey").split()


def _essay(n_sentences: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))).capitalize()
                   + ". " + ("\n" if rng.random() < 0.1 else "") for _ in range(n_sentences))


def _record(sid: str, prompt: str, messages: tuple[Message, ...] | None = None,
            output: str = " 42") -> Record:
    sample = Sample(id=sid, task="passkey", prompt=prompt, targets=("42",), target_tokens=1000,
                    input_tokens=999, template="raw", max_new_tokens=8, meta={"depth": 0.5},
                    messages=messages)
    return Record(sample=sample, response=Response(text=output), scores={"accuracy": 1.0},
                  model="m", prompt_sha256="0" * 64, cache_key="k",
                  sent={"before": "", "after": ""})


def test_chunks_join_to_the_text_and_realign_after_a_needle() -> None:
    essay = _essay(4000)
    pieces = texts.chunk_text(essay)
    assert "".join(pieces) == essay and len(pieces) > 20
    assert all(len(p) <= texts.MAX_CHUNK for p in pieces)
    middle = len(essay) // 2
    needle = "The special magic number is 7788123. "
    other = texts.chunk_text(essay[:middle] + needle + essay[middle:])
    a = {texts.chunk_id(p.encode()) for p in pieces}
    b = {texts.chunk_id(p.encode()) for p in other}
    assert len(b - a) <= 3  # only the chunks around the needle are new
    # a text without line or sentence ends is cut every MAX_CHUNK characters
    flat = "x" * (3 * texts.MAX_CHUNK + 5)
    assert [len(p) for p in texts.chunk_text(flat)] == [texts.MAX_CHUNK] * 3 + [5]


def test_records_store_shared_text_once_and_read_back_exactly(tmp_path: Path) -> None:
    essay = _essay(6000)
    records = []
    for i in range(20):
        cut = len(essay) * (i + 1) // 21
        prompt = essay[:cut] + f"The pass key is {i:05d}. Remember it. " + essay[cut:]
        turns = (Message("user", essay[:5000]), Message("assistant", "ok"),
                 Message("user", prompt))
        records.append(_record(f"passkey/1000/0/{i}", prompt, turns if i % 2 else None))
    records.append(_record("passkey/1000/0/short", "a short prompt"))
    for i in range(0, len(records), 8):  # batches, as a run appends them
        store.append_records(tmp_path, records[i:i + 8])
    back = store.read_records(tmp_path)
    assert back == records
    raw = sum(len(r.sample.prompt.encode()) for r in records)
    on_disk = sum((tmp_path / f).stat().st_size for f in (store.SAMPLES, texts.TEXTS))
    assert on_disk < 0.05 * raw, (on_disk, raw)
    lines = [json.loads(x) for x in (tmp_path / store.SAMPLES).read_text().splitlines()]
    assert [x["schema_version"] for x in lines] == [texts.RECORD_VERSION] * 20 + [2]
    assert lines[-1]["sample"]["prompt"] == "a short prompt"  # short texts stay inline
    # without prompts, texts.pack is not read at all
    (tmp_path / texts.TEXTS).rename(tmp_path / "elsewhere")
    texts.store_of(tmp_path).refresh()
    bare = store.read_records(tmp_path, prompts=False)
    assert [r.sample.id for r in bare] == [r.sample.id for r in records]
    assert all(r.sample.prompt == "" and r.sample.messages is None for r in bare)


def _stored_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    essay = _essay(3000)
    store.append_records(run_dir, [_record(f"passkey/1000/0/{i}", essay + f" key {i}.")
                                   for i in range(4)])
    return run_dir


@pytest.mark.parametrize("damage", ["flip", "missing", "cut"])
def test_a_damaged_store_is_one_line_naming_the_record_never_a_wrong_prompt(
        tmp_path: Path, damage: str) -> None:
    run_dir = _stored_run(tmp_path)
    pack = run_dir / texts.TEXTS
    data = bytearray(pack.read_bytes())
    if damage == "flip":  # a byte inside the first frame
        data[data.index(b"\n") + 40] ^= 0x55
        pack.write_bytes(bytes(data))
    elif damage == "missing":
        pack.unlink()
    else:  # cut in the middle: what a disk error, not a crash, leaves
        pack.write_bytes(bytes(data[:len(data) // 2]))
    with pytest.raises(EvalkitError) as err:
        store.read_records(run_dir)
    msg = str(err.value)
    assert "samples.jsonl line 1" in msg and texts.TEXTS in msg and "\n" not in msg
    assert "restore texts.pack from a copy, or remove that line" in msg


def test_a_torn_entry_is_cut_by_the_next_writer_and_the_records_before_it_read(
        tmp_path: Path) -> None:
    run_dir = _stored_run(tmp_path)
    size = (run_dir / texts.TEXTS).stat().st_size
    with (run_dir / texts.TEXTS).open("ab") as f:  # a crash in the middle of an entry
        f.write(b'{"codec":"zstd","size":99999,"chunks":[["abc",5]]}\n\x28\xb5')
    texts.store_of(run_dir).refresh()
    assert len(store.read_records(run_dir)) == 4
    assert store.repair_tail(run_dir) == 0  # samples.jsonl was whole
    assert (run_dir / texts.TEXTS).stat().st_size == size
    more = _record("passkey/1000/0/9", _essay(3000, seed=5))
    store.append_records(run_dir, [more])
    assert store.read_records(run_dir)[-1] == more


def test_a_record_of_a_newer_layout_is_refused_by_name(tmp_path: Path) -> None:
    run_dir = _stored_run(tmp_path)
    path = run_dir / store.SAMPLES
    first, *rest = path.read_text().splitlines(keepends=True)
    d = json.loads(first)
    d["schema_version"] = texts.RECORD_VERSION + 1
    path.write_text(json.dumps(d) + "\n" + "".join(rest))
    with pytest.raises(EvalkitError, match="line 1 has schema_version 4, newer than this "
                                           "evalkit reads"):
        store.read_records(run_dir)


def test_a_run_stores_its_prompts_once_and_resumes_and_reads_them(tmp_path: Path) -> None:
    """A real run (scripted backend, 8K tokens): samples.jsonl holds references, the run's
    files are a fraction of its prompts, and every prompt reads back as the one sent (its
    sha256 as the record has it)."""
    spec = build_spec({"name": "t", "model": "scripted", "backend": "scripted", "samples": 6,
                       "lengths": [8000], "tasks": ["passkey"], "cache": False})
    out = run(spec, out=tmp_path / "r", progress=False, log=lambda m: None).run_dir
    records = store.read_records(out)
    assert len(records) == 6
    raw = sum(len(r.sample.prompt.encode()) for r in records)
    assert (out / texts.TEXTS).stat().st_size + (out / store.SAMPLES).stat().st_size < 0.1 * raw
    # a record whose line is removed runs again, reusing the chunks already stored
    path = out / store.SAMPLES
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]))
    pack = (out / texts.TEXTS).stat().st_size
    (out / store.SUMMARY).unlink()
    run(spec, out=out, progress=False, log=lambda m: None)
    assert [r.sample for r in store.read_records(out)] == [
        dataclasses.replace(r.sample) for r in records]
    assert (out / texts.TEXTS).stat().st_size - pack < 0.05 * pack


def test_a_run_folder_of_an_earlier_version_reads_resumes_and_reports(tmp_path: Path) -> None:
    """A folder as evalkit wrote it before texts were stored once (every prompt inline,
    schema_version 2, no texts.pack): read as it is, resumed into a folder of both kinds
    of lines, reported."""
    from evalkit.report.html import build_report

    spec = build_spec({"name": "t", "model": "scripted", "backend": "scripted", "samples": 4,
                       "lengths": [4000], "tasks": ["passkey", "lines"], "cache": False})
    out = run(spec, out=tmp_path / "r", progress=False, log=lambda m: None).run_dir
    records = store.read_records(out)
    old = "".join(json.dumps({"schema_version": 2, **to_jsonable(r)}) + "\n"
                  for r in records[:5])  # the earlier layout, and three samples not run yet
    (out / store.SAMPLES).write_text(old)
    (out / texts.TEXTS).unlink()
    (out / store.SUMMARY).unlink()
    texts.store_of(out).refresh()
    assert store.read_records(out) == records[:5]
    run(spec, out=out, progress=False, log=lambda m: None)
    lines = [json.loads(x) for x in (out / store.SAMPLES).read_text().splitlines()]
    assert [x["schema_version"] for x in lines] == [2] * 5 + [texts.RECORD_VERSION] * 3
    assert sorted(store.read_records(out), key=lambda r: r.sample.id) == sorted(
        records, key=lambda r: r.sample.id)
    page = build_report([out], tmp_path / "rep")
    assert (page.parent / "prompts" / "0000.js").is_file()


def test_damage_in_the_middle_costs_the_chunks_it_hits_never_those_after(
        tmp_path: Path) -> None:
    """A damaged header in the middle of texts.pack: the records after it still read, the
    next writer cuts nothing, and a removed record that runs again stores its texts anew."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    records = [_record(f"passkey/1000/0/{i}", _essay(2000, seed=i)) for i in range(3)]
    for r in records:  # an entry each
        store.append_records(run_dir, [r])
    pack = run_dir / texts.TEXTS
    size = pack.stat().st_size
    data = bytearray(pack.read_bytes())
    data[2] = ord("X")  # the first entry's header
    pack.write_bytes(bytes(data))
    texts._open.clear()  # as a process of its own reads the folder
    with pytest.raises(EvalkitError, match="samples.jsonl line 1: .*texts.pack"):
        store.read_records(run_dir)
    path = run_dir / store.SAMPLES
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))
    assert store.read_records(run_dir) == records[1:]
    assert store.repair_tail(run_dir) == 0 and pack.stat().st_size == size
    texts._open.clear()
    store.append_records(run_dir, records[:1])  # the sample run again, by a new writer
    assert store.read_records(run_dir) == [*records[1:], records[0]]
    texts._open.clear()
    assert store.read_records(run_dir) == [*records[1:], records[0]]


def test_a_damaged_frame_is_written_again_by_the_writer_that_finds_it(
        tmp_path: Path) -> None:
    """A flipped byte in a frame: the records naming it are one line each; the line
    removed and the sample run again, a new writer (another process: its index checks
    every frame's CRC) stores the text again and every record reads back."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    records = [_record(f"passkey/1000/0/{i}", _essay(2000, seed=i)) for i in range(2)]
    for r in records:
        store.append_records(run_dir, [r])
    pack = run_dir / texts.TEXTS
    data = bytearray(pack.read_bytes())
    data[data.index(b"\n") + 30] ^= 0x55
    pack.write_bytes(bytes(data))
    path = run_dir / store.SAMPLES
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))
    texts._open.clear()  # a new writer: the run resumed by another process
    store.append_records(run_dir, records[:1])
    texts._open.clear()
    assert store.read_records(run_dir) == [records[1], records[0]]


def test_a_frame_is_never_decompressed_past_the_size_its_header_gives() -> None:
    """A damaged header (or a crafted frame: 100 MB of zeros compress to a few hundred
    bytes) is refused after size + 1 bytes, by either codec, instead of allocating it."""
    import bz2

    import zstandard

    for codec, frame in (("bz2", bz2.compress(bytes(100 << 20))),
                         ("zstd", zstandard.ZstdCompressor().compress(bytes(100 << 20)))):
        with pytest.raises((ValueError, zstandard.ZstdError)):
            texts.decompress(codec, frame, 1000)
        assert texts.decompress(codec, frame[:0] + frame, 100 << 20) == bytes(100 << 20)
