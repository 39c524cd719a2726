"""Continuation tokens for loglikelihood, split as lm-eval splits them."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from evalkit.types import (
    EvalkitError,
    TokenCounter,
)

# -- continuation tokens -----------------------------------------------------------------------

def split_continuation(counter: TokenCounter, context: str, continuation: str,
                       prefix_token: Callable[[], int]) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens), split as lm-eval's LM.loglikelihood does.

    Trailing whitespace of the context moves to the continuation (" Paris" after "is",
    never "Paris" after "is "); then context + continuation is encoded whole and the
    context alone, and the continuation is the whole's tokens after the context's, so that
    it is tokenized as the model reads it in context. An empty context is the prefix token
    (the BOS, else the EOS) and the continuation encoded without special tokens; when the
    continuation itself starts with that token, its first token is the context instead.
    `counter` encodes as the model reads a text (a BOS first where the model adds one)."""
    if context == "":
        cont = without_auto_tokens(counter, continuation)
        prefix = prefix_token()
        if cont and cont[0] == prefix:
            return cont[:1], cont[1:]
        return [prefix], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = counter.encode(context + continuation)
    ctx = counter.encode(context)
    return ctx, whole[len(ctx):]


def without_auto_tokens(counter: TokenCounter, text: str) -> list[int]:
    """`text` encoded without the tokens the counter puts before every text (a BOS)."""
    auto = counter.encode("")
    ids = counter.encode(text)
    return ids[len(auto):] if auto and ids[:len(auto)] == auto else ids


def prefix_token_id(counter: TokenCounter, special_tokens: Mapping[str, str]) -> int:
    """lm-eval's prefix_token_id: the BOS token, else the EOS token (by their texts)."""
    for name in ("bos_token", "eos_token"):
        text = special_tokens.get(name) or ""
        if text:
            ids = without_auto_tokens(counter, text) or counter.encode(text)
            if len(ids) == 1:
                return ids[0]
    auto = counter.encode("")
    if len(auto) == 1:
        return auto[0]
    raise EvalkitError("loglikelihood with an empty context needs a BOS or EOS token to "
                       "condition on, and this model's tokenizer names neither")


