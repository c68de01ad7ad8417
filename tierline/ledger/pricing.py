"""What a call cost, from provider-reported usage. Unknown prices are None, never zero."""

from __future__ import annotations

from typing import Any

from ..jobs import Usage

__all__ = ["price_call"]


def price_call(backend_config: Any, model: str, usage: Usage) -> tuple[float | None, str]:
    """(cost in USD or None when unknown, where the price came from)."""
    del model, usage  # used once API price tables are wired in
    if backend_config.kind == "llamacpp":
        # The embedded model runs on this machine's CPU: no per-token charge.
        return 0.0, "local"
    return None, "unknown"
