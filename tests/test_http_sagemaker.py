"""The sagemaker backend with botocore's Stubber: the exact invoke_endpoint request and
response shapes, errors, retries; no network and no real credentials."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import require

require("boto3", "'evalkit[sagemaker]'")

import boto3  # noqa: E402
from botocore.response import StreamingBody  # noqa: E402
from botocore.stub import ANY, Stubber  # noqa: E402

from evalkit.backends import make_backend  # noqa: E402
from evalkit.backends.tgi import generate_payload  # noqa: E402
from evalkit.model import make_model  # noqa: E402
from evalkit.runner.config import build_spec  # noqa: E402
from evalkit.runner.execute import run  # noqa: E402
from evalkit.types import EvalkitError, Request  # noqa: E402

ENDPOINT = "tgi-mistral-7b"
OPTIONS = {"endpoint_name": ENDPOINT, "region": "eu-west-1", "tokenizer": "whitespace",
           "concurrency": 1, "backoff_s": 0.01, "max_retries": 2}
PROMPT = "The pass key is 4242. Remember it. What is the pass key?"


@pytest.fixture(autouse=True)
def fake_credentials(aws_test_credentials: None) -> None:
    """Every test here: made-up credentials (conftest.aws_test_credentials)."""


@pytest.fixture
def stubbed() -> Iterator[tuple[Any, Stubber]]:
    """The backend inside a Model, which retries (no response cache), and its stub."""
    model = make_model("sagemaker", "mistral-7b", OPTIONS, use_cache=False)
    with Stubber(model.backend.client) as stub:
        yield model, stub
        stub.assert_no_pending_responses()


def _ok(answer: Any) -> dict[str, Any]:
    raw = json.dumps(answer).encode()
    return {"Body": StreamingBody(io.BytesIO(raw), len(raw)), "ContentType": "application/json",
            "InvokedProductionVariant": "AllTraffic"}


def _expected(payload: Any) -> dict[str, Any]:
    return {"EndpointName": ENDPOINT, "ContentType": "application/json",
            "Accept": "application/json", "Body": json.dumps(payload).encode("utf-8")}


def _req(**kw: Any) -> Request:
    return Request(sample_id="s", kind="generate", prompt=PROMPT, max_new_tokens=10, **kw)


def test_generate_sends_the_tgi_payload_and_reads_the_containers_list(stubbed: Any) -> None:
    backend, stub = stubbed
    payload = {"inputs": PROMPT, "parameters": {"max_new_tokens": 10, "details": True,
                                                "decoder_input_details": False,
                                                "do_sample": False}}
    assert generate_payload(PROMPT, _req()) == payload
    stub.add_response("invoke_endpoint", _ok([{"generated_text": " 4242.", "details": {
        "finish_reason": "eos_token", "generated_tokens": 3, "seed": None, "prefill": [],
        "tokens": []}}]), _expected(payload))
    [resp] = backend.generate([_req()])
    assert resp.error is None and resp.text == " 4242." and resp.output_tokens == 3
    assert resp.input_tokens == len(PROMPT.split()) + 1


def test_throttling_is_retried_and_a_model_error_is_not(stubbed: Any) -> None:
    backend, stub = stubbed
    stub.add_client_error("invoke_endpoint", "ThrottlingException", "Rate exceeded", 400)
    stub.add_client_error("invoke_endpoint", "ModelError", "Received server error (503)", 424,
                          modeled_fields={"OriginalStatusCode": 503,
                                          "OriginalMessage": "overloaded"})
    stub.add_response("invoke_endpoint", _ok([{"generated_text": " 4242."}]), ANY_PARAMS)
    [ok] = backend.generate([_req()])
    assert ok.error is None and ok.text == " 4242."
    stub.add_client_error("invoke_endpoint", "ModelError", "Received client error (422) from "
                          "primary with message \"Input validation error\"", 424,
                          modeled_fields={"OriginalStatusCode": 422,
                                          "OriginalMessage": "Input validation error"})
    [failed] = backend.generate([_req()])
    assert failed.error is not None
    assert "ModelError" in failed.error and "container said 422" in failed.error


def test_retries_are_bounded(stubbed: Any) -> None:
    backend, stub = stubbed
    for _ in range(3):  # max_retries 2: three attempts in all
        stub.add_client_error("invoke_endpoint", "ServiceUnavailable", "down", 503)
    [resp] = backend.generate([_req()])
    assert resp.error is not None
    assert "ServiceUnavailable (HTTP 503" in resp.error and "gave up after 3 attempts" in resp.error


def test_loglikelihood_reads_the_prefill(stubbed: Any) -> None:
    backend, stub = stubbed
    text = "The capital of France is Paris"
    payload = {"inputs": text, "parameters": {"max_new_tokens": 1, "do_sample": False,
                                              "details": True, "decoder_input_details": True}}
    prefill = [{"id": 1, "text": "<s>", "logprob": None}] + [
        {"id": 10 + i, "text": w, "logprob": -0.25 * (i + 1)} for i, w in enumerate(text.split())]
    stub.add_response("invoke_endpoint", _ok([{"generated_text": ".", "details": {
        "finish_reason": "length", "generated_tokens": 1, "seed": None, "prefill": prefill,
        "tokens": []}}]), _expected(payload))
    [ans] = backend.loglikelihood([Request(sample_id="x", kind="loglikelihood",
                                           prompt="The capital of France is",
                                           max_new_tokens=0, continuation=" Paris")])
    assert ans.error is None and ans.logprob == pytest.approx(-0.25 * 6)
    assert ans.input_tokens == 7


def test_a_run_through_the_runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    client = boto3.client("sagemaker-runtime", region_name="eu-west-1")
    stub = Stubber(client)
    for _ in range(3):
        stub.add_response("invoke_endpoint", _ok([{"generated_text": " 1."}]), ANY_PARAMS)
    stub.activate()
    real_client = boto3.session.Session.client
    monkeypatch.setattr(boto3.session.Session, "client", lambda self, *a, **kw: client if a[:1]
                        == ("sagemaker-runtime",) else real_client(self, *a, **kw))
    spec = build_spec({"model": "mistral-7b", "backend": "sagemaker", "backend_options":
                       {**OPTIONS, "context_window": 4096}, "lengths": [300], "samples": 3,
                       "tasks": ["passkey"]})
    result = run(spec, out=tmp_path / "sm", progress=False, log=lambda m: None)
    stub.assert_no_pending_responses()
    assert result.summary.n_done == 3 and result.summary.status == "complete"


def test_credentials_come_only_from_the_aws_chain(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    with pytest.raises(EvalkitError, match="unknown option 'aws_secret_access_key'"):
        make_backend("sagemaker", "m", {**OPTIONS, "aws_secret_access_key": "x"})
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    backend = make_backend("sagemaker", "m", OPTIONS)
    with pytest.raises(EvalkitError, match="credentials"):
        backend.generate([_req()])


ANY_PARAMS = {"EndpointName": ENDPOINT, "ContentType": "application/json",
              "Accept": "application/json", "Body": ANY}


def test_the_variant_answers_and_names_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """target_variant / inference_component route the request (invoke_endpoint's
    TargetVariant / InferenceComponentName) and, with deployment, key the cache: another
    variant of the endpoint never answers from the first one's cached answers."""
    model = make_model("sagemaker", "mistral-7b", {**OPTIONS, "target_variant": "fp8"},
                       use_cache=False)
    payload = generate_payload(PROMPT, _req())
    with Stubber(model.backend.client) as stub:
        stub.add_response("invoke_endpoint", _ok([{"generated_text": " 4242."}]),
                          {**_expected(payload), "TargetVariant": "fp8"})
        [resp] = model.generate([_req()])
        stub.assert_no_pending_responses()
    assert resp.text == " 4242."
    prints = {make_backend("sagemaker", "mistral-7b", {**OPTIONS, **extra}).fingerprint()
              for extra in ({}, {"target_variant": "fp8"}, {"inference_component": "ic-2"},
                            {"deployment": "2026-12-01"})}
    assert len(prints) == 4

