"""Configs shared by the ledger tests."""

from __future__ import annotations

from typing import Any

from tierline.config import Config, config_from_mapping


def make_config(
    backends: dict[str, Any], routes: dict[str, Any] | None = None, **extra: Any
) -> Config:
    first = next(iter(backends))
    return config_from_mapping(
        {"backends": backends, "routes": routes or {"1": first, "2": first, "3": first}, **extra},
        origin="test.toml",
    )
