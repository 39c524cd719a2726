"""`evalkit convert-gguf`: a GGUF model as a plain Hugging Face folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evalkit.cli.app import _Command, app
from evalkit.model.files import ALIASES


@app.command("convert-gguf", cls=_Command)
def convert_gguf(
    gguf: Annotated[str, typer.Argument(help=f"a .gguf file or a model alias "
                                             f"({', '.join(ALIASES)})")],
    out_dir: Annotated[Path, typer.Argument(help="the new Hugging Face folder")],
) -> None:
    """Write a plain Hugging Face folder (safetensors, config, tokenizer) from a GGUF file,
    dequantized to fp32: for the vllm backend, or any HF tool."""
    from evalkit.model.convert import convert_gguf as convert
    from evalkit.model.files import resolve_gguf

    typer.echo(str(convert(resolve_gguf(gguf), out_dir)))
