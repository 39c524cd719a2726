"""Any evalkit Model as an lm-eval model, registered in lm-eval as `evalkit`.

lm-eval 0.4.13 looks models up in its own registry only (it reads no entry points and has
no flag that imports a module), so `evalkit` exists in that registry once this module is
imported. Three ways in:

    # Python: any evalkit Model (this is what the leaderboard-v1 suite does)
    lm_eval.simple_evaluate(model=EvalkitLM(evalkit_model=model), tasks=[...])

    # lm-eval's own command line, with `evalkit` registered first (same flags as lm_eval):
    python -m evalkit.tasks.lm_eval.adapter --model evalkit \
        --model_args backend=llamacpp,model=smollm2-135m --tasks hellaswag --limit 10
    evalkit-lm-eval --model evalkit ...        # the same, as a console script

model_args: `backend` and `model` (as in an evalkit config), `cache_dir` (evalkit's response
cache), `use_cache` (false: bypass it), `max_length` (the rolling-window size, default the
model's context window), `max_gen_toks` (default 256); every other key is a backend option
(e.g. n_ctx=2048 for llamacpp, dtype=float32 for hf).

Requests map one to one: loglikelihood (context, continuation) -> Model.loglikelihood (the
Model splits the tokens the way lm-eval does); loglikelihood_rolling -> lm-eval's own
rolling windows over the model's tokens -> Model.loglikelihood_tokens; generate_until ->
Model.generate with `until` as stop strings. A failed request stops the evaluation with one
line; the answers before it are in the Model's response cache, so running the same command
again resumes where it stopped.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from evalkit.model import chunks, without_auto_tokens
from evalkit.types import (
    Backend,
    EvalkitError,
    Request,
    RequestKind,
    Response,
    TokenCounter,
)

MODEL_NAME = "evalkit"
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default for generate_until
DEFAULT_MAX_LENGTH = 2048  # rolling windows when the model does not say its context window
CHUNK = 32  # requests per Model call: bounds the work lost to Ctrl-C and paces the progress bar
_PIP = "pip install 'evalkit[lmeval]'"

log = logging.getLogger(__name__)

T = TypeVar("T")


def import_lm_eval() -> Any:
    """lm_eval's modules the adapter uses, or one line naming the pip command."""
    try:
        import lm_eval.api.model
        import lm_eval.api.registry
        import lm_eval.models  # fills the registry: it is filled only while it is empty
        import lm_eval.utils
    except ImportError as exc:
        raise EvalkitError(f"the lm-eval adapter needs lm-eval 0.4.13 ({exc.name} is missing): "
                           f"{_PIP}") from None
    return lm_eval


class LmModel(Protocol):
    """What the adapter needs of an evalkit Model (evalkit.model.Model has all of it)."""

    label: str
    backend: Backend

    def require(self, kind: RequestKind) -> None: ...

    def prefix_token(self) -> int: ...

    def tokenizer(self) -> TokenCounter: ...

    def context_window(self) -> int | None: ...

    def generate(self, requests: Sequence[Request]) -> list[Response]: ...

    def loglikelihood(self, requests: Sequence[Request]) -> list[Response]: ...

    def loglikelihood_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]
                             ) -> list[Response]: ...


def make_lm_model(backend: str, model: str, options: Mapping[str, Any], *,
                  cache_dir: Path | None = None, use_cache: bool = True) -> LmModel:
    """An evalkit Model of this backend and model, with evalkit's response cache."""
    from evalkit.model import make_model
    from evalkit.model.files import model_label

    return make_model(backend, model, options, cache_dir=cache_dir, use_cache=use_cache,
                      label=model_label(model))


@dataclass(frozen=True)
class Answer:
    """One lm-eval request as evalkit asked and answered it (kept for the run's records)."""

    request: Request
    response: Response


def _instance_id(inst: Any, k: int) -> str:
    """A readable id for a request: task/doc/request index (lm-eval's own numbers)."""
    task = getattr(inst, "task_name", None) or "lm_eval"
    doc = getattr(inst, "doc_id", None)
    idx = getattr(inst, "idx", k)
    return f"{task}/{doc if doc is not None else k}/{idx}"


def _failed(kind: str, requests: Sequence[Request], responses: Sequence[Response]) -> None:
    bad = [(q, r) for q, r in zip(requests, responses, strict=True) if r.error is not None]
    if bad:
        q, r = bad[0]
        raise EvalkitError(f"{len(bad)} of {len(requests)} {kind} requests failed, e.g. "
                           f"{q.sample_id}: {r.error}: the answers before are cached, run the "
                           "same command again to resume")


