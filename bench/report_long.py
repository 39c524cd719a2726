"""The sample browser at long prompts: open time of 100 samples of 128K tokens.

Makes a run of 100 passkey samples of 128K tokens on the scripted backend (no model: the
report is what is measured; its tokens are whitespace-separated words, about 700 KB of
text a prompt), builds its report, then in headless Chromium times the page's load, and
the opening of one prompt (a click on its summary until its text and needle marks are in
the page, and a jump to the needle): what the page loads for it is that prompt's file
alone. Prints figures; asserts nothing.

    python bench/report_long.py [--samples 100] [--length 128k] [--opens 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from evalkit.report.html import build_report
from evalkit.runner.config import build_spec, parse_length
from evalkit.runner.execute import run


def make_run(root: Path, n: int, length: int) -> Path:
    spec = build_spec({"name": "long", "model": "scripted", "backend": "scripted",
                       "backend_options": {"reply": "lookup", "context_window": 2 * length},
                       "samples": n, "lengths": [length], "tasks": ["passkey"]})
    return run(spec, out=root / "run", progress=False, log=lambda m: None).run_dir


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
const card = document.querySelectorAll('#sample-list details.prompt')[arguments[0]];
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--length", default="128k")
    ap.add_argument("--opens", type=int, default=5)
    args = ap.parse_args()
    length = parse_length(args.length)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        run_dir = make_run(root, args.samples, length)
        print(f"run of {args.samples} samples of {length} tokens: "
              f"{time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        page = build_report([run_dir], root / "report")
        prompts = sorted((page.parent / "prompts").glob("*.js"))
        sizes = [p.stat().st_size for p in prompts]
        print(f"report built in {time.perf_counter() - t0:.1f} s: {len(prompts)} prompt files, "
              f"{sum(sizes) / 1e6:.1f} MB in all, largest {max(sizes) / 1e6:.2f} MB; "
              f"samples.js {(page.parent / 'samples.js').stat().st_size / 1e3:.0f} KB")
        drv = browser()
        try:
            drv.set_script_timeout(120)
            t0 = time.perf_counter()
            drv.get(page.as_uri())
            print(f"page load (every sample listed, no prompt loaded): "
                  f"{time.perf_counter() - t0:.2f} s")
            opens, jumps = [], []
            for i in range(min(args.opens, args.samples)):
                ms, jump_ms, marks, scrolled, chars, files = drv.execute_async_script(
                    OPEN, i * (args.samples // max(1, args.opens)))
                opens.append(ms)
                jumps.append(jump_ms)
                print(f"  prompt {i}: opened in {ms:.0f} ms ({chars / 1e3:.0f}K characters, "
                      f"{marks} marks, scrolled to {scrolled}px in {jump_ms:.0f} ms); prompt "
                      f"files loaded so far: {files}")
            print(f"open one {length // 1024}K-token prompt: median {statistics.median(opens):.0f}"
                  f" ms, max {max(opens):.0f} ms; jump to its needle: median "
                  f"{statistics.median(jumps):.0f} ms")
        finally:
            drv.quit()


if __name__ == "__main__":
    main()
