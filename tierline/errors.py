"""One error tree for tierline, and the exit codes the CLI maps it to.

    TierlineError                     anything tierline reports as a one-line message
    ├── ConfigError                   a config file or option is wrong (exit 2)
    ├── UsageError                    a command line is wrong (exit 2)
    ├── JobError                      one input line is bad; becomes that job's error result
    ├── BudgetExceeded                the run's --max-cost would be passed (exit 3)
    ├── LockedError                   another run holds the output's lock (exit 5)
    └── BackendError                  a backend failed to answer one request
        ├── BackendUnavailable        the backend cannot serve at all (no key, no SDK, circuit open)
        ├── BackendConnectionError    the request never got an HTTP answer (refused, reset, timeout)
        │   └── BackendTimeout
        └── BackendStatusError        the server answered with an error status (status_code)

Messages say how to fix the problem. They never contain API keys: backends build them from
status codes and server messages only, and `redact()` scrubs anything that looks like a key.
"""

from __future__ import annotations

import enum
import os
import re

__all__ = [
    "BackendConnectionError",
    "BackendError",
    "BackendStatusError",
    "BackendTimeout",
    "BackendUnavailable",
    "BudgetExceeded",
    "ConfigError",
    "ExitCode",
    "JobError",
    "LockedError",
    "TierlineError",
    "UsageError",
    "redact",
]


class ExitCode(enum.IntEnum):
    """Process exit codes; README's "Exit codes" table documents each one."""

    OK = 0  # every job succeeded
    JOBS_FAILED = 1  # some jobs failed; each failure is in the results
    USAGE = 2  # bad command line or configuration; nothing was dispatched
    BUDGET = 3  # --max-cost stopped the run (or the plan would exceed it)
    PENDING = 4  # provider batches were submitted and are not finished yet
    LOCKED = 5  # another tierline run holds the lock on this output
    INTERNAL = 70  # a bug in tierline (EX_SOFTWARE); TIERLINE_DEBUG=1 shows the traceback
    OUTPUT_FAILED = 74  # the results could not be written (disk full, I/O error): EX_IOERR
    INTERRUPTED = 130  # SIGINT: results so far are flushed; rerun to resume
    TERMINATED = 143  # SIGTERM: likewise
    BROKEN_PIPE = 141  # the reader of stdout went away (128 + SIGPIPE, what `yes | head` gives)


class TierlineError(Exception):
    """Base of every error tierline reports to a person as a one-line message."""

    exit_code: ExitCode = ExitCode.JOBS_FAILED


class ConfigError(TierlineError):
    """The configuration is invalid; the message names the file and the key."""

    exit_code = ExitCode.USAGE


class UsageError(TierlineError):
    """The command line is invalid (an unreadable input file, a bad flag combination)."""

    exit_code = ExitCode.USAGE


class JobError(TierlineError):
    """One input line cannot become a job; it becomes an error result, never a crash."""

    def __init__(self, message: str, *, kind: str = "invalid_job") -> None:
        super().__init__(message)
        self.kind = kind


class BudgetExceeded(TierlineError):
    """Spending more would pass the run's cost cap."""

    exit_code = ExitCode.BUDGET


class LockedError(TierlineError):
    """Another run holds the advisory lock on the same output."""

    exit_code = ExitCode.LOCKED


class BackendError(TierlineError):
    """A backend could not answer one request.

    `retryable` tells the one retry layer (dispatch/retry.py) whether trying again can help;
    `retry_after` carries a server-directed delay in seconds when the server sent one.
    """

    retryable = False
    # Set by a replicated backend when another replica can take the retry at once (a vLLM 503
    # "engine busy", a refused connection): the retry layer then skips its backoff.
    retry_elsewhere = False
    # Set by a replicated backend when the failure is one replica's, not the backend's (another
    # replica is alive, or this one was not probed down): it does not count against the circuit.
    spares_circuit = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(redact(message))
        self.retry_after = retry_after


class BackendUnavailable(BackendError):
    """The backend cannot serve at all: a missing key or SDK, or its circuit is open.

    The router hands the job to the next backend of the tier's chain.
    """


class BackendConnectionError(BackendError):
    """No HTTP answer: connection refused or reset, DNS failure."""

    retryable = True


class BackendTimeout(BackendConnectionError):
    """The request took longer than the backend's timeout."""


class BackendStatusError(BackendError):
    """The server answered with an error status."""

    # 408 timeout, 409 conflict, 429 rate limit, 5xx server errors, 529 Anthropic overload:
    # the same predicate the vendor SDKs use (openai-python _base_client._should_retry).
    RETRYABLE_STATUS = frozenset({408, 409, 429})

    def __init__(self, message: str, *, status_code: int, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status_code = status_code
        self.retryable = status_code in self.RETRYABLE_STATUS or status_code >= 500


_KEY_PATTERNS = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9_\-\.]{8,})"
)


def redact(text: str) -> str:
    """Scrub API keys from a message: known key shapes and the values of *_API_KEY variables."""
    text = _KEY_PATTERNS.sub("[redacted]", text)
    for name, value in os.environ.items():
        if name.endswith(("_API_KEY", "_TOKEN")) and len(value) >= 8 and value in text:
            text = text.replace(value, "[redacted]")
    return text