def _stops(until: Any) -> list[str]:
    if until is None:
        return []
    if isinstance(until, str):
        return [until]
    if isinstance(until, (list, tuple)) and all(isinstance(s, str) for s in until):
        return list(until)
    raise EvalkitError(f"generate_until: 'until' must be a string or a list of strings, "
                       f"got {until!r}")


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The text up to the first stop string (a backend may or may not cut there itself)."""
    cuts = [text.find(s) for s in stops if s and s in text]
    return text[:min(cuts)] if cuts else text


_lm_eval = import_lm_eval()
_LM: Any = _lm_eval.api.model.LM


class EvalkitLM(_LM):  # type: ignore[misc]
    """An lm-eval LM over an evalkit Model. Build it on a Model you have
    (`EvalkitLM(evalkit_model=m)`) or from model_args (`backend=...,model=...`)."""

    def __init__(self, backend: str | None = None, model: str | None = None, *,
                 evalkit_model: LmModel | None = None, cache_dir: str | None = None,
                 use_cache: bool = True, max_length: int | None = None,
                 max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, progress: bool = True,
                 batch_size: Any = None, max_batch_size: Any = None, device: Any = None,
                 **options: Any) -> None:
        super().__init__()
        # batch_size / max_batch_size / device come from lm-eval's command line for every
        # model; evalkit's Model batches by the backend's own limit and picks its device
        # from the backend options, so they are taken and left unused.
        del batch_size, max_batch_size, device
        if evalkit_model is None:
            if not backend or not model:
                raise EvalkitError("--model evalkit needs model_args backend=<name>,"
                                   "model=<alias, .gguf or HF folder>, e.g. "
                                   "backend=llamacpp,model=smollm2-135m")
            evalkit_model = make_lm_model(str(backend), str(model), options,
                                          cache_dir=Path(cache_dir) if cache_dir else None,
                                          use_cache=bool(use_cache))
        elif backend or model or options:
            raise EvalkitError("EvalkitLM: pass either evalkit_model or backend/model "
                               "options, not both")
        self.model: LmModel = evalkit_model
        self.max_gen_toks = int(max_gen_toks)
        self._max_length = int(max_length) if max_length else None
        self.progress = progress
        # every request answered, by (kind, its texts): the leaderboard suite turns these
        # into evalkit records after lm-eval has scored them
        self.answers: dict[tuple[str, ...], Answer] = {}

    # ---- what lm-eval reads besides the three request kinds ------------------------------

    @property
    def tokenizer_name(self) -> str:
        return f"evalkit:{self.model.label}"

    def get_model_info(self) -> dict[str, Any]:
        """Written into lm-eval's results["config"]."""
        return {"evalkit_model": self.model.label,
                "evalkit_backend": dict(self.model.backend.describe())}

    @property
    def max_length(self) -> int:
        if self._max_length:
            return self._max_length
        return self.model.context_window() or DEFAULT_MAX_LENGTH

    # ---- the three request kinds ----------------------------------------------------------

    def _run(self, call: Callable[[Sequence[T]], list[Response]], items: Sequence[T],
             desc: str, disable_tqdm: bool) -> list[Response]:
        from tqdm import tqdm

        out: list[Response] = []
        with tqdm(total=len(items), desc=f"evalkit {desc}", unit="req",
                  disable=disable_tqdm or not self.progress, leave=False) as bar:
            for chunk in chunks(items, CHUNK):
                got = call(chunk)
                if len(got) != len(chunk):
                    raise EvalkitError(f"evalkit {desc}: the model answered {len(got)} of "
                                       f"{len(chunk)} requests")
                out.extend(got)
                bar.update(len(chunk))
        return out

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False
                      ) -> list[tuple[float, bool]]:
        """log P(continuation | context) and whether greedy decoding gives the
        continuation, for each Instance.args == (context, continuation)."""
        self._check_loglikelihood()
        reqs = [Request(sample_id=_instance_id(inst, k), kind="loglikelihood",
                        prompt=inst.args[0], continuation=inst.args[1], max_new_tokens=0)
                for k, inst in enumerate(requests)]
        responses = self._run(self.model.loglikelihood, reqs, "loglikelihood", disable_tqdm)
        _failed("loglikelihood", reqs, responses)
        out: list[tuple[float, bool]] = []
        for inst, req, resp in zip(requests, reqs, responses, strict=True):
            if resp.logprob is None:
                raise EvalkitError(f"{req.sample_id}: the {self.model.backend.name} backend "
                                   "returned no logprob")
            result = (float(resp.logprob), bool(resp.is_greedy))
            self.answers[("loglikelihood", req.prompt, req.continuation)] = Answer(req, resp)
            self.cache_hook.add_partial("loglikelihood", inst.args, result)
            out.append(result)
        return out

    def _check_loglikelihood(self) -> None:
        """One line naming the backends that can, before any work (evalkit.model)."""
        self.model.require("loglikelihood")

    def _prefix_and_plain(self) -> tuple[int, Callable[[str], list[int]]]:
        """lm-eval's rolling windows start from its prefix token (BOS, else EOS) and score
        every token of the text itself, without the BOS the tokenizer puts before a text."""
        counter = self.model.tokenizer()
        return self.model.prefix_token(), functools.partial(without_auto_tokens, counter)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False
                              ) -> list[float]:
        """The log-likelihood of each whole text (Instance.args == (text,)), in lm-eval's
        disjoint rolling windows of max_length tokens, each window one token pair."""
        self._check_loglikelihood()
        utils = _lm_eval.utils
        prefix, plain = self._prefix_and_plain()
        pairs: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for i, inst in enumerate(requests):
            windows = utils.get_rolling_token_windows(
                token_list=plain(inst.args[0]), prefix_token=prefix,
                # a window is its prefix token and max_seq_len tokens: all of it must fit
                # (lm-eval's vllm model does the same; its hf model feeds one token less)
                max_seq_len=self.max_length - 1, context_len=1)
            for window in windows:
                ctx, pred = utils.make_disjoint_window(window)
                pairs.append((list(ctx), list(pred)))
                owner.append(i)
        responses = self._run(self.model.loglikelihood_tokens, pairs, "rolling windows",
                              disable_tqdm)
        ids = [Request(sample_id=_instance_id(requests[i], i), kind="loglikelihood",
                       prompt="", max_new_tokens=0) for i in owner]
        _failed("loglikelihood_rolling", ids, responses)
        totals = [0.0] * len(requests)
        for i, req, resp in zip(owner, ids, responses, strict=True):
            if resp.logprob is None:
                raise EvalkitError(f"{req.sample_id}: the {self.model.backend.name} backend "
                                   "returned no logprob")
            totals[i] += float(resp.logprob)
        for inst, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", inst.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with do_sample/temperature) generation up to the first of
        `until`, at most `max_gen_toks` tokens, for Instance.args == (context, gen_kwargs)."""
        reqs: list[Request] = []
        eos = self.model.backend.special_tokens().get("eos_token", "")
        for k, inst in enumerate(requests):
            context, gen_kwargs = inst.args[0], dict(inst.args[1] or {})
            stops = _stops(gen_kwargs.pop("until", None))
            if eos and eos not in stops:
                stops.append(eos)  # as lm-eval's own models do
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            do_sample = bool(gen_kwargs.pop("do_sample", False))
            temperature = float(gen_kwargs.pop("temperature", 0.0) or 0.0)
            seed = int(gen_kwargs.pop("seed", 0) or 0)
            reqs.append(Request(sample_id=_instance_id(inst, k), kind="generate",
                                prompt=context, max_new_tokens=max_new,
                                temperature=temperature if do_sample else 0.0, seed=seed,
                                stop=tuple(stops)))
            if gen_kwargs and k == 0:
                log.warning("evalkit: generation options %s are not passed to the model "
                            "(it takes until, max_gen_toks, do_sample, temperature, seed)",
                            sorted(gen_kwargs))
        responses = self._run(self.model.generate, reqs, "generate", disable_tqdm)
        _failed("generate_until", reqs, responses)
        out: list[str] = []
        for inst, req, resp in zip(requests, reqs, responses, strict=True):
            text = cut_at_stops(resp.text, req.stop)
            self.answers[("generate", req.prompt, repr(req.stop))] = Answer(req, resp)
            self.cache_hook.add_partial("generate_until", inst.args, text)
            out.append(text)
        return out


def register() -> None:
    """Register `evalkit` in lm-eval's model registry (once; importing this module does
    it). lm_eval.models is imported first: lm-eval fills its registry with its own models
    only while the registry is empty."""
    registry = _lm_eval.api.registry.model_registry
    if MODEL_NAME not in registry:
        registry.register(MODEL_NAME)(EvalkitLM)


register()


def main(argv: Sequence[str] | None = None) -> int:
    """lm-eval's own command line with `evalkit` registered: the same flags as `lm_eval`.
    A user error (a missing model, a backend that cannot score) is one line, exit 2."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except EvalkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:  # a task's dataset is neither cached nor reachable
        print(f"error: {exc}: lm-eval's tasks load their data from the Hugging Face Hub; run "
              "once online (the datasets cache keeps it), or use `evalkit run` with the "
              "leaderboard tasks' offline data", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
