"""The devcloud command line: operations against a running devcloud, and ``serve`` end to end."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import pytest

from devcloud.app import DevCloud, DevCloudHandle
from devcloud.cli import main
from devcloud.client import DevCloudClient
from devcloud.config import ConfigError, DevCloudConfig, HubSpec, load_config
from tests.support.devcloud import (  # noqa: F401
    MqttDevice,
    devcloud_fixture,
    free_loopback_address,
    mqtt_devices_fixture,
)
from tests.support.netns import netns_argv

ROOT = Path(__file__).resolve().parents[2]


def run(
    capsys: pytest.CaptureFixture[str], cloud: DevCloudHandle, *argv: str
) -> tuple[int, Any, str]:
    """Run ``devcloud --url ... argv``; return (exit code, stdout as JSON or text, stderr)."""
    code = main(["--url", cloud.rest_url, *argv])
    out, err = capsys.readouterr()
    try:
        parsed: Any = json.loads(out)
    except ValueError:
        parsed = out
    return code, parsed, err


def test_help_is_lean() -> None:
    probe = (
        "import sys; from devcloud.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('cryptography', 'devcloud.app', 'devcloud.client', "
        "'asyncio', 'sqlite3') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"
    help_run = subprocess.run(
        [sys.executable, "-m", "devcloud", "--help"],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert help_run.returncode == 0
    for command in ("serve", "enrollment-group", "device", "twin", "method", "telemetry", "pki"):
        assert command in help_run.stdout


@pytest.mark.parametrize(
    "argv",
    [[], ["enrollment-group"], ["device", "frobnicate"], ["method", "invoke", "x"], ["nope"]],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_operations(capsys: pytest.CaptureFixture[str], devcloud: DevCloudHandle) -> None:
    code, group, _ = run(
        capsys,
        devcloud,
        "enrollment-group", "put", "fleet", "--ca-ref", "devcloud-root",
        "--allocation", "static", "--hub", "hub2", "--initial-twin", '{"interval_s": 9}',
    )  # fmt: skip
    assert code == 0 and group["iotHubs"] == ["hub2"]
    assert group["initialTwin"]["properties"]["desired"] == {"interval_s": 9}
    code, changed, _ = run(
        capsys, devcloud, "enrollment-group", "set-allocation", "fleet", "hashed", "--hub", "hub1"
    )
    assert code == 0 and changed["allocationPolicy"] == "hashed"
    code, groups, _ = run(capsys, devcloud, "enrollment-group", "list")
    assert sorted(g["enrollmentGroupId"] for g in groups) == ["default", "fleet"]
    assert run(capsys, devcloud, "enrollment-group", "show", "fleet")[1]["iotHubs"] == ["hub1"]
    assert run(capsys, devcloud, "enrollment-group", "delete", "fleet")[0] == 0
    code, _, err = run(capsys, devcloud, "enrollment-group", "show", "fleet")
    assert code == 1 and "not found" in err

    code, enrollment, _ = run(
        capsys, devcloud, "enrollment", "put", "reg-1", "--device-id", "dev-1", "--disabled"
    )
    assert code == 0 and enrollment["provisioningStatus"] == "disabled"
    assert run(capsys, devcloud, "enrollment", "show", "reg-1")[1]["deviceId"] == "dev-1"
    assert run(capsys, devcloud, "enrollment", "delete", "reg-1")[0] == 0

    devcloud.client.create_device("dev-1", "hub1")
    code, devices, _ = run(capsys, devcloud, "device", "list", "--hub", "hub1")
    assert code == 0 and [d["deviceId"] for d in devices] == ["dev-1"]
    assert run(capsys, devcloud, "device", "disable", "dev-1")[1]["status"] == "disabled"
    assert run(capsys, devcloud, "device", "enable", "dev-1")[1]["status"] == "enabled"
    assert run(capsys, devcloud, "device", "show", "dev-1")[1]["hub"] == "hub1"
    code, twin, _ = run(capsys, devcloud, "twin", "patch", "dev-1", '{"led": "on"}')
    assert code == 0 and twin["properties"]["desired"]["led"] == "on"
    assert (
        run(capsys, devcloud, "twin", "show", "dev-1")[1]["properties"]["desired"]["$version"] == 2
    )
    code, _, err = run(capsys, devcloud, "method", "invoke", "reboot", "--device", "dev-1")
    assert code == 1 and "not online" in err
    code, sent, _ = run(
        capsys, devcloud, "c2d", "send", "hello", "--device", "dev-1", "--property", "k=v"
    )
    assert code == 0 and sent["messageId"]
    assert run(capsys, devcloud, "twin", "patch", "dev-1", "{bad")[0] == 2
    assert run(capsys, devcloud, "device", "delete", "dev-1")[0] == 0
    assert run(capsys, devcloud, "device", "show", "dev-1")[0] == 1
    assert run(capsys, devcloud, "registration", "list")[1] == []
    assert run(capsys, devcloud, "registration", "history", "never-registered")[0] == 1
    assert [h["name"] for h in run(capsys, devcloud, "hubs")[1]] == ["hub1", "hub2"]


def test_registration_history_shows_what_dps_did(
    capsys: pytest.CaptureFixture[str], devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    dps = MqttDevice.dps(devcloud, devcloud.pki.issue_device("dev-cli-h"), "dev-cli-h")
    mqtt_devices.append(dps)
    assert dps.connect() == 0
    assert dps.register()[0] == 200
    code, history, _ = run(capsys, devcloud, "registration", "history", "dev-cli-h")
    assert code == 0 and [e["event"] for e in history] == ["accepted", "assigned"]


def test_method_invoke_returns_the_device_answer(
    capsys: pytest.CaptureFixture[str], devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    devcloud.client.create_device("dev-cli-m", "hub2")
    device = MqttDevice.hub(devcloud, "hub2", devcloud.pki.issue_device("dev-cli-m"), "dev-cli-m")
    mqtt_devices.append(device)
    assert device.connect() == 0
    assert device.subscribe("$iothub/methods/POST/#", 1) == 1
    argv = ["method", "invoke", "blink", "--device", "dev-cli-m", "--payload", '{"n": 3}']
    codes: list[int] = []
    call = threading.Thread(target=lambda: codes.append(main(["--url", devcloud.rest_url, *argv])))
    call.start()
    try:
        topic, raw = device.expect("$iothub/methods/POST/blink/")
        assert json.loads(raw) == {"n": 3}
        rid = topic.rsplit("=", 1)[1]
        device.publish(f"$iothub/methods/res/201/?$rid={rid}", json.dumps({"blinked": 3}))
    finally:
        call.join(15)
    assert not call.is_alive()
    assert codes == [0]
    assert json.loads(capsys.readouterr().out) == {"status": 201, "payload": {"blinked": 3}}


def test_telemetry_tail(capsys: pytest.CaptureFixture[str], devcloud: DevCloudHandle) -> None:
    def append(app: DevCloud) -> None:
        for n, device in enumerate(["a", "b", "a"]):
            app.telemetry.append(
                hub="hub1",
                device_id=device,
                enqueued_time=app.registry.now(),
                body=json.dumps({"n": n}).encode(),
                properties={},
                system_properties={},
            )

    devcloud.call(append)
    code, out, _ = run(capsys, devcloud, "telemetry", "tail", "--device", "a")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [json.loads(line["body"])["n"] for line in lines] == [0, 2]
    code, out, _ = run(
        capsys, devcloud, "telemetry", "tail", "--follow", "--since", "1", "--timeout", "0.5"
    )
    assert code == 0
    assert [json.loads(line)["sequenceNumber"] for line in out.splitlines()] == [2, 3]


def test_pki_commands(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["pki", "init", "--dir", str(tmp_path / "pki"), "--json"]) == 0
    assert main(["pki", "device", "dev-9", "--dir", str(tmp_path / "pki"), "--json"]) == 0
    out = capsys.readouterr().out
    assert "dev-9" in out
    assert (tmp_path / "pki" / "devices" / "dev-9.pem").exists()


def _reader(stream: IO[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _serve(config: Path) -> tuple[subprocess.Popen[str], queue.Queue[str], dict[str, str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "devcloud", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    lines = _reader(process.stdout)
    seen: dict[str, str] = {}
    for _ in range(50):
        try:
            line = lines.get(timeout=20)
        except queue.Empty:
            break
        if not line or line.startswith("devcloud: ready"):
            break
        if line.startswith("devcloud: "):
            key, _, value = line[len("devcloud: ") :].partition(" ")
            seen[key if key != "hub" else value.split()[0]] = value.strip()
    if "REST" not in seen:
        process.kill()
        process.wait(10)
        raise AssertionError(f"devcloud serve did not start: {seen}")
    return process, lines, seen


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_end_to_end_and_state_survives(tmp_path: Path, stop_signal: signal.Signals) -> None:
    hubs = "\n".join(
        f'[[hubs]]\nname = "{name}"\nhost = "{free_loopback_address()}"\nport = 0\n'
        for name in ("east", "west")
    )
    config = tmp_path / "devcloud.toml"
    config.write_text(
        f'state_dir = "state"\ndatabase = "state/devcloud.db"\nid_scope = "0ne00000CLI"\n'
        f'[dps]\nhost = "{free_loopback_address()}"\nport = 0\n'
        f'[rest]\nhost = "127.0.0.1"\nport = 0\n{hubs}'
    )
    for round_trip in range(2):
        process, _lines, seen = _serve(config)
        try:
            assert seen["id"] == "scope  0ne00000CLI"
            url = seen["REST"]
            client = DevCloudClient(url)
            assert [h["name"] for h in client.hubs()] == ["east", "west"]
            if round_trip == 0:
                client.put_enrollment_group("kept", ca_reference="devcloud-root")
            else:
                groups = {g["enrollmentGroupId"] for g in client.list_enrollment_groups()}
                assert groups == {"default", "kept"}
            process.send_signal(stop_signal)
            assert process.wait(15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    assert (tmp_path / "state" / "pki" / "ca" / "root.pem").exists()


#: Run inside a private network namespace: ``devcloud serve`` with no configuration at all,
#: then the CLI with no ``--url``, so the fixed default addresses clash with nothing.
_DEFAULTS_DRIVER = r"""
import json, os, signal, subprocess, sys
env = {**os.environ, "PYTHONUNBUFFERED": "1"}
serve = subprocess.Popen(
    [sys.executable, "-m", "devcloud", "serve", "--state-dir", *sys.argv[1:]],
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
)
lines = []
for line in serve.stdout:  # ends at "ready" or when serve exits; the caller has a timeout
    lines.append(line.rstrip())
    if line.startswith("devcloud: ready"):
        break
