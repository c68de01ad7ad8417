"""Shared SDK plumbing: Retry-After parsing, missing SDKs, translation of response_format."""

from __future__ import annotations

import email.utils
import sys

import pytest

from tierline.config import AnthropicBackendConfig
from tierline.dispatch.openai_chat import as_json_object, as_json_schema
from tierline.dispatch.registry import create_backend
from tierline.dispatch.sdk import retry_after, root_url
from tierline.errors import BackendUnavailable

SCHEMA = {"type": "object"}


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "150"}, 0.15),
        ({"retry-after-ms": "150", "retry-after": "9"}, 0.15),  # ms wins, as in the SDKs
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], seconds: float | None) -> None:
    """retry-after-ms first, then retry-after in seconds."""
    assert retry_after(headers) == seconds


def test_retry_after_http_date() -> None:
    """retry-after may be an HTTP date: the delay is counted from now."""
    now = 1_800_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after({"retry-after": header}, now=now) == pytest.approx(30.0)


def test_missing_sdk_is_unavailable_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing SDK makes the backend unavailable (fallback), with how to install it."""
    monkeypatch.setitem(sys.modules, "anthropic", None)  # makes `import anthropic` fail
    monkeypatch.setenv("X_API_KEY", "sk-ant-whatever-123456")
    config = AnthropicBackendConfig(kind="anthropic", model="claude-x", api_key_env="X_API_KEY")
    with pytest.raises(BackendUnavailable, match="pip install 'anthropic'"):
        create_backend("c", config)


@pytest.mark.parametrize(
    ("given", "openai_form", "llama_cpp_form"),
    [
        ({"type": "text"}, {"type": "text"}, {"type": "text"}),
        ({"type": "json_object"}, {"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_object", "schema": SCHEMA},
            {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}},
            {"type": "json_object", "schema": SCHEMA},
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "n", "strict": True, "schema": SCHEMA}},
            {"type": "json_schema", "json_schema": {"name": "n", "strict": True, "schema": SCHEMA}},
            {"type": "json_object", "schema": SCHEMA},
        ),
    ],
)
def test_response_format_dialects(
    given: dict[str, object], openai_form: dict[str, object], llama_cpp_form: dict[str, object]
) -> None:
    """Each server gets structured output in the spelling it accepts."""
    assert as_json_schema(given) == openai_form
    assert as_json_object(given) == llama_cpp_form


def test_root_url() -> None:
    """/health and /metrics live beside /v1, not under it."""
    assert root_url("http://gpu-a:8000/v1/") == "http://gpu-a:8000"
