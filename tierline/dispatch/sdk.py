"""What the SDK-backed providers share: SDK import, keys, HTTP client, the codec round trip
(`send`), error mapping.

The two official SDKs are generated from the same template (Stainless), so their error classes,
response objects and HTTP clients have the same shapes; one set of helpers serves both. The SDK
module is passed in, never imported here: a run pays only for the SDKs its config uses.
"""

from __future__ import annotations

import email.utils
import importlib
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from types import ModuleType
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import (
    BackendConnectionError,
    BackendError,
    BackendStatusError,
    BackendTimeout,
    BackendUnavailable,
)
from .limits import pause_from_headers

if TYPE_CHECKING:
    from .base import Codec, Completion, Request

__all__ = [
    "api_key",
    "decode_json",
    "http_client",
    "import_sdk",
    "map_sdk_error",
    "post_json",
    "retry_after",
    "root_url",
    "send",
]

CONNECT_TIMEOUT_S = 5.0  # the SDKs' default connect timeout


def import_sdk(module: str, backend: str, install: str) -> ModuleType:
    """Import an SDK on first use; a missing one makes the backend unavailable, not the run."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendUnavailable(
            f"backend {backend!r} needs the {module} SDK: pip install '{install}'"
        ) from None


def api_key(backend: str, env_var: str | None, *, required: bool = True) -> str | None:
    """The key from the environment (never from the config file, never logged)."""
    if env_var is None:
        return None
    value = os.environ.get(env_var, "").strip()
    if not value:
        if not required:
            return None
        raise BackendUnavailable(
            f"backend {backend!r}: no API key: set the {env_var} environment variable"
        )
    return value


def http_client(sdk: ModuleType, transport: str, *, connections: int, timeout_s: float) -> Any:
    """The SDK's HTTP client with a pool sized to the backend's concurrency.

    `aiohttp` (default): the SDK's own aiohttp transport. Its pool hands out a free connection
    in O(1); the default httpx2 pool walks every connection per request, which costs ~4 ms of
    CPU per request at 256 connections (benchmarks/bench_dispatch.py measures both).
    """
    import httpx2

    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    timeout = httpx2.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))
    cls = sdk.DefaultAioHttpClient if transport == "aiohttp" else sdk.DefaultAsyncHttpxClient
    return cls(limits=limits, timeout=timeout)


async def post_json(client: Any, path: str, body: Mapping[str, Any]) -> tuple[bytes, Any]:
    """POST through the SDK client; return the raw body and headers.

    `client.post(path, body=..., cast_to=httpx2.Response)` is the SDKs' documented way to make a
    request without their typed wrappers: auth, headers, timeouts and error classes are the
    SDK's, but the params are not walked by its TypedDict transformer and the answer is not
    built into pydantic models (together ~2 ms of CPU per call, more than everything tierline
    itself does per job). The body is decoded once, by the adapter, with orjson.
    """
    import httpx2

    response = await client.post(path, body=body, cast_to=httpx2.Response)
    return await response.aread(), response.headers


def decode_json(content: bytes, backend: str) -> Mapping[str, Any]:
    """The body as a JSON object, or a retryable 502 for a body that is not one."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, Mapping):
        raise BackendStatusError(f"{backend}: malformed response body", status_code=502)
    return data


async def send(
    client: Any, codec: Codec, request: Request, *, sdk: ModuleType, backend: str
) -> Completion:
    """One request through an SDK client: encode, POST to the codec's path, decode.

    Raises only BackendErrors: the SDK's own mapped (`map_sdk_error`), a foreign body as a
    retryable 502. A rate-limit window the headers say is used up becomes `pause_s`."""
    try:
        body = codec.encode(request)
    except ValueError as exc:  # a request this wire format cannot express: not worth a retry
        raise BackendError(f"{backend}: {exc}") from None
    try:
        content, headers = await post_json(client, codec.path, body)
        data = decode_json(content, backend)
        try:
            completion = codec.decode(data)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise BackendStatusError(
                f"{backend}: response is not {codec.what}", status_code=502
            ) from None
    except Exception as exc:
        raise map_sdk_error(exc, sdk, backend) from None
    pause = pause_from_headers(headers)
    return replace(completion, pause_s=pause) if pause else completion


def root_url(base_url: str) -> str:
    """`http://host:8000/v1` -> `http://host:8000` (where /health and /metrics live)."""
    url = base_url.rstrip("/")
    return url.removesuffix("/v1")


def retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """A server-directed delay: `retry-after-ms`, else `retry-after` in seconds or an HTTP date
    (the order the SDKs read them in, openai-python `_parse_retry_after_header`)."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):  # neither seconds nor a date: no server-directed delay
        return None
    return parsed.timestamp() - (time.time() if now is None else now)


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


# Transport exceptions that mean "never reached the server" vs "gave up waiting". The SDKs'
# aiohttp transport maps every aiohttp connection error to ConnectTimeout, so the class the SDK
# raises cannot tell a refused connection from a slow server: the cause chain can.
_REFUSED = ("ConnectionRefusedError", "ClientConnectorError", "ConnectError")
_TIMEOUT = ("SocketTimeoutError", "ServerTimeoutError", "ReadTimeout", "TimeoutError")


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
    return str(getattr(exc, "message", None) or exc)


def map_sdk_error(exc: BaseException, sdk: ModuleType, backend: str) -> BackendError:
    """An SDK exception as a tierline BackendError with its status and server-directed delay."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, sdk.APIStatusError):
        response: Any = exc.response
        headers = response.headers if response is not None else None
        status = int(exc.status_code)
        return BackendStatusError(
            f"{backend}: HTTP {status}: {_server_message(exc)}",
            status_code=status,
            retry_after=retry_after(headers),
        )
    if isinstance(exc, sdk.APIConnectionError):
        names = {type(c).__name__ for c in _causes(exc)}
        if names & set(_REFUSED):
            return BackendConnectionError(f"{backend}: cannot connect: {_root_message(exc)}")
        if isinstance(exc, sdk.APITimeoutError) and names & set(_TIMEOUT):
            return BackendTimeout(f"{backend}: request timed out")
        return BackendConnectionError(f"{backend}: connection failed: {_root_message(exc)}")
    if isinstance(exc, (ValueError, sdk.APIResponseValidationError)):
        # A 200 whose body is not the JSON it claims to be (truncated by a proxy, a server bug):
        # treated as a bad gateway, which is retried.
        return BackendStatusError(
            f"{backend}: malformed response body: {type(exc).__name__}", status_code=502
        )
    return BackendError(f"{backend}: {type(exc).__name__}: {exc}")


def _root_message(exc: BaseException) -> str:
    chain = _causes(exc)
    deepest = chain[-1]
    return f"{type(deepest).__name__}: {deepest}" if str(deepest) else type(deepest).__name__
