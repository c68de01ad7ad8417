"""Test helpers shipped as public API: backends that answer without a model or a network.

`FakeBackend` answers from a queue of scripted replies and failures and records every request;
`FunctionBackend` answers with a function of the request. Register either under a backend kind
with `tierline.dispatch.registry.register` to drive a whole run, or use them directly. The fake
HTTP servers for OpenAI, Anthropic, vLLM and llama.cpp are tierline's own test fixtures: they live
in the repository's `tests/fakes/` and do not ship in the wheel.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..dispatch.base import BaseBackend, Completion, Request
from ..errors import BackendError
from ..jobs import Usage

__all__ = ["FakeBackend", "FunctionBackend", "completion"]


def completion(
    text: str, *, finish_reason: str = "stop", model: str = "fake", input_tokens: int = 10
) -> Completion:
    """A Completion with plausible usage (about four characters a token)."""
    return Completion(
        text=text,
        finish_reason=finish_reason,
        usage=Usage(input_tokens=input_tokens, output_tokens=max(1, len(text) // 4)),
        model=model,
    )


class FakeBackend(BaseBackend):
    """Answers from a queue; when it is empty, echoes the last user message.

    `enqueue()` takes Completions, strings, or BackendError instances (raised in turn).
    """

    __test__ = False

    def __init__(
        self, name: str = "fake", model: str = "fake-model", *, delay_s: float = 0.0
    ) -> None:
        self.name = name
        self.model = model
        self.delay_s = delay_s
        self.calls: list[Request] = []
        self.closed = False
        self._queue: deque[Completion | str | BackendError] = deque()

    def enqueue(self, *items: Completion | str | BackendError) -> FakeBackend:
        self._queue.extend(items)
        return self

    async def complete(self, request: Request) -> Completion:
        self.calls.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if not self._queue:
            return completion(f"echo: {request.messages[-1].content}", model=self.model)
        item = self._queue.popleft()
        if isinstance(item, BackendError):
            raise item
        return completion(item, model=self.model) if isinstance(item, str) else item

    async def aclose(self) -> None:
        self.closed = True


class FunctionBackend(BaseBackend):
    """Answers with `fn(request)`, sync or async; what it raises propagates."""

    __test__ = False

    def __init__(
        self,
        fn: Callable[[Request], Completion | str | Awaitable[Completion | str]],
        *,
        name: str = "function",
        model: str = "function-model",
    ) -> None:
        self.name = name
        self.model = model
        self.fn = fn
        self.calls: list[Request] = []

    async def complete(self, request: Request) -> Completion:
        self.calls.append(request)
        answer: Any = self.fn(request)
        if asyncio.iscoroutine(answer) or isinstance(answer, Awaitable):
            answer = await answer
        return completion(answer, model=self.model) if isinstance(answer, str) else answer
