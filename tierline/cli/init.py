"""`tierline init`: write a commented starter config for the backends you have."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..config import config_from_toml
from ..errors import UsageError
from ..starter import StarterOptions, starter_config
from .output import err_console


def init(
    vllm: Annotated[
        list[str] | None,
        typer.Option(
            "--vllm", help="A vLLM base URL, e.g. http://gpu1:8000/v1 (repeat for replicas)."
        ),
    ] = None,
    vllm_model: Annotated[
        str, typer.Option(help="The model vLLM serves (its --served-model-name).")
    ] = ("Qwen/Qwen2.5-32B-Instruct"),
    llama_server: Annotated[
        str | None, typer.Option("--llama-server", help="A llama.cpp llama-server base URL.")
    ] = None,
    openai: Annotated[
        bool, typer.Option("--openai", help="Add OpenAI (key from $OPENAI_API_KEY).")
    ] = False,
    anthropic: Annotated[
        bool, typer.Option("--anthropic", help="Add Anthropic (key from $ANTHROPIC_API_KEY).")
    ] = False,
    local: Annotated[
        bool, typer.Option("--local/--no-local", help="Add the in-process llama.cpp model.")
    ] = True,
    output: Annotated[
        str, typer.Option("--output", "-o", help="Where to write it; '-' for stdout.")
    ] = ("tierline.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter tierline.toml that routes each tier to the backends you name.

    Example: tierline init --vllm http://gpu1:8000/v1 --vllm http://gpu2:8000/v1 --anthropic
    """
    try:
        text = starter_config(
            StarterOptions(vllm or [], vllm_model, llama_server, openai, anthropic, local)
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config_from_toml(text, origin="starter config")  # never write a config tierline would refuse
    if output == "-":
        sys.stdout.write(text)
        return
    path = Path(output)
    if path.exists() and not force:
        raise UsageError(f"{path} exists; use --force to overwrite it or -o to write elsewhere")
    path.write_text(text, encoding="utf-8")
    err_console.print(
        f"tierline: wrote {path}; check it with `tierline backends check`", markup=False
    )
