"""The two provider batch APIs behind one small interface, through the official SDKs.

    OpenAI     upload a JSONL file (purpose "batch") -> batches.create -> poll -> output and
               error files, each line keyed by custom_id
    Anthropic  messages.batches.create(requests=[...]) -> poll -> results (JSONL, unordered)

A provider turns a tierline `Request` into its wire form with the kind's own codec (the one the
synchronous backend sends: `dispatch/registry.codec_for`), submits a chunk, reports a batch's
state and streams per-line outcomes keyed by `custom_id`. It never decides what happens to a
job: that is `engine.py`'s work. Which kinds have one is the kind table's `batch` entry
(`tierline.config.KINDS`). SDKs are imported when a provider is built, never at module import.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ...config import BackendSettings
from ...errors import ConfigError
from ...jobs import dumps, loads
from ..base import Completion, Request
from ..registry import codec_for, implementation
from ._clients import sdk_and_http, sdk_errors
from .packing import ANTHROPIC_LIMITS, OPENAI_LIMITS, Limits

__all__ = [
    "BatchProvider",
    "BatchState",
    "LineOutcome",
    "Outcome",
    "make_provider",
    "safe_custom_id",
]

Outcome = Literal["ok", "error", "unfinished"]
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """What became of one request of a batch.

    "unfinished" means the provider never ran it (expired, cancelled, or its batch failed
    validation because of other lines): it can be resubmitted as it is.
    """

    custom_id: str
    outcome: Outcome
    completion: Completion | None = None
    error: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class BatchState:
    """A provider batch as last seen. `status` is the provider's own word for it."""

    status: str
    ended: bool
    counts: Mapping[str, int] = field(default_factory=dict)
    # OpenAI validation failures: (1-based input line or None, message)
    line_errors: tuple[tuple[int | None, str], ...] = ()
    files: tuple[str, ...] = ()  # OpenAI output and error file ids


class BatchProvider(Protocol):
    """One provider's batch API."""

    kind: str
    limits: Limits
    overhead: int  # bytes of the batch envelope around the requests

    def custom_id(self, job_id: str, used: set[str]) -> str:
        """A custom_id for `job_id` that the provider accepts and that is not in `used`."""
        ...

    def encode(self, request: Request) -> dict[str, Any]:
        """The request body (OpenAI) or params (Anthropic) for one job."""
        ...

    def line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        """The encoded form of one request inside a batch (its size counts against the limit)."""
        ...

    async def submit(
        self, requests: Sequence[tuple[str, Mapping[str, Any]]], metadata: Mapping[str, str]
    ) -> tuple[str, str | None]:
        """Create a batch of (custom_id, body) requests; return (provider batch id, uploaded
        input file id or None)."""
        ...

    async def retrieve(self, batch_id: str) -> BatchState: ...

    def results(self, batch_id: str, state: BatchState) -> AsyncIterator[LineOutcome]:
        """Every line the provider reports on, in the provider's (arbitrary) order."""
        ...

    async def cancel(self, batch_id: str) -> None: ...

    async def aclose(self) -> None: ...


def safe_custom_id(job_id: str, used: set[str]) -> str:
    """An id matching `^[a-zA-Z0-9_-]{1,64}$`, unique within `used` (which it extends).

    A job id that already matches is kept, so the provider's console shows the user's ids.
    Others keep a readable prefix plus a hash of the whole id, so two ids that differ only in
    the characters replaced ("a b", "a/b") still map apart.
    """
    if CUSTOM_ID.match(job_id) and job_id not in used:
        candidate = job_id
    else:
        digest = hashlib.blake2b(job_id.encode(), digest_size=6).hexdigest()
        candidate = f"{re.sub(r'[^a-zA-Z0-9_-]', '_', job_id)[:48]}-{digest}"
        n = 1
        while candidate in used:  # only when a user's own id happens to look like a mapped one
            candidate = f"{candidate[:56]}-{n}"
            n += 1
    used.add(candidate)
    return candidate


# --- OpenAI ---------------------------------------------------------------------------------

