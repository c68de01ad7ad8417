"""Cut OpenAI's OpenAPI spec (MIT) down to what tierline's tests check, and write it into the repo.

    python scripts/trim_openai_spec.py PATH/TO/openai-openapi.yaml

writes ``tests/fakes/openapi/openai-openapi.yaml``: the ``paths`` below and every
``components`` entry they or ``ROOT_SCHEMAS`` reach through ``$ref`` (nothing else), unchanged.
The same input gives the same output byte for byte, so a newer spec is one command away. The
``LICENSE`` beside the output is OpenAI's, copied by hand once; ``README.md`` there says where the
input came from.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parent.parent / "tests/fakes/openapi/openai-openapi.yaml"
# The endpoints tierline and its fakes speak (spec paths carry no /v1 prefix).
PATHS = (
    "/chat/completions",
    "/responses",
    "/batches",
    "/batches/{batch_id}",
    "/batches/{batch_id}/cancel",
    "/files",
    "/files/{file_id}",
    "/files/{file_id}/content",
)
# Schemas the tests name directly (tests.fakes.spec.REQUEST_SCHEMAS and validate()).
ROOT_SCHEMAS = (
    "CreateChatCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateResponse",
    "Response",
    "CreateBatchRequest",
    "Batch",
    "OpenAIFile",
    "ErrorResponse",
)
HEADER = (
    "# OpenAI's OpenAPI spec (MIT, see LICENSE beside this file), cut down by\n"
    "# scripts/trim_openai_spec.py to the paths and schemas tierline's tests use. Do not edit.\n"
)


def refs(node: Any) -> Iterator[tuple[str, str]]:
    """Every ``#/components/<kind>/<name>`` reference inside ``node``."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            kind, name = ref.removeprefix("#/components/").split("/", 1)
            yield kind, name
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def trim(spec: dict[str, Any]) -> dict[str, Any]:
    components = spec["components"]
    keep: dict[str, set[str]] = {}
    todo = [("schemas", name) for name in ROOT_SCHEMAS]
    todo += list(refs({p: spec["paths"][p] for p in PATHS}))
    while todo:
        kind, name = todo.pop()
        if name in keep.setdefault(kind, set()):
            continue
        keep[kind].add(name)
        todo.extend(refs(components[kind][name]))
    return {
        "openapi": spec["openapi"],
        "info": spec["info"],
        "paths": {p: spec["paths"][p] for p in PATHS},
        "components": {
            kind: {name: components[kind][name] for name in sorted(names)}
            for kind, names in sorted(keep.items())
        },
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)  # noqa: T201
        return 2
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec = yaml.load(Path(argv[0]).read_text(encoding="utf-8"), Loader=loader)
    text = yaml.safe_dump(trim(spec), sort_keys=False, allow_unicode=True, width=100)
    OUT.write_text(HEADER + text, encoding="utf-8")
    kept = sum(len(v) for v in trim(spec)["components"].values())
    print(f"{OUT.name}: {len(PATHS)} paths, {kept} components, {len(text):,} bytes")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
