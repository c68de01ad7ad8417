"""SDK clients for the batch APIs, built with the dispatch backends' helpers (`dispatch/sdk.py`):
key from the environment, the SDKs' own retries off (tierline retries in one layer), SDK errors
mapped onto tierline's error tree with keys scrubbed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from ..sdk import api_key, http_client, import_sdk, map_sdk_error

__all__ = ["client", "sdk_errors"]

# A batch needs a handful of calls (upload, create, polls, downloads), never many at once.
CONNECTIONS = 4


def client(name: str, config: Any) -> tuple[ModuleType, Any]:
    """(SDK module, async client) for an `openai` or `anthropic` backend config."""
    module, install = (
        ("openai", "openai[aiohttp]")
        if config.kind == "openai"
        else (
            "anthropic",
            "anthropic",
        )
    )
    sdk = import_sdk(module, name, install)
    options: dict[str, Any] = {
        "api_key": api_key(name, config.api_key_env),
        "base_url": config.base_url,
        "max_retries": 0,
        "timeout": config.timeout_s,
        "http_client": http_client(
            sdk, config.http_client, connections=CONNECTIONS, timeout_s=config.timeout_s
        ),
    }
    if config.kind == "openai":
        options["organization"] = config.organization
        return sdk, sdk.AsyncOpenAI(**options)
    return sdk, sdk.AsyncAnthropic(**options)


@contextmanager
def sdk_errors(sdk: ModuleType, what: str) -> Iterator[None]:
    """Re-raise anything the SDK raises as a BackendError whose message starts with `what`."""
    try:
        yield
    except Exception as exc:
        raise map_sdk_error(exc, sdk, what) from exc