# A line in the error file without an HTTP response: the request never ran.
_OPENAI_UNRUN = frozenset({"batch_expired", "batch_cancelled"})
_OPENAI_ENDED = frozenset({"completed", "expired", "cancelled", "failed"})


class OpenAIBatches:
    """OpenAI's Files + Batch API, for any kind whose codec speaks an OpenAI endpoint.

    Request bodies and output lines go through the kind's codec (`ChatCodec` for `openai`), the
    same the synchronous backend uses, so a job asks the same thing either way.
    """

    overhead = 0

    def __init__(self, name: str, config: Any, limits: Limits | None) -> None:
        from ..openai_chat import INSTALL, openai_client

        self.name = name
        self.kind = config.kind
        self.model = config.model
        self.limits = limits or OPENAI_LIMITS
        self.codec = codec_for(config)
        self.endpoint = "/v1" + self.codec.path  # the codec's path is under the SDK's /v1
        self._sdk, key, http = sdk_and_http(name, config, "openai", INSTALL)
        self.client = openai_client(self._sdk, config, url=config.endpoint, key=key, http=http)

    def custom_id(self, job_id: str, used: set[str]) -> str:
        # OpenAI takes any unique string, and job ids are already unique within a run.
        used.add(job_id)
        return job_id

    def encode(self, request: Request) -> dict[str, Any]:
        return self.codec.encode(request)

    def line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        row = {"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": body}
        return dumps(row) + b"\n"

    async def submit(
        self, requests: Sequence[tuple[str, Mapping[str, Any]]], metadata: Mapping[str, str]
    ) -> tuple[str, str | None]:
        # Spool to disk: an input file may be 200 MB and only one needs to exist at a time.
        with tempfile.TemporaryFile() as spool:
            for custom_id, body in requests:
                spool.write(self.line(custom_id, body))
            spool.seek(0)
            with sdk_errors(self._sdk, f"{self.name}: upload of the batch input file"):
                upload = await self.client.files.create(
                    file=("tierline-batch.jsonl", spool), purpose="batch"
                )
        with sdk_errors(self._sdk, f"{self.name}: batch creation"):
            batch = await self.client.batches.create(
                input_file_id=upload.id,
                endpoint=self.endpoint,
                completion_window="24h",
                metadata=dict(metadata),
            )
        return str(batch.id), str(upload.id)

    async def retrieve(self, batch_id: str) -> BatchState:
        with sdk_errors(self._sdk, f"{self.name}: batch {batch_id}"):
            batch = await self.client.batches.retrieve(batch_id)
        counts = batch.request_counts.model_dump() if batch.request_counts else {}
        errors = (batch.errors.data or []) if batch.errors else []
        line_errors = tuple(
            (e.line, f"{e.code}: {e.message}" if e.code else str(e.message)) for e in errors
        )
        files = tuple(f for f in (batch.output_file_id, batch.error_file_id) if f)
        return BatchState(batch.status, batch.status in _OPENAI_ENDED, counts, line_errors, files)

    async def results(self, batch_id: str, state: BatchState) -> AsyncIterator[LineOutcome]:
        for file_id in state.files:
            with sdk_errors(self._sdk, f"{self.name}: results of batch {batch_id}"):
                content = self.client.files.with_streaming_response.content(file_id)
                async with content as response:
                    async for text in response.iter_lines():
                        if text.strip():
                            yield self._outcome(loads(text))

    def _outcome(self, row: Mapping[str, Any]) -> LineOutcome:
        custom_id = str(row.get("custom_id"))
        response = row.get("response")
        if response is None:
            error = row.get("error") or {}
            code = str(error.get("code") or "batch_error")
            message = f"{code}: {error.get('message') or 'the request did not run'}"
            outcome: Outcome = "unfinished" if code in _OPENAI_UNRUN else "error"
            return LineOutcome(custom_id, outcome, error={"type": code, "message": message})
        status = int(response.get("status_code") or 0)
        body = response.get("body") or {}
        if 200 <= status < 300:
            return LineOutcome(custom_id, "ok", self.codec.decode(body))
        err = body.get("error")
        text = err.get("message") if isinstance(err, Mapping) else None
        message = f"{self.name}: HTTP {status}: {text or 'error'}"
        return LineOutcome(custom_id, "error", error={"type": "backend_error", "message": message})

    async def cancel(self, batch_id: str) -> None:
        with sdk_errors(self._sdk, f"{self.name}: cancelling batch {batch_id}"):
            await self.client.batches.cancel(batch_id)

    async def aclose(self) -> None:
        await self.client.close()


