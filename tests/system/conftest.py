"""Fixtures of the system tests: the package, the base rootfs, devcloud, a golden image.

Built once per session and cached across runs (see :mod:`tests.support.nspawn`): the
rootfs by its inputs, the package by the hash of its sources. The image is made fresh
each session by ``deploy/image/build-image.sh`` from the cached rootfs and package,
with a fleet config that points at this session's devcloud.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import nspawn
from tests.support.agentcloud import Cloud, running_cloud

FLEET_CA = "/etc/device-agent/fleet-ca.pem"
CHAIN = "/etc/device-agent/device.chain.pem"
KEY = "/etc/device-agent/device.key"


@pytest.fixture(scope="session", autouse=True)
def _system_tools() -> None:
    reason = nspawn.missing_tools()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(name="deb", scope="session")
def deb_fixture() -> Path:
    return nspawn.cached_deb()


@pytest.fixture(name="rootfs", scope="session")
def rootfs_fixture() -> Path:
    return nspawn.cached_rootfs()


@pytest.fixture(name="cloud", scope="session")
def cloud_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    with running_cloud(tmp_path_factory.mktemp("system-devcloud")) as cloud:
        yield cloud


def fleet_config(cloud: Cloud) -> str:
    """The config every device of the fleet shares: devcloud's DPS, the mock HAL."""
    return f"""
[identity]
keystore = "file"
cert_chain_path = "{CHAIN}"
key_path = "{KEY}"
trust_anchor_paths = ["{FLEET_CA}"]

[dps]
host = "{cloud.dps_host}"
port = {cloud.port}
id_scope = "{cloud.handle.id_scope}"
server_ca_path = "{FLEET_CA}"
allowed_hub_suffixes = ["{cloud.hub_host("hub1")}", "{cloud.hub_host("hub2")}"]

[hub]
port = {cloud.port}
server_ca_path = "{FLEET_CA}"

[lifecycle]
backoff_base_s = 0.1
backoff_cap_s = 1.0
dps_backoff_cap_s = 1.0
connect_timeout_s = 5.0

[telemetry]
interval_s = 0.5

[hal]
backend = "mock"
mock_seed = 1
sensors = [{{part = "SHT4x", bus = 1, address = 0x45}}]

[log]
level = "DEBUG"
"""


@dataclass(frozen=True)
class Image:
    """A golden image folder, and what it was built with."""

    root: Path
    deb: Path
    build_output: str


@pytest.fixture(name="image", scope="session")
def image_fixture(
    rootfs: Path, deb: Path, cloud: Cloud, tmp_path_factory: pytest.TempPathFactory
) -> Image:
    work = tmp_path_factory.mktemp("image")
    config = work / "agent.toml"
    config.write_text(fleet_config(cloud))
    root = work / "root"
    result = nspawn.build_image(
        rootfs, root, deb, config=config, adds=[(cloud.pki.root_path, FLEET_CA)]
    )
    return Image(root, deb, result.stdout + result.stderr)
