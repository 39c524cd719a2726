"""topics with the embedded models' own tokenizers and templates: every fitted case holds at
least three topics from 1K up, and a shorter length is refused before the model runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from servers import require

from evalkit.backends import make_backend
from evalkit.runner.config import build_spec
from evalkit.runner.execute import plan_samples

pytestmark = pytest.mark.engine
require("llama_cpp", "'evalkit[llamacpp]'")


@pytest.mark.parametrize(("model", "lengths"), [
    ("gemma3-270m", ["1k", "2k", "4k", "8k", "16k"]),  # no chat template: raw
    ("smollm2-135m", ["1k", "2k", "4k"]),  # its chat template; 8K context
])
def test_cases_hold_three_topics_from_1k(model: str, lengths: list[str]) -> None:
    backend = make_backend("llamacpp", model, {})
    spec = build_spec({"model": model, "samples": 5, "lengths": lengths, "tasks": ["topics"]})
    samples = plan_samples(spec, backend, backend.tokenizer())
    assert len(samples) == 5 * len(lengths)
    for s in samples:
        assert s.meta["num_topics"] == len(s.meta["topics"]) >= 3
        assert s.input_tokens <= s.target_tokens
        assert f"on {s.meta['num_topics']} different topics" in s.prompt
    assert sum(s.target_tokens == 1024 for s in samples) == 5  # measured: 4 topics each


def test_a_length_too_short_for_three_topics_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "evalkit.cli", "run", "--task", "topics",
                          "--lengths", "512,1k", "--out", str(tmp_path / "x"), "--no-progress"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].endswith("topics: at 512 tokens a case may hold only 1 topic, LongEval's "
                             "task needs at least 3: use lengths of at least 782")
    assert not (tmp_path / "x").exists()
