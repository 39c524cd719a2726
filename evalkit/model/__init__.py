"""The Model: one backend wrapped with what every backend shares (batching, the retry
policy, the response cache, continuation tokens, interrupts), done once.

    model.py          Model, make_model
    retry.py          RetryPolicy, ServerHealth, retry_call: bounded retries from data
    cache.py          ResponseCache: successful answers on disk by request key
    continuations.py  split_continuation: loglikelihood tokens as lm-eval splits them
    files.py          model aliases, GGUF files and labels (gemma3-270m, smollm2-135m)
    convert.py        GGUF to a plain Hugging Face folder (for vLLM and HF)
"""

from evalkit.model.cache import CACHE_ENV, CACHE_FILE, ResponseCache, default_cache_dir
from evalkit.model.continuations import (
    prefix_token_id,
    split_continuation,
    without_auto_tokens,
)
from evalkit.model.model import Model, chunks, make_model
from evalkit.model.retry import (
    DEFAULT_BACKOFF_S,
    DEFAULT_LOCAL_RETRIES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TOTAL_TIMEOUT_S,
    MAX_SLEEP_S,
    TRIP_AFTER,
    RetryableError,
    RetryPolicy,
    ServerHealth,
    gave_up_message,
    notify_stderr,
    retry_call,
    waited_past,
)

__all__ = [
    "CACHE_ENV", "CACHE_FILE", "DEFAULT_BACKOFF_S", "DEFAULT_LOCAL_RETRIES",
    "DEFAULT_MAX_RETRIES", "DEFAULT_TOTAL_TIMEOUT_S", "MAX_SLEEP_S", "TRIP_AFTER", "Model",
    "ResponseCache", "RetryPolicy", "RetryableError", "ServerHealth", "chunks",
    "default_cache_dir", "gave_up_message", "make_model", "notify_stderr", "prefix_token_id",
    "retry_call", "split_continuation", "waited_past", "without_auto_tokens",
]
