"""Fixtures for the fault-injection suite.

``cloud``: a devcloud per test on its own loopback addresses. ``proxied``: fault proxies
in front of its DPS and both hubs, each on its endpoint's own address (so the server
certificates' IP SANs still match) and one shared proxy port for the hubs (the agent's
config has one hub port, as Azure has). ``seed`` replays a kill schedule
(``FAULTS_SEED``); ``pycache`` keeps bytecode of agent processes out of the tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, load_config
from tests.support.agentcloud import Cloud, issue_device, running_cloud, write_config
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    with running_cloud(tmp_path) as running:
        yield running


@dataclass
class Proxied:
    """A devcloud behind fault proxies: ``dps``, and ``hubs`` by hub name."""

    cloud: Cloud
    dps: FaultProxy
    hubs: dict[str, FaultProxy]
    tmp: Path

    @property
    def hub_port(self) -> int:
        return next(iter(self.hubs.values())).port

    def all_hubs(self, action: str, **kwargs: Any) -> None:
        """Call ``action`` (``refuse``, ``forward``, ...) on every hub proxy."""
        for proxy in self.hubs.values():
            getattr(proxy, action)(**kwargs)

    def config(
        self, device_id: str, *, keep_alive_s: int | None = None, **kwargs: Any
    ) -> AgentConfig:
        """An agent config for a new device that reaches devcloud only through the proxies."""
        device = issue_device(self.cloud, device_id)
        base = self.tmp / device_id
        base.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("state_dir", base / "state")
        path = base / "agent.toml"
        config = write_config(
            path, self.cloud, device, dps_port=self.dps.port, hub_port=self.hub_port, **kwargs
        )
        if keep_alive_s is None:
            return config
        path.write_text(
            path.read_text().replace("keep_alive_s = 30", f"keep_alive_s = {keep_alive_s}")
        )
        return load_config(path)


@pytest.fixture
def proxied(cloud: Cloud, tmp_path: Path) -> Iterator[Proxied]:
    handle = cloud.handle
    dps = FaultProxy((cloud.dps_host, cloud.port), listen_host=cloud.dps_host).start()
    hubs: dict[str, FaultProxy] = {}
    try:
        port = 0
        for name in ("hub1", "hub2"):
            host = handle.hub_hostname(name)
            hubs[name] = FaultProxy((host, cloud.port), listen_host=host, listen_port=port)
            hubs[name].start()
            port = hubs[name].port
        yield Proxied(cloud, dps, hubs, tmp_path)
    finally:
        for proxy in (dps, *hubs.values()):
            proxy.stop()


@pytest.fixture
def seed() -> int:
    """The kill schedule's seed: ``FAULTS_SEED`` to replay one, else a fixed default."""
    return int(os.environ.get("FAULTS_SEED", "20261201"))


@pytest.fixture(scope="session")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bytecode cache for every agent process this run starts (not in the tree)."""
    return tmp_path_factory.mktemp("pycache")
