"""Health as part of the backend protocol: what `Backend.check()` reports per endpoint
(reachable, key accepted, model served), and the one GET-and-judge helper HTTP adapters share.

A leaf module (it imports no adapter and no registry), so adapters, the registry and
`probe.check_backends` all depend on it and never on each other in a circle.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import redact

__all__ = ["CheckResult", "Get", "check_endpoint"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One endpoint's health: can it be reached, does the key work, is the model there."""

    backend: str
    kind: str
    endpoint: str
    model: str
    reachable: bool
    auth: bool | None = None  # None: not checked (no key needed, or unreachable)
    model_present: bool | None = None  # None: the server does not list models
    latency_s: float | None = None
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.reachable and self.auth is not False and self.model_present is not False

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "usable": self.usable}


Get = Callable[[str], Awaitable[tuple[int, str]]]


async def check_endpoint(
    base: CheckResult,
    get: Get,
    url: str,
    *,
    model_listed: Callable[[str], bool | None],
    not_found_means_no_model: bool = False,
) -> CheckResult:
    """GET `url` (a model list or a model's own page) and judge the answer.

    `model_listed(body)` says whether a 200 body shows the model; a 404 means "no such model"
    for a per-model URL (`not_found_means_no_model`) and "no such endpoint" otherwise.
    """
    started = time.perf_counter()
    try:
        status, text = await get(url)
    except Exception as exc:
        return replace(
            base, reachable=False, detail=redact(f"unreachable: {type(exc).__name__}: {exc}")
        )
    found = replace(base, reachable=True, latency_s=time.perf_counter() - started)
    if status in (401, 403):
        return replace(found, auth=False, detail=f"HTTP {status}: the key was refused")
    if status == 404 and not_found_means_no_model:
        return replace(found, auth=True, model_present=False, detail="model not found")
    if status != 200:
        return replace(found, detail=f"HTTP {status} from {url}")
    present = model_listed(text)
    detail = "" if present is not False else "the server does not serve this model"
    return replace(found, auth=True, model_present=present, detail=detail)
