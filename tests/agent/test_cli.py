"""The ``device-agent`` CLI, run as ``python -m agent`` in subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import EX_CONFIG, EX_SOFTWARE, EX_USAGE
from devcloud.pki import PKI, Issued
from tests.support.mqtt_harness import RecordingEndpoint, ServerThread, server_context

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def agent(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("DEVICE_AGENT_CONFIG",)}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environment,
        timeout=timeout_s,
        check=False,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def device(pki: PKI) -> Issued:
    return pki.issue_device("dev-cli")


@pytest.fixture
def dps_endpoint() -> RecordingEndpoint:
    return RecordingEndpoint()


@pytest.fixture
def dps(pki: PKI, dps_endpoint: RecordingEndpoint) -> Iterator[ServerThread]:
    server = pki.issue_server(HOST, ip_addresses=[HOST])
    thread = ServerThread(dps_endpoint, server_context(pki, server)).start(HOST)
    yield thread
    thread.stop()


def write_config(
    folder: Path, pki: PKI, device: Issued, *, dps_port: int = 8883, extra: str = ""
) -> Path:
    path = folder / "agent.toml"
    path.write_text(
        f"""
[identity]
cert_chain_path = "{device.chain_path}"
key_path = "{device.key_path}"
trust_anchor_paths = ["{pki.root_path}"]

[dps]
host = "{HOST}"
port = {dps_port}
id_scope = "0ne00000DEV"
server_ca_path = "{pki.root_path}"

[state]
directory = "state"

