"""`device-agent run` as a real process: SIGTERM, exit codes, threads, `status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agentcloud import Cloud, issue_device, wait_until, write_config

pytestmark = pytest.mark.integration
DEVICE_AGENT = [sys.executable, "-m", "agent"]


@pytest.fixture
def process_config(cloud: Cloud, tmp_path: Path) -> Path:
    device = issue_device(cloud, "dev-process")
    write_config(tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state")
    return tmp_path / "agent.toml"


@pytest.fixture
def agent_process(process_config: Path, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [*DEVICE_AGENT, "--config", str(process_config), "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NOTIFY_SOCKET": ""},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def live_status(tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "state" / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_sigterm_stops_cleanly_with_exit_0_and_few_threads(
    cloud: Cloud, agent_process: subprocess.Popen[bytes], tmp_path: Path, process_config: Path
) -> None:
    wait_until(
        lambda: live_status(tmp_path).get("state") == "CONNECTED",
        timeout_s=20,
        what="status.json CONNECTED",
    )
    cloud.client.wait_for_telemetry(device_id="dev-process", count=2, timeout_s=10)
    threads = len(os.listdir(f"/proc/{agent_process.pid}/task"))
    assert threads <= 3  # structural: the main loop, plus at most gpiozero's two
    # The memory budget (RSS < 30 MiB) is measured in bench/, not asserted here.
    status = subprocess.run(
        [*DEVICE_AGENT, "--config", str(process_config), "status", "--json"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["running"] is True
    assert shown["live"]["state"] == "CONNECTED"
    assert shown["assignment"]["deviceId"] == "dev-process"

    agent_process.send_signal(signal.SIGTERM)
    assert agent_process.wait(15) == 0
    assert live_status(tmp_path)["state"] == "STOPPED"
    device = cloud.client.get_device("dev-process")
    assert device["connectionState"] == "Disconnected"
    log = (tmp_path / "agent.log").read_text()
    assert "Traceback" not in log


def test_config_error_exits_78_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
[identity]
cert_chain_path = "/nonexistent/chain.pem"
key_path = "/nonexistent/key.pem"

[dps]
id_scope = "0ne00000DEV"

[telemetry]
interval_s = "often"

[hal]
backend = "mock"
"""
    )
    result = subprocess.run(
        [*DEVICE_AGENT, "--config", str(bad), "run"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 78
    assert "interval_s" in result.stderr
    assert str(bad) in result.stderr


def test_unusable_identity_exits_78(tmp_path: Path, cloud: Cloud) -> None:
    device = issue_device(cloud, "dev-openkey")
    device.key_path.chmod(0o644)  # readable by others: refused, naming the file
    write_config(tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state")
    result = subprocess.run(
        [*DEVICE_AGENT, "--config", str(tmp_path / "agent.toml"), "run"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 78, result.stderr
    assert str(device.key_path) in result.stderr


def test_a_server_ca_that_does_not_load_exits_78_naming_config_and_file(
    tmp_path: Path, cloud: Cloud
) -> None:
    device = issue_device(cloud, "dev-badca")
    config = tmp_path / "agent.toml"
    write_config(config, cloud, device, state_dir=tmp_path / "state")
    garbage = tmp_path / "not-a-ca.pem"
    garbage.write_text("not a certificate\n")
    head, hub_section = config.read_text().split("[hub]")
    config.write_text(
        head + "[hub]" + hub_section.replace(str(cloud.pki.root_path), str(garbage), 1)
    )
    result = subprocess.run(
        [*DEVICE_AGENT, "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 78, result.stderr
    assert f"{config}: hub: TLS settings: {garbage}: cannot load the server CA" in result.stderr
    assert "Traceback" not in result.stderr
    assert cloud.client.registration_attempts("dev-badca") == 0


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        import socket

        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def collect(self) -> list[str]:
        for _ in range(1000):
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            self.messages.extend(data.decode().splitlines())
        return self.messages

    def close(self) -> None:
        self.sock.close()


def start_with_notify(config: Path, notify: NotifySocket, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*DEVICE_AGENT, "--config", str(config), "run"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"},
    )


def test_sd_notify_ready_status_watchdog_stopping(
    cloud: Cloud, process_config: Path, tmp_path: Path
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = start_with_notify(process_config, notify, tmp_path / "agent.log")
    try:
        wait_until(
            lambda: any(m.startswith("STATUS=CONNECTED") for m in notify.collect()),
            timeout_s=20,
            what="STATUS=CONNECTED",
        )
        count = notify.messages.count("WATCHDOG=1")
        wait_until(
            lambda: notify.collect().count("WATCHDOG=1") >= count + 3,
            what="watchdog pings while the loop runs",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        messages = notify.collect()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()
    assert messages.index("READY=1") < messages.index(
        next(m for m in messages if m.startswith("STATUS=CONNECTED"))
    )
    assert "STOPPING=1" in messages


def test_ready_while_offline_and_sigterm_still_exits_0(tmp_path: Path) -> None:
    from devcloud.pki import PKI
    from tests.support.agentcloud import free_port, fresh_addresses

    pki = PKI.create(tmp_path / "pki")
    device = pki.issue_device("dev-nonet")
    _, dps, _, _ = fresh_addresses()
    port = free_port(dps)
    write_config(
        tmp_path / "agent.toml",
        None,
        device,
        state_dir=tmp_path / "state",
        dps_host=dps,
        dps_port=port,
        hub_port=port,
        id_scope="0ne00000DEV",
        ca_path=pki.root_path,
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = start_with_notify(tmp_path / "agent.toml", notify, tmp_path / "agent.log")
    try:
        wait_until(lambda: "READY=1" in notify.collect(), timeout_s=20, what="READY=1")
        wait_until(
            lambda: any(m.startswith("STATUS=DPS_BACKOFF") for m in notify.collect()),
            what="DPS backoff reported",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        messages = notify.collect()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()
    assert "STOPPING=1" in messages


#: Imported at exit by the wrapper below: every module the daemon process ever loaded.
MODULE_DUMP = """
import atexit, json, runpy, sys

DUMP_TO = sys.argv[1]

def dump():
    names = sorted(
        name for name, module in sys.modules.items()
        if type(module).__name__ != "_DeferredModule"  # a stand-in, never loaded
    )
    with open(DUMP_TO, "w") as out:
        json.dump(names, out)

atexit.register(dump)
sys.argv = ["device-agent", *sys.argv[2:]]
runpy.run_module("agent", run_name="__main__", alter_sys=True)
"""
#: Modules the long-running daemon must never load (memory budget; the hot path only).
NOT_IN_THE_DAEMON = (
    "cryptography",  # the keystore's checks run in a child process
    "agent.identity.file_keystore",
    "agent.cli.check",
    "hal.cli",  # argparse-only
    "shutil",  # argparse's help formatter would pull it (and bz2, lzma) in
    "bz2",
    "lzma",
    "http.client",  # paho's urllib.request, for proxies the agent never uses
    "email",
    "gpiozero",  # no pin configured
)


def test_running_daemon_keeps_out_of_its_memory_what_it_does_not_need(
    cloud: Cloud, process_config: Path, tmp_path: Path
) -> None:
    dump = tmp_path / "modules.json"
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", MODULE_DUMP, str(dump), "--config", str(process_config), "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NOTIFY_SOCKET": ""},
    )
    try:
        wait_until(
            lambda: live_status(tmp_path).get("state") == "CONNECTED",
            timeout_s=20,
            what="status.json CONNECTED",
        )
        cloud.client.wait_for_telemetry(device_id="dev-process", count=3, timeout_s=10)
        status, payload = cloud.client.invoke_method("dev-process", "getStatus", timeout_s=10)
        assert status == 200 and payload["state"] == "CONNECTED"
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        assert 1 <= threads <= 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    loaded = json.loads(dump.read_text())
    assert "agent.runtime.daemon" in loaded and "paho.mqtt.client" in loaded  # the dump is real
    offenders = [
        name
        for name in loaded
        if any(name == banned or name.startswith(f"{banned}.") for banned in NOT_IN_THE_DAEMON)
    ]
    assert offenders == [], (tmp_path / "agent.log").read_text()[-2000:]
