"""Deterministic answer checks: does a completion do what its job asked?

Each check is a pure callable `(Job, Completion) -> CheckFailure | None`. A failed check is what
escalation acts on: the job is sent again one tier up (the cascade idea of FrugalGPT, with
checks a machine can decide instead of a scoring model).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..config import CHECK_NAMES
from ..jobs import Job
from .base import Completion

__all__ = ["CHECKS", "DEFAULT_CHECKS", "Check", "CheckFailure", "run_checks"]


@dataclass(frozen=True, slots=True)
class CheckFailure:
    check: str  # the check's name, as in config
    detail: str  # what was wrong, for people


Check = Callable[[Job, Completion], CheckFailure | None]


def check_empty(job: Job, completion: Completion) -> CheckFailure | None:
    """An answer with no text is no answer."""
    del job
    if not completion.text.strip():
        return CheckFailure("empty", "the answer is empty")
    return None


# Openings that small models use to decline; matched only at the start of the answer, so an
# answer that merely discusses refusals is not flagged.
_REFUSAL = re.compile(
    r"^\s*(I'?m sorry,? but|I am sorry,? but|I (?:cannot|can'?t|won'?t|am unable to|'m unable to) "
    r"(?:help|assist|comply|provide|do that|answer)|As an AI(?: language model)?,? I (?:cannot|can'?t))",
    re.IGNORECASE,
)


def check_refusal(job: Job, completion: Completion) -> CheckFailure | None:
    """The provider said it refused, or the answer opens with a refusal."""
    del job
    if completion.finish_reason == "refusal":
        return CheckFailure("refusal", "the provider reported a refusal")
    match = _REFUSAL.match(completion.text)
    if match:
        return CheckFailure(
            "refusal", f"the answer opens with a refusal: {match.group(0).strip()!r}"
        )
    return None


def check_truncated(job: Job, completion: Completion) -> CheckFailure | None:
    """Generation stopped at max_tokens: the answer is cut off."""
    del job
    if completion.finish_reason in ("length", "max_tokens"):
        return CheckFailure("truncated", "the answer was cut off at max_tokens")
    return None


def check_json(job: Job, completion: Completion) -> CheckFailure | None:
    """A job that asked for JSON gets JSON, valid against its schema when it gave one."""
    if not job.response_format:
        return None
    try:
        value = json.loads(completion.text)
    except ValueError as exc:
        return CheckFailure("json", f"the answer is not valid JSON ({exc})")
    except RecursionError:  # an answer nested deeper than the stack: a model's output, not ours
        return CheckFailure("json", "the answer is nested too deeply to parse")
    schema = job.json_schema
    if schema is None:
        return None
    import jsonschema  # only jobs with a schema pay for the import
    from referencing.exceptions import Unresolvable

    from ..schemas import local_registry, schema_errors

    problem = schema_errors(schema)  # jobs.py refuses these when reading; Requests built
    if problem is not None:  # by library callers come here unchecked
        return CheckFailure("json", f"the job's schema cannot be used: {problem}")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        error = jsonschema.exceptions.best_match(
            cls(dict(schema), registry=local_registry()).iter_errors(value)
        )
    except (Unresolvable, RecursionError) as exc:  # never the network, never a crash
        return CheckFailure("json", f"the job's schema cannot be applied: {type(exc).__name__}")
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return CheckFailure(
            "json", f"the JSON does not match the schema at {where}: {error.message}"
        )
    return None


def _label(text: str) -> str:
    return re.sub(r"[\s\W_]+", " ", text).strip().lower()


def check_expect(job: Job, completion: Completion) -> CheckFailure | None:
    """The job's own `expect`: a regex the answer must match, or the labels it must be one of."""
    expect = job.expect
    if expect is None:
        return None
    if isinstance(expect, str):
        try:
            matched = re.search(expect, completion.text) is not None
        except re.error as exc:
            return CheckFailure("expect", f"the job's 'expect' is not a valid regex: {exc}")
        return None if matched else CheckFailure("expect", f"the answer does not match {expect!r}")
    answer = _label(completion.text)
    if answer in {_label(label) for label in expect}:
        return None
    shown = completion.text.strip()[:60]
    return CheckFailure("expect", f"the answer {shown!r} is not one of {list(expect)}")


CHECKS: dict[str, Check] = {
    "empty": check_empty,
    "refusal": check_refusal,
    "truncated": check_truncated,
    "json": check_json,
    "expect": check_expect,
}
DEFAULT_CHECKS: tuple[str, ...] = CHECK_NAMES  # config validates names against the same list
assert set(CHECKS) == set(CHECK_NAMES)


def run_checks(job: Job, completion: Completion, names: Iterable[str]) -> CheckFailure | None:
    """The first failing check among `names`, in the order given, or None if all pass."""
    for name in names:
        failure = CHECKS[name](job, completion)
        if failure is not None:
            return failure
    return None
