"""Bytes on disk per sample against its prompt's raw size, per task and length.

Each task and length is a run of its own on the scripted backend (no model: the run folder
is what is measured), counted with the Mistral v1 tokenizer: its samples.jsonl and
texts.pack, divided by the samples, beside the raw prompt (the UTF-8 bytes of the prompt as
sent) and the records as evalkit wrote them before texts were stored once (every prompt
inline in samples.jsonl: the "inline" column). Also the time to append and to read back
every record with its prompt (each checked against its sha256). Targets at 128K tokens:
<= 5% for passkey and the RULER niah tasks on the noise and essay haystacks, <= 15% for
lines.

    python bench/storage.py [--lengths 32k,128k] [--samples 20]
        [--tasks passkey,lines,niah_single_1,niah_single_2,niah_multikey_1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from evalkit.results import store, texts
from evalkit.runner.config import build_spec, parse_lengths
from evalkit.runner.execute import run
from evalkit.types import SCHEMA_VERSION, to_jsonable


def measure(root: Path, task: str, length: int, samples: int) -> dict[str, float]:
    spec = build_spec({"name": "storage", "model": "scripted", "backend": "scripted",
                       "backend_options": {"reply": "lookup", "context_window": 2 * length},
                       "tokenizer": "mistral-v1", "samples": samples, "lengths": [length],
                       "tasks": [task], "cache": False})
    out = run(spec, out=root / f"{task}-{length}", progress=False, log=lambda m: None).run_dir
    records = store.read_records(out)
    raw = sum(len("".join((r.sent or {}).get(k, "") for k in ("before", "after")).encode())
              + len(r.sample.prompt.encode()) for r in records)
    inline = sum(len((json.dumps({"schema_version": SCHEMA_VERSION, **to_jsonable(r)},
                                 ensure_ascii=False) + "\n").encode()) for r in records)
    disk = sum((out / f).stat().st_size for f in (store.SAMPLES, texts.TEXTS)
               if (out / f).exists())
    again = root / "again"  # the append alone, into a fresh folder
    again.mkdir()
    start = time.perf_counter()
    store.append_records(again, records)
    appended = time.perf_counter() - start
    texts.store_of(out).refresh()
    start = time.perf_counter()
    back = store.read_records(again)
    read = time.perf_counter() - start
    assert back == records
    for p in again.iterdir():
        p.unlink()
    again.rmdir()
    n = len(records)
    return {"n": n, "raw": raw / n, "disk": disk / n, "inline": inline / n,
            "append_ms": appended / n * 1000, "read_ms": read / n * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="32k,128k")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--tasks", default="passkey,lines,niah_single_1,niah_single_2,"
                                       "niah_multikey_1")
    args = ap.parse_args()
    print(f"{args.samples} samples per task and length; bytes per sample")
    print(f"{'task':<16} {'length':>7} {'raw prompt':>11} {'on disk':>9} {'ratio':>7} "
          f"{'inline':>10} {'append ms':>10} {'read ms':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            for length in parse_lengths(args.lengths):
                m = measure(Path(tmp), task, length, args.samples)
                print(f"{task:<16} {length:>7} {m['raw']:>11,.0f} {m['disk']:>9,.0f} "
                      f"{m['disk'] / m['raw']:>7.1%} {m['inline']:>10,.0f} "
                      f"{m['append_ms']:>10.1f} {m['read_ms']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