[hal]
backend = "mock"
mock_seed = 3
{extra}
""",
        encoding="utf-8",
    )
    return path


def test_help_and_version() -> None:
    result = agent("--help")
    assert result.returncode == 0
    for command in ("run", "provision", "status", "check", "image-prep", "sensors"):
        assert command in result.stdout
    version = agent("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("device-agent ")


def test_usage_error_exits_64() -> None:
    result = agent("frobnicate")
    assert result.returncode == EX_USAGE
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize("command", ["run", "provision", "status", "check", "image-prep"])
def test_config_error_exits_78_naming_file_and_key(tmp_path: Path, command: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[identity]\ncert_chain_path = "c"\nkey_path = "k"\n'
        '[dps]\nid_scope = "0ne00000DEV"\nport = 0\n[hal]\nbackend = "mock"\n'
    )
    result = agent("--config", str(path), command)
    assert result.returncode == EX_CONFIG, result.stderr
    output = result.stderr + result.stdout
    assert f"{path}: dps.port: expected an integer from 1 to 65535, got 0" in output
    assert "Traceback" not in result.stderr


def test_missing_config_named_from_the_environment(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    result = agent("status", env={"DEVICE_AGENT_CONFIG": str(missing)})
    assert result.returncode == EX_CONFIG
    assert f"{missing}: no such file" in result.stderr


def test_flag_wins_over_environment(tmp_path: Path) -> None:
    result = agent(
        "--config",
        str(tmp_path / "flag.toml"),
        "status",
        env={"DEVICE_AGENT_CONFIG": str(tmp_path / "env.toml")},
    )
    assert result.returncode == EX_CONFIG
    assert "flag.toml" in result.stderr
    assert "env.toml" not in result.stderr


def test_status_without_daemon_or_state(tmp_path: Path, pki: PKI, device: Issued) -> None:
    config = write_config(tmp_path, pki, device)
    result = agent("--config", str(config), "status")
    assert result.returncode == 3
    assert "not running" in result.stdout
    assert "none cached" in result.stdout
    as_json = agent("--config", str(config), "status", "--json")
    assert as_json.returncode == 3
    document = json.loads(as_json.stdout)
    assert document["running"] is False
    assert document["assignment"] is None
    assert document["stateDir"] == str(tmp_path / "state")


def test_status_of_a_running_daemon(tmp_path: Path, pki: PKI, device: Issued) -> None:
    from agent.core.clock import SystemClock
    from agent.store.state import IdentityFingerprint, StateStore

    config = write_config(tmp_path, pki, device)
    fingerprint = IdentityFingerprint(HOST, "0ne00000DEV", "dev-cli", device.thumbprint)
    store = StateStore(tmp_path / "state", fingerprint, clock=SystemClock())
    store.write_status({"state": "CONNECTED", "hub": "127.0.0.3"})  # pid: this test, alive
    result = agent("--config", str(config), "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"running (pid {os.getpid()})" in result.stdout
    assert "CONNECTED" in result.stdout
    document = json.loads(agent("--config", str(config), "status", "--json").stdout)
    assert document["running"] is True
    assert document["live"]["hub"] == "127.0.0.3"


def test_check_all_good(
    tmp_path: Path, pki: PKI, device: Issued, dps: ServerThread, dps_endpoint: RecordingEndpoint
) -> None:
    config = write_config(tmp_path, pki, device, dps_port=dps.address[1])
    result = agent("--config", str(config), "check")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("config", "clock", "certificate", "trust-chain", "state", "dps"):
        assert any(line.startswith("[ OK ] " + name) for line in lines), (name, result.stdout)
    assert any(line.startswith("[ OK ] sensor bme280") for line in lines), result.stdout
    assert "0 problem(s)" in result.stdout
    request = dps_endpoint.requests.get(timeout=10)
    assert request.client_id == "dev-cli"
    assert request.username is not None
    assert request.username.startswith("0ne00000DEV/registrations/dev-cli/api-version=2019-03-31")
    # A check registers nothing: no PUBLISH reached DPS.
    assert dps_endpoint.publishes.empty()


def test_check_reports_a_refusing_dps(
    tmp_path: Path, pki: PKI, device: Issued, dps: ServerThread, dps_endpoint: RecordingEndpoint
) -> None:
    dps_endpoint.connack_code = 5
    config = write_config(tmp_path, pki, device, dps_port=dps.address[1])
    result = agent("--config", str(config), "check", "--json")
    assert result.returncode == 1
    results = {r["name"]: r for r in json.loads(result.stdout)["results"]}
    assert results["dps"]["status"] == "fail"
    assert "CONNACK 5" in results["dps"]["detail"]
    assert results["certificate"]["status"] == "ok"


def test_check_reports_key_permissions_and_unreachable_dps(tmp_path: Path, pki: PKI) -> None:
    loose = pki.issue_device("dev-loose")
    loose.key_path.chmod(0o644)
    config = write_config(tmp_path, pki, loose, dps_port=1)
    result = agent("--config", str(config), "check", "--no-sensors")
    assert result.returncode == 1
    assert f"chmod 600 {loose.key_path}" in result.stdout
    assert "[SKIP] dps" in result.stdout


def test_check_unreachable_dps(tmp_path: Path, pki: PKI, device: Issued) -> None:
    config = write_config(tmp_path, pki, device, dps_port=1)
    result = agent("--config", str(config), "check", "--no-sensors", "--timeout", "2")
    assert result.returncode == 1
    assert "[FAIL] dps" in result.stdout
    assert "ECONNREFUSED" in result.stdout


def test_check_with_a_bad_sensor_spec(tmp_path: Path, pki: PKI, device: Issued) -> None:
    extra = "[[hal.sensors]]\npart = 'BME280'\nbus = 1\naddress = 0x10\n"
    config = write_config(tmp_path, pki, device, extra=extra)
    result = agent("--config", str(config), "check", "--offline")
    assert result.returncode == 1
    assert "[FAIL] sensor" in result.stdout
    assert "[SKIP] dps" in result.stdout


def test_sensors_command_is_mounted() -> None:
    result = agent("sensors", "scan", "--backend", "mock")
    assert result.returncode == 0, result.stderr
    assert "BME280" in result.stdout.upper()


def test_image_prep_strips_state_and_identity(tmp_path: Path, pki: PKI, device: Issued) -> None:
    # A copy of the identity, in place and (a second copy) waiting in the import folder.
    etc, boot = tmp_path / "etc", tmp_path / "boot"
    etc.mkdir()
    boot.mkdir()
    for folder in (etc, boot):
        shutil.copy(device.chain_path, folder / "device.chain.pem")
        shutil.copy(device.key_path, folder / "device.key")
    (boot / "notes.txt").write_text("not an identity file\n")
    copy = Issued(device.cert, device.cert_path, etc / "device.chain.pem", etc / "device.key")
    config = write_config(tmp_path, pki, copy)
    text = config.read_text().replace("[identity]\n", f'[identity]\nimport_dir = "{boot}"\n', 1)
    config.write_text(text)
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text("{}")
    (state / "state.json.corrupt-1").write_text("{")
    (state / "keep.txt").write_text("not ours")
    result = agent("--config", str(config), "image-prep")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in state.iterdir()) == ["keep.txt"]
    assert "2 file(s) removed" in result.stdout
    assert list(etc.iterdir()) == []
    assert [p.name for p in boot.iterdir()] == ["notes.txt"]
    assert f"removed {etc / 'device.key'}" in result.stdout
    assert "no identity left" in result.stdout
    assert "machine id" not in result.stdout  # only with --machine-id


@pytest.mark.usefixtures("root_logger")  # main() sets logging up in this process
def test_a_bug_is_a_traceback_and_exit_70(
    tmp_path: Path,
    pki: PKI,
    device: Issued,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import agent.store.status
    from agent.cli.main import main

    def broken(state_dir: Path) -> dict[str, object]:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(agent.store.status, "read_status", broken)
    config = write_config(tmp_path, pki, device)
    assert main(["--config", str(config), "status"]) == EX_SOFTWARE
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "simulated bug" in err


@pytest.mark.parametrize(
    ("example", "pki_dir", "device_id"),
    [
        ("agent.devcloud.toml", "deploy/pki", "device-001"),
        ("agent.laptop.toml", "demo-run/pki", "laptop-1"),
    ],
)
def test_example_configs_match_the_pki_layout(
    tmp_path: Path, example: str, pki_dir: str, device_id: str
) -> None:
    # The examples name files where `devcloud pki device ID --dir DIR` puts them.
    (tmp_path / "deploy").mkdir()
    config = tmp_path / "deploy" / example
    config.write_text((REPO / "deploy" / example).read_text())
    PKI.create(tmp_path / pki_dir).issue_device(device_id)
    result = agent("--config", str(config), "check", "--offline", "--no-sensors")
    assert "[ OK ] certificate" in result.stdout, result.stdout
    assert "[FAIL]" not in result.stdout, result.stdout
    assert result.returncode == 0


class NotifySocket:
    """A bound ``NOTIFY_SOCKET`` (AF_UNIX datagrams) that remembers every line received."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[str] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(20.0)

    def until(self, line: str) -> None:
        """Receive (at most 200 datagrams, 20 s each) until ``line`` has come."""
        for _ in range(200):
            if line in self.seen:
                return
            self.seen.extend(self._socket.recv(4096).decode().split("\n"))
        raise AssertionError(f"{line} never came; got {self.seen}")

    def close(self) -> None:
        self._socket.close()


