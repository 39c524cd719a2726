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
from dataclasses import replace
from typing import Any

from evalkit.backends.counting import PromptCounter, server_tokenize
from evalkit.backends.http import (
    HTTP_OPTIONS,
    BodyLimit,
    CappedLines,
    HttpClient,
    HttpError,
    checked_options,
    excerpt,
    read_json,
)
from evalkit.backends.identity import IDENTITY_OPTIONS, server_identity
from evalkit.prompts.templates import chat_template_source
from evalkit.redact import redact
from evalkit.types import (
    Capabilities,
    EvalkitError,
    Request,
    Response,
    TokenCounter,
    Unsupported,
)

OPTIONS: dict[str, type] = {**HTTP_OPTIONS, "tokenizer": str, "context_window": int,
                            "stream": bool, "chat_template": str, **IDENTITY_OPTIONS}
# /info's fields that tell one deployment from another (not its load settings)
_INFO_IDENTITY = ("model_id", "model_sha", "model_dtype", "model_device_type",
                  "model_pipeline_tag", "version", "sha", "docker_label")
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
    """The Response of a loglikelihood request from a TGI answer (TGI or SageMaker); its
    error, if any, is not yet redacted."""
    try:
        logprob, n_in = parse_prefill(data, n_cont)
    except (KeyError, ValueError, TypeError) as exc:
        return Response(error=f"unexpected answer from {source}: {exc} (body: {excerpt(data)})",
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


async def _read_with_headers(resp: Any, limit: BodyLimit) -> tuple[Any, Mapping[str, str]]:
    return await read_json(resp, limit), resp.headers


async def _read_stream(resp: Any, limit: BodyLimit) -> tuple[str, int | None, bool]:
    """(text, generated tokens, whether it was cut): the text assembled from the token
    events (special tokens left out); where the final event carries generated_text (TGI
    decodes it from all tokens at once), that wins. A stream that passes the limit (its
    bytes, or its text's characters: a server that ignores max_new_tokens) is read no
    further, and its text so far is the answer, cut."""
    pieces: list[str] = []
    n_chars = n_events = 0
    reader = CappedLines(resp, limit.max_bytes)
    async for line in reader.lines():
        event = stream_event(line)
        if event is None:
            continue
        n_events += 1
        if n_events > MAX_STREAM_EVENTS:
            raise HttpError("the stream did not end", retryable=False)
        token = event.get("token") or {}
        if not token.get("special"):
            pieces.append(str(token.get("text", "")))
            n_chars += len(pieces[-1])
        if event.get("generated_text") is not None or event.get("details") is not None:
            final = event.get("generated_text")
            details = event.get("details") or {}
            text, cut = limit.cut_text(str(final) if final is not None else "".join(pieces))
            return text, details.get("generated_tokens", n_events), cut
        if limit.max_chars is not None and n_chars > limit.max_chars:
            return limit.cut_text("".join(pieces))[0], n_events, True
    if reader.cut:
        if not n_events:  # nothing of it can be read: the same as a JSON body too large
            raise limit.too_large(reader.head)
        return limit.cut_text("".join(pieces))[0], n_events, True
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
        limit = BodyLimit.generation(req.max_new_tokens)
        data: Any = None
        n_in: int | None = None
        try:
            if self.options.get("stream"):
                text, n_out, cut = await self._http.call(
                    "POST", "/generate_stream", payload, read=_read_stream,
                    time_left_s=req.time_left_s, limit=limit)
            else:
                data, headers = await self._http.call("POST", "/generate", payload,
                                                      read=_read_with_headers,
                                                      time_left_s=req.time_left_s, limit=limit)
                text, n_out, n_in = parse_generated(data)
                text, cut = limit.cut_text(text)  # a server that ignored max_new_tokens
                n_in = n_in or int(headers.get("x-prompt-tokens", 0)) or None
        except HttpError as exc:
            return exc.response(start)
        except (KeyError, ValueError, TypeError) as exc:
            body = f" (body: {excerpt(data)})" if data is not None else ""
            return Response(error=self._http.redact(f"unexpected answer from TGI: "
                                                    f"{type(exc).__name__}: {exc}{body}"),
                            latency_s=time.perf_counter() - start)
        return Response(text=text, input_tokens=n_in or n_counted, output_tokens=n_out,
                        truncated=cut, latency_s=time.perf_counter() - start)

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
        # the prefill holds a logprob and the text of each prompt token
        limit = BodyLimit.prompt(len(req.context_tokens or ()) + n_cont, len(text))
        try:
            data: Any = await self._http.call("POST", "/generate", loglikelihood_payload(text),
                                              time_left_s=req.time_left_s, limit=limit)
        except HttpError as exc:
            return exc.response(start)
        resp = prefill_response(data, n_cont, start, "TGI")
        return resp if resp.error is None else replace(resp, error=self._http.redact(resp.error))

    def loglikelihood(self, requests: Sequence[Request]) -> list[Response]:
        counter = self._prompt_counter()
        scored = [scored_text(r, counter.server_text(r.prompt + r.continuation), self._http.where)
                  for r in requests]
        return self._http.run_all([self._loglikelihood_one(r, text, n)
                                   for r, (text, n) in zip(requests, scored, strict=True)])

    def fingerprint(self) -> str:
        def about() -> dict[str, Any]:
            return {k: self.info()[k] for k in _INFO_IDENTITY if k in self.info()}

        ident = [self.model, self.options.get("chat_template"), self._jinja,
                 server_identity(self.options, about)]
        return "tgi:" + hashlib.sha256(repr(ident).encode()).hexdigest()[:16]

    def describe(self) -> Mapping[str, Any]:
        info = self.info()
        return {"backend": self.name, "model": self.model, "model_id": info.get("model_id"),
                "model_sha": info.get("model_sha"), "tgi_version": info.get("version"),
                "max_input_length": info.get("max_input_length"),
                "context_window": self.context_window(),
                "options": redact(dict(self.options))}  # no password in base_url
