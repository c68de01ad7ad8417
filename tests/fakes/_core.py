"""Machinery shared by every fake: thread runner, recording, fault engine, limits, slots.

A fake is an aiohttp application served on 127.0.0.1 from its own thread and event loop, so a
synchronous or asynchronous test can drive it with any client. Control methods (``enqueue_*``,
``kill``) may be called from the test thread; shared state is guarded by one re-entrant lock and
no handler awaits while holding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Literal

from aiohttp import web

from tests.fakes._content import Reply

_orjson: Any
try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a tierline dependency
    _orjson = None
_uvloop: Any
try:
    import uvloop as _uvloop
except ImportError:  # pragma: no cover - optional speed-up
    _uvloop = None

__all__ = [
    "FakeServer",
    "Fault",
    "FaultKind",
    "RateLimits",
    "RateWindow",
    "RecordedRequest",
    "SlotPool",
    "dumps",
    "go_duration",
    "loads",
    "new_id",
    "prometheus_text",
    "rfc3339",
]

JSON = Any
FaultKind = Literal["status", "reset", "malformed", "slow"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Responder = Callable[[Mapping[str, JSON]], "Reply | None"]

_INVALID = object()  # marks a request body that is not valid JSON
BODY = web.RequestKey("tierline_fake_body", object)
STARTED = web.RequestKey("tierline_fake_started", float)
_MALFORMED_BODY = (
    b'{"id": "chatcmpl-malformed", "object": "chat.completion", "choices": [{"index": 0, "mess'
)


_IDS = random.Random()


def new_id(prefix: str, length: int = 24) -> str:
    """A random hex id in the provider's style, e.g. ``new_id("req_")``."""
    return f"{prefix}{_IDS.getrandbits(4 * length):0{length}x}"


def dumps(data: JSON) -> bytes:
    """Compact JSON (orjson when installed: the fakes must outrun the clients they test)."""
    if _orjson is not None:
        return bytes(_orjson.dumps(data))
    return json.dumps(data, separators=(",", ":")).encode()


def loads(raw: bytes) -> JSON:
    return _orjson.loads(raw) if _orjson is not None else json.loads(raw)


def go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String()``: ``12ms``, ``1.5s``, ``6m0s``, ``1h0m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{_trim(seconds * 1000)}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{int(hours)}h{int(minutes)}m{_trim(secs)}s"
    if minutes:
        return f"{int(minutes)}m{_trim(secs)}s"
    return f"{_trim(secs)}s"


def _trim(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


def rfc3339(epoch: float, *, micros: bool = True) -> str:
    """An RFC 3339 UTC timestamp with a ``Z`` suffix, as Anthropic sends."""
    stamp = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micros else "%Y-%m-%dT%H:%M:%SZ")


