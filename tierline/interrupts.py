"""Graceful stops on SIGINT and SIGTERM.

The first signal stops reading new jobs; calls already in flight get `grace_s` seconds to finish
(their results are written, so a resume need not pay for them again), then the rest are
cancelled and left for the resume. A second signal cancels at once. The run then flushes its
results and ledger and the CLI exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Set
from typing import TypeVar

from .errors import ExitCode

__all__ = ["DEFAULT_GRACE_S", "Stop"]

T = TypeVar("T")

# Short enough to fit inside Docker's and Kubernetes' SIGTERM-to-SIGKILL windows (10 s / 30 s)
# with time left to flush; long enough for most small completions to land.
DEFAULT_GRACE_S = 5.0

EXIT_CODES: dict[int, ExitCode] = {
    signal.SIGINT: ExitCode.INTERRUPTED,
    signal.SIGTERM: ExitCode.TERMINATED,
}


class Stop:
    """A stop request shared by the signal handlers and the run loop."""

    def __init__(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.grace_s = grace_s
        self.signum: int | None = None
        self.code: ExitCode | None = None  # set by `halt`: a stop for the run's own reason
        self._requested = asyncio.Event()
        self._abort = asyncio.Event()

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    @property
    def exit_code(self) -> ExitCode | None:
        if self.code is not None:
            return self.code
        return None if self.signum is None else EXIT_CODES.get(self.signum, ExitCode.TERMINATED)

    def halt(self, code: ExitCode) -> None:
        """Stop as a first signal does, for a reason of the run's own (its output cannot be
        written): nothing new is sent, in-flight calls get the grace period to finish and be
        recorded in the ledger. The run then exits with `code`."""
        if self._requested.is_set():
            return
        self.code = code
        self._requested.set()

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask the run to stop (what a signal does); a second request cancels at once."""
        if self._requested.is_set():
            self._abort.set()
            return
        self.signum = signum
        self._requested.set()

    async def guard(self, work: Awaitable[T]) -> T:
        """Await `work` with SIGINT and SIGTERM turned into stop requests."""
        loop = asyncio.get_running_loop()
        for sig in EXIT_CODES:
            loop.add_signal_handler(sig, self.request, sig)
        try:
            return await work
        finally:
            for sig in EXIT_CODES:
                loop.remove_signal_handler(sig)

    async def acquire(self, slots: asyncio.Semaphore) -> bool:
        """Take a slot in the in-flight window; False when a stop comes first."""
        if self.requested:
            return False
        if not slots.locked():
            await slots.acquire()  # free slot: no suspension, no extra tasks
            return True
        getting = asyncio.ensure_future(slots.acquire())
        stopping = asyncio.ensure_future(self._requested.wait())
        await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not getting.done():
            getting.cancel()
        await asyncio.gather(getting, return_exceptions=True)
        got = getting.done() and not getting.cancelled() and getting.exception() is None
        if got and self._requested.is_set():  # both finished at once: the stop wins
            slots.release()
            return False
        return got

    async def drain(self, pending: Set[asyncio.Task[None]]) -> None:
        """Wait for the tasks; once a stop is requested, for at most `grace_s` more (or until a
        second signal), then cancel the rest. A task's own exception (a bug) is re-raised."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.ensure_future(self._requested.wait())
        aborting = asyncio.ensure_future(self._abort.wait())
        deadline: float | None = None
        try:
            while pending and not self._abort.is_set():
                if self.requested and deadline is None:
                    deadline = loop.time() + self.grace_s
                timeout = None if deadline is None else deadline - loop.time()
                if timeout is not None and timeout <= 0:
                    break
                wake = {stopping} if deadline is None else {aborting}
                done, _ = await asyncio.wait(
                    {*pending, *wake}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done - wake:
                    error = None if task.cancelled() else task.exception()
                    if error is not None:
                        raise error
            left = list(pending)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        finally:
            stopping.cancel()
            aborting.cancel()
