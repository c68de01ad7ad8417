"""Shared data for the tiering tests: a small labelled slice that trains in about a second."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierline.tiering.train import LabelledPrompt, read_labelled

DATA = Path(__file__).parent / "data"
HANDWRITTEN = (
    Path(__file__).resolve().parents[2]
    / "tierline"
    / "tiering"
    / "data"
    / "handwritten-train.jsonl"
)


@pytest.fixture(scope="session")
def small_rows() -> list[LabelledPrompt]:
    """The hand-written training prompts: all three tiers, a few sources, 134 rows."""
    return read_labelled(HANDWRITTEN)