cli = [sys.executable, "-m", "devcloud"]
hubs = subprocess.run([*cli, "hubs"], capture_output=True, text=True, timeout=30)
group = subprocess.run(
    [*cli, "enrollment-group", "show", "default"], capture_output=True, text=True, timeout=30
)
serve.send_signal(signal.SIGTERM)
serve.communicate(timeout=15)
print(json.dumps({"lines": lines, "hubs": hubs.stdout, "group": group.stdout,
                  "serve_rc": serve.returncode}))
"""


@pytest.mark.parametrize("memory", [False, True])
def test_serve_starts_with_the_defaults(tmp_path: Path, memory: bool) -> None:
    """``devcloud serve`` with no configuration: the documented addresses, SQLite state
    (or, with ``--memory``, none kept)."""
    state = tmp_path / "state"
    driver = [sys.executable, "-c", _DEFAULTS_DRIVER, str(state), *(["--memory"] * memory)]
    result = subprocess.run(
        netns_argv(driver),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    lines = report["lines"]
    assert lines[-1] == "devcloud: ready", lines
    assert "devcloud: id scope  0ne00000DEV" in lines
    assert "devcloud: DPS       mqtts://127.0.0.2:8883" in lines
    assert "devcloud: REST      http://127.0.0.1:8088" in lines
    where = "in memory" if memory else state / "devcloud.db"
    assert f"devcloud: state     {where}" in lines
    hubs = {h["name"]: h for h in json.loads(report["hubs"])}
    assert sorted(hubs) == ["hub1", "hub2"]
    assert [(hubs[n]["host"], hubs[n]["port"]) for n in ("hub1", "hub2")] == [
        ("127.0.0.3", 8883),
        ("127.0.0.4", 8883),
    ]
    assert [hubs[n]["hostname"] for n in ("hub1", "hub2")] == ["127.0.0.3", "127.0.0.4"]
    group = json.loads(report["group"])
    assert group["allocationPolicy"] == "hashed"
    assert report["serve_rc"] == 0
    assert (state / "devcloud.db").is_file() is not memory
    assert (state / "pki" / "ca" / "root.pem").is_file()


def test_load_config_full(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "devcloud.toml"
    path.parent.mkdir()
    path.write_text(
        'state_dir = "st"\ndatabase = "st/x.db"\nid_scope = "0ne1"\n'
        "registrations_per_second = 5\nassignment_delay_s = 0\ndefault_group = false\n"
        '[dps]\nhost = "127.0.0.9"\nport = 1883\nws_port = 1443\n'
        '[rest]\nhost = "127.0.0.1"\nport = 0\n'
        '[[hubs]]\nname = "a"\nhost = "127.0.0.10"\n'
        '[[hubs]]\nname = "b"\nhost = "127.0.0.11"\nport = 9\nws_port = 10\nhostname = "b.local"\n'
    )
    config = load_config(path)
    assert config == DevCloudConfig(
        state_dir=path.parent / "st",
        database=path.parent / "st" / "x.db",
        id_scope="0ne1",
        registrations_per_second=5.0,
        assignment_delay_s=0.0,
        default_group=False,
        dps_host="127.0.0.9",
        dps_port=1883,
        dps_ws_port=1443,
        rest_host="127.0.0.1",
        rest_port=0,
        hubs=(HubSpec("a", "127.0.0.10"), HubSpec("b", "127.0.0.11", 9, 10, "b.local")),
    )
    assert load_config(path, state_dir=tmp_path / "override").state_dir == tmp_path / "override"
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert load_config(empty) == DevCloudConfig(state_dir=tmp_path / ".devcloud")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("surprise = 1", "surprise"),
        ("id_scope = 7", "id_scope"),
        ("default_group = 1", "default_group"),
        ("registrations_per_second = true", "registrations_per_second"),
        ("registrations_per_second = 0", "registrations_per_second"),
        ("assignment_delay_s = -1", "assignment_delay_s"),
        ('[dps]\nhost = "10.0.0.1"', "dps.host"),
        ('[dps]\nhost = "localhost"', "dps.host"),
        ("[dps]\nport = 70000", "dps.port"),
        ("[rest]\nws_port = 1", "rest.ws_port"),
        ('[[hubs]]\nhost = "127.0.0.3"', "hubs[0].name"),
        ('[[hubs]]\nname = "a"\nhost = "127.0.0.3"\ncolour = 1', "hubs[0].colour"),
        (
            '[[hubs]]\nname = "a"\nhost = "127.0.0.3"\n[[hubs]]\nname = "a"\nhost = "127.0.0.4"',
            "hubs",
        ),
        ("this is not toml", ""),
    ],
)
def test_load_config_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.key == key
    assert str(path) in str(error.value)


def test_serve_with_a_bad_config_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("surprise = 1")
    assert main(["serve", "--config", str(path)]) == 1
    assert "surprise" in capsys.readouterr().err


def test_issuance_commands(capsys: pytest.CaptureFixture[str], devcloud: DevCloudHandle) -> None:
    def ok(*argv: str) -> Any:
        code, out, err = run(capsys, devcloud, *argv)
        assert code == 0, err
        return out

    policy = ok("policy", "put", "cli-policy", "--days", "5")
    assert policy["validityPeriodInDays"] == 5
    assert "BEGIN CERTIFICATE" in policy["certificate"]["issuingCertificate"]
    assert [p["name"] for p in ok("policy", "list")] == ["cli-policy"]
    group = ok("enrollment-group", "put", "g", "--credential-policy", "cli-policy")
    assert group["credentialPolicy"] == "cli-policy"
    assert ok("issued") == []
    devcloud.client.create_device("dev-cli", "hub1")
    refusal = ok("renewals", "refuse", "dev-cli", "--mode", "connect")
    assert (refusal["mode"], refusal["hub"]) == ("connect", "hub1")
    ok("renewals", "allow", "dev-cli")
    code, _, err = run(capsys, devcloud, "policy", "put", "x", "--days", "120")
    assert code == 1
    assert "1-90 days" in err
