"""Any OpenAI-compatible server: vLLM serve, llama.cpp's server (C++ or llama-cpp-python),
TGI >= 1.4.

endpoint "completions" (default) sends the prompt evalkit already rendered with its
template; "chat" sends the user text as one user message and the server applies the
model's template, so lengths are counted with the model's template (option chat_template:
a file holding it, or a fixed template name such as mistral-instruct) around the user text.
A conversation sample (Request.messages) goes to the chat endpoint as its messages, and is
counted as the model's template renders them (a fixed template name renders one user text
only: give the template's file). An answer prefix (Request.answer_prefix) goes as the
start of the assistant's turn, with vLLM's and llama.cpp's `continue_final_message`; a
template that trims message contents (Gemma's, Llama 3's) drops its leading and trailing
spaces there, so the server may read a token or two fewer than were counted (never
more). A server that takes neither field needs the completions endpoint.

Token counts come from the server's tokenize endpoint where it has one (vLLM and llama.cpp
`POST /tokenize`, llama-cpp-python `POST /extras/tokenize`, TGI `POST /tokenize`), else
from the local counter named by option tokenizer. The context window comes from vLLM's
/v1/models max_model_len, llama.cpp's /props n_ctx or /v1/models n_ctx_train, TGI's /info,
or option context_window (which wins). Loglikelihood uses /v1/completions with echo and
logprobs (llama.cpp's server needs --logits_all true): the prompt goes as the token ids the
Model split (context + continuation) to servers that take token prompts and tokenized them
(vLLM, llama.cpp), else as text, whose last continuation-many echoed tokens are scored.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from evalkit.backends.counting import (
    ChatCounter,
    PromptCounter,
    server_tokenize,
)
from evalkit.backends.http import (
    HTTP_OPTIONS,
    UNAVAILABLE,
    BodyLimit,
    HttpClient,
    HttpError,
    checked_options,
    excerpt,
)
from evalkit.backends.identity import IDENTITY_OPTIONS, server_identity
from evalkit.model import notify_stderr
from evalkit.prompts.templates import Template, chat_template_source, make_template
from evalkit.redact import redact
from evalkit.types import (
    Capabilities,
    EvalkitError,
    Message,
    Request,
    Response,
    TokenCounter,
    Unsupported,
)

OPTIONS: dict[str, type] = {**HTTP_OPTIONS, "model": str, "endpoint": str, "tokenizer": str,
                            "context_window": int, "chat_template": str, "extra_body": dict,
                            **IDENTITY_OPTIONS, "allow_model_mismatch": bool}

# What a server says about itself that tells one deployment from another, by where it says
# it (and only that: `created` and vLLM's permission ids change on every call).
_MODEL_FIELDS = ("id", "root", "parent", "max_model_len", "owned_by", "meta")
_ABOUT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("/props", ("model_path", "build_info", "chat_template")),  # llama.cpp's server
    ("/version", ("version",)),  # vLLM
    ("/info", ("model_id", "model_sha", "model_dtype", "version", "sha")),  # TGI
)
# tokenized by the server: a vocabulary (another model's, another tokenizer revision) shows
PROBE_TEXT = "Hello world! 0123456789 <s> </s> <|im_start|> über 東京 \n\t   end"

# (flavour, path, request body, token ids out of the answer); tried in this order, once.
_TOKENIZERS: tuple[tuple[str, str, Callable[[str, str], Any], Callable[[Any], list[int]]], ...] = (
    ("llama-cpp-python", "/extras/tokenize", lambda m, t: {"input": t, "model": m},
     lambda r: list(r["tokens"])),
    ("llama.cpp", "/tokenize", lambda m, t: {"content": t, "add_special": True},
     lambda r: list(r["tokens"])),
    ("vllm", "/tokenize", lambda m, t: {"model": m, "prompt": t}, lambda r: list(r["tokens"])),
    ("tgi", "/tokenize", lambda m, t: {"inputs": t}, lambda r: [int(x["id"]) for x in r]),
)


_TOKEN_PROMPTS = ("vllm", "llama.cpp")  # servers that take a prompt as token ids


def _names(model: str, served_id: str) -> bool:
    """Whether `model` names the model a server lists as `served_id`: the same id, or, where
    the server lists a model file's path (llama.cpp's servers started without an alias,
    which answer whatever model a request names), that file's name or stem."""
    if model == served_id:
        return True
    path = PurePosixPath(served_id)
    return (served_id.startswith(("/", "./", "~")) or path.suffix == ".gguf") and (
        model in (path.name, path.stem))


