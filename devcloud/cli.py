"""The ``devcloud`` command: run devcloud (``serve``) and operate it through its REST API.

Every operation command talks to ``--url`` (default ``http://127.0.0.1:8088``, or
``$DEVCLOUD_URL``) and prints JSON on stdout (JSON lines for ``telemetry tail``).
Exit status: 0 ok, 1 the operation failed (message on stderr), 2 usage error.
Imports are lazy so ``devcloud --help`` stays quick: the client, the app and the PKI
are loaded only by the commands that use them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devcloud.client import DevCloudClient

DEFAULT_URL = "http://127.0.0.1:8088"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _client(args: argparse.Namespace) -> DevCloudClient:
    from devcloud.client import DevCloudClient

    return DevCloudClient(args.url)


def _print(value: Any) -> int:
    print(json.dumps(value, indent=2, sort_keys=True))
    return EXIT_OK


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def _property(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected NAME=VALUE")
    return key, value


def _read_pem(path: Path | None) -> str | None:
    return path.read_text() if path is not None else None


# -- serve -----------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from devcloud.app import DevCloud
    from devcloud.config import DevCloudConfig, load_config

    overrides: dict[str, Any] = {}
    if args.state_dir is not None:
        overrides["state_dir"] = args.state_dir
    if args.config is not None:
        config = load_config(args.config, **overrides)
    else:
        state_dir: Path = overrides.get("state_dir", Path(".devcloud"))
        config = DevCloudConfig(state_dir=state_dir, database=state_dir / "devcloud.db")
    if args.memory:
        from dataclasses import replace

        config = replace(config, database=None)

    async def serve() -> None:
        app = DevCloud(config)
        await app.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            print(f"devcloud: id scope  {app.id_scope}")
            dps_host, dps_port = app.dps_address
            ws = f" (websockets :{app.dps_ws_address[1]})" if app.dps_ws_address else ""
            print(f"devcloud: DPS       mqtts://{dps_host}:{dps_port}{ws}")
            for name, (host, port) in app.hub_addresses.items():
                print(
                    f"devcloud: hub {name:<5} mqtts://{host}:{port} "
                    f"(hostname {app.hub_hostname(name)})"
                )
            print(f"devcloud: REST      {app.rest_url}")
            print(f"devcloud: console   {app.console_url}")
            print(f"devcloud: root CA   {app.pki.root_path}")
            print(f"devcloud: state     {config.database or 'in memory'}")
            print("devcloud: ready", flush=True)
            await stop.wait()
            print("devcloud: stopping", flush=True)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await app.stop()

    asyncio.run(serve())
    return EXIT_OK


# -- enrollment groups and enrollments -------------------------------------------------------


def _allocation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allocation", choices=["hashed", "static", "custom"], default="hashed")
    parser.add_argument("--hub", action="append", dest="hubs", help="linked hub (repeatable)")
    parser.add_argument("--webhook", help="custom allocation webhook URL (loopback)")
    parser.add_argument(
        "--reprovision",
        choices=["reprovisionandmigratedata", "reprovisionandresetdata", "neverreprovision"],
        default="reprovisionandmigratedata",
    )
    parser.add_argument("--initial-twin", type=_json_arg, help="initial desired properties (JSON)")
    parser.add_argument("--disabled", action="store_true", help="provisioningStatus disabled")
    parser.add_argument(
        "--credential-policy", help="credential policy that signs the devices' CSRs"
    )


def _cmd_group_put(args: argparse.Namespace) -> int:
    return _print(
        _client(args).put_enrollment_group(
            args.id,
            certificate_pem=_read_pem(args.ca),
            ca_reference=args.ca_ref,
            allocation_policy=args.allocation,
            iot_hubs=args.hubs,
            webhook_url=args.webhook,
            reprovision_policy=args.reprovision,
            initial_desired=args.initial_twin,
            enabled=not args.disabled,
            credential_policy=args.credential_policy,
        )
    )


def _cmd_group_set_allocation(args: argparse.Namespace) -> int:
    return _print(
        _client(args).set_group_allocation(
            args.id,
            args.policy,
            args.hubs,
            webhook_url=args.webhook,
            reprovision_policy=args.reprovision,
        )
    )


def _cmd_enrollment_put(args: argparse.Namespace) -> int:
    return _print(
        _client(args).put_enrollment(
            args.id,
            certificate_pem=_read_pem(args.cert),
            thumbprint=args.thumbprint,
            device_id=args.device_id,
            allocation_policy=args.allocation,
            iot_hubs=args.hubs,
            webhook_url=args.webhook,
            reprovision_policy=args.reprovision,
            initial_desired=args.initial_twin,
            enabled=not args.disabled,
            credential_policy=args.credential_policy,
        )
    )


# -- devices, twins, methods, C2D, telemetry -------------------------------------------------


def _cmd_method(args: argparse.Namespace) -> int:
    status, payload = _client(args).invoke_method(
        args.device, args.name, args.payload, timeout_s=args.timeout, hub=args.hub
    )
    return _print({"status": status, "payload": payload})


def _cmd_c2d(args: argparse.Namespace) -> int:
    message_id = _client(args).send_c2d(
        args.device, body=args.body, properties=dict(args.property or []), hub=args.hub
    )
    return _print({"messageId": message_id})


def _telemetry_line(message: Any) -> str:
    from devcloud.render import render_telemetry

    return json.dumps(render_telemetry(message), sort_keys=True)


def _cmd_tail(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.follow:
        stream = client.follow_telemetry(
            args.since, device_id=args.device, hub=args.hub, timeout_s=args.timeout
        )
        try:
            for message in stream:
                print(_telemetry_line(message), flush=True)
        except KeyboardInterrupt:
            return EXIT_OK
        return EXIT_OK
    for message in client.telemetry(args.since, device_id=args.device, hub=args.hub):
        print(_telemetry_line(message))
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------


def _simple(
    call: Callable[[DevCloudClient, argparse.Namespace], Any],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        result = call(_client(args), args)
        return _print(result if result is not None else {"ok": True})

    return run


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def run(_args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE

    return run


def build_parser(with_pki: bool = False) -> argparse.ArgumentParser:
    """The argument parser; ``with_pki`` loads the real ``pki`` commands (imports the PKI)."""
    parser = argparse.ArgumentParser(
        prog="devcloud", description="Local, protocol-faithful Azure DPS + IoT Hub."
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("DEVCLOUD_URL", DEFAULT_URL),
        help="REST API of a running devcloud (default: %(default)s)",
    )
    parser.set_defaults(func=_usage(parser))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run devcloud until SIGINT/SIGTERM")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--state-dir", type=Path, help="state folder (default ./.devcloud)")
    serve.add_argument("--memory", action="store_true", help="keep state in memory only")
    serve.set_defaults(func=_cmd_serve)

    group = commands.add_parser("enrollment-group", help="DPS enrollment groups")
    group.set_defaults(func=_usage(group))
    gsub = group.add_subparsers(dest="action", metavar="ACTION")
    put = gsub.add_parser("put", help="create or replace a group")
    put.add_argument("id")
    ca = put.add_mutually_exclusive_group()
    ca.add_argument("--ca", type=Path, help="signing CA certificate (PEM file)")
    ca.add_argument(
        "--ca-ref",
        choices=["devcloud-intermediate", "devcloud-root"],
        help="one of devcloud's own CAs (default: devcloud-intermediate)",
    )
    _allocation_options(put)
    put.set_defaults(func=_cmd_group_put)
    show = gsub.add_parser("show", help="show a group")
    show.add_argument("id")
    show.set_defaults(func=_simple(lambda c, a: c.get_enrollment_group(a.id)))
    gsub.add_parser("list", help="list groups").set_defaults(
        func=_simple(lambda c, a: c.list_enrollment_groups())
    )
    delete = gsub.add_parser("delete", help="delete a group")
    delete.add_argument("id")
    delete.set_defaults(func=_simple(lambda c, a: c.delete_enrollment_group(a.id)))
    alloc = gsub.add_parser("set-allocation", help="change allocation policy and linked hubs")
    alloc.add_argument("id")
    alloc.add_argument("policy", choices=["hashed", "static", "custom"])
    alloc.add_argument("--hub", action="append", dest="hubs", help="linked hub (repeatable)")
    alloc.add_argument("--webhook", help="custom allocation webhook URL")
    alloc.add_argument(
        "--reprovision",
        choices=["reprovisionandmigratedata", "reprovisionandresetdata", "neverreprovision"],
    )
    alloc.set_defaults(func=_cmd_group_set_allocation)

    enrollment = commands.add_parser("enrollment", help="DPS individual enrollments")
    enrollment.set_defaults(func=_usage(enrollment))
    esub = enrollment.add_subparsers(dest="action", metavar="ACTION")
    put = esub.add_parser("put", help="create or replace an individual enrollment")
    put.add_argument("id", metavar="REGID")
    pin = put.add_mutually_exclusive_group()
    pin.add_argument("--cert", type=Path, help="the device's certificate (PEM file)")
    pin.add_argument("--thumbprint", help="the device certificate's SHA-256 thumbprint")
    put.add_argument("--device-id", help="device id in the hub (default: the registration id)")
    _allocation_options(put)
    put.set_defaults(func=_cmd_enrollment_put)
    for name, call, text in (
        ("show", lambda c, a: c.get_enrollment(a.id), "show an enrollment"),
        ("delete", lambda c, a: c.delete_enrollment(a.id), "delete an enrollment"),
    ):
        sub = esub.add_parser(name, help=text)
        sub.add_argument("id", metavar="REGID")
        sub.set_defaults(func=_simple(call))
    esub.add_parser("list", help="list enrollments").set_defaults(
        func=_simple(lambda c, a: c.list_enrollments())
    )

    registration = commands.add_parser("registration", help="DPS registration states")
    registration.set_defaults(func=_usage(registration))
    rsub = registration.add_subparsers(dest="action", metavar="ACTION")
    rsub.add_parser("list", help="list registrations").set_defaults(
        func=_simple(lambda c, a: c.list_registrations())
    )
    rshow = rsub.add_parser("show", help="show one registration")
    rshow.add_argument("id", metavar="REGID")
    rshow.set_defaults(func=_simple(lambda c, a: c.get_registration(a.id)))
    rsub.add_parser("stats", help="register requests and assignments per id").set_defaults(
        func=_simple(lambda c, a: c.dps_stats())
    )
    rhistory = rsub.add_parser("history", help="what DPS did with one id's requests")
    rhistory.add_argument("id", metavar="REGID")
    rhistory.set_defaults(func=_simple(lambda c, a: c.registration_history(a.id)))

    device = commands.add_parser("device", help="devices in the hubs")
    device.set_defaults(func=_usage(device))
    dsub = device.add_subparsers(dest="action", metavar="ACTION")
    dlist = dsub.add_parser("list", help="list devices")
    dlist.add_argument("--hub")
    dlist.set_defaults(func=_simple(lambda c, a: c.list_devices(a.hub)))
    for name, call, text in (
        ("show", lambda c, a: c.get_device(a.id, a.hub), "show a device"),
        ("enable", lambda c, a: c.enable_device(a.id, a.hub), "enable a device"),
        ("disable", lambda c, a: c.disable_device(a.id, a.hub), "disable (and disconnect)"),
        ("delete", lambda c, a: c.delete_device(a.id, a.hub), "delete (and disconnect)"),
    ):
        sub = dsub.add_parser(name, help=text)
        sub.add_argument("id", metavar="DEVICE_ID")
        sub.add_argument("--hub")
        sub.set_defaults(func=_simple(call))

    twin = commands.add_parser("twin", help="device twins")
    twin.set_defaults(func=_usage(twin))
    tsub = twin.add_subparsers(dest="action", metavar="ACTION")
    tshow = tsub.add_parser("show", help="show a twin")
    tshow.add_argument("id", metavar="DEVICE_ID")
    tshow.add_argument("--hub")
    tshow.set_defaults(func=_simple(lambda c, a: c.get_twin(a.id, a.hub)))
    tpatch = tsub.add_parser("patch", help="patch desired properties")
    tpatch.add_argument("id", metavar="DEVICE_ID")
    tpatch.add_argument("desired", type=_json_arg, help="desired properties patch (JSON)")
    tpatch.add_argument("--hub")
    tpatch.set_defaults(func=_simple(lambda c, a: c.patch_twin_desired(a.id, a.desired, hub=a.hub)))

    method = commands.add_parser("method", help="direct methods")
    method.set_defaults(func=_usage(method))
    msub = method.add_subparsers(dest="action", metavar="ACTION")
    invoke = msub.add_parser("invoke", help="invoke a direct method")
    invoke.add_argument("name", metavar="NAME")
    invoke.add_argument("--device", required=True)
    invoke.add_argument("--payload", type=_json_arg, default=None, help="JSON payload")
    invoke.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    invoke.add_argument("--hub")
    invoke.set_defaults(func=_cmd_method)

    c2d = commands.add_parser("c2d", help="cloud-to-device messages")
    c2d.set_defaults(func=_usage(c2d))
    csub = c2d.add_subparsers(dest="action", metavar="ACTION")
    send = csub.add_parser("send", help="send a cloud-to-device message")
    send.add_argument("body", metavar="BODY", help="message body (text)")
    send.add_argument("--device", required=True)
    send.add_argument("--property", action="append", type=_property, help="NAME=VALUE")
    send.add_argument("--hub")
    send.set_defaults(func=_cmd_c2d)

    telemetry = commands.add_parser("telemetry", help="device-to-cloud messages")
    telemetry.set_defaults(func=_usage(telemetry))
    tel = telemetry.add_subparsers(dest="action", metavar="ACTION")
    tail = tel.add_parser("tail", help="print messages as JSON lines")
    tail.add_argument("--device")
    tail.add_argument("--hub")
    tail.add_argument("--since", type=int, default=0, help="after this sequence number")
    tail.add_argument("--follow", action="store_true", help="keep printing new messages")
    tail.add_argument("--timeout", type=float, help="with --follow: stop after S seconds")
    tail.set_defaults(func=_cmd_tail)

    commands.add_parser("hubs", help="list hubs").set_defaults(func=_simple(lambda c, a: c.hubs()))

    policy = commands.add_parser("policy", help="credential policies (certificate issuance)")
    policy.set_defaults(func=_usage(policy))
    psub = policy.add_subparsers(dest="action", metavar="ACTION")
    pput = psub.add_parser("put", help="create or replace a policy (and its issuing CA)")
    pput.add_argument("name")
    pput.add_argument("--days", type=int, default=30, help="leaf validity, 1-90 days")
    pput.set_defaults(func=_simple(lambda c, a: c.put_credential_policy(a.name, a.days)))
    for name, call, text in (
        ("show", lambda c, a: c.get_credential_policy(a.name), "show a policy"),
        ("delete", lambda c, a: c.delete_credential_policy(a.name), "delete a policy"),
    ):
        sub = psub.add_parser(name, help=text)
        sub.add_argument("name")
        sub.set_defaults(func=_simple(call))
    psub.add_parser("list", help="list policies").set_defaults(
        func=_simple(lambda c, a: c.list_credential_policies())
    )

    issued = commands.add_parser("issued", help="certificates signed from CSRs")
    issued.add_argument("--device", help="only this device's")
    issued.set_defaults(func=_simple(lambda c, a: c.issued_certificates(a.device)))

    renewals = commands.add_parser("renewals", help="make a hub refuse a device's renewals")
    renewals.set_defaults(func=_usage(renewals))
    rnsub = renewals.add_subparsers(dest="action", metavar="ACTION")
    refuse = rnsub.add_parser("refuse", help="refuse the device's certificate renewals")
    refuse.add_argument("id", metavar="DEVICE_ID")
    refuse.add_argument("--hub")
    refuse.add_argument(
        "--mode",
        choices=["error", "connect"],
        default="error",
        help="error: answer an error code; connect: issue, then refuse CONNECT with it",
    )
    refuse.add_argument("--code", type=int, default=400040, help="errorCode (error mode)")
    refuse.set_defaults(
        func=_simple(lambda c, a: c.refuse_renewals(a.id, a.hub, mode=a.mode, error_code=a.code))
    )
    allow = rnsub.add_parser("allow", help="accept the device's renewals again")
    allow.add_argument("id", metavar="DEVICE_ID")
    allow.add_argument("--hub")
    allow.set_defaults(func=_simple(lambda c, a: c.allow_renewals(a.id, a.hub)))

    if with_pki:
        from devcloud.pki import register_cli

        register_cli(commands)
    else:
        commands.add_parser("pki", help="test PKI: CA, device and server certificates, CRLs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    from devcloud.errors import DevCloudError

    args_list = list(sys.argv[1:] if argv is None else argv)
    positional = [a for a in args_list if not a.startswith("-")]
    with_pki = bool(positional) and positional[0] == "pki"
    if with_pki and "--url" in args_list:
        with_pki = args_list.index("pki") > args_list.index("--url") + 1
    parser = build_parser(with_pki=with_pki)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return int(args.func(args))
    except DevCloudError as exc:
        print(f"devcloud: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"devcloud: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
