"""What `extra_body` may add to an OpenAI-compatible request without breaking the budget.

`extra_body` is merged into every request body last, so it could override what tierline sets
or multiply what each request is billed for. `--max-cost` reserves each job's worst case before
sending it (tierline/ledger/budget.py), so anything that multiplies billed output must enter
that worst case, and anything that cannot be bounded is refused when the config is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["OWNED", "UNBOUNDED", "check_extra_body", "output_copies"]

# Set by tierline per request (or its transport); an override would change what is asked or
# bill beyond the job's max_tokens, which the budget reserves.
OWNED = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options"}
)
# Tool definitions add prompt tokens that no estimate sees, and tool calls add turns.
UNBOUNDED = frozenset({"tools", "functions", "tool_choice", "parallel_tool_calls"})
# Each request is billed for this many generated sequences (vLLM's best_of generates that many
# and returns n of them; OpenAI bills every one of n choices).
COPIES = ("n", "best_of")


def check_extra_body(extra: Mapping[str, Any]) -> None:
    """Raise ValueError naming a key tierline cannot let through."""
    for key in sorted(extra):
        if key in OWNED:
            raise ValueError(
                f"{key!r} is set by tierline per job (max_tokens: the job's, or the backend's "
                "max_tokens); remove it from extra_body"
            )
        if key in UNBOUNDED:
            raise ValueError(
                f"{key!r} is not supported: tool definitions and calls make a job's cost "
                "impossible to bound under --max-cost"
            )
    for key in COPIES:
        value = extra.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{key!r} must be a positive integer, got {value!r}")


def output_copies(extra: Mapping[str, Any]) -> int:
    """The multiplier on billed output tokens: the larger of `n` and `best_of` (default 1).

    Reasoning (`reasoning_effort`, `chat_template_kwargs.enable_thinking`) is not a multiplier:
    reasoning tokens are generated tokens, bounded by the request's max_tokens like the rest."""
    return max([1, *(int(extra[k]) for k in COPIES if isinstance(extra.get(k), int))])
