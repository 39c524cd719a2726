"""An Amazon SageMaker endpoint serving TGI (the Hugging Face LLM container), through
sagemaker-runtime invoke_endpoint with TGI's /generate payload (ContentType
application/json); the container answers [{"generated_text", "details"}].

Options: endpoint_name and region (required), tokenizer (required: an endpoint has no
tokenize route; e.g. mistral-v1), context_window, concurrency, connect_timeout_s,
timeout_s, total_timeout_s, max_retries, backoff_s, chat_template; target_variant and
inference_component (which of the endpoint's models answers: invoke_endpoint's
TargetVariant and InferenceComponentName); deployment (a label in the cache key: change
it when the endpoint is updated with another model under the same name, which the
runtime API cannot see). Credentials come only
from AWS's standard chain (environment, ~/.aws, instance or task role), never from options.
botocore's own retries are off: each call is one attempt, and a failure says as data
whether it is worth another (throttling, 5xx, a model error whose container answered
429/5xx, connection errors and timeouts), so that the Model's one retry policy applies as
for the HTTP backends (evalkit.model: a retry notice per retry on stderr, an endpoint
that keeps failing stops the run's traffic; the timeouts' trade-off: evalkit/backends/http.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from evalkit.backends.counting import PromptCounter
from evalkit.backends.http import (
    DEFAULT_CONCURRENCY,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    RETRY_OPTIONS,
    BodyLimit,
    checked_options,
    error_detail,
    excerpt,
    retryable_status,
)
from evalkit.backends.tgi import (
    generate_payload,
    loglikelihood_payload,
    parse_generated,
    prefill_response,
    scored_text,
)
from evalkit.prompts.templates import chat_template_source
from evalkit.types import (
    Capabilities,
    EvalkitError,
    Interrupted,
    Request,
    Response,
    TokenCounter,
)

OPTIONS: dict[str, type] = {**RETRY_OPTIONS, "endpoint_name": str, "region": str,
                            "tokenizer": str, "context_window": int, "chat_template": str,
                            "target_variant": str, "inference_component": str,
                            "deployment": str}
# invoke_endpoint's routing parameters, by the option that sets them: which model of the
# endpoint answers (a production variant, an inference component)
_ROUTING = {"target_variant": "TargetVariant", "inference_component": "InferenceComponentName"}
_RETRYABLE_CODES = {"ThrottlingException", "Throttling", "ServiceUnavailable",
                    "InternalFailure", "ModelNotReadyException", "InternalDependencyException"}


def _import_boto() -> tuple[Any, Any, Any]:
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise EvalkitError("the sagemaker backend needs boto3: "
                           "pip install 'evalkit[sagemaker]'") from None
    return boto3, botocore.config, botocore.exceptions


class _Failed(Exception):
    def __init__(self, message: str, retryable: bool, truncated: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.truncated = truncated

    def response(self, start: float) -> Response:
        return Response(error=self.message, retryable=self.retryable, truncated=self.truncated,
                        latency_s=time.perf_counter() - start)


class SageMakerBackend:
    name = "sagemaker"

    def __init__(self, model: str, options: Mapping[str, Any]) -> None:
        self.options = checked_options(self.name, options, OPTIONS)
        for key in ("endpoint_name", "region", "tokenizer"):
            if key not in self.options:
                raise EvalkitError(f"backend sagemaker needs option {key}"
                                   + (" (e.g. mistral-v1: an endpoint cannot tokenize)"
                                      if key == "tokenizer" else ""))
        boto3, config, self._errors = _import_boto()
        self.model = model
        self.max_batch_size = int(self.options.get("concurrency", DEFAULT_CONCURRENCY))
        timeout_s = float(self.options.get("timeout_s", DEFAULT_TIMEOUT_S))
        connect_s = float(self.options.get("connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S))
        # A session of its own, so that the standard chain is read now, not cached from
        # an earlier client; credentials never come from options.
        self.client = boto3.session.Session().client(
            "sagemaker-runtime", region_name=self.options["region"],
            config=config.Config(read_timeout=timeout_s, connect_timeout=connect_s,
                                 retries={"total_max_attempts": 1},
                                 max_pool_connections=self.max_batch_size))
        self.where = f"endpoint {self.options['endpoint_name']} ({self.options['region']})"
        self._counter = PromptCounter.from_local(self.options["tokenizer"])
        self._fixed, self._jinja = chat_template_source(self.options.get("chat_template"))

    def capabilities(self) -> Capabilities:
        return Capabilities(generate=True, loglikelihood=True, chat=self._jinja is not None,
                            remote=True)

    def tokenizer(self) -> TokenCounter:
        return self._counter

    def context_window(self) -> int | None:
        window = self.options.get("context_window")
        return int(window) if window else None

    def chat_template(self) -> str | None:
        return self._jinja

    def special_tokens(self) -> Mapping[str, str]:
        return {"bos_token": self._counter.bos_text or "", "eos_token": ""}

    def _invoke(self, payload: Mapping[str, Any], limit: BodyLimit) -> Any:
        """One invoke_endpoint, reading at most `limit` of the answer (see
        evalkit/backends/http.py); a failure is _Failed naming the endpoint, retryable or not."""
        err = self._errors
        try:
            out = self.client.invoke_endpoint(
                EndpointName=self.options["endpoint_name"], ContentType="application/json",
                Accept="application/json", Body=json.dumps(payload).encode("utf-8"),
                **{param: self.options[k] for k, param in _ROUTING.items()
                   if k in self.options})
            body = out["Body"]
            try:
                raw = body.read(limit.max_bytes + 1)
            finally:
                body.close()  # the rest, if any, unread
            if len(raw) > limit.max_bytes:
                too_large = limit.too_large(raw)
                raise _Failed(f"{self.where}: {too_large.message}", False, truncated=True)
            try:
                return json.loads(raw)
            except ValueError:
                raise _Failed(f"{self.where}: the answer is not JSON (it starts "
                              f"{excerpt(raw)})", False) from None
        except err.ClientError as exc:
            info = exc.response.get("Error", {})
            code = str(info.get("Code", "?"))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            original = exc.response.get("OriginalStatusCode")
            retry = (code in _RETRYABLE_CODES or retryable_status(status)
                     or (original is not None and retryable_status(int(original))))
            where = f", container said {original}" if original is not None else ""
            raise _Failed(f"{self.where}: {code} (HTTP {status}{where}): "
                          f"{error_detail(None, str(info.get('Message', '')))}", retry) from None
        except (err.NoCredentialsError, err.PartialCredentialsError) as exc:
            raise EvalkitError(f"sagemaker: {exc}: configure AWS credentials the standard "
                               "way (environment, ~/.aws, or an instance role)") from None
        except (err.ConnectionError, err.HTTPClientError) as exc:  # incl. timeouts
            raise _Failed(f"{self.where}: connection failed ({type(exc).__name__}: {exc})",
                          True) from None

    def _generate_one(self, req: Request) -> Response:
        start = time.perf_counter()
        limit = BodyLimit.generation(req.max_new_tokens)
        data: Any = None
        try:
            data = self._invoke(generate_payload(self._counter.server_text(req.prompt), req),
                                limit)
            text, n_out, n_in = parse_generated(data)
        except _Failed as exc:
            return exc.response(start)
        except (KeyError, ValueError, TypeError) as exc:
            return Response(error=f"unexpected answer from the endpoint: {type(exc).__name__}: "
                                  f"{exc} (body: {excerpt(data)})",
                            latency_s=time.perf_counter() - start)
        text, cut = limit.cut_text(text)  # a container that ignored max_new_tokens
        return Response(text=text, input_tokens=n_in or len(self._counter.encode(req.prompt)),
                        output_tokens=n_out, truncated=cut,
                        latency_s=time.perf_counter() - start)

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Response]:
        """fn over the items, `concurrency` at a time; interrupted (Ctrl-C, SIGTERM), the
        answers that had arrived go up with the Interrupted, the rest are not waited for."""
        if len(items) <= 1:
            return [fn(x) for x in items]
        pool = ThreadPoolExecutor(max_workers=min(self.max_batch_size, len(items)))
        futures = [pool.submit(fn, x) for x in items]
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt as exc:
            arrived = {i: f.result() for i, f in enumerate(futures)
                       if f.done() and not f.cancelled() and f.exception() is None}
            raise Interrupted.of(exc, arrived) from None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        return self._map(self._generate_one, requests)

    def _loglikelihood_one(self, req: Request) -> Response:
        start = time.perf_counter()
        text, n_cont = scored_text(req, self._counter.server_text(req.prompt + req.continuation),
                                   self.where)
        limit = BodyLimit.prompt(len(req.context_tokens or ()) + n_cont, len(text))
        try:
            data = self._invoke(loglikelihood_payload(text), limit)
        except _Failed as exc:
            return exc.response(start)
        return prefill_response(data, n_cont, start, "the endpoint")

    def loglikelihood(self, requests: Sequence[Request]) -> list[Response]:
        return self._map(self._loglikelihood_one, requests)

    def fingerprint(self) -> str:
        ident = [self.model, self.options["endpoint_name"], self.options["region"],
                 self.options.get("target_variant"), self.options.get("inference_component"),
                 self.options.get("deployment"), self.options.get("chat_template"), self._jinja]
        return "sagemaker:" + hashlib.sha256(repr(ident).encode()).hexdigest()[:16]

    def describe(self) -> Mapping[str, Any]:
        return {"backend": self.name, "model": self.model, "context_window":
                self.context_window(), "options": dict(self.options)}
