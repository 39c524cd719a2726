"""GGUF -> a plain Hugging Face folder (safetensors + config + tokenizer), for engines that
do not read GGUF well (vLLM) and for anyone who wants the dequantized weights.

transformers loads a GGUF by dequantizing it (to fp32), but refuses to `save_pretrained`
a model it loaded that way. So the weights are moved into a fresh model built from the
same config, which saves as usual; config.json then loses its `quantization_config`, or
loaders would look for GGUF tensors that are not there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from evalkit.types import EvalkitError

CACHE_DIR = Path("~/.cache/evalkit/hf").expanduser()


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Write the HF folder of `gguf` to `out_dir` (which must not hold anything yet) and
    return it. The folder is written beside `out_dir` first and renamed into place, so an
    interrupted conversion leaves no half folder behind."""
    from evalkit.backends.hf_common import import_transformers, load_tokenizer

    gguf, out_dir = Path(gguf).expanduser(), Path(out_dir).expanduser()
    if not gguf.is_file():
        raise EvalkitError(f"GGUF file not found: {gguf}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise EvalkitError(f"{out_dir} already exists and is not empty: remove it or choose "
                           "another folder")
    torch, tf = import_transformers()
    try:
        tok = load_tokenizer(tf, gguf.parent, gguf.name, local_files_only=True)
        loaded = tf.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as exc:  # e.g. an architecture HF cannot read
        raise EvalkitError(f"cannot load {gguf.name} with transformers: "
                           f"{str(exc).splitlines()[0]}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = getattr(plain, "_tied_weights_keys", None) or ()  # filled by tying, not loading
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise EvalkitError(f"{gguf.name}: weights do not match the {type(plain).__name__} "
                           f"built from its config (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]})")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        plain.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg.pop("quantization_config", None)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def cached_hf_folder(gguf: Path, cache_dir: Path = CACHE_DIR) -> Path:
    """The converted folder of `gguf` under ~/.cache/evalkit/hf, built on first use. Keyed
    by the file's name, size and first 16 MiB (its metadata and first tensors), not by its
    path or mtime, so that the same model installed in another venv finds the folder."""
    gguf = Path(gguf).expanduser()
    if not gguf.is_file():
        raise EvalkitError(f"GGUF file not found: {gguf}")
    digest = hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}:".encode())
    with gguf.open("rb") as f:
        digest.update(f.read(16 * 1024 * 1024))
    key = digest.hexdigest()
    folder = cache_dir / f"{gguf.stem}-{key[:12]}"
    if (folder / "config.json").is_file():
        return folder
    return convert_gguf(gguf, folder)
