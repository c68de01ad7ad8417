"""The one entry point for checks, used by developers and CI alike: lint, types, tests.

Usage: python scripts/check.py [extra pytest args]
"""

from __future__ import annotations

import subprocess
import sys

STEPS = [
    ["ruff", "check", "tierline", "tests", "benchmarks", "scripts", "examples"],
    ["mypy"],
    ["pytest"],
]


def main(argv: list[str]) -> int:
    for step in STEPS:
        command = [sys.executable, "-m", *step, *(argv if step[0] == "pytest" else [])]
        print("+", " ".join(step), flush=True)  # noqa: T201 - a task runner reports its steps
        code = subprocess.call(command)
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