class _ChatEndpointCounter(ChatCounter):
    """ChatCounter that counts a conversation too (evalkit.prompts.templates.MessagesCounter): its
    messages rendered with the model's template, as the chat endpoint will render them."""

    def __init__(self, base: PromptCounter, template: Template) -> None:
        super().__init__(base, template.render)
        self._templated = base
        self._template = template

    def encode_messages(self, messages: Sequence[Message],
                        answer_prefix: str = "") -> list[int]:
        return self._templated.encode_templated(
            self._template.render_conversation(messages) + answer_prefix)


def _logprobs_unsupported(err: HttpError) -> bool:
    return "logprobs" in err.message and "not supported" in err.message


def _echo_limit(req: Request, prompt: str | list[int], n_cont: int) -> BodyLimit:
    """The size bound of an answer echoing the prompt: a logprob and the text of each of
    its tokens."""
    n_tokens = len(prompt) if isinstance(prompt, list) else (
        len(req.context_tokens or ()) + n_cont)
    return BodyLimit.prompt(n_tokens, len(req.prompt) + len(req.continuation))


def _greedy(logprobs: Sequence[float], tops: Sequence[Mapping[str, float]],
            n_cont: int) -> bool | None:
    """Whether every continuation token is the most likely one there (None: the server
    gave no top logprobs for each)."""
    if len(tops) == n_cont and all(tops):
        return all(lp_i >= max(top.values()) - 1e-6
                   for lp_i, top in zip(logprobs, tops, strict=True))
    return None


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str, options: Mapping[str, Any]) -> None:
        self.options = checked_options(self.name, options, OPTIONS)
        if "base_url" not in self.options:
            raise EvalkitError("backend openai needs option base_url, e.g. "
                               "http://127.0.0.1:8000/v1")
        self.endpoint = self.options.get("endpoint", "completions")
        if self.endpoint not in ("completions", "chat"):
            raise EvalkitError(f"backend openai: endpoint is 'completions' or 'chat', "
                               f"not {self.endpoint!r}")
        self.model = model
        self.api_model = self.options.get("model", model)
        # the routes are added to the server's root: a /v1 given goes, a query stays
        url = urlsplit(self.options["base_url"].strip())
        root = url._replace(path=url.path.rstrip("/").removesuffix("/v1"), fragment="")
        self._http = HttpClient(self.name, urlunsplit(root), self.options)
        self.max_batch_size = self._http.concurrency  # the runner hands us that many at once
        self._fixed, self._jinja = chat_template_source(self.options.get("chat_template"))
        if self.endpoint == "chat" and self._fixed is None and self._jinja is None:
            raise EvalkitError("backend openai with endpoint chat counts lengths with the "
                               "model's template: set chat_template to its file (or a fixed "
                               "template name such as mistral-instruct)")
        self._counter: PromptCounter | None = None
        self._tokenize_flavour: str | None = None
        self._window: int | None = None
        self._served: dict[str, Any] | None = None
        self._about: dict[str, Any] | None = None

    def capabilities(self) -> Capabilities:
        return Capabilities(generate=True, loglikelihood=self.endpoint == "completions",
                            chat=self.endpoint == "chat" or self._jinja is not None,
                            remote=True)

    # -- lengths -------------------------------------------------------------------------
    def _prompt_counter(self) -> PromptCounter:
        if self._counter is None:
            local = self.options.get("tokenizer")
            self._counter = (PromptCounter.from_local(local) if local
                             else self._server_counter())
        return self._counter

    def _server_counter(self) -> PromptCounter:
        where = self._http.where
        for flavour, path, body, ids in _TOKENIZERS:
            try:
                probe = ids(self._http.post_json(path, body(self.api_model, "Hello world"),
                                                 label="tokenize probe", metadata=True))
            except HttpError as exc:
                if exc.status is None or exc.status >= 500:
                    raise EvalkitError(f"openai backend: the tokenize probe failed: "
                                       f"{exc.message}: check base_url and that the server "
                                       "is up") from None
                if exc.status in (401, 403):
                    raise EvalkitError(f"openai backend: {where} refused the request "
                                       f"({exc.message}): check api_key_env") from None
                continue  # 404 / 4xx: not this flavour
            except (KeyError, TypeError, ValueError):
                continue
            if probe:
                self._tokenize_flavour = flavour
                return PromptCounter.from_server(f"{flavour}-server", server_tokenize(
                    self._http, path, functools.partial(body, self.api_model), ids))
        raise EvalkitError(f"openai backend: {where} has no tokenize endpoint: "
                           "set backend option tokenizer (e.g. mistral-v1)")

    def tokenizer(self) -> TokenCounter:
        self._served_model()  # the configured model is the one served: checked at start
        counter = self._prompt_counter()
        if self.endpoint == "completions":
            return counter
        template = make_template(self._fixed or "chat", self._jinja,
                                 {"bos_token": counter.bos_text or "", "eos_token": ""})
        return _ChatEndpointCounter(counter, template)

    def _served_model(self) -> dict[str, Any]:
        """The server's /v1/models entry of the model it serves (the one named `model`
        where it lists several). A server whose list does not name the configured model is
        refused, unless option allow_model_mismatch (then one line says so)."""
        if self._served is None:
            self._served = {}
            try:
                data = self._http.get_json("/v1/models").get("data") or []
                listed = [dict(d) for d in data if isinstance(d, Mapping)]
            except (HttpError, AttributeError, TypeError):
                listed = []
            ids = [str(d.get("id")) for d in listed]
            if listed:
                self._served = next((d for d in listed if d.get("id") == self.api_model),
                                    listed[0])
            if ids and not any(_names(self.api_model, i) for i in ids):
                shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5
                                              else "")
                what = (f"{self._http.where} serves {shown}, not {self.api_model!r}, the "
                        "model this run names")
                if not self.options.get("allow_model_mismatch"):
                    raise EvalkitError(
                        f"openai backend: {what}: name the served model (backend option "
                        f"model: {ids[0]}), or set backend option allow_model_mismatch: true "
                        "to run it under this name")
                notify_stderr(f"openai backend: {what}; running it anyway "
                              "(allow_model_mismatch), run.json records both")
        return self._served

    def context_window(self) -> int | None:
        if "context_window" in self.options:
            return int(self.options["context_window"])
        if self._window is None:
            served = self._served_model()
            window = served.get("max_model_len") or (served.get("meta") or {}).get("n_ctx_train")
            for path, keys in (("/props", ("default_generation_settings", "n_ctx")),
                               ("/info", ("max_total_tokens",))):
                if window:
                    break
                try:
                    found: Any = self._http.get_json(path)
                    for key in keys:
                        found = found[key]
                    window = found
                except (HttpError, KeyError, TypeError):
                    continue
            self._window = int(window) if window else None
        return self._window

    def chat_template(self) -> str | None:
        # With endpoint chat the server applies the template: the runner renders nothing.
        return self._jinja if self.endpoint == "completions" else None

    def special_tokens(self) -> Mapping[str, str]:
        bos = self._prompt_counter().bos_text if self.endpoint == "completions" else None
        return {"bos_token": bos or "", "eos_token": ""}

    # -- requests ------------------------------------------------------------------------
    def _body(self, req: Request) -> tuple[str, dict[str, Any]]:
        # extra_body: server-specific sampling fields. Servers differ in hidden defaults
        # (llama-cpp-python's server applies repeat_penalty 1.1, in-process llama.cpp 1.0), so
        # comparing engines may need e.g. {repeat_penalty: 1.0} or {repetition_penalty: 1.0}.
        body: dict[str, Any] = {**self.options.get("extra_body", {}), "model": self.api_model,
                                "max_tokens": req.max_new_tokens,
                                "temperature": req.temperature, "seed": req.seed}
        if req.stop:
            body["stop"] = list(req.stop)
        if self.endpoint == "chat":
            # a conversation as its messages; one user text as one user message; an answer
            # prefix as the start of the assistant's turn, continued (vLLM's and llama.cpp's
            # continue_final_message)
            prefix = req.answer_prefix or ""
            body["messages"] = ([{"role": "user", "content": req.prompt.removesuffix(prefix)}]
                                if req.messages is None
                                else [{"role": m.role, "content": m.content}
                                      for m in req.messages])
            if prefix:
                body["messages"].append({"role": "assistant", "content": prefix})
                body.update(continue_final_message=True, add_generation_prompt=False)
            return "/v1/chat/completions", body
        body["prompt"] = self._prompt_counter().server_text(req.prompt)
        return "/v1/completions", body

    async def _generate_one(self, req: Request) -> Response:
        start = time.perf_counter()
        path, body = self._body(req)
        limit = BodyLimit.generation(req.max_new_tokens)
        try:
            data: Any = await self._http.call("POST", path, body, time_left_s=req.time_left_s,
                                              limit=limit)
        except HttpError as exc:
            return exc.response(start)
        choices = data.get("choices") if isinstance(data, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        field = "message" if self.endpoint == "chat" else "text"
        text: Any = choice.get(field, ...) if isinstance(choice, dict) else ...
        reasoning = None
        if self.endpoint == "chat" and isinstance(text, dict):
            reasoning = _reasoning_of(text)
            text = text.get("content")
        text = "" if text is None else text  # a message with no text (a refusal)
        if not isinstance(text, str):
            what = ("not an object" if not isinstance(data, dict) else "no choices"
                    if choice is None else f"a choice without {field}")
            return Response(error=self._http.redact(f"unexpected answer from {path}: {what} "
                                                    f"(body: {excerpt(data)})"),
                            latency_s=time.perf_counter() - start)
        text, cut = limit.cut_text(text)  # a server that ignored max_tokens
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        exhausted = None
        if reasoning is not None:
            reasoning, _ = limit.cut_text(reasoning)
            # the budget ran out before the answer began
            exhausted = True if (not text.strip() and isinstance(choice, dict)
                                 and choice.get("finish_reason") == "length") else None
        return Response(text=text, input_tokens=usage.get("prompt_tokens"),
                        output_tokens=usage.get("completion_tokens"), truncated=cut,
                        latency_s=time.perf_counter() - start, reasoning=reasoning,
                        reasoning_exhausted=exhausted)

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        if requests and self.endpoint == "completions":
            self._prompt_counter()  # probe the tokenizer here, never on the client's loop
        return self._http.run_all([self._generate_one(r) for r in requests])

    def _scored_prompt(self, req: Request) -> str | list[int]:
        """What is sent to be scored: the Model's token ids where the server takes them and
        made them, else the text (whose tokens are the same, counted by the same server)."""
        ctx, cont = req.context_tokens, req.continuation_tokens
        if ctx is None or cont is None:
            raise EvalkitError("openai: loglikelihood requests come through "
                               "evalkit.model.Model, which fills in their tokens")
        if self._tokenize_flavour in _TOKEN_PROMPTS:
            return list(ctx) + list(cont)
        if not (req.prompt or req.continuation):
            raise Unsupported(f"{self._http.where} takes text prompts only "
                              f"({self._tokenize_flavour or 'a local tokenizer'}): scoring "
                              "token ids needs vLLM or llama.cpp's server")
        return self._prompt_counter().server_text(req.prompt + req.continuation)

    async def _loglikelihood_one(self, req: Request, prompt: str | list[int]) -> Response:
        start = time.perf_counter()
        n_cont = len(req.continuation_tokens or ())
        body = {"model": self.api_model, "prompt": prompt,
                "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}
        limit = _echo_limit(req, prompt, n_cont)
        try:
            data: Any = await self._http.call("POST", "/v1/completions", body,
                                              time_left_s=req.time_left_s, limit=limit)
        except HttpError as exc:
            if _logprobs_unsupported(exc):
                raise Unsupported(f"{self._http.where} does not return prompt logprobs "
                                  f"({exc.message}); llama.cpp's server needs --logits_all "
                                  "true") from None
            return exc.response(start)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
            what = "not an object" if not isinstance(data, dict) else "no choices"
            return Response(error=self._http.redact(f"unexpected answer from /v1/completions: "
                                                    f"{what} (body: {excerpt(data)})"),
                            latency_s=time.perf_counter() - start)
        return self._continuation_logprob(data, choices[0], n_cont, start)

    def _continuation_logprob(self, data: Mapping[str, Any], choice: Mapping[str, Any],
                              n_cont: int, start: float) -> Response:
        """The continuation's logprob and greediness read off an echoed answer: its last
        n_cont tokens among the echoed prompt's."""
        lp = choice.get("logprobs") or {}
        if not lp.get("token_logprobs"):
            raise Unsupported(f"{self._http.where} ignored echo/logprobs: it cannot score "
                              "loglikelihood")
        n_echo = self._echoed_prompt_tokens(data, len(lp["token_logprobs"]))
        logprobs = lp["token_logprobs"][:n_echo][-n_cont:]
        tops = (lp.get("top_logprobs") or [])[:n_echo][-n_cont:]
        if n_cont < 1 or len(logprobs) < n_cont or any(x is None for x in logprobs):
            return Response(error=f"cannot place the continuation ({n_cont} tokens) in the "
                                  f"{len(lp['token_logprobs'])} echoed tokens",
                            latency_s=time.perf_counter() - start)
        greedy = _greedy(logprobs, tops, n_cont)
        return Response(logprob=float(sum(logprobs)), is_greedy=greedy,
                        input_tokens=(data.get("usage") or {}).get("prompt_tokens"),
                        output_tokens=0,
                        latency_s=time.perf_counter() - start)

    def _echoed_prompt_tokens(self, data: Mapping[str, Any], n_logprobs: int) -> int:
        """How many of the echoed logprobs belong to the prompt (the continuation is the
        last of those). OpenAI and vLLM echo every prompt token, BOS included, then the
        generated ones. llama-cpp-python (0.3.36) leaves out a leading BOS, and when the
        prompt has none it pairs each token with the logits *after* it and drops the
        generated token: those numbers are wrong, so that case is refused."""
        usage = data.get("usage") or {}
        n_prompt, n_gen = usage.get("prompt_tokens"), usage.get("completion_tokens") or 0
        if n_prompt is None:
            raise Unsupported(f"{self._http.where} reports no usage.prompt_tokens: the "
                              "echoed prompt cannot be told from the generated tokens")
        if self._tokenize_flavour == "llama-cpp-python":
            if self._prompt_counter().adds_bos and n_logprobs == n_prompt - 1 + n_gen:
                return n_logprobs - n_gen
            raise Unsupported("llama-cpp-python's server misaligns echoed logprobs for "
                              "prompts that do not start with a BOS token (models without "
                              "one, e.g. SmolLM2): use vLLM, or the hf backend")
        if n_logprobs != n_prompt + n_gen:
            raise Unsupported(f"{self._http.where} echoed {n_logprobs} logprobs for "
                              f"{n_prompt} prompt and {n_gen} generated tokens: cannot align")
        return int(n_prompt)

    def loglikelihood(self, requests: Sequence[Request]) -> list[Response]:
        if self.endpoint == "chat":
            raise Unsupported("backend openai with endpoint chat cannot score loglikelihood: "
                              "use endpoint completions")
        self._prompt_counter()  # the server's flavour decides what is sent
        prompts = [self._scored_prompt(r) for r in requests]
        return self._http.run_all([self._loglikelihood_one(r, p)
                                   for r, p in zip(requests, prompts, strict=True)])

    def _deployment(self) -> dict[str, Any]:
        """What the server says about itself (see server_identity): its /v1/models entry,
        llama.cpp's /props, vLLM's /version, TGI's /info where the server has them, and
        the token ids its tokenizer gives PROBE_TEXT."""
        if self._about is None:
            served = self._served_model()
            about: dict[str, Any] = {"/v1/models": {k: served[k] for k in _MODEL_FIELDS
                                                    if k in served}}
            for path, keys in _ABOUT:
                # None: not this server's flavour; UNAVAILABLE: it could not say, so this
                # run shares no answer with others (nor is the next route asked: a server
                # silent to one is silent to all)
                found = (UNAVAILABLE if UNAVAILABLE in about.values()
                         else self._http.probe_json(path))
                if isinstance(found, Mapping):
                    about[path] = {k: found[k] for k in keys if k in found}
                elif found is not None:
                    about[path] = found
            if self.options.get("tokenizer") is None:
                about["probe_ids"] = self._prompt_counter().encode(PROBE_TEXT)
            self._about = about
        return self._about

    def fingerprint(self) -> str:
        # extra_body as redacted: a key in it (rotated at will) is no decoding parameter
        ident = [self.api_model, self.endpoint, self.options.get("chat_template"), self._jinja,
                 sorted(redact(self.options.get("extra_body", {})).items()),
                 server_identity(self.options, self._deployment)]
        if self.endpoint == "chat":
            # answers cached before a message's reasoning field was read lack it
            ident.append("reasoning-fields:1")
        return "openai:" + hashlib.sha256(repr(ident).encode()).hexdigest()[:16]

    def describe(self) -> Mapping[str, Any]:
        return {"backend": self.name, "model": self.model, "api_model": self.api_model,
                "served_model": self._served_model().get("id"), "endpoint": self.endpoint,
                "tokenize": self._tokenize_flavour or self.options.get("tokenizer"),
                "context_window": self.context_window(),
                "server": redact({k: v for k, v in self._deployment().items()
                                  if k != "probe_ids"}),
                "options": redact(dict(self.options))}  # no password, no key in extra_body


def _reasoning_of(message: dict[str, Any]) -> str | None:
    """The reasoning a server handed over beside a chat message's content: vLLM's and
    llama.cpp's `reasoning_content`, newer vLLM's `reasoning`; None where there is none."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None