def start_daemon(
    tmp_path: Path, pki: PKI, device: Issued, *command: str
) -> tuple[subprocess.Popen[str], NotifySocket]:
    """``command`` (default ``python -m agent``) ``--config ... run``, DPS refusing; READY seen."""
    config = write_config(tmp_path, pki, device, dps_port=1)  # DPS refuses: agent retries
    notify = NotifySocket(tmp_path / "notify")
    environment = {k: v for k, v in os.environ.items() if k != "DEVICE_AGENT_CONFIG"}
    environment.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="2000000")
    process = subprocess.Popen(
        [*(command or (sys.executable, "-m", "agent")), "--config", str(config), "run"],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        notify.until("READY=1")
    except BaseException:
        stop(process, notify)
        raise
    return process, notify


def stop(process: subprocess.Popen[str], notify: NotifySocket) -> None:
    if process.poll() is None:
        process.kill()
        process.communicate(timeout=10)
    notify.close()


def test_run_under_systemd_notify_protocol(tmp_path: Path, pki: PKI, device: Issued) -> None:
    """`run` says READY (offline is fine), pings the watchdog, and stops cleanly on SIGTERM."""
    process, notify = start_daemon(tmp_path, pki, device)
    try:
        notify.until("WATCHDOG=1")
        assert any(item.startswith("STATUS=") for item in notify.seen)
        process.send_signal(signal.SIGTERM)
        notify.until("STOPPING=1")
        _, stderr = process.communicate(timeout=20)
        assert process.returncode == 0, stderr
    finally:
        stop(process, notify)


# After main() returns, signal the process itself: the exact moment a second SIGTERM
# from systemd (or a second Ctrl-C) used to kill the exiting CLI with -15.
SIGNALS_AFTER_MAIN = """
import os, signal, sys
from agent.cli.main import main
code = main(sys.argv[1:])
os.kill(os.getpid(), signal.SIGTERM)
os.kill(os.getpid(), signal.SIGINT)
print("survived both signals", flush=True)
sys.exit(code)
"""


def test_signals_after_shutdown_began_do_not_kill_the_cli(
    tmp_path: Path, pki: PKI, device: Issued
) -> None:
    process, notify = start_daemon(tmp_path, pki, device, sys.executable, "-c", SIGNALS_AFTER_MAIN)
    try:
        process.send_signal(signal.SIGTERM)
        notify.until("STOPPING=1")
        stdout, stderr = process.communicate(timeout=20)
        assert process.returncode == 0, stderr
        assert "survived both signals" in stdout
        assert "Traceback" not in stderr
    finally:
        stop(process, notify)
