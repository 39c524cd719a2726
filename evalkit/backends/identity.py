"""What a backend's fingerprint is made of: the identity of the model that answers, so
that the response cache (evalkit.model.ResponseCache) never answers for another model,
another server, or the same server redeployed.

- In-process engines (llamacpp, hf, vllm): the weights' content (`weights_identity`: each
  weight file's size and digests of its first and last MiB, the small JSON files whole),
  the options that change answers, and the engine's version (a fix in the engine changes
  answers too).
- Servers (openai, tgi): `server_identity`: the address, what the server says about
  itself, and option `deployment`; option `interchangeable` leaves the address out.
- SageMaker: the endpoint, its region, variant and inference component, and option
  `deployment`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from evalkit.redact import is_secret_key

# How far a remote backend's cached answers reach: by default one server, by its address
# and what it says about itself.
IDENTITY_OPTIONS: dict[str, type] = {"interchangeable": bool, "deployment": str}

EDGE_BYTES = 1 << 20  # digested at each end of a weight file: its header and its last tensors
# read whole: what they hold changes answers (architecture, RoPE, generation defaults)
_SMALL_FILES = ("config.json", "generation_config.json")
_WEIGHTS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")


def file_identity(path: Path) -> str:
    """A weight file by its content, cheaply: its size and sha256 of its first and last
    EDGE_BYTES (a GGUF's header holds its metadata, quantization and vocabulary; the end,
    the last tensors). Another file of the same name, or the file re-quantized or
    fine-tuned, differs; a copy elsewhere (another mtime) does not."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        h.update(f.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            h.update(f.read(EDGE_BYTES))
    return f"{size}:{h.hexdigest()[:32]}"


def weights_identity(path: Path) -> dict[str, str]:
    """A model file's file_identity (under no name: a renamed copy is the same model), or
    an HF folder's: file_identity of each weight file and the sha256 of each small JSON
    file, by name."""
    if not path.is_dir():
        return {"file": file_identity(path)}
    files = sorted({p for pattern in _WEIGHTS for p in path.glob(pattern)})
    out = {p.name: file_identity(p) for p in files}
    for name in _SMALL_FILES:
        small = path / name
        if small.is_file():
            out[name] = hashlib.sha256(small.read_bytes()).hexdigest()[:32]
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
