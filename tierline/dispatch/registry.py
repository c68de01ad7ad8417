"""Backend kinds by name. Each factory imports its SDK inside the function, so a run only pays
for the SDKs its config uses (importing openai costs ~0.8 s, anthropic ~1.9 s)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .base import Backend

__all__ = ["FACTORIES", "create_backend", "register"]

Factory = Callable[[str, Any], Backend]


def _llamacpp(name: str, config: Any) -> Backend:
    from .llamacpp import LlamaCppBackend

    return LlamaCppBackend(name, config)


def _openai_compatible(name: str, config: Any) -> Backend:
    from .openai_chat import openai_compatible

    return openai_compatible(name, config)


def _openai(name: str, config: Any) -> Backend:
    from .openai_chat import openai_api

    return openai_api(name, config)


def _anthropic(name: str, config: Any) -> Backend:
    from .anthropic import AnthropicBackend

    return AnthropicBackend(name, config)


FACTORIES: dict[str, Factory] = {
    "llamacpp": _llamacpp,
    "openai-compatible": _openai_compatible,
    "openai": _openai,
    "anthropic": _anthropic,
}


def register(kind: str, factory: Factory) -> None:
    """Add a backend kind (built-ins use this same path that plugins would)."""
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
