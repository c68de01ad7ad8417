"""The kind table (`tierline.config.KINDS`): the config union, every kind-dependent decision, and
the two rules (`Config.route`, `Config.max_tokens_for`) that used to be written three times."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest

import tierline
from tierline.config import KINDS, Config, config_from_mapping
from tierline.dispatch import registry
from tierline.errors import ConfigError
from tierline.jobs import Job, Message


def config(backends: dict[str, Any], **extra: Any) -> Config:
    first = next(iter(backends))
    data = {"backends": backends, "routes": {"1": first, "2": first, "3": first}, **extra}
    return config_from_mapping(data, origin="t.toml")


def test_every_kind_is_one_entry_that_the_config_and_the_registry_follow() -> None:
    for name, kind in KINDS.items():
        assert kind.name == name
        assert name in registry.FACTORIES  # the dispatch side is built from the same table
        assert kind.factory.partition(":")[2], name  # "module:attribute"


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        config({"x": {"kind": "openai-chat", "model": "m"}})
    message = str(info.value)
    assert message.startswith("t.toml: backends.x: 'kind' must be one of:")
    assert all(name in message for name in KINDS)


def test_kind_specific_errors_name_the_key_without_the_kind() -> None:
    with pytest.raises(ConfigError, match=r"^t\.toml: backends\.x\.base_urls: Field required"):
        config({"x": {"kind": "openai-compatible", "model": "m"}})


def test_a_settings_class_must_match_its_kind() -> None:
    """Built directly, a settings class refuses a kind the table gives to another class."""
    openai = KINDS["openai"].config
    with pytest.raises(ValueError, match="not configured by"):
        openai(kind="anthropic", model="m")


def test_batch_mode_needs_a_kind_with_a_batch_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """`mode = "batch"` is refused for a kind whose entry names no batch provider."""
    assert config({"x": {"kind": "openai-responses", "model": "m", "mode": "batch"}})
    entry = dataclasses.replace(KINDS["openai-responses"], batch=None)
    monkeypatch.setitem(KINDS, "openai-responses", entry)
    with pytest.raises(ConfigError, match="has no provider batch API"):
        config({"x": {"kind": "openai-responses", "model": "m", "mode": "batch"}})


def test_facts_the_ledger_gets_name_no_kind() -> None:
    """Pricing key, endpoint and display model come from the entry, not from `kind` checks."""
    c = config(
        {
            "local": {"kind": "llamacpp"},
            "named": {"kind": "llamacpp", "model_name": "smol"},
            "gpu": {"kind": "openai-compatible", "model": "q", "base_url": "http://h:1/v1"},
            "api": {"kind": "openai", "model": "gpt-4o"},
            "claude": {"kind": "anthropic", "model": "claude-x", "base_url": "http://h:2"},
        }
    )
    b = c.backends
    assert b["local"].pricing_key.free and b["local"].endpoint == "in-process"
    assert (b["local"].display_model, b["named"].display_model) == ("llamacpp", "smol")
    assert b["gpu"].pricing_key.api_url == "http://h:1/v1" and not b["gpu"].pricing_key.free
    assert b["api"].pricing_key.provider_id == "openai"
    assert b["api"].endpoint == "https://api.openai.com/v1"
    assert (b["claude"].endpoint, b["claude"].pricing_key.provider_id) == (
        "http://h:2",
        "anthropic",
    )


def test_route_and_max_tokens_for() -> None:
    c = config(
        {
            "a": {"kind": "llamacpp", "max_tokens": 100},
            "b": {"kind": "openai", "model": "gpt-4o"},
        },
        defaults={"max_tokens": 7},
    )
    assert c.route(2) == ["a"]
    job = Job(id="j", line=1, source="-", messages=(Message("user", "hi"),), max_tokens=3)
    free = Job(id="k", line=2, source="-", messages=(Message("user", "hi"),))
    assert (c.max_tokens_for("a", job), c.max_tokens_for("a", free)) == (3, 100)
    assert (c.max_tokens_for("b"), c.max_tokens_for("b", free)) == (7, 7)


def _kind_branches(tree: ast.AST) -> list[int]:
    """Lines that decide something by a kind's name: a comparison with a kind name or with a
    `.kind`, or a `.kind` / kind name used as a key (`x[cfg.kind]`, `x.get(cfg.kind)`)."""

    def by_kind(node: ast.AST) -> bool:
        named = isinstance(node, ast.Constant) and node.value in KINDS
        return named or (isinstance(node, ast.Attribute) and node.attr == "kind")

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            hit = any(by_kind(n) for n in [node.left, *node.comparators])
            hit = hit or any(
                isinstance(c, ast.Tuple | ast.List | ast.Set) and any(map(by_kind, c.elts))
                for c in node.comparators
            )
        elif isinstance(node, ast.Subscript):
            hit = by_kind(node.slice)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            hit = node.func.attr == "get" and any(by_kind(a) for a in node.args[:1])
        else:
            continue
        if hit:
            lines.append(node.lineno)
    return lines


def test_no_module_decides_by_a_kind_name() -> None:
    """Every kind-dependent decision comes from its `KINDS` entry (issue 15): outside the table,
    the registry that reads it and the modules an entry names (which implement that kind),
    nothing compares or looks up a kind's name, so a new kind is one module and one entry."""
    root = Path(tierline.__file__).parent
    own = {root / "config.py", root / "dispatch" / "registry.py"}
    for kind in KINDS.values():
        for ref in filter(None, (kind.factory, kind.codec, kind.batch)):
            own.add(root / "dispatch" / (ref.partition(":")[0].replace(".", "/") + ".py"))
    found = {
        f"{path.relative_to(root.parent)}:{line}"
        for path in root.rglob("*.py")
        if path not in own
        for line in _kind_branches(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert not found, f"decisions by a kind's name outside its KINDS entry: {sorted(found)}"