# --- Anthropic --------------------------------------------------------------------------------


class AnthropicBatches:
    """Anthropic's Message Batches API.

    Params and results go through the kind's codec (`MessagesCodec`), the same the synchronous
    backend uses. Job ids become safe custom_ids (`safe_custom_id`); the ledger keeps the
    mapping, so results join back to jobs whatever order they come in.
    """

    overhead = len(b'{"requests":[]}')

    def __init__(self, name: str, config: Any, limits: Limits | None) -> None:
        from ..anthropic import anthropic_client

        self.name = name
        self.kind = config.kind
        self.model = config.model
        self.limits = limits or ANTHROPIC_LIMITS
        self.codec = codec_for(config)
        self._sdk, key, http = sdk_and_http(name, config, "anthropic", "anthropic")
        self.client = anthropic_client(self._sdk, config, key=key, http=http)

    def custom_id(self, job_id: str, used: set[str]) -> str:
        return safe_custom_id(job_id, used)

    def encode(self, request: Request) -> dict[str, Any]:
        return self.codec.encode(request)

    def line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        return dumps({"custom_id": custom_id, "params": body}) + b","  # one list element

    async def submit(
        self, requests: Sequence[tuple[str, Mapping[str, Any]]], metadata: Mapping[str, str]
    ) -> tuple[str, str | None]:
        del metadata  # Message Batches take no metadata; the ledger keeps the link instead
        params = [{"custom_id": cid, "params": body} for cid, body in requests]
        with sdk_errors(self._sdk, f"{self.name}: batch creation"):
            batch = await self.client.messages.batches.create(requests=params)
        return str(batch.id), None

    async def retrieve(self, batch_id: str) -> BatchState:
        with sdk_errors(self._sdk, f"{self.name}: batch {batch_id}"):
            batch = await self.client.messages.batches.retrieve(batch_id)
        status = str(batch.processing_status)
        return BatchState(status, status == "ended", batch.request_counts.model_dump())

    async def results(self, batch_id: str, state: BatchState) -> AsyncIterator[LineOutcome]:
        del state
        with sdk_errors(self._sdk, f"{self.name}: results of batch {batch_id}"):
            decoder = await self.client.messages.batches.results(batch_id)
            async for item in decoder:
                yield self._outcome(item)

    def _outcome(self, item: Any) -> LineOutcome:
        result = item.result
        if result.type == "succeeded":
            message = result.message.model_dump(mode="json")
            return LineOutcome(item.custom_id, "ok", self.codec.decode(message))
        if result.type == "errored":
            inner = result.error.error
            message = f"{self.name}: {inner.type}: {inner.message}"
            return LineOutcome(
                item.custom_id, "error", error={"type": "backend_error", "message": message}
            )
        # "canceled" or "expired": the request never ran
        kind = f"batch_{result.type}"
        message = f"{kind}: the batch ended before this request ran"
        return LineOutcome(item.custom_id, "unfinished", error={"type": kind, "message": message})

    async def cancel(self, batch_id: str) -> None:
        with sdk_errors(self._sdk, f"{self.name}: cancelling batch {batch_id}"):
            await self.client.messages.batches.cancel(batch_id)

    async def aclose(self) -> None:
        await self.client.close()


def make_provider(
    name: str, config: BackendSettings, limits: Limits | None = None
) -> BatchProvider:
    """The batch provider the kind table names for this backend's kind."""
    ref = config.entry.batch
    if ref is None:
        raise ConfigError(f"backends.{name}: kind {config.kind!r} has no provider batch API")
    provider: BatchProvider = implementation(ref)(name, config, limits)
    return provider