def prometheus_text(metrics: Iterable[tuple[str, str, str, Mapping[str, str], float]]) -> str:
    """Prometheus text exposition of ``(name, type, help, labels, value)`` samples."""
    lines: list[str] = []
    seen: set[str] = set()
    for name, kind, help_text, labels, value in metrics:
        family = name.removesuffix("_total") if kind == "counter" else name
        if family not in seen:
            seen.add(family)
            lines += [f"# HELP {family} {help_text}", f"# TYPE {family} {kind}"]
        label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(
            f"{name}{{{label_text}}} {float(value)!r}" if label_text else f"{name} {float(value)!r}"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it; ``headers`` keys are lower-case."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: JSON
    at: float


@dataclass(frozen=True)
class Fault:
    """One injected failure.

    ``kind``: ``status`` answers ``status`` with the fake's native error body (``body`` overrides
    it); ``reset`` aborts the connection before any response byte; ``malformed`` answers 200 with
    truncated JSON; ``slow`` sleeps ``delay`` seconds and then answers normally. ``delay`` also
    applies before the other kinds. ``path`` (a prefix) limits the fault to matching requests;
    ``None`` means the fake's inference endpoints. ``weight`` is used by ``fault_mix``.
    """

    kind: FaultKind = "status"
    status: int = 500
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    message: str | None = None
    error_type: str | None = None
    code: str | int | None = None
    body: JSON = None
    path: str | None = None
    weight: float = 1.0

    def matches(self, path: str, inference: bool) -> bool:
        return inference if self.path is None else path.startswith(self.path)


class FaultEngine:
    """Scripted faults (FIFO) first, then random ones at ``rate`` drawn from ``mix`` (seeded)."""

    def __init__(self, rate: float, mix: Sequence[Fault], seed: int) -> None:
        self.rate = rate
        self.mix = list(mix)
        self.rng = random.Random(seed)
        self.queue: deque[Fault] = deque()
        self.injected = 0
        self._lock = threading.Lock()

    def take(self, path: str, inference: bool) -> Fault | None:
        with self._lock:
            for fault in self.queue:
                if fault.matches(path, inference):
                    self.queue.remove(fault)
                    self.injected += 1
                    return fault
            if inference and self.rate > 0 and self.mix and self.rng.random() < self.rate:
                self.injected += 1
                return self.rng.choices(self.mix, weights=[f.weight for f in self.mix])[0]
        return None


class RateWindow:
    """A fixed-window counter for rate-limit headers and (optionally) enforcement."""

    def __init__(self, limit: int, window: float, enforce: bool) -> None:
        self.limit = limit
        self.window = window
        self.enforce = enforce
        self.used = 0
        self.started = time.monotonic()

    def _roll(self, now: float) -> None:
        if now - self.started >= self.window:
            self.started, self.used = now, 0

    def admit(self, cost: int = 1) -> bool:
        """Count ``cost``; False (and nothing counted) when enforcing and it would overflow."""
        self._roll(time.monotonic())
        if self.enforce and self.used + cost > self.limit:
            return False
        self.used += cost
        return True

    @property
    def remaining(self) -> int:
        self._roll(time.monotonic())
        return max(self.limit - self.used, 0)

    @property
    def reset_in(self) -> float:
        return max(self.window - (time.monotonic() - self.started), 0.0)


class RateLimits:
    """Named windows (``requests``, ``tokens``, ...); a limit of ``None`` is reported, not enforced."""

    def __init__(self, limits: Mapping[str, tuple[int | None, int]], window: float) -> None:
        self.windows = {
            name: RateWindow(limit or default, window, enforce=limit is not None)
            for name, (limit, default) in limits.items()
        }

    def admit(self, costs: Mapping[str, int]) -> tuple[str, RateWindow, int] | None:
        """Count every cost; the first window that refuses, with the cost it refused."""
        for name, cost in costs.items():
            window = self.windows[name]
            if not window.admit(cost):
                return name, window, cost
        return None


class SlotPool:
    """``slots`` concurrent requests, a FIFO queue of at most ``max_waiting`` (``None``: no cap)."""

    def __init__(self, slots: int, max_waiting: int | None = None) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self.running = 0
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.rejected = 0
        self.peak = 0  # the most requests ever running at once (what tests assert on)

    @property
    def full(self) -> bool:
        """True when a new request would be refused."""
        return (
            self.running >= self.slots
            and self.max_waiting is not None
            and len(self.waiting) >= self.max_waiting
        )

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.running < self.slots and not self.waiting:
            self.running += 1
            self.peak = max(self.peak, self.running)
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting.append(future)
            try:
                await future
            except BaseException:
                if future.done() and not future.cancelled():
                    self._release()  # the slot was handed over just as we were cancelled
                else:
                    self.waiting.remove(future)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(None)  # hand the slot over; ``running`` is unchanged
                return
        self.running -= 1


class Routes:
    """Registers handlers wrapped in the fake's request plumbing (record, gate, faults, headers)."""

    def __init__(self, app: web.Application, wrap: Callable[[Handler], Handler]) -> None:
        self.app = app
        self.wrap = wrap

    def get(self, path: str, handler: Handler) -> None:
        self.app.router.add_get(path, self.wrap(handler), allow_head=False)

    def post(self, path: str, handler: Handler) -> None:
        self.app.router.add_post(path, self.wrap(handler))

    def delete(self, path: str, handler: Handler) -> None:
        self.app.router.add_delete(path, self.wrap(handler))


class FakeServer:
    """Base class of the fakes: lifecycle, recording, faults, scripted replies, latency.

    Use as a context manager (``with FakeOpenAI() as srv: ...``) or call ``start()``/``stop()``.
    """

    __test__ = False  # not a pytest test class
    name: ClassVar[str] = "fake"
    sdk_suffix: ClassVar[str] = "/v1"
    inference_paths: ClassVar[frozenset[str]] = frozenset()
    default_fault_mix: ClassVar[tuple[Fault, ...]] = (
        Fault(status=429, headers={"retry-after": "0"}),
        Fault(status=500),
        Fault(status=503),
        Fault(kind="reset"),
        Fault(kind="malformed"),
        Fault(kind="slow", delay=0.2),
    )

    def __init__(
        self,
        *,
        port: int = 0,
        latency_ms: float = 0.0,
        latency_per_token_ms: float = 0.0,
        api_key: str | None = None,
        record: bool = True,
        record_limit: int = 10_000,
        fault_rate: float = 0.0,
        fault_mix: Sequence[Fault] | None = None,
        seed: int = 0,
    ) -> None:
        self.latency = latency_ms / 1000
        self.latency_per_token = latency_per_token_ms / 1000  # a decoding server: per output token
        self.api_key = api_key
        self.record = record
        self.requests: deque[RecordedRequest] = deque(maxlen=record_limit)
        self.request_count = 0
        self.faults = FaultEngine(fault_rate, fault_mix or self.default_fault_mix, seed)
        self.rng = random.Random(seed)
        self.reply_defaults = Reply()
        self._lock = threading.RLock()
        self._replies: deque[Reply] = deque()
        self._responder: Responder | None = None
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeServer:
        """Start serving on its own thread; returns ``self``."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} fake already started")
        loop = _uvloop.new_event_loop() if _uvloop is not None else asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop,), name=f"fake-{self.name}", daemon=True
        )
        self._thread.start()
        self._call(self._serve())
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and join the thread (idempotent)."""
        if self._thread is None or self._loop is None:
            return
        if self._runner is not None:
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> Any:  # Any: subclasses return themselves without restating it
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def kill(self) -> None:
        """Simulate a dead backend: drop every open connection and refuse new ones."""
        if self._runner is not None:
            self._call(self._shutdown())

    def revive(self) -> None:
        """Serve again on the same port after ``kill()``."""
        if self._runner is None:
            self._call(self._serve())

    @property
    def alive(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        """What to pass to the SDK as ``base_url``."""
        return self.url + self.sdk_suffix

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, coro: Awaitable[None]) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(_wrap(coro), self._loop).result(timeout=30)

    async def _serve(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        app = web.Application(client_max_size=1 << 40)
        self.add_routes(Routes(app, self._wrap))
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.05)
        await runner.setup()
        await web.SockSite(runner, sock, backlog=4096).start()
        self._runner = runner

    async def _shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if runner.server is not None:
            for conn in runner.server.connections:
                if conn.transport is not None:
                    conn.transport.abort()
        await runner.cleanup()

    # --- subclass hooks -------------------------------------------------------------------------

    def add_routes(self, routes: Routes) -> None:
        raise NotImplementedError

    def body_limit(self, path: str) -> int:
        """Largest request body accepted on ``path``; larger ones get the fake's 413."""
        return 64 * 1024 * 1024

    def error_response(
        self,
        status: int,
        message: str | None = None,
        *,
        error_type: str | None = None,
        code: str | int | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """The fake's native error body for ``status``."""
        raise NotImplementedError

    def gate(self, request: web.Request) -> web.Response | None:
        """Refuse a request before routing (auth, loading); None lets it through."""
        return None

    def decorate(self, request: web.Request, response: web.StreamResponse) -> None:
        """Add the provider's headers (request ids, rate limits) to every response."""

    # --- replies ----------------------------------------------------------------------------------

    def enqueue_reply(self, reply: Reply | None = None, /, **fields: Any) -> None:
        """Script the next inference reply, e.g. ``enqueue_reply(content="", finish_reason="length")``."""
        with self._lock:
            self._replies.append(reply or Reply(**fields))

    def set_responder(self, responder: Responder | None) -> None:
        """Call ``responder(body)`` for each request without a scripted reply; None = derived."""
        self._responder = responder

    def next_reply(self, body: Mapping[str, JSON]) -> Reply:
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        responder = self._responder
        return (responder(body) if responder else None) or Reply()

    # --- faults -----------------------------------------------------------------------------------

    def enqueue_fault(
        self,
        status: int | None = None,
        *,
        kind: FaultKind | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        message: str | None = None,
        error_type: str | None = None,
        code: str | int | None = None,
        body: JSON = None,
        path: str | None = None,
        times: int = 1,
    ) -> None:
        """Script the next failure(s): ``enqueue_fault(429, headers={"retry-after": "0.2"})``,
        ``enqueue_fault(kind="reset")``, ``enqueue_fault(kind="slow", delay=2)``."""
        fault = Fault(
            kind=kind or "status",
            status=status or 500,
            headers=dict(headers or {}),
            delay=delay,
            message=message,
            error_type=error_type,
            code=code,
            body=body,
            path=path,
        )
        self.add_faults([fault] * times)

    def add_faults(self, faults: Iterable[Fault]) -> None:
        with self.faults._lock:
            self.faults.queue.extend(faults)

    async def _apply_fault(self, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.kind == "slow":
            return None
        if fault.kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing more can be written on an aborted transport
        if fault.kind == "malformed":
            return web.Response(body=_MALFORMED_BODY, content_type="application/json")
        if fault.body is not None:
            return self.json(fault.body, status=fault.status, headers=fault.headers)
        return self.error_response(
            fault.status,
            fault.message,
            error_type=fault.error_type,
            code=fault.code,
            headers=fault.headers,
        )

    # --- request plumbing -------------------------------------------------------------------------

    def _wrap(self, handler: Handler) -> Handler:
        async def plumbing(request: web.Request) -> web.StreamResponse:
            response = await self._handle(request, handler)
            self.decorate(request, response)
            return response

        return plumbing

    async def _handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[STARTED] = time.monotonic()
        if (request.content_length or 0) > self.body_limit(request.path):
            return self.error_response(413, "Request exceeds the maximum allowed number of bytes.")
        body: JSON = None
        if request.body_exists and not request.content_type.startswith("multipart/"):
            raw = await request.read()
            try:
                body = loads(raw) if raw else None
            except ValueError:
                body = _INVALID
        request[BODY] = body
        self.request_count += 1
        if self.record:
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query=dict(request.query),
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=None if body is _INVALID else body,
                    at=time.time(),
                )
            )
        refused = self.gate(request)
        if refused is not None:
            return refused
        fault = self.faults.take(request.path, request.path in self.inference_paths)
        if fault is not None:
            response = await self._apply_fault(request, fault)
            if response is not None:
                return response
        return await handler(request)

    def json_body(self, request: web.Request) -> Mapping[str, JSON] | web.Response:
        """The request's JSON object, or the fake's 400 error response."""
        body = request.get(BODY)
        if body is _INVALID or not isinstance(body, Mapping):
            return self.error_response(400, "We could not parse the JSON body of your request.")
        return body

    @staticmethod
    def json(
        data: JSON, *, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            body=dumps(data),
            status=status,
            headers=dict(headers or {}),
            content_type="application/json",
        )

    async def simulate_latency(self, output_tokens: int = 0) -> None:
        seconds = self.latency + self.latency_per_token * output_tokens
        if seconds > 0:
            await asyncio.sleep(seconds)

    def bearer_token(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None


async def _wrap(coro: Awaitable[None]) -> None:
    await coro
