"""The real agent through a real HTTP proxy (Debian's tinyproxy) to devcloud, on loopback.

MQTT over WebSockets over TLS, tunnelled with HTTP CONNECT, for DPS and the hub: the
proxy's own log shows the tunnels it opened. A proxy that refuses the CONNECT gives a
clear error and the normal backoff (and the agent gets through once the proxy allows
it); Basic proxy authentication takes its credentials from a file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.core.lifecycle import State
from tests.support.agentcloud import (
    AgentThread,
    Cloud,
    free_port,
    issue_device,
    running_cloud,
    write_config,
)
from tests.support.proxy import Tinyproxy, tinyproxy
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    with running_cloud(tmp_path, websockets=True) as cloud:
        yield cloud


def _proxy_address(cloud: Cloud) -> tuple[str, int]:
    host = cloud.handle.config.rest_host  # this test's own loopback address
    return host, free_port(host)


def _config(cloud: Cloud, tmp_path: Path, device_id: str, network: str) -> AgentConfig:
    identity = issue_device(cloud, device_id)
    return write_config(
        tmp_path / f"{device_id}.toml",
        cloud,
        identity,
        state_dir=tmp_path / f"{device_id}-state",
        websockets=True,
        extra=f"\n[network]\n{network}\n",
    )


def _tunnels_to_dps_and_hub(cloud: Cloud, proxy: Tinyproxy, device_id: str) -> None:
    hub = cloud.client.get_device(device_id)["hub"]
    expected = {f"{cloud.dps_host}:{cloud.ws_port}", f"{cloud.hub_host(hub)}:{cloud.ws_port}"}
    assert expected <= set(proxy.connects()), proxy.connects()


def test_provisioning_and_telemetry_through_the_proxy(cloud: Cloud, tmp_path: Path) -> None:
    host, port = _proxy_address(cloud)
    assert cloud.ws_port is not None
    with tinyproxy(tmp_path / "proxy", host, port, connect_ports=[cloud.ws_port]) as proxy:
        config = _config(cloud, tmp_path, "dev-proxied", f'proxy = "{proxy.url}"')
        with AgentThread(config) as agent:
            agent.wait_state(State.CONNECTED, timeout_s=20)
            messages = cloud.client.wait_for_telemetry(device_id="dev-proxied", count=2)
            assert len(messages) == 2
            _tunnels_to_dps_and_hub(cloud, proxy, "dev-proxied")


def test_https_proxy_from_the_environment_and_no_proxy(cloud: Cloud, tmp_path: Path) -> None:
    host, port = _proxy_address(cloud)
    with tinyproxy(tmp_path / "proxy", host, port) as proxy:
        config = _config(cloud, tmp_path, "dev-envproxy", "")
        # DPS through the proxy (https_proxy); the hubs directly (no_proxy names them).
        hubs = ",".join(cloud.hub_host(h) for h in ("hub1", "hub2"))
        environ = {"https_proxy": proxy.url, "no_proxy": f"localhost,{hubs}"}
        with AgentThread(config, environ=environ) as agent:
            agent.wait_state(State.CONNECTED, timeout_s=20)
        assert proxy.connects() == [f"{cloud.dps_host}:{cloud.ws_port}"]


def test_a_refused_connect_is_a_clear_error_then_the_normal_backoff(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = _proxy_address(cloud)
    caplog.set_level(logging.WARNING)
    config = _config(cloud, tmp_path, "dev-refused", f'proxy = "http://{host}:{port}"')
    # The proxy allows CONNECT to 443 only: devcloud's WebSocket port is refused (403).
    with (
        tinyproxy(tmp_path / "proxy1", host, port, connect_ports=[443]) as proxy,
        AgentThread(config) as agent,
    ):
        wait_until(lambda: len(proxy.connects()) >= 3, timeout_s=20, what="3 attempts")
        assert agent.state in (State.DPS_BACKOFF, State.PROVISIONING)
        refused = [m for m in caplog.messages if "refused CONNECT" in m]
        assert refused, caplog.messages
        assert f"proxy http://{host}:{port} refused CONNECT to {cloud.dps_host}:" in refused[0]
        assert "403" in refused[0] and "forbid this host or port" in refused[0]
        proxy.process.terminate()
        proxy.process.wait(10)
        # Once the proxy lets it through, the same agent carries on by itself.
        with tinyproxy(tmp_path / "proxy2", host, port) as allowing:
            agent.wait_state(State.CONNECTED, timeout_s=20)
            _tunnels_to_dps_and_hub(cloud, allowing, "dev-refused")


def test_proxy_authentication_from_a_file(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = _proxy_address(cloud)
    secret = tmp_path / "proxy-auth"
    secret.write_text("agent:s3cret-pass\n")
    secret.chmod(0o600)
    caplog.set_level(logging.WARNING)
    with tinyproxy(tmp_path / "proxy", host, port, basic_auth=("agent", "s3cret-pass")) as proxy:
        # Without credentials: 407, said plainly.
        plain = _config(cloud, tmp_path, "dev-noauth", f'proxy = "{proxy.url}"')
        with AgentThread(plain):
            wait_until(
                lambda: any("407" in m for m in caplog.messages),
                timeout_s=20,
                what="the proxy's 407",
            )
        message = next(m for m in caplog.messages if "407" in m)
        assert "set network.proxy_auth_path" in message
        # With the file: through.
        authed = _config(
            cloud,
            tmp_path,
            "dev-auth",
            f'proxy = "{proxy.url}"\nproxy_auth_path = "{secret}"',
        )
        with AgentThread(authed) as agent:
            agent.wait_state(State.CONNECTED, timeout_s=20)
            _tunnels_to_dps_and_hub(cloud, proxy, "dev-auth")


def test_check_reaches_dps_through_the_proxy_and_checks_the_credentials_file(
    cloud: Cloud, tmp_path: Path
) -> None:
    from agent.cli.check import run_checks

    host, port = _proxy_address(cloud)
    secret = tmp_path / "proxy-auth"
    secret.write_text("agent:s3cret\n")
    secret.chmod(0o600)
    with tinyproxy(tmp_path / "proxy", host, port, basic_auth=("agent", "s3cret")) as proxy:
        network = f'proxy = "{proxy.url}"\nproxy_auth_path = "{secret}"'
        config = _config(cloud, tmp_path, "dev-check", network)
        results = {r.name: r for r in run_checks(config, sensors=False, dps_timeout_s=10)}
        assert results["proxy"].status == "ok", results["proxy"]
        assert proxy.url in results["proxy"].detail and str(secret) in results["proxy"].detail
        assert results["dps"].status == "ok", results["dps"]
        assert proxy.connects() == [f"{cloud.dps_host}:{cloud.ws_port}"]
        secret.chmod(0o644)
        results = {r.name: r for r in run_checks(config, sensors=False, dps_timeout_s=10)}
        assert results["proxy"].status == "fail" and "chmod 600" in results["proxy"].detail
