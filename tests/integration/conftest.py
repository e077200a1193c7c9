"""Fixtures: a devcloud per test on its own loopback addresses, and an agent config for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agentcloud import Cloud, running_cloud

pytestmark = pytest.mark.integration


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    with running_cloud(tmp_path) as running:
        yield running
