"""`tierline classify`: tier each job without dispatching it."""

from __future__ import annotations

import typer

from ..config import default_tiering, find_config_path, load_config
from ..run.classify import classify_files
from .options import ConfigPath, Inputs, Output, Quiet
from .output import err_console
from .preflight import check_inputs, check_stdio, resolve_output


def classify(
    inputs: Inputs,
    output: Output = None,
    config: ConfigPath = None,
    quiet: Quiet = False,
) -> None:
    """Print each job back with its `tier`, a readable `why` and a `confidence`.

    The output is valid input for `tierline run` (the tier is kept as an override), so
    `tierline classify jobs.jsonl | jq 'select(.tier > 1)' | tierline run -` works.
    Exit 0 when every line was a valid job, 1 when some were not (they are in the output).
    """
    config_file = find_config_path(config)
    # With no config file only the default [tiering] is needed, and nothing to validate.
    tiering = load_config(config).tiering if config_file else default_tiering()
    check_stdio(inputs, output)
    check_inputs(inputs)
    output = resolve_output(output, inputs, None, config_file)  # never over an input or device
    done = classify_files(inputs, output, tiering)
    invalid = done.invalid
    if invalid:
        err_console.print(
            f"tierline: {invalid} invalid line(s); see the 'error' of each", markup=False
        )
    elif not quiet and output:
        err_console.print(f"tierline: classified {done.lines} job(s) into {output}", markup=False)
    raise typer.Exit(1 if invalid else 0)
