"""Token estimates before a call is made: a best guess for `tierline plan`, and a hard upper
bound for the `--max-cost` budget. Recorded costs never use these: they use reported usage.

Best guess (docs/costs.md has the measured error): a word-piece count. Each run of letters is
one token plus one per further 7 letters, each digit and each punctuation mark is one token,
plus a chat-template overhead per message. On 3,000 prompts of the tier training set this is
within 6% of the real token count for the median prompt (chars/4: 13%), and 2% off in total.

Upper bound: byte-level BPE tokenizers (GPT, Claude, Llama, SmolLM2) never make more tokens than
the text has UTF-8 bytes, so bytes plus a generous template allowance per message bounds the
prompt whatever its language or content.
"""

from __future__ import annotations

import json
import re

from ..jobs import Job

__all__ = [
    "estimate_input_tokens",
    "estimate_output_tokens",
    "estimate_text_tokens",
    "input_token_bound",
]

_PIECES = re.compile(r"[^\W\d_]+|\d|[^\w\s]|_")
LETTERS_PER_EXTRA_TOKEN = 7
TEMPLATE_TOKENS_PER_MESSAGE = 4  # role markers and separators of a chat template
TEMPLATE_TOKENS = 3  # the assistant turn's priming
# In-process llama.cpp: the embedded SmolLM2's ChatML template injects a default system prompt
# (measured: 26 tokens beyond the text on examples/jobs.jsonl), and a JSON schema becomes a
# grammar, not prompt tokens.
LOCAL_TEMPLATE_TOKENS = 26
BOUND_TOKENS_PER_MESSAGE = 32  # generous: some templates inject a default system prompt
BOUND_TOKENS = 64

# The share of max_tokens a job's answer is expected to use, by task; measured on the
# examples with the embedded model (docs/costs.md). Short labels stop early; prose runs long.
OUTPUT_SHARE = {
    "classify": 0.6,
    "classification": 0.6,
    "extract": 0.7,
    "qa": 0.7,
    "summarize": 0.7,
}
DEFAULT_OUTPUT_SHARE = 0.8


def estimate_text_tokens(text: str) -> int:
    """Best-guess token count of a text."""
    n = 0
    for match in _PIECES.finditer(text):
        piece = match.group()
        n += 1 + (len(piece) - 1) // LETTERS_PER_EXTRA_TOKEN if piece.isalpha() else 1
    return n


def _parts(job: Job) -> list[str]:
    parts = [job.system] if job.system else []
    parts.extend(m.content for m in job.messages)
    return parts


def _schema_text(job: Job) -> str:
    # A response schema is sent along (and counted as prompt by OpenAI and Anthropic).
    schema = job.json_schema
    return json.dumps(schema) if schema else ""


def estimate_input_tokens(job: Job, *, in_process: bool = False) -> int:
    """Best-guess prompt tokens of a job, template included: an in-process model's own chat
    template (`Kind.in_process`), else an API's."""
    parts = _parts(job)
    text = sum(estimate_text_tokens(p) for p in parts)
    if in_process:
        return text + LOCAL_TEMPLATE_TOKENS + TEMPLATE_TOKENS_PER_MESSAGE * (len(parts) - 1)
    return (
        text
        + estimate_text_tokens(_schema_text(job))
        + TEMPLATE_TOKENS_PER_MESSAGE * len(parts)
        + TEMPLATE_TOKENS
    )


def input_token_bound(job: Job) -> int:
    """A prompt-token count the provider cannot exceed (UTF-8 bytes plus template allowance)."""
    parts = _parts(job)
    size = sum(len(p.encode()) for p in parts) + len(_schema_text(job).encode())
    return size + BOUND_TOKENS_PER_MESSAGE * len(parts) + BOUND_TOKENS


def estimate_output_tokens(job: Job, max_tokens: int) -> int:
    """Best-guess answer tokens: a task-dependent share of the job's max_tokens."""
    share = OUTPUT_SHARE.get((job.task or "").lower(), DEFAULT_OUTPUT_SHARE)
    return max(1, round(max_tokens * share))
