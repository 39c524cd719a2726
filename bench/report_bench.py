"""Report build time, page weight and filtering speed at 10,000 samples.

Makes a 10,000-sample run on the scripted backend (no model: the report is what is
measured), builds its HTML report, then drives the page in headless Chromium and times
the sample browser's filtering. Prints figures; asserts nothing.

    python bench/report_bench.py [--samples 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from evalkit.report.html import build_report
from evalkit.runner.config import build_spec
from evalkit.runner.execute import run


def make_run(root: Path, n: int) -> Path:
    # 4 tasks x 5 lengths x (n / 20) samples, answered by the scripted backend
    per_cell = max(1, n // 20)
    spec = build_spec({
        "name": "bench", "model": "scripted", "backend": "scripted",
        "backend_options": {"reply": "lookup"}, "samples": per_cell,
        "lengths": [600, 1000, 1500, 2000, 3000],
        "tasks": ["passkey", "lines", {"topics": {}}, "longqa"],
    })
    return run(spec, out=root / "run", progress=False, log=lambda m: None).run_dir


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def filter_times(page: Path, repeats: int) -> list[float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-sync"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"),
                           options=opts)
    try:
        t0 = time.perf_counter()
        drv.get(page.as_uri())
        load_s = time.perf_counter() - t0
        print(f"page load (to the first 100 cards): {load_s:.2f} s")
        # one filter change = FormData read, filter over all samples, first page rendered;
        # timed inside the page, synchronously, up to the next layout
        script = """
          const sel = document.querySelector('select[name=' + arguments[0] + ']');
          sel.value = arguments[1];
          const t0 = performance.now();
          sel.dispatchEvent(new Event('change', {bubbles: true}));
          document.body.offsetHeight;
          return [performance.now() - t0, document.getElementById('count').textContent];
        """
        times = []
        for _ in range(repeats):
            for name, value in (("task", "lines"), ("outcome", "correct"), ("task", ""),
                                ("outcome", "")):
                ms, count = drv.execute_script(script, name, value)
                times.append(ms / 1000)
        print(f"last count shown: {count}")
        return times
    finally:
        drv.quit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        run_dir = make_run(root, args.samples)
        print(f"run of {args.samples} scripted samples: {time.perf_counter() - t0:.1f} s")
        builds = []
        for _ in range(3):
            t0 = time.perf_counter()
            page = build_report([run_dir], root / "report")
            builds.append(time.perf_counter() - t0)
        out = root / "report"
        print(f"report build: median {statistics.median(builds):.2f} s of {len(builds)}")
        first_load = (folder_bytes(out / "static") + (out / "index.html").stat().st_size
                      + (out / "samples.js").stat().st_size)
        print(f"page weight at first load (index.html + samples.js + static): "
              f"{first_load / 1e6:.2f} MB")
        print(f"plots: {folder_bytes(out / 'plots') / 1e6:.2f} MB; prompts (loaded on demand): "
              f"{folder_bytes(out / 'prompts') / 1e6:.2f} MB in "
              f"{len(list((out / 'prompts').iterdir()))} files; folder total "
              f"{folder_bytes(out) / 1e6:.2f} MB")
        times = filter_times(page, args.repeats)
        print(f"filter change in Chromium: median {statistics.median(times) * 1000:.0f} ms, "
              f"max {max(times) * 1000:.0f} ms over {len(times)} changes "
              f"(target: under 1000 ms)")


if __name__ == "__main__":
    main()
