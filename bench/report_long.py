"""The report at long prompts: 1,000 samples of 128K tokens, and one of 1M.

Makes a run of --samples passkey samples of --length tokens on the scripted backend (no
model: the report is what is measured; its tokens are whitespace-separated words, about
700 KB of text a 128K prompt), and a run of one sample of --huge tokens. Builds their
report with `evalkit report` in a process of its own (its time and peak RSS), then in
headless Chromium times the page's load (every sample listed, no prompt loaded), the
opening of a prompt (a click on its summary until its text and needle marks are in the
page) and the jump to its needle, for --opens of the listed prompts and for the huge one.
Prints figures; asserts nothing.

    python bench/report_long.py [--samples 1000] [--length 128k] [--huge 1m] [--opens 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evalkit.results import store
from evalkit.runner.config import build_spec, parse_length
from evalkit.runner.execute import run


def make_run(root: Path, n: int, length: int, name: str) -> Path:
    spec = build_spec({"name": name, "model": "scripted", "backend": "scripted",
                       "backend_options": {"reply": "lookup", "context_window": 2 * length},
                       "samples": n, "lengths": [length], "tasks": ["passkey"]})
    return run(spec, out=root / name, progress=False, log=lambda m: None,
               cache_dir=root / "cache").run_dir


def browser():  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-sync",
                "--allow-file-access-from-files"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"),
                            options=opts)


OPEN = """
const done = arguments[arguments.length - 1];
const cards = document.querySelectorAll('#sample-list details.prompt');
const card = arguments[0] === null ? Array.from(cards).find(
  c => c.closest('article').querySelector('.id').textContent.includes(arguments[1]))
  : cards[arguments[0]];
const pre = card.querySelector('pre.sent');
const t0 = performance.now();
card.open = true;
(function wait() {
  if (pre.dataset.loaded) {
    const marks = pre.querySelectorAll('mark').length;
    const t1 = performance.now();
    card.querySelector('.jumps button').click();
    const scrolled = pre.scrollTop;
    done([t1 - t0, performance.now() - t1, marks, scrolled, pre.textContent.length,
          document.querySelectorAll('script[src^="prompts/"]').length]);
  } else setTimeout(wait, 5);
})();
"""


def build(runs: list[Path], out: Path) -> tuple[float, float]:
    """`evalkit report` in a process of its own: seconds and peak RSS (MB)."""
    rss = out.parent / "report.rss"
    start = time.perf_counter()
    subprocess.run(["/usr/bin/time", "-o", str(rss), "-f", "%M", sys.executable, "-m",
                    "evalkit.cli", "report", *map(str, runs), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, float(rss.read_text().split()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--length", default="128k")
    ap.add_argument("--huge", default="1m")
    ap.add_argument("--opens", type=int, default=5)
    args = ap.parse_args()
    length, huge = parse_length(args.length), parse_length(args.huge)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        runs = [make_run(root, args.samples, length, "long"), make_run(root, 1, huge, "huge")]
        raw = sum(len(r.sample.prompt) for d in runs for r in store.iter_records(d))
        disk = sum((d / f).stat().st_size for d in runs for f in ("samples.jsonl",
                                                                 "texts.pack"))
        print(f"runs of {args.samples} samples of {length} tokens and 1 of {huge}: "
              f"{time.perf_counter() - t0:.0f} s; prompts {raw / 1e6:.0f} MB, "
              f"run folders {disk / 1e6:.1f} MB")
        seconds, peak = build(runs, root / "report")
        page = root / "report" / "index.html"
        prompts = sorted((page.parent / "prompts").glob("[0-9]*.js"))
        sizes = [p.stat().st_size for p in prompts]
        print(f"report built in {seconds:.1f} s (peak RSS {peak:.0f} MB): {len(prompts)} "
              f"prompt files, {sum(sizes) / 1e6:.1f} MB in all, largest "
              f"{max(sizes) / 1e6:.2f} MB; samples.js "
              f"{(page.parent / 'samples.js').stat().st_size / 1e3:.0f} KB")
        drv = browser()
        try:
            drv.set_script_timeout(120)
            t0 = time.perf_counter()
            drv.get(page.as_uri())
            listed = drv.execute_script(
                "return document.querySelectorAll('#sample-list details.prompt').length")
            print(f"page load: {time.perf_counter() - t0:.2f} s ({listed} of "
                  f"{args.samples + 1} samples listed, no prompt loaded)")
            opens, jumps = [], []
            for i in range(min(args.opens, listed)):
                ms, jump_ms, marks, scrolled, chars, files = drv.execute_async_script(
                    OPEN, i * (listed // max(1, args.opens)), "")
                opens.append(ms)
                jumps.append(jump_ms)
                print(f"  prompt {i}: opened in {ms:.0f} ms ({chars / 1e3:.0f}K characters, "
                      f"{marks} marks, scrolled to {scrolled}px in {jump_ms:.0f} ms); prompt "
                      f"files loaded so far: {files}")
            print(f"open one {length // 1024}K-token prompt: median {statistics.median(opens):.0f}"
                  f" ms, max {max(opens):.0f} ms; jump to its needle: median "
                  f"{statistics.median(jumps):.0f} ms")
            drv.execute_script("const s = document.querySelector('#filters select[name=length]');"
                               f"s.value = '{huge / 1024:g}k';"
                               "s.dispatchEvent(new Event('change', {bubbles: true}))")
            ms, jump_ms, marks, scrolled, chars, files = drv.execute_async_script(
                OPEN, None, f"/{huge}/")
            print(f"open the {huge // 1024}K-token prompt: {ms:.0f} ms ({chars / 1e6:.1f}M "
                  f"characters, {marks} marks; jump to its needle {jump_ms:.0f} ms, "
                  f"scrolled to {scrolled}px)")
        finally:
            drv.quit()


if __name__ == "__main__":
    main()
