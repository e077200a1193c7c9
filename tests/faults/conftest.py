"""Fixtures for the fault-injection suite: a devcloud per test, a seed, a bytecode cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agentcloud import Cloud, running_cloud

pytestmark = pytest.mark.integration


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    with running_cloud(tmp_path) as running:
        yield running


@pytest.fixture
def seed() -> int:
    """The kill schedule's seed: ``FAULTS_SEED`` to replay one, else a fixed default."""
    return int(os.environ.get("FAULTS_SEED", "20261201"))


@pytest.fixture(scope="session")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bytecode cache for every agent process this run starts (not in the tree)."""
    return tmp_path_factory.mktemp("pycache")
