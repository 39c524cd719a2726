"""Secrets never reach results, logs or reports: one redaction for every place a spec,
a backend description or a command line is written.

A value is secret when its key names a secret (api_key, password, token, ...; `api_key_env`
names a variable and is not one), when it is the password of a URL (http://user:PASS@host),
or a secret-named query parameter of a URL (?api_key=...). Redaction works on nested
mappings and lists, so an `api_key` inside `extra_body` is found too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# `api_key_env`, `tokenizer`, `max_tokens` are not secrets; `key`, `api-key`, `x_api_key` are
SECRET_KEY = re.compile(
    r"(^|[_-])(api[_-]?key|key|secret|password|passwd|credentials?|access[_-]?token|token|"
    r"auth|authorization|bearer)$", re.I)
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key))


def redact_url(url: str) -> str:
    """The URL with its password and secret query parameters masked."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password:
            user = parts.username or ""
            host = netloc.rsplit("@", 1)[1]
            netloc = f"{user}:{MASK}@{host}"
        elif "@" in netloc:  # a token given as the user name alone (https://TOKEN@host)
            netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(is_secret_key(k) for k, _ in pairs):
                query = urlencode([(k, MASK if is_secret_key(k) else v) for k, v in pairs],
                                  safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not parseable as a URL (e.g. a bad port): mask all but the scheme
        return url.split("://", 1)[0] + "://" + MASK


def redact_text(text: str) -> str:
    """Every URL inside a free text redacted (error messages, argv)."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def redact(obj: Any) -> Any:
    """A copy of a JSON-like value with every secret masked."""
    if isinstance(obj, Mapping):
        return {k: (MASK if isinstance(k, str) and is_secret_key(k) and v not in (None, "")
                    else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str) and "://" in obj:
        return redact_text(obj)
    return obj
