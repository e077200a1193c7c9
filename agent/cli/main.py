"""``device-agent``: the command line.

Commands: ``run`` (the daemon), ``provision`` (one DPS registration, prints the
assignment), ``status`` (cached assignment + the running daemon's live status),
``check`` (is this device ready?), ``import-identity`` (move a first-boot identity from
the boot partition into place), ``image-prep`` (strip state before capturing a
golden image), ``keys create|csr|install-cert|show`` (the device key and certificate,
:mod:`agent.cli.keys`) and ``sensors scan|read`` (the HAL's own commands). With
``keystore = "tpm"`` the commands that may load the key re-execute themselves with
``OPENSSL_CONF`` and ``TPM2OPENSSL_TCTI`` when those are not set.

The config path comes from ``--config``, else ``$DEVICE_AGENT_CONFIG``, else
``/etc/device-agent/agent.toml``. Exit codes follow sysexits: any
:class:`~agent.errors.AgentError` prints its message (no traceback) and exits with its
``exit_code`` (78 for configuration errors, which the unit's
``RestartPreventExitStatus=`` uses); a usage error exits 64; anything else is a bug:
traceback and 70. The heavy parts (daemon, paho, HAL) are imported only by the
command that needs them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from agent import __version__
from agent.config import AgentConfig, load_config, resolve_config_path
from agent.errors import EX_CONFIG, EX_FAILURE, EX_OK, EX_SOFTWARE, EX_USAGE, AgentError

if TYPE_CHECKING:
    from agent.cli.check import CheckResult  # imported at run time only by `check`

__all__ = ["build_parser", "main"]

#: What ``image-prep --machine-id`` resets: emptied (systemd makes a new id at the next
#: boot), and D-Bus's copy removed (Debian links it to the first).
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))

#: ``status`` exit code when no daemon is running (as LSB init scripts say it).
EX_NOT_RUNNING = 3


def _terminal_columns() -> int:
    """What ``shutil.get_terminal_size`` says, without importing shutil (and bz2, lzma)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno() if sys.__stdout__ else 1).columns
        except (OSError, ValueError):
            columns = 80
    return columns


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, given its width so that it does not import shutil."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("width", _terminal_columns() - 2)  # as HelpFormatter does
        super().__init__(prog, **kwargs)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit 64 (EX_USAGE) instead of 2; lean help formatting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser(*, with_hal: bool = True) -> argparse.ArgumentParser:
    """The ``device-agent`` argument parser (``with_hal=False``: without ``sensors``)."""
    parser = _Parser(
        prog="device-agent",
        description="Connects this device to Azure IoT: X.509 identity, DPS, IoT Hub telemetry.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $DEVICE_AGENT_CONFIG, else /etc/device-agent/agent.toml)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("--version", action="version", version=f"device-agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    run = commands.add_parser("run", help="run the agent (what the systemd unit starts)")
    run.set_defaults(func=_run)

    provision = commands.add_parser(
        "provision", help="register with DPS once and print the assignment"
    )
    provision.add_argument("--json", action="store_true", help="print JSON")
    provision.set_defaults(func=_provision)

    status = commands.add_parser("status", help="cached assignment and the running daemon")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_status)

    check = commands.add_parser("check", help="check config, identity, clock, DPS and sensors")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.add_argument("--offline", action="store_true", help="skip the DPS reachability check")
    check.add_argument("--no-sensors", action="store_true", help="skip the sensor checks")
    check.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="DPS connect timeout (10 s)"
    )
    check.set_defaults(func=_check)

    import_identity = commands.add_parser(
        "import-identity",
        help="move an identity dropped in identity.import_dir (the boot partition) into place",
    )
    import_identity.set_defaults(func=_import_identity)

    image_prep = commands.add_parser(
        "image-prep",
        help="remove identity and state (and with --machine-id the machine id) before capture",
    )
    image_prep.add_argument(
        "--machine-id",
        action="store_true",
        help="also empty /etc/machine-id (each clone makes its own at first boot): "
        "the last step before capturing an image, as root",
    )
    image_prep.set_defaults(func=_image_prep)

    from agent.cli.keys import register_cli as register_keys

    register_keys(commands, _config)

    if with_hal:
        import hal.cli

        hal.cli.register_cli(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, map errors to exit codes."""
    words = list(sys.argv[1:] if argv is None else argv)
    # The HAL's commands (and their imports) only when they can be asked for: the
    # long-running `run` stays lean.
    needs_hal = any(word in ("sensors", "-h", "--help") for word in words)
    parser = build_parser(with_hal=needs_hal)
    args = parser.parse_args(words)
    try:
        if args.command in _TPM_COMMANDS:
            _reexec_with_tpm_environment(args, words)
        code: int = args.func(args)
    except AgentError as exc:
        print(f"device-agent: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:
        import traceback

        traceback.print_exc()
        print("device-agent: internal error (a bug; please report it)", file=sys.stderr)
        return EX_SOFTWARE
    return code


# --- the TPM's environment ---------------------------------------------------------------

#: Commands that may load a TPM key (OpenSSL must have the tpm2 provider from the start).
_TPM_COMMANDS = frozenset({"run", "provision", "check", "keys"})
_REEXEC_MARK = "DEVICE_AGENT_TPM_REEXEC"


def _reexec_with_tpm_environment(args: argparse.Namespace, words: list[str]) -> None:
    """With ``keystore = "tpm"``, make sure OPENSSL_CONF and TPM2OPENSSL_TCTI are set.

    OpenSSL reads its config once, at the first use, so the variables must be in the
    environment when the process starts: if they are missing, this process replaces
    itself with the same command and them (once; the unit sets them already).
    """
    identity = _config(args).identity
    if identity.keystore != "tpm" or os.environ.get(_REEXEC_MARK):
        return
    if os.environ.get("OPENSSL_CONF") and os.environ.get("TPM2OPENSSL_TCTI"):
        return
    env = dict(os.environ)
    env.setdefault("OPENSSL_CONF", str(identity.openssl_conf))
    env.setdefault("TPM2OPENSSL_TCTI", identity.tpm_tcti)
    env[_REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "agent", *words], env)  # noqa: S606


# --- commands ---------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> AgentConfig:
    return load_config(resolve_config_path(args.config, os.environ))


def _as_service_user(config: AgentConfig) -> None:
    """Run as root: act as the service user from here on (files made are the service's)."""
    from agent.store.service_user import act_as_service_user

    account = act_as_service_user(config.state.directory)
    if account is not None:
        print(
            f"device-agent: run as root: acting as the service user {account.describe()}",
            file=sys.stderr,
        )


def _logging(args: argparse.Namespace, level: str) -> None:
    from agent.runtime.logs import setup_logging

    setup_logging("DEBUG" if args.verbose else level)


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    _logging(args, config.log.level)
    from agent.runtime.daemon import run
    from agent.runtime.sdnotify import Notifier

    with Notifier() as notifier:
        # Once the daemon has returned this process only exits: further SIGTERM/SIGINT
        # (systemd's second stop, a second Ctrl-C) must not turn a clean exit into -15.
        return run(config, notifier=notifier, ignore_signals_after=True)


def _provision(args: argparse.Namespace) -> int:
    config = _config(args)
    _as_service_user(config)
    _logging(args, config.log.level)
    from agent.runtime.daemon import provision_once

    assignment = provision_once(config)
    fields = {
        "assignedHub": assignment.assigned_hub,
        "deviceId": assignment.device_id,
        "provisionedAt": assignment.provisioned_at,
        "substatus": assignment.substatus,
        "payload": assignment.payload,
    }
    if args.json:
        _print_json(fields)
    else:
        print(f"assigned hub:   {assignment.assigned_hub}")
        print(f"device id:      {assignment.device_id}")
        print(f"provisioned at: {assignment.provisioned_at}")
        if assignment.substatus:
            print(f"substatus:      {assignment.substatus}")
        if assignment.payload is not None:
            print(f"payload:        {json.dumps(assignment.payload, sort_keys=True)}")
    return EX_OK


def _status(args: argparse.Namespace) -> int:
    config = _config(args)
    _as_service_user(config)
    _logging(args, "WARNING")
    from agent.store.status import read_status

    status = read_status(config.state.directory)
    if args.json:
        _print_json(status)
    else:
        _print_status(status, sys.stdout)
    return EX_OK if status.get("running") else EX_NOT_RUNNING


def _print_status(status: dict[str, object], out: TextIO) -> None:
    running = bool(status.get("running"))
    live = status.get("live")
    print(f"state directory: {status.get('stateDir')}", file=out)
    if running and isinstance(live, dict):
        print(f"daemon:          running (pid {live.get('pid')})", file=out)
        for key, value in sorted(live.items()):
            if key != "pid":
                print(f"  {key + ':':<26} {_text(value)}", file=out)
    else:
        print("daemon:          not running", file=out)
    assignment = status.get("assignment")
    if isinstance(assignment, dict):
        print(
            f"assignment:      {assignment.get('deviceId')} on {assignment.get('assignedHub')}"
            f" (provisioned {assignment.get('provisionedAt')})",
            file=out,
        )
    else:
        print("assignment:      none cached (the next start registers with DPS)", file=out)
    if status.get("lastReprovisionReason"):
        print(f"last reprovision: {status['lastReprovisionReason']}", file=out)
    attempts = status.get("reprovisionAttempts")
    if isinstance(attempts, list):
        print(f"DPS registrations in the budget window: {len(attempts)}", file=out)
    errors = status.get("errors")
    if isinstance(errors, list):
        for error in errors:
            print(f"error: {error}", file=out)


def _check(args: argparse.Namespace) -> int:
    from agent.cli.check import CheckResult, run_checks

    _logging(args, "WARNING")
    path = resolve_config_path(args.config, os.environ)
    results: list[CheckResult] = []
    try:
        config = load_config(path)
    except AgentError as exc:
        results.append(CheckResult("config", "fail", str(exc)))
        _report(results, args.json, path)
        return EX_CONFIG
    _as_service_user(config)
    for result in run_checks(
        config,
        network=not args.offline,
        dps_timeout_s=args.timeout,
        sensors=not args.no_sensors,
    ):
        results.append(result)
        if not args.json:
            _print_result(result)
    if args.json:
        _report(results, True, path)
    problems = sum(r.status == "fail" for r in results)
    warnings = sum(r.status == "warn" for r in results)
    if not args.json:
        print(f"{problems} problem(s), {warnings} warning(s).")
    return EX_FAILURE if problems else EX_OK


def _report(results: list[CheckResult], as_json: bool, path: Path) -> None:
    if as_json:
        _print_json({"config": str(path), "results": [r.__dict__ for r in results]})
    else:
        for result in results:
            _print_result(result)


def _print_result(result: CheckResult) -> None:
    label = {"ok": " OK ", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}[result.status]
    print(f"[{label}] {result.name:<24} {result.detail}", flush=True)


def _import_identity(args: argparse.Namespace) -> int:
    config = _config(args)
    _logging(args, "WARNING")
    from agent.identity.importer import import_identity, left_over

    source = config.identity.import_dir
    try:
        imported = import_identity(config.identity, state_dir=config.state.directory)
    except OSError as exc:
        print(f"device-agent: cannot import the identity: {exc}", file=sys.stderr)
        return EX_FAILURE
    for item in imported:
        owner = item.destination.stat()
        print(
            f"imported {item.source} -> {item.destination} "
            f"(mode {item.mode:04o}, uid {owner.st_uid}{', replaced' if item.replaced else ''})"
        )
    for path in left_over(config.identity):
        print(f"left {path}: not an identity file the config names", file=sys.stderr)
    if not imported:
        print(f"{source}: no identity to import")
    return _enrol_first_boot(config)


def _enrol_first_boot(config: AgentConfig) -> int:
    """No certificate yet: make the key and write the CSR here, as root, before the
    service starts (the hardened service may write neither /etc/device-agent nor the
    boot partition). A TPM key is left to the service, which has the TPM device."""
    from agent.identity.enroll import first_boot, needs_enrolment

    if config.identity.keystore != "file" or not needs_enrolment(config.identity):
        return EX_OK
    try:
        pending = first_boot(config.identity, state_dir=config.state.directory)
    except (AgentError, OSError) as exc:
        print(f"device-agent: first boot: cannot make the key and CSR: {exc}", file=sys.stderr)
        return EX_FAILURE
    print(pending.message)
    return EX_OK


def _image_prep(args: argparse.Namespace) -> int:
    config = _config(args)
    _logging(args, "WARNING")
    from agent.identity.importer import identity_files
    from agent.store.status import read_status, strip_state

    if read_status(config.state.directory).get("running"):
        print("device-agent: the agent is running; stop it first", file=sys.stderr)
        return EX_FAILURE
    removed = strip_state(config.state.directory)
    for path in removed:
        print(f"removed {path}")
    print(f"{config.state.directory}: no state left ({len(removed)} file(s) removed)")
    # The identity: where the config wants it, and any copy still waiting to be imported.
    ident = config.identity
    identity = [path for path, _ in identity_files(ident)]
    identity += [ident.import_dir / path.name for path in identity]
    # A first boot's CSR and a DPS-issued operational identity are this device's too.
    identity += [ident.csr_path, ident.operational_cert, ident.operational_key]
    try:
        for path in identity:
            if os.path.lexists(path):
                path.unlink()
                print(f"removed {path}")
        if args.machine_id:
            machine_id, dbus_copy = MACHINE_ID_FILES
            if machine_id.exists() and machine_id.stat().st_size:
                machine_id.write_bytes(b"")
                print(f"emptied {machine_id}")
            if os.path.lexists(dbus_copy):
                dbus_copy.unlink()
                print(f"removed {dbus_copy}")
    except OSError as exc:
        print(f"device-agent: image-prep: {exc} (run it as root)", file=sys.stderr)
        return EX_FAILURE
    print("no identity left" + (", no machine id" if args.machine_id else ""))
    return EX_OK


def _print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def _text(value: object) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)
