"""What a backend's fingerprint is made of: the identity of the model that answers, so
that the response cache (evalkit.model.ResponseCache) never answers for another model,
another server, or the same server redeployed.

- In-process engines (llamacpp, hf, vllm): the weights' content (`weights_identity`: the
  sha256 of each weight file, and of the config, generation and tokenizer files beside
  them), the options that change answers, and the engine's version (a fix in the engine
  changes answers too).
- Servers (openai, tgi): `server_identity`: the address, what the server says about
  itself, and option `deployment`; option `interchangeable` leaves the address out.
- SageMaker: the endpoint, its region, variant and inference component, and option
  `deployment`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from evalkit.redact import is_secret_key

# How far a remote backend's cached answers reach: by default one server, by its address
# and what it says about itself.
IDENTITY_OPTIONS: dict[str, type] = {"interchangeable": bool, "deployment": str}

# read whole, beside the weights: what they hold changes answers (architecture, RoPE,
# generation defaults, the tokenizer)
_SMALL_FILES = ("config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json")
_WEIGHTS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")
_HEX64 = re.compile(r"[0-9a-f]{64}")
DIGESTS_FILE = "file-digests.jsonl"  # in the response cache's folder
_digests: dict[str, str] | None = None  # (path, device, inode, size, mtime) -> sha256


def _memo_path() -> Path:
    from evalkit.model import default_cache_dir

    return default_cache_dir() / DIGESTS_FILE


def _memo() -> dict[str, str]:
    global _digests
    if _digests is None:
        _digests = {}
        with contextlib.suppress(OSError):
            for line in _memo_path().read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    entry = json.loads(line)
                    _digests[str(entry["key"])] = str(entry["sha256"])
    return _digests


def file_identity(path: Path) -> str:
    """A weight file by its content: the sha256 of the whole file. A file in a Hugging Face
    hub cache is named by it already (blobs/<sha256>); any other is read once and its
    digest remembered by path, device, inode, size and modification time (a 14 GB file
    takes about 10 s once). A copy elsewhere is the same model; the file fine-tuned,
    re-quantized or replaced, whatever its name, is another."""
    real = path.resolve()
    if real.parent.name == "blobs" and _HEX64.fullmatch(real.name):
        return f"sha256:{real.name}"
    st = real.stat()
    key = json.dumps([str(real), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns])
    memo = _memo()
    if key not in memo:
        h = hashlib.sha256()
        with real.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        memo[key] = h.hexdigest()
        with contextlib.suppress(OSError):  # remembered for later processes where it can be
            _memo_path().parent.mkdir(parents=True, exist_ok=True)
            with _memo_path().open("a", encoding="utf-8") as out:
                out.write(json.dumps({"key": key, "sha256": memo[key]}) + "\n")
    return f"sha256:{memo[key]}"


def weights_identity(path: Path) -> dict[str, str]:
    """A model file's file_identity (under no name: a renamed copy is the same model), or
    an HF folder's: file_identity of each weight file and the sha256 of each small file
    beside them (config, generation defaults, tokenizer), by name."""
    if not path.is_dir():
        return {"file": file_identity(path)}
    files = sorted({p for pattern in _WEIGHTS for p in path.glob(pattern)})
    out = {p.name: file_identity(p) for p in files}
    for name in _SMALL_FILES:
        small = path / name
        if small.is_file():
            out[name] = hashlib.sha256(small.read_bytes()).hexdigest()
    return out


def server_address(url: str) -> str:
    """A server's address as an identity: scheme, host, port and path, with the query
    parameters that are not secrets (Azure's api-version changes the API), never a user
    name, password or key. Equal for two spellings of one URL (case of the scheme and
    host, a default port, a trailing slash, the /v1 that the openai backend adds itself)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    host = (parts.hostname or "").lower()
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                   if not is_secret_key(k))
    path = parts.path.rstrip("/").removesuffix("/v1")
    return f"{scheme}://{host}:{port}{path}" + (f"?{query}" if query else "")


def server_identity(options: Mapping[str, Any], about: Callable[[], Mapping[str, Any]]
                    ) -> list[Any]:
    """The part of a remote backend's cache key that names its server: the address
    (server_address of base_url), what the server says about itself (`about`: its model
    entry, version, build, tokenizer), and option `deployment`, a label the user changes
    when the server changes in a way it does not report (vLLM does not report its weights'
    dtype or quantization). Option `interchangeable` (replicas, servers of one deployment
    under several addresses) leaves the address out, so that any of them answers for the
    others; what they say about themselves still counts."""
    address = None if options.get("interchangeable") else server_address(options["base_url"])
    return [address, dict(about()), options.get("deployment")]
