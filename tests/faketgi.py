"""A stand-in for a TGI 1.1 server, on 127.0.0.1, that follows TGI's documented schemas:

- POST /generate {"inputs", "parameters"} -> {"generated_text", "details": {finish_reason,
  generated_tokens, seed, prefill, tokens}}; prefill is filled only with
  decoder_input_details, as TGI does.
- POST /generate_stream -> server-sent events, chunked: `data:{"token": {id, text, logprob,
  special}, "generated_text": null, "details": null}` per token, and last the event with
  generated_text and details. Errors in a stream are an event {"error", "error_type"}.
- GET /info -> TGI 1.1's Info (max_input_length, max_total_tokens, ...).
- POST /tokenize (TGI >= 1.2; off unless asked) -> [{id, text, start, stop}].
- Errors: {"error": ..., "error_type": ...} with 422 (validation), 424 (generation),
  429 (overloaded), 503.

Its "model" reads text by whitespace (BOS id 1, a leading <s> word is a second BOS, as a
real tokenizer parses it), answers " <key>." when the prompt holds a pass key, and gives
every token the logprob -len(word)/10. `script` queues faults for the generate routes.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

from localserver import LocalServer

GENERATE_PARAMETERS = {"best_of", "temperature", "repetition_penalty", "top_k", "top_p",
                       "typical_p", "do_sample", "max_new_tokens", "return_full_text", "stop",
                       "truncate", "watermark", "details", "decoder_input_details", "seed",
                       "top_n_tokens"}
_PASSKEY = re.compile(r"The pass key is (\d+)")


def word_logprob(word: str) -> float:
    return -len(word) / 10


class FakeTgi(LocalServer):
    def __init__(self, *, tokenize: bool = False, api_key: str | None = None,
                 max_input_length: int = 1024, max_total_tokens: int = 2048,
                 delay_s: float = 0.0, prefill: bool = True, final_text: bool = True) -> None:
        super().__init__()
        self.tokenize = tokenize
        self.api_key = api_key
        self.max_input_length = max_input_length
        self.max_total_tokens = max_total_tokens
        self.delay_s = delay_s
        self.prefill = prefill  # False: a server that ignores decoder_input_details
        self.final_text = final_text  # False: the final event carries no generated_text
        self.script: list[Any] = []  # per generate request, first: a fault (see _fault)
        self.requests: list[tuple[str, Any]] = []
        self.max_inflight = 0
        self._inflight = 0
        self._lock = threading.Lock()

    # -- the model -----------------------------------------------------------------------
    @staticmethod
    def token_ids(text: str) -> list[int]:
        words = text.split()
        return [1] + [1 if w == "<s>" and i == 0 else 100 + len(w) for i, w in enumerate(words)]

    @staticmethod
    def answer(prompt: str) -> str:
        key = _PASSKEY.search(prompt)
        return f" {key.group(1)}." if key else " I do not know."

    def info(self) -> dict[str, Any]:
        return {"model_id": "fake/tgi-whitespace", "model_sha": "0" * 40,
                "model_dtype": "torch.float16", "model_device_type": "cpu",
                "model_pipeline_tag": "text-generation", "max_concurrent_requests": 128,
                "max_best_of": 2, "max_stop_sequences": 4,
                "max_input_length": self.max_input_length,
                "max_total_tokens": self.max_total_tokens, "waiting_served_ratio": 1.2,
                "max_batch_total_tokens": 32000, "max_waiting_tokens": 20,
                "validation_workers": 2, "version": "1.1.0", "sha": None, "docker_label": None}

    # -- HTTP ----------------------------------------------------------------------------
    def error(self, h: BaseHTTPRequestHandler, status: int, message: str, kind: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_json(h, status, {"error": message, "error_type": kind}, headers)

    def get(self, h: BaseHTTPRequestHandler) -> None:
        self.requests.append((h.path, None))
        if h.path == "/info":
            self.send_json(h, 200, self.info())
        else:
            self.send_json(h, 404, {})

    def post(self, h: BaseHTTPRequestHandler, body: Any) -> None:
        self.requests.append((h.path, body))
        auth = h.headers.get("Authorization", "")
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            # a gateway that echoes what it got: the client must redact it
            return self.error(h, 401, f"invalid credentials: {auth!r}", "authentication")
        if h.path == "/tokenize" and self.tokenize:
            ids = self.token_ids(body["inputs"])
            return self.send_json(h, 200, [{"id": i, "text": "", "start": 0, "stop": 0}
                                           for i in ids])
        if h.path not in ("/generate", "/generate_stream"):
            return self.send_json(h, 404, {})
        with self._lock:
            self._inflight += 1
            self.max_inflight = max(self.max_inflight, self._inflight)
            fault = self.script.pop(0) if self.script else None
        try:
            time.sleep(self.delay_s)
            self.generate(h, body, fault, stream=h.path == "/generate_stream")
        finally:
            with self._lock:
                self._inflight -= 1

    def _invalid(self, inputs: str, params: dict[str, Any]) -> str | None:
        """TGI's validation messages, for what our payload could get wrong."""
        unknown = set(params) - GENERATE_PARAMETERS
        if unknown:
            return f"unknown parameters {sorted(unknown)}"
        if "temperature" in params and not params["temperature"] > 0:
            return "`temperature` must be strictly positive"
        if len(params.get("stop", [])) > 4:
            return f"`stop` supports up to 4 stop sequences. Given: {len(params['stop'])}"
        n_in, n_new = len(self.token_ids(inputs)), int(params.get("max_new_tokens", 20))
        if n_in > self.max_input_length:
            return (f"`inputs` must have less than {self.max_input_length} tokens. "
                    f"Given: {n_in}")
        if n_in + n_new > self.max_total_tokens:
            return (f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                    f"Given: {n_in} `inputs` tokens and {n_new} `max_new_tokens`")
        return None

    def generate(self, h: BaseHTTPRequestHandler, body: Any, fault: Any, stream: bool) -> None:
        if isinstance(fault, tuple) and isinstance(fault[0], int):  # (status, kind, headers)
            status, kind, headers = fault
            return self.error(h, status, f"injected {kind} error", kind, headers)
        if fault == "stall":
            time.sleep(2.0)
        inputs, params = body["inputs"], body.get("parameters") or {}
        invalid = self._invalid(inputs, params)
        if stream and params.get("decoder_input_details"):
            invalid = "`decoder_input_details` == true is not supported when streaming tokens"
        if invalid:
            return self.error(h, 422, f"Input validation error: {invalid}", "validation")
        text = self.answer(inputs)
        pieces = re.findall(r"\s*\S+", text)
        tokens = [{"id": 100 + i, "text": p, "logprob": -0.5, "special": False}
                  for i, p in enumerate(pieces)]
        tokens.append({"id": 2, "text": "</s>", "logprob": -0.1, "special": True})
        if stream:
            return self.stream(h, tokens, text, fault)
        details = {"finish_reason": "eos_token", "generated_tokens": len(tokens), "seed": None,
                   "prefill": self.prefill_tokens(inputs) if params.get(
                       "decoder_input_details") and self.prefill else [],
                   "tokens": tokens}
        out: dict[str, Any] = {"generated_text": text}
        if params.get("details"):
            out["details"] = details
        self.send_json(h, 200, out)

    def prefill_tokens(self, inputs: str) -> list[dict[str, Any]]:
        ids = self.token_ids(inputs)
        words = ["<s>"] + inputs.split()
        return [{"id": i, "text": w, "logprob": None if k == 0 else word_logprob(w)}
                for k, (i, w) in enumerate(zip(ids, words, strict=True))]

    def stream(self, h: BaseHTTPRequestHandler, tokens: list[dict[str, Any]], text: str,
               fault: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def send(event: dict[str, Any]) -> None:
            data = f"data:{json.dumps(event)}\n\n".encode()
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        for i, token in enumerate(self.events(tokens, text)):
            if i == 1 and isinstance(fault, tuple) and fault[0] == "stream_error":
                send({"error": f"injected {fault[1]} error", "error_type": fault[1]})
                break
            if i == 1 and fault == "stream_cut":
                h.close_connection = True  # no final chunk: the client sees a cut stream
                return
            send(token)
        h.wfile.write(b"0\r\n\r\n")

    def events(self, tokens: list[dict[str, Any]], text: str) -> Iterator[dict[str, Any]]:
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            yield {"token": token,
                   "generated_text": text if last and self.final_text else None,
                   "details": {"finish_reason": "eos_token", "generated_tokens": len(tokens),
                               "seed": None} if last else None}
