"""Fixtures for the fake-server tests: each fake is started per test and always stopped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakehelpers import KEY

from tests.fakes import FakeAnthropic, FakeLlamaServer, FakeOpenAI, FakeVLLM


@pytest.fixture
def oai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def ant() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def vllm() -> Iterator[FakeVLLM]:
    with FakeVLLM(model="m") as srv:
        yield srv


@pytest.fixture
def llama() -> Iterator[FakeLlamaServer]:
    with FakeLlamaServer() as srv:
        yield srv
