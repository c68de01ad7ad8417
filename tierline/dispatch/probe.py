"""`tierline backends check`: per backend (per replica), reachable, key accepted, model served.

Each backend answers for itself (`Backend.check()`, part of the protocol); this module only
builds the configured backends and gathers their rows."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from ..config import Config
from ..errors import BackendUnavailable
from .health import CheckResult, check_endpoint
from .registry import create_backend

__all__ = ["CheckResult", "check_backends", "check_endpoint"]


async def check_backends(config: Config, names: Sequence[str] | None = None) -> list[CheckResult]:
    """Check every configured backend (or `names`), concurrently; one row per endpoint."""

    async def one(name: str) -> list[CheckResult]:
        backend_config = config.backends[name]
        kind = backend_config.kind
        try:
            backend = create_backend(name, backend_config)
        except BackendUnavailable as exc:
            model = backend_config.display_model
            return [CheckResult(name, kind, "-", model, False, detail=str(exc))]
        async with backend:
            return [replace(row, kind=kind) for row in await backend.check()]

    chosen = list(names) if names is not None else list(config.backends)
    rows = await asyncio.gather(*(one(name) for name in chosen))
    return [row for group in rows for row in group]
