"""``sensors scan`` and ``sensors read``: the HAL's command-line face.

:func:`register_cli` mounts the ``sensors`` command on a parent parser's
subparsers (the agent's ``device-agent`` CLI does this); :func:`main` runs it on
its own (``python -m hal sensors scan --backend mock``). Each command's ``func``
takes the parsed arguments and returns an exit code (sysexits): 0 all good,
1 some sensor failed to read, 64 bad usage, 69 a bus could not be used.

The backend is always named (``--backend smbus`` is the default, ``--backend
mock`` the simulator); nothing falls back from one to the other. With the mock
backend, ``--mock-fault`` injects faults before the command runs:
``nack@1:0x76``, ``eio@1:0x76``, ``remove@1:0x76``, ``crc@1:0x44``, ``stuck@1``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from hal.backend import BACKEND_KINDS, Backend, MockBackend, open_backend
from hal.exc import HALError, UnknownBackendError
from hal.sensor import UNITS, SensorSpec

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69

_FAULT = re.compile(r"^(nack|eio|remove|crc)@(\d+):(0[xX][0-9a-fA-F]+|\d+)$|^(stuck)@(\d+)$")


def register_cli(subparsers: Any) -> None:
    """Add ``sensors scan`` and ``sensors read`` to ``subparsers``
    (the object ``ArgumentParser.add_subparsers()`` returns)."""
    sensors = subparsers.add_parser(
        "sensors", help="find and read I2C sensors", description="Find and read I2C sensors."
    )
    commands = sensors.add_subparsers(dest="sensors_command", metavar="{scan,read}")
    commands.required = True

    scan_parser = commands.add_parser(
        "scan", help="probe known addresses and identify parts", description=_scan.__doc__
    )
    _add_common(scan_parser)
    scan_parser.set_defaults(func=_scan)

    read_parser = commands.add_parser(
        "read", help="take one reading from each sensor", description=_read.__doc__
    )
    _add_common(read_parser)
    read_parser.add_argument(
        "--sensor",
        dest="sensors",
        action="append",
        type=_sensor_arg,
        metavar="PART@BUS:0xADDR|auto",
        help="a sensor to read (repeatable); default: auto (whatever a scan finds)",
    )
    read_parser.set_defaults(func=_read)


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None) -> int:
    """Run the ``sensors`` commands as a program of their own."""
    parser = argparse.ArgumentParser(prog="hal")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    if stdout is not None:
        args.stdout = stdout
    code: int = args.func(args)
    return code


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=BACKEND_KINDS, default="smbus", help="real I2C (smbus) or simulated"
    )
    parser.add_argument(
        "--bus",
        dest="buses",
        action="append",
        type=int,
        metavar="N",
        help="I2C bus number (repeatable); default: 1",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--mock-board", default="default", help="simulated board (mock backend)")
    parser.add_argument("--seed", type=int, default=None, help="environment seed (mock backend)")
    parser.add_argument(
        "--mock-fault",
        dest="faults",
        action="append",
        default=[],
        type=_fault_arg,
        metavar="KIND@BUS[:0xADDR]",
        help="inject a fault on the mock board: nack, eio, remove, crc (@BUS:0xADDR), stuck (@BUS)",
    )


def _sensor_arg(text: str) -> SensorSpec | str:
    if text.strip().lower() == "auto":
        return "auto"
    from hal.discovery import parse_spec

    try:
        return parse_spec(text)
    except (ValueError, HALError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _fault_arg(text: str) -> tuple[str, int, int | None]:
    match = _FAULT.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected nack|eio|remove|crc@BUS:0xADDR or stuck@BUS"
        )
    if match.group(4):
        return ("stuck", int(match.group(5)), None)
    return (match.group(1), int(match.group(2)), int(match.group(3), 0))


def _open(args: argparse.Namespace) -> Backend:
    backend = open_backend(args.backend, mock_board=args.mock_board, seed=args.seed)
    if args.faults:
        if not isinstance(backend, MockBackend):
            backend.close()
            raise UnknownBackendError("--mock-fault needs --backend mock")
        board = backend.board
        for kind, bus, address in args.faults:
            if kind == "stuck":
                board.stick(bus)
            elif kind == "nack":
                board.nack(bus, address)
            elif kind == "eio":
                board.io_error(bus, address)
            elif kind == "remove":
                board.remove(bus, address)
            else:
                board.corrupt_crc(bus, address, count=1_000_000)
    return backend


def _out(args: argparse.Namespace) -> TextIO:
    out: TextIO = getattr(args, "stdout", None) or sys.stdout
    return out


def _fail(exc: HALError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    if isinstance(exc, OSError):  # BusUnavailableError, or I2CError (stuck bus, EIO)
        return EX_UNAVAILABLE
    return EX_USAGE if isinstance(exc, ValueError) else EX_FAILURE


def _scan(args: argparse.Namespace) -> int:
    """Probe the addresses supported parts can have on each bus and identify what answers."""
    from hal.discovery import scan

    buses = args.buses or [1]
    try:
        backend = _open(args)
    except HALError as exc:
        return _fail(exc)
    try:
        found = scan(backend, buses)
    except HALError as exc:
        return _fail(exc)
    finally:
        backend.close()
    out = _out(args)
    if args.json:
        rows = [
            {"bus": f.bus, "address": f.address, "part": f.part, "detail": f.detail} for f in found
        ]
        json.dump({"backend": args.backend, "buses": buses, "found": rows}, out, indent=2)
        out.write("\n")
    else:
        _table(
            out,
            ("BUS", "ADDR", "PART", "DETAIL"),
            [(str(f.bus), f"0x{f.address:02x}", f.part or "?", f.detail) for f in found],
        )
        if not found:
            print(f"nothing found on bus {', '.join(map(str, buses))}", file=out)
    return EX_OK


def _read(args: argparse.Namespace) -> int:
    """Take one reading from each sensor (named with --sensor, or found by a scan)."""
    from hal.discovery import open_sensors, scan

    buses = args.buses or [1]
    chosen = args.sensors or ["auto"]
    try:
        backend = _open(args)
    except HALError as exc:
        return _fail(exc)
    results: list[dict[str, Any]] = []
    try:
        specs: list[SensorSpec] = [s for s in chosen if isinstance(s, SensorSpec)]
        if "auto" in chosen:
            taken = {(s.bus, s.address) for s in specs}
            specs += [
                f.spec()
                for f in scan(backend, buses)
                if f.part is not None and (f.bus, f.address) not in taken
            ]
        sensors = open_sensors(backend, specs, require_present=False)
        for spec, sensor in zip(specs, sensors, strict=True):
            row: dict[str, Any] = {
                "name": sensor.name,
                "part": sensor.part,
                "bus": spec.bus,
                "address": spec.address,
            }
            try:
                row["readings"] = sensor.read()
            except HALError as exc:
                row["error"] = str(exc)
            finally:
                sensor.close()
            results.append(row)
    except HALError as exc:
        return _fail(exc)
    finally:
        backend.close()
    out = _out(args)
    if args.json:
        json.dump({"backend": args.backend, "sensors": results}, out, indent=2)
        out.write("\n")
    else:
        rows = []
        for r in results:
            if "error" in r:
                rows.append((r["name"], r["part"], "ERROR", r["error"], ""))
                continue
            for quantity, value in r["readings"].items():
                rows.append(
                    (r["name"], r["part"], quantity, f"{value:.2f}", UNITS.get(quantity, ""))
                )
        _table(out, ("SENSOR", "PART", "QUANTITY", "VALUE", "UNIT"), rows)
        if not results:
            print("no sensors", file=out)
    return EX_FAILURE if any("error" in r for r in results) else EX_OK


def _table(out: TextIO, header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(len(header))]
    for line in (header, *rows):
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip(),
            file=out,
        )
