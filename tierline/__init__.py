"""tierline: tier batch LLM jobs and dispatch them to the cheapest backend that can do them well."""

from .config import Config, load_config
from .dispatch.base import Backend, Completion, Request
from .errors import ExitCode, TierlineError
from .jobs import InvalidLine, Job, Message, Result, Usage, read_jobs
from .tiering.pipeline import Tierer
from .tiering.vote import TierVote

__all__ = [
    "Backend",
    "Completion",
    "Config",
    "ExitCode",
    "InvalidLine",
    "Job",
    "Message",
    "Request",
    "Result",
    "TierVote",
    "Tierer",
    "TierlineError",
    "Usage",
    "load_config",
    "read_jobs",
]
