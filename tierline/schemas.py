"""Guards for the JSON schemas that jobs bring: everything that walks a job's schema goes here.

A schema comes from the job file, so it is untrusted input. Three things could go wrong with
it, and each becomes a per-job error instead of a crash or a request to somewhere else:

* a `$ref` to another document (`http://...`, `file:...`, a relative path): jsonschema's old
  resolver fetched such URLs (and llama-cpp-python's grammar converter can fetch `https://`
  refs when fetching is allowed), so a job file could make this host send requests anywhere. Only references inside the job's
  own schema (`#...`) are allowed, and validation uses a registry that refuses everything else;
* a cycle of references that never consumes any of the answer (`{"$ref": "#/$defs/a", "$defs":
  {"a": {"$ref": "#/$defs/a"}}}`, or through `allOf`/`anyOf`/...): validating it, or turning it
  into a grammar, recurses until Python's stack runs out;
* sheer size or nesting: limits keep walking it cheap and within the stack.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote

__all__ = [
    "MAX_SCHEMA_DEPTH",
    "MAX_SCHEMA_NODES",
    "SchemaProblem",
    "check_schema",
    "local_registry",
    "schema_errors",
]

MAX_SCHEMA_DEPTH = 64  # nested objects/arrays in the schema document; real schemas use < 20
MAX_SCHEMA_NODES = 20_000  # objects, arrays and values in it

# Keywords that apply a subschema to the *same* instance: a cycle through only these never
# ends. (`properties`, `items`, ... move into the instance, so recursion through them is
# bounded by the answer's own depth, which the validator guards with RecursionError.)
_IN_PLACE = ("allOf", "anyOf", "oneOf")
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_MAP = ("dependentSchemas",)
_REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")


class SchemaProblem(ValueError):
    """A job's schema that tierline will not use; the message says where and why."""


def _pointer(path: tuple[str | int, ...]) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _walk(schema: Any) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every node with its path, iteratively (no recursion), enforcing depth and size."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), schema)]
    count = 0
    while stack:
        path, node = stack.pop()
        count += 1
        if count > MAX_SCHEMA_NODES:
            raise SchemaProblem(f"the schema has more than {MAX_SCHEMA_NODES} nodes")
        if len(path) > MAX_SCHEMA_DEPTH:
            raise SchemaProblem(
                f"the schema is nested deeper than {MAX_SCHEMA_DEPTH} levels at {_pointer(path[:8])}/..."
            )
        yield path, node
        if isinstance(node, Mapping):
            stack.extend(((*path, str(k)), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend(((*path, i), v) for i, v in enumerate(node))


def _resolve(root: Any, ref: str) -> tuple[tuple[str | int, ...], Any] | None:
    """The target of a `#/json/pointer` or `#anchor` reference inside `root`, else None."""
    fragment = unquote(ref[1:])
    if fragment and not fragment.startswith("/"):
        for path, node in _walk(root):  # a plain-name fragment: an `$anchor`
            if isinstance(node, Mapping) and fragment in (
                node.get("$anchor"),
                node.get("$dynamicAnchor"),
            ):
                return path, node
        return None
    node, path = root, ()
    for raw in fragment.split("/")[1:] if fragment else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node, path = node[part], (*path, part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node, path = node[int(part)], (*path, int(part))
        else:
            return None
    return path, node


def _in_place_children(node: Mapping[str, Any]) -> Iterator[tuple[str | int, ...]]:
    """Relative paths of the subschemas `node` applies to the same instance."""
    for key in _IN_PLACE:
        value = node.get(key)
        if isinstance(value, list):
            yield from ((key, i) for i in range(len(value)))
    for key in _IN_PLACE_ONE:
        if isinstance(node.get(key), Mapping):
            yield (key,)
    for key in _IN_PLACE_MAP:
        value = node.get(key)
        if isinstance(value, Mapping):
            yield from ((key, str(k)) for k in value)


def _node_at(root: Any, path: tuple[str | int, ...]) -> Any:
    node = root
    for part in path:
        node = node[part]
    return node


def check_schema(schema: Any) -> None:
    """Raise SchemaProblem unless `schema` is safe to validate against and to compile.

    Checks size and depth, that every reference points inside the schema and resolves, that no
    cycle of in-place references exists, and finally the schema against its metaschema.
    """
    if not isinstance(schema, Mapping):
        raise SchemaProblem("a JSON schema must be an object")
    refs: dict[tuple[str | int, ...], tuple[str | int, ...]] = {}  # node path -> target path
    for path, node in _walk(schema):
        if not isinstance(node, Mapping):
            continue
        for key in _REF_KEYS:
            ref = node.get(key)
            if ref is None:
                continue
            where = _pointer((*path, key))
            if not isinstance(ref, str) or not ref.startswith("#"):
                raise SchemaProblem(
                    f"{where}: {key} {ref!r} points outside the job's schema; only references "
                    "inside it ('#/$defs/...') are allowed (nothing is fetched)"
                )
            target = _resolve(schema, ref)
            if target is None:
                raise SchemaProblem(f"{where}: {key} {ref!r} does not resolve inside the schema")
            refs[path] = target[0]
    _refuse_cycles(schema, refs)
    _check_against_metaschema(schema)


def _refuse_cycles(
    schema: Mapping[str, Any], refs: Mapping[tuple[str | int, ...], tuple[str | int, ...]]
) -> None:
    """A depth-first search over in-place edges (references and allOf/anyOf/...), iterative."""
    if not refs:
        return  # without references no cycle is possible

    def edges(path: tuple[str | int, ...]) -> list[tuple[str | int, ...]]:
        node = _node_at(schema, path)
        if not isinstance(node, Mapping):
            return []
        out = [(*path, *child) for child in _in_place_children(node)]
        if path in refs:
            out.append(refs[path])
        return out

    state: dict[tuple[str | int, ...], int] = {}  # 1: on the current path, 2: done
    for start in list(refs):
        if state.get(start):
            continue
        stack = [(start, iter(edges(start)))]
        state[start] = 1
        while stack:
            path, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[path] = 2
                stack.pop()
                continue
            seen = state.get(child)
            if seen == 1:
                raise SchemaProblem(
                    f"{_pointer(path)}: a cycle of references that never reaches a value "
                    f"(through {_pointer(child)}); it would recurse forever"
                )
            if seen is None:
                state[child] = 1
                stack.append((child, iter(edges(child))))


def _check_against_metaschema(schema: Mapping[str, Any]) -> None:
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        where = _pointer(tuple(exc.absolute_path)) if exc.absolute_path else "(root)"
        raise SchemaProblem(f"the schema is invalid at {where}: {exc.message}") from None


def schema_errors(schema: Any) -> str | None:
    """`check_schema`'s complaint as text, or None when the schema is fine."""
    try:
        check_schema(schema)
    except SchemaProblem as exc:
        return str(exc)
    return None


def _refuse(uri: str) -> Any:
    from referencing.exceptions import NoSuchResource

    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


def local_registry() -> Any:
    """A `referencing.Registry` that retrieves nothing: no network, no file system."""
    from referencing import Registry

    return Registry(retrieve=_refuse)  # type: ignore[call-arg]
