"""Backend kinds by name, built from the one kind table (`tierline.config.KINDS`).

Each entry names its implementation as ``"module:attribute"`` under this package, imported on
first use: a run only pays for the SDKs its config uses (importing openai costs ~0.8 s,
anthropic ~1.9 s), and the table itself stays in the core layer, below dispatch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..config import KINDS, BackendSettings
from ..errors import ConfigError
from .base import Backend, Codec

__all__ = ["FACTORIES", "codec_for", "create_backend", "implementation", "register"]

Factory = Callable[[str, Any], Backend]


def implementation(ref: str) -> Any:
    """The object a kind entry names: ``"openai_chat:chat_codec"`` is
    `tierline.dispatch.openai_chat.chat_codec`."""
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), attribute)


def _lazy(ref: str) -> Factory:
    def factory(name: str, config: Any) -> Backend:
        built: Backend = implementation(ref)(name, config)
        return built

    return factory


# Tests and plugins replace a kind's factory here (`monkeypatch.setitem(FACTORIES, ...)`).
FACTORIES: dict[str, Factory] = {name: _lazy(kind.factory) for name, kind in KINDS.items()}


def register(kind: str, factory: Factory) -> None:
    """Replace how backends of a known kind are built (a plugin's own client, a test fake)."""
    FACTORIES[kind] = factory


def create_backend(name: str, config: Any) -> Backend:
    try:
        factory = FACTORIES[config.kind]
    except KeyError:
        known = ", ".join(sorted(FACTORIES))
        raise ConfigError(
            f"backends.{name}.kind: unknown backend kind {config.kind!r} (known: {known})"
        ) from None
    return factory(name, config)


def codec_for(config: BackendSettings) -> Codec:
    """The kind's pure request/response codec for these settings (no client, no network)."""
    ref = config.entry.codec
    if ref is None:
        raise ConfigError(f"kind {config.kind!r} has no wire codec (it runs in-process)")
    codec: Codec = implementation(ref)(config)
    return codec
