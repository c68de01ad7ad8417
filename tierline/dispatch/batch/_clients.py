"""What the batch providers share with the dispatch backends (`dispatch/sdk.py`): SDK errors
mapped onto tierline's error tree with keys scrubbed, and a small connection pool."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from ..sdk import api_key, http_client, import_sdk, map_sdk_error

__all__ = ["CONNECTIONS", "sdk_and_http", "sdk_errors"]

# A batch needs a handful of calls (upload, create, polls, downloads), never many at once.
CONNECTIONS = 4


def sdk_and_http(name: str, config: Any, module: str, install: str) -> tuple[ModuleType, Any, Any]:
    """(SDK module, key, small HTTP client) for a batch provider's own SDK client: the key from
    the environment, the transport the backend's config asks for."""
    sdk = import_sdk(module, name, install)
    http = http_client(sdk, config.http_client, connections=CONNECTIONS, timeout_s=config.timeout_s)
    return sdk, api_key(name, config.api_key_env), http


@contextmanager
def sdk_errors(sdk: ModuleType, what: str) -> Iterator[None]:
    """Re-raise anything the SDK raises as a BackendError whose message starts with `what`."""
    try:
        yield
    except Exception as exc:
        raise map_sdk_error(exc, sdk, what) from exc
