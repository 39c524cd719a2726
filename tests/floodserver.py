"""A server on 127.0.0.1 that records what it is asked (method, path, query, body) and
answers as a test scripts it: an OpenAI-compatible completions server (vLLM's /tokenize
flavour, reading text by whitespace, answering " <key>." to a pass-key prompt), whose
completion and TGI generate routes can instead answer what a broken or hostile server
sends: a body of any size (sent in chunks, counting the bytes it managed to send before
the client hung up), an empty choices list, an HTML page, an error that echoes the
request line (query string and all), a 429 with Retry-After.

`script` holds one answer per generation request (/v1/completions, /generate,
/generate_stream), taken in arrival order; `scripts[path]` one per request of another
route; without one (or with ("normal",)), the normal answer.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from localserver import LocalServer

_PASSKEY = re.compile(r"The pass key is (\d+)")
CHUNK_BYTES = 64 * 1024
GENERATE_ROUTES = ("/v1/completions", "/generate", "/generate_stream")


def token_ids(text: str) -> list[int]:
    return [100 + len(w) for w in text.split()]


def answer(prompt: str) -> str:
    key = _PASSKEY.search(prompt)
    return f" {key.group(1)}." if key else " I do not know."


def flood_json(n_bytes: int, tgi: bool = False) -> Iterator[bytes]:
    """A JSON answer whose text is `n_bytes` of "a": OpenAI's or TGI's shape."""
    yield (b'{"generated_text": "' if tgi else
           b'{"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": "')
    for _ in range(n_bytes // CHUNK_BYTES):
        yield b"a" * CHUNK_BYTES
    yield b'"}' if tgi else b'", "finish_reason": "length"}]}'


def flood_stream(n_bytes: int) -> Iterator[bytes]:
    """TGI's server-sent events, one 1000-character token each, never a final event."""
    token = {"token": {"id": 7, "text": "a" * 1000, "logprob": -0.1, "special": False},
             "generated_text": None, "details": None}
    event = f"data:{json.dumps(token)}\n\n".encode()
    for _ in range(n_bytes // len(event)):
        yield event


def flood_line(n_bytes: int) -> Iterator[bytes]:
    """One event line that never ends."""
    yield b'data:{"token": {"id": 7, "text": "'
    for _ in range(n_bytes // CHUNK_BYTES):
        yield b"a" * CHUNK_BYTES


class FloodServer(LocalServer):
    def __init__(self, served_id: str = "tiny", window: int = 4096) -> None:
        super().__init__()
        self.served_id = served_id
        self.window = window
        self.script: list[tuple[Any, ...]] = []
        self.scripts: dict[str, list[tuple[Any, ...]]] = {}
        self.requests: list[tuple[str, str, list[tuple[str, str]], Any]] = []
        self.sent_bytes: list[int] = []  # per flood: the bytes written before the client left
        self.flood_finished: list[bool] = []
        self._lock = threading.Lock()

    def get(self, h: BaseHTTPRequestHandler) -> None:
        self.handle(h, None)

    def post(self, h: BaseHTTPRequestHandler, body: Any) -> None:
        self.handle(h, body)

    def floods(self, n: int = 1, timeout_s: float = 20.0) -> list[int]:
        """The bytes each of the first `n` floods wrote, once they ended (the server sees a
        client's hang-up when its socket buffers fill: a moment after the client left)."""
        deadline = time.monotonic() + timeout_s
        while len(self.sent_bytes) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.sent_bytes[:n]

    # -- answers ---------------------------------------------------------------------------
    def flood(self, h: BaseHTTPRequestHandler, chunks: Iterator[bytes], content_type: str,
              length: int | None) -> None:
        """Send the chunks (with a Content-Length when given, else chunked) until done or
        the client hangs up; records the bytes it managed to write."""
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header(*(("Content-Length", str(length)) if length is not None
                        else ("Transfer-Encoding", "chunked")))
        h.end_headers()
        sent, finished = 0, False
        try:
            for chunk in chunks:
                h.wfile.write(chunk if length is not None
                              else f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
            if length is None:
                h.wfile.write(b"0\r\n\r\n")
            finished = True
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        with self._lock:
            self.sent_bytes.append(sent)
            self.flood_finished.append(finished)

    def handle(self, h: BaseHTTPRequestHandler, body: Any) -> None:
        url = urlsplit(h.path)
        with self._lock:
            self.requests.append((h.command, url.path, parse_qsl(url.query), body))
            queue = (self.script if url.path in GENERATE_ROUTES
                     else self.scripts.get(url.path, []))
            scripted = queue.pop(0) if queue else None
        if scripted is not None and scripted[0] != "normal":
            return self.scripted(h, scripted)
        if url.path == "/v1/models" and h.command == "GET":
            return self.send_json(h, 200, {"object": "list", "data": [
                {"id": self.served_id, "object": "model", "max_model_len": self.window}]})
        if url.path == "/tokenize" and isinstance(body, dict):
            if "prompt" not in body:  # llama.cpp's body: vLLM answers 400
                return self.send_json(h, 400, {"error": {"message": "prompt is required"}})
            ids = token_ids(body["prompt"])
            return self.send_json(h, 200, {"count": len(ids), "max_model_len": self.window,
                                           "tokens": ids})
        if url.path not in GENERATE_ROUTES:
            return self.send_json(h, 404, {"error": {"message": f"no route {url.path}"}})
        text = answer(str(body.get("prompt") or body.get("inputs")))
        if url.path == "/v1/completions":
            n_in = len(token_ids(str(body.get("prompt"))))
            return self.send_json(h, 200, {
                "id": "cmpl-1", "object": "text_completion", "model": self.served_id,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": 2,
                          "total_tokens": n_in + 2}})
        if url.path == "/generate_stream":  # one token, then the final event
            events = [{"token": {"id": 7, "text": text, "logprob": -0.1, "special": False},
                       "generated_text": None, "details": None},
                      {"token": {"id": 2, "text": "</s>", "logprob": -0.1, "special": True},
                       "generated_text": text, "details": {"generated_tokens": 2}}]
            sse = b"".join(f"data:{json.dumps(e)}\n\n".encode() for e in events)
            return self.send(h, 200, sse, "text/event-stream")
        return self.send_json(h, 200, {"generated_text": text})

    def scripted(self, h: BaseHTTPRequestHandler, item: tuple[Any, ...]) -> None:
        kind, *args = item
        if kind == "json":  # (status, body[, headers])
            return self.send_json(h, *args)
        if kind == "raw":  # (status, content type, bytes)
            status, content_type, raw = args
            return self.send(h, status, raw, content_type)
        if kind == "echo":  # a gateway error that shows the request line, query and all
            return self.send_json(h, 500, {"error": {"message": "upstream failed: "
                                                                + h.requestline}})
        if kind == "flood_json":  # (n_bytes[, tgi])
            n_bytes, tgi = args[0], bool(args[1:] and args[1])
            length = sum(len(c) for c in flood_json(n_bytes, tgi))
            return self.flood(h, flood_json(n_bytes, tgi), "application/json", length)
        if kind == "flood_stream":
            return self.flood(h, flood_stream(args[0]), "text/event-stream", None)
        if kind == "flood_line":
            return self.flood(h, flood_line(args[0]), "text/event-stream", None)
        raise ValueError(f"unknown scripted answer {kind!r}")
