"""A stand-in for vLLM's OpenAI-compatible server, on 127.0.0.1, that follows vLLM's
schemas for what the openai backend asks:

- GET /v1/models -> {"object": "list", "data": [{"id", "object", "created", "owned_by",
  "root", "max_model_len", "permission": [{"id": "modelperm-<random>", "created"}]}]}
  (`created` and the permission ids change on every call, as vLLM's do);
- GET /version -> {"version"};
- POST /tokenize {"model", "prompt"} -> {"count", "max_model_len", "tokens"} (a body
  without "prompt", llama.cpp's, is a 400, as vLLM answers it);
- POST /v1/completions -> {"id", "object", "created", "model", "choices": [{"index",
  "text", "finish_reason"}], "usage"}.

Its "model" reads text by whitespace (no BOS) and answers " <key>." when the prompt holds
a pass key (a wrong key when `wrong` is set: another deployment). `delay_s(prompt)` says
how long each completion takes. It counts the completions it was asked (`asked`) and
answered (`answered`), to show which server answered a run.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from localserver import LocalServer

_PASSKEY = re.compile(r"The pass key is (\d+)")


class FakeOpenAI(LocalServer):
    def __init__(self, *, served_id: str = "tiny", root: str = "/models/tiny",
                 version: str = "0.11.0", window: int = 4096, wrong: bool = False,
                 delay_s: Callable[[str], float] = lambda prompt: 0.0,
                 port: int = 0) -> None:
        super().__init__(port)
        self.served_id, self.root, self.version = served_id, root, version
        self.window, self.wrong, self.delay_s = window, wrong, delay_s
        self.asked = 0
        self.answered = 0
        self._lock = threading.Lock()

    @staticmethod
    def token_ids(text: str) -> list[int]:
        return [zlib.crc32(w.encode()) % 50_000 + 2 for w in text.split()]

    def answer(self, prompt: str) -> str:
        key = _PASSKEY.search(prompt)
        if key is None:
            return " I do not know."
        return f" {int(key.group(1)) + 1 if self.wrong else key.group(1)}."

    def get(self, h: BaseHTTPRequestHandler) -> None:
        now = int(time.time())
        if h.path == "/v1/models":
            self.send_json(h, 200, {"object": "list", "data": [{
                "id": self.served_id, "object": "model", "created": now, "owned_by": "vllm",
                "root": self.root, "parent": None, "max_model_len": self.window,
                "permission": [{"id": f"modelperm-{secrets.token_hex(8)}", "created": now}]}]})
        elif h.path == "/version":
            self.send_json(h, 200, {"version": self.version})
        else:
            self.send_json(h, 404, {"detail": "Not Found"})

    def post(self, h: BaseHTTPRequestHandler, body: Any) -> None:
        if h.path == "/tokenize":
            if not isinstance(body, dict) or "prompt" not in body:
                self.send_json(h, 400, {"object": "error", "message": "prompt: field required"})
                return
            ids = self.token_ids(str(body["prompt"]))
            self.send_json(h, 200, {"count": len(ids), "max_model_len": self.window,
                                    "tokens": ids})
        elif h.path == "/v1/completions":
            with self._lock:
                self.asked += 1
            prompt = str(body.get("prompt", ""))
            time.sleep(self.delay_s(prompt))
            text = self.answer(prompt)
            self.send_json(h, 200, {
                "id": f"cmpl-{secrets.token_hex(8)}", "object": "text_completion",
                "created": int(time.time()), "model": self.served_id,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(self.token_ids(prompt)),
                          "completion_tokens": len(text.split()),
                          "total_tokens": len(self.token_ids(prompt)) + len(text.split())}})
            with self._lock:
                self.answered += 1
        else:
            self.send_json(h, 404, {"detail": "Not Found"})
