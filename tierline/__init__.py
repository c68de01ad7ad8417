"""tierline: tier batch LLM jobs and dispatch them to the cheapest backend that can do them well."""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config, load_config
    from .dispatch.base import Backend, Completion, Request
    from .errors import ExitCode, TierlineError
    from .jobs import InvalidLine, Job, Message, Result, Usage, read_jobs
    from .tiering.pipeline import Tierer
    from .tiering.vote import TierVote

# Where each public name lives. Imported on first use (PEP 562), so `import tierline.cli` for
# `tierline --help` does not load pydantic, the dispatch layer and the classifier.
_HOME = {
    "Config": "config",
    "load_config": "config",
    "Backend": "dispatch.base",
    "Completion": "dispatch.base",
    "Request": "dispatch.base",
    "ExitCode": "errors",
    "TierlineError": "errors",
    "InvalidLine": "jobs",
    "Job": "jobs",
    "Message": "jobs",
    "Result": "jobs",
    "Usage": "jobs",
    "read_jobs": "jobs",
    "Tierer": "tiering.pipeline",
    "TierVote": "tiering.vote",
}


def console_main() -> None:
    """The `tierline` command (and `python -m tierline`). The CLI's own imports (typer, rich:
    about 0.1 s) happen in here, so a Ctrl-C during them ends as a Ctrl-C anywhere else does
    (one line, exit 130), not with a KeyboardInterrupt traceback."""
    try:
        from .cli import cli_exit
    except KeyboardInterrupt:
        sys.stderr.write("tierline: interrupted\n")
        raise SystemExit(130) from None  # ExitCode.INTERRUPTED, without importing more
    cli_exit()


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'tierline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Backend",
    "Completion",
    "Config",
    "ExitCode",
    "InvalidLine",
    "Job",
    "Message",
    "Request",
    "Result",
    "TierVote",
    "Tierer",
    "TierlineError",
    "Usage",
    "load_config",
    "read_jobs",
]
