"""text-generation-inference's native API, as TGI 1.1 deployments serve it.

POST /generate {"inputs", "parameters": {max_new_tokens, do_sample/temperature, stop,
details, decoder_input_details}}, or with option stream: true POST /generate_stream, whose
server-sent events carry one token each and, last, the generated_text. GET /info gives
max_input_length and max_total_tokens (the context window). Errors come back as
{"error", "error_type"} with 422 (validation: not retried), 424 (generation: not retried),
429 (overloaded: retried) and 5xx (retried); in a stream, as an event of that shape.

Token counts: the local counter named by option tokenizer (TGI 1.1 has no tokenize
route), or POST /tokenize where the server has it. Loglikelihood reads the prompt's
logprobs out of decoder_input_details.

The payload and answer functions here are shared with the sagemaker backend.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from evalkit.backends import register_backend
from evalkit.backends.counting import PromptCounter, server_tokenize
from evalkit.backends.http import HTTP_OPTIONS, HttpClient, HttpError, checked_options
from evalkit.redact import redact
from evalkit.templates import chat_template_source
from evalkit.types import (
    Backend,
    Capabilities,
    EvalkitError,
    Request,
    Response,
    TokenCounter,
    Unsupported,
)

OPTIONS: dict[str, type] = {**HTTP_OPTIONS, "tokenizer": str, "context_window": int,
                            "stream": bool, "chat_template": str}
_RETRYABLE_STREAM_ERRORS = {"overloaded", "incomplete_generation"}
MAX_STREAM_EVENTS = 1_000_000  # far above any max_new_tokens: a guard, not a limit


def generate_payload(prompt: str, req: Request) -> dict[str, Any]:
    """The /generate body. TGI refuses temperature 0: greedy is do_sample false."""
    params: dict[str, Any] = {"max_new_tokens": req.max_new_tokens, "details": True,
                              "decoder_input_details": False}
    if req.temperature > 0:
        params.update(do_sample=True, temperature=req.temperature, seed=req.seed)
    else:
        params["do_sample"] = False
    if req.stop:
        params["stop"] = list(req.stop)
    return {"inputs": prompt, "parameters": params}


def loglikelihood_payload(text: str) -> dict[str, Any]:
    """Score `text`: decoder_input_details returns the logprob of every input token."""
    return {"inputs": text, "parameters": {"max_new_tokens": 1, "do_sample": False,
                                           "details": True, "decoder_input_details": True}}


def _single(data: Any) -> Mapping[str, Any]:
    # /generate answers an object; SageMaker's /invocations (TGI's compat route) a list of one.
    item = data[0] if isinstance(data, list) and data else data
    if not isinstance(item, Mapping):
        raise ValueError(f"expected a generation object, got {type(item).__name__}")
    return item


def parse_generated(data: Any) -> tuple[str, int | None, int | None]:
    """(generated_text, generated tokens, prompt tokens) of a /generate answer."""
    item = _single(data)
    details = item.get("details") or {}
    prefill = details.get("prefill") or None
    return str(item["generated_text"]), details.get("generated_tokens"), (
        len(prefill) if prefill else None)


def parse_prefill(data: Any, n_cont: int) -> tuple[float, int]:
    """(log P(continuation), prompt tokens) from decoder_input_details: the continuation is
    the last n_cont prefill tokens. Raises Unsupported when the server sent no prefill."""
    prefill = (_single(data).get("details") or {}).get("prefill")
    if not prefill:
        raise Unsupported("the server returned no decoder_input_details (prefill logprobs): "
                          "it cannot score loglikelihood")
    logprobs = [tok.get("logprob") for tok in prefill][-n_cont:] if n_cont > 0 else []
    if n_cont < 1 or len(logprobs) < n_cont or any(x is None for x in logprobs):
        raise ValueError(f"cannot place a {n_cont}-token continuation in {len(prefill)} "
                         "prefill tokens")
    return float(sum(logprobs)), len(prefill)


def scored_text(req: Request, server_text: str, where: str) -> tuple[str, int]:
    """(the text to send, the number of its last tokens to score) of a loglikelihood
    request the Model prepared. TGI takes text prompts only: a request of token ids alone
    (no texts) is refused."""
    if req.context_tokens is None or req.continuation_tokens is None:
        raise EvalkitError("loglikelihood requests come through evalkit.model.Model, which "
                           "fills in their tokens")
    if not (req.prompt or req.continuation):
        raise Unsupported(f"{where} takes text prompts only: scoring token ids needs the hf, "
                          "vllm or llamacpp backend, or openai on vLLM or llama.cpp's server")
    return server_text, len(req.continuation_tokens)


def prefill_response(data: Any, n_cont: int, start: float, source: str) -> Response:
    """The Response of a loglikelihood request from a TGI answer (TGI or SageMaker)."""
    try:
        logprob, n_in = parse_prefill(data, n_cont)
    except (KeyError, ValueError, TypeError) as exc:
        return Response(error=f"unexpected answer from {source}: {exc}",
                        latency_s=time.perf_counter() - start)
    return Response(logprob=logprob, input_tokens=n_in, output_tokens=0,
                    latency_s=time.perf_counter() - start)


def stream_event(line: str) -> dict[str, Any] | None:
    """One SSE line -> its JSON event (None for blank lines, comments, keep-alives)."""
    if not line.startswith("data:"):
        return None
    payload = line[len("data:"):].strip()
    if not payload:
        return None
    event = json.loads(payload)
    if "error" in event:
        kind = event.get("error_type") or "unknown"
        raise HttpError(f"stream error ({kind}): {event['error']}",
                        retryable=kind in _RETRYABLE_STREAM_ERRORS)
    return dict(event)


async def _read_with_headers(resp: Any) -> tuple[Any, Mapping[str, str]]:
    await resp.aread()
    try:
        return resp.json(), resp.headers
    except ValueError:
        raise HttpError(f"the server answered {resp.status_code} with a body that is not "
                        "JSON") from None


async def _read_stream(resp: Any) -> tuple[str, int | None, None]:
    """The text assembled from the token events (special tokens left out); where the final
    event carries generated_text (TGI decodes it from all tokens at once), that wins."""
    pieces: list[str] = []
    n_events = 0
    async for line in resp.aiter_lines():
        event = stream_event(line)
        if event is None:
            continue
        n_events += 1
        if n_events > MAX_STREAM_EVENTS:
            raise HttpError("the stream did not end", retryable=False)
        token = event.get("token") or {}
        if not token.get("special"):
            pieces.append(str(token.get("text", "")))
        if event.get("generated_text") is not None or event.get("details") is not None:
            final = event.get("generated_text")
            details = event.get("details") or {}
            return (str(final) if final is not None else "".join(pieces),
                    details.get("generated_tokens", n_events), None)
    raise HttpError("the stream ended before its final event", retryable=True)


class TgiBackend:
    name = "tgi"

    def __init__(self, model: str, options: Mapping[str, Any]) -> None:
        self.options = checked_options(self.name, options, OPTIONS)
        if "base_url" not in self.options:
            raise EvalkitError("backend tgi needs option base_url, e.g. http://127.0.0.1:8080")
        self.model = model
        self._http = HttpClient(self.name, self.options["base_url"], self.options)
        self.max_batch_size = self._http.concurrency
        self._fixed, self._jinja = chat_template_source(self.options.get("chat_template"))
        self._counter: PromptCounter | None = None
        self._info: dict[str, Any] | None = None

    def capabilities(self) -> Capabilities:
        return Capabilities(generate=True, loglikelihood=True, chat=self._jinja is not None,
                            remote=True)

    def _prompt_counter(self) -> PromptCounter:
        if self._counter is None:
            local = self.options.get("tokenizer")
            self._counter = PromptCounter.from_local(local) if local else self._server_counter()
        return self._counter

    def _server_counter(self) -> PromptCounter:
        where = self._http.where
        try:
            self._http.post_json("/tokenize", {"inputs": "Hello world"},
                                 label="tokenize probe", metadata=True)
        except HttpError as exc:
            if exc.status is None or exc.status >= 500:
                raise EvalkitError(f"tgi backend: the tokenize probe failed: {exc.message}: "
                                   "check base_url and that the server is up") from None
            if exc.status in (401, 403):
                raise EvalkitError(f"tgi backend: {where} refused the request "
                                   f"({exc.message}): check api_key_env") from None
            raise EvalkitError(f"tgi backend: {where} has no /tokenize (TGI 1.1): set "
                               "backend option tokenizer, e.g. mistral-v1") from None
        return PromptCounter.from_server("tgi-server", server_tokenize(
            self._http, "/tokenize", lambda text: {"inputs": text},
            lambda answer: [int(tok["id"]) for tok in answer]))

    def tokenizer(self) -> TokenCounter:
        return self._prompt_counter()

    def info(self) -> dict[str, Any]:
        """GET /info, once (empty if the server has none)."""
        if self._info is None:
            try:
                self._info = dict(self._http.get_json("/info"))
            except (HttpError, TypeError, ValueError):
                self._info = {}
        return self._info

    def context_window(self) -> int | None:
        if "context_window" in self.options:
            return int(self.options["context_window"])
        total = self.info().get("max_total_tokens")
        return int(total) if total else None

    def chat_template(self) -> str | None:
        return self._jinja

    def special_tokens(self) -> Mapping[str, str]:
        return {"bos_token": self._prompt_counter().bos_text or "", "eos_token": ""}

    async def _generate_one(self, req: Request, counter: PromptCounter,
                            n_counted: int | None) -> Response:
        start = time.perf_counter()
        payload = generate_payload(counter.server_text(req.prompt), req)
        try:
            if self.options.get("stream"):
                text, n_out, n_in = await self._http.call("POST", "/generate_stream", payload,
                                                          read=_read_stream,
                                                          time_left_s=req.time_left_s)
            else:
                data, headers = await self._http.call("POST", "/generate", payload,
                                                      read=_read_with_headers,
                                                      time_left_s=req.time_left_s)
                text, n_out, n_in = parse_generated(data)
                n_in = n_in or int(headers.get("x-prompt-tokens", 0)) or None
        except HttpError as exc:
            return exc.response(start)
        except (KeyError, ValueError, TypeError) as exc:
            return Response(error=f"unexpected answer from TGI: {type(exc).__name__}: {exc}",
                            latency_s=time.perf_counter() - start)
        return Response(text=text, input_tokens=n_in or n_counted, output_tokens=n_out,
                        latency_s=time.perf_counter() - start)

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        counter = self._prompt_counter()
        # Counted here, not on the client's loop; cached from planning, so it costs nothing.
        # Only a fallback for servers that report no prompt tokens: a server gone since
        # planning fails the requests themselves, each recorded with its error.
        try:
            counted: list[int | None] = [len(counter.encode(r.prompt)) for r in requests]
        except EvalkitError:
            counted = [None] * len(requests)
        return self._http.run_all([self._generate_one(r, counter, n)
                                   for r, n in zip(requests, counted, strict=True)])

    async def _loglikelihood_one(self, req: Request, text: str, n_cont: int) -> Response:
        start = time.perf_counter()
        try:
            data: Any = await self._http.call("POST", "/generate", loglikelihood_payload(text),
                                              time_left_s=req.time_left_s)
        except HttpError as exc:
            return exc.response(start)
        return prefill_response(data, n_cont, start, "TGI")

    def loglikelihood(self, requests: Sequence[Request]) -> list[Response]:
        counter = self._prompt_counter()
        scored = [scored_text(r, counter.server_text(r.prompt + r.continuation), self._http.where)
                  for r in requests]
        return self._http.run_all([self._loglikelihood_one(r, text, n)
                                   for r, (text, n) in zip(requests, scored, strict=True)])

    def fingerprint(self) -> str:
        info = self.info()
        ident = [self.model, info.get("model_id"), info.get("model_sha"),
                 self.options.get("chat_template"), self._jinja]
        return "tgi:" + hashlib.sha256(repr(ident).encode()).hexdigest()[:16]

    def describe(self) -> Mapping[str, Any]:
        info = self.info()
        return {"backend": self.name, "model": self.model, "model_id": info.get("model_id"),
                "model_sha": info.get("model_sha"), "tgi_version": info.get("version"),
                "max_input_length": info.get("max_input_length"),
                "context_window": self.context_window(),
                "options": redact(dict(self.options))}  # no password in base_url


@register_backend("tgi")
def _make(model: str, options: Mapping[str, Any]) -> Backend:
    return TgiBackend(model, options)
