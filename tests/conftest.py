"""Shared fixtures. Tests run offline; engine tests (marked `engine`) use the embedded
tiny models and run in CI too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evalkit.prompts.counters import WhitespaceCounter
from evalkit.tasks import Plan

ROOT = Path(__file__).resolve().parents[1]


def reference_data(*parts: str) -> Path:
    """Published reference data (LongEval rows) beside the checkout, for integration tests.
    Users who clone the project alone skip these; in CI they must be there."""
    base = Path(os.environ.get("EVALKIT_REFERENCE_DATA", ROOT.parent / "shared" / "data"))
    path = base.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"reference data {path} is missing in CI")
        pytest.skip(f"reference data {path} not present (set EVALKIT_REFERENCE_DATA)")
    return path


def whitespace_plan(task: str, lengths: tuple[int, ...] = (500,), samples: int = 2,
                    template: str = "raw", seed: int = 0, max_new_tokens: int = 10) -> Plan:
    counter = WhitespaceCounter()
    return Plan(task=task, lengths=lengths, samples=samples, seed=seed, template=template,
                max_new_tokens=max_new_tokens, measure=lambda t: len(counter.encode(t)))


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def response_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own response cache (also for the `evalkit` subprocesses it starts):
    answers cached by one test must not answer another's prompts, nor land in ~/.cache."""
    folder = tmp_path_factory.mktemp("response-cache")
    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def aws_test_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Made-up AWS credentials in the standard chain's first place, and no instance
    metadata: the sagemaker tests stub every call, and nothing may go out."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEVALKITTEST00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "evalkit-test-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
