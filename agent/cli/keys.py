"""``device-agent keys``: the device's key, its CSR and the signed certificate.

``keys create [--tpm | --file] [--replace]`` makes the key (a TSS2 blob in the TPM for
``keystore = "tpm"``, an EC P-384 PEM file of mode 0600 otherwise); ``keys csr [--out
FILE]`` writes the PKCS#10 request (CN = the registration id) to ``identity.csr_path``;
``keys install-cert FILE`` checks a signed chain against the key and the trust anchors
and installs it atomically; ``keys show`` describes all of it. Run as root on an
installed device, new files take the owner of their directory (the service user's).
See :mod:`agent.identity.enroll`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.errors import EX_OK, EX_USAGE

__all__ = ["register_cli"]


def register_cli(commands: Any, config_loader: Any) -> None:
    """Add ``keys`` and its sub-commands; ``config_loader(args)`` gives the AgentConfig."""
    keys = commands.add_parser("keys", help="the device key, its CSR and the certificate")
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=type(keys))
    sub.required = True

    create = sub.add_parser("create", help="make the device key (TPM or file)")
    kind = create.add_mutually_exclusive_group()
    kind.add_argument("--tpm", action="store_true", help="in the TPM (keystore = 'tpm')")
    kind.add_argument("--file", action="store_true", help="a PEM file (keystore = 'file')")
    create.add_argument("--replace", action="store_true", help="replace an existing key")
    create.set_defaults(func=lambda a: _create(a, config_loader(a)))

    csr = sub.add_parser("csr", help="write the CSR (CN = the registration id)")
    csr.add_argument("--out", type=Path, help="where (default: identity.csr_path)")
    csr.set_defaults(func=lambda a: _csr(a, config_loader(a)))

    install = sub.add_parser("install-cert", help="check and install a signed chain")
    install.add_argument("file", type=Path, metavar="FILE", help="PEM chain, leaf first")
    install.set_defaults(func=lambda a: _install(a, config_loader(a)))

    show = sub.add_parser("show", help="describe the key, the CSR and the certificate")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=lambda a: _show(a, config_loader(a)))


def _create(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent.identity.enroll import create_key

    identity = config.identity
    wanted = "tpm" if args.tpm else "file" if args.file else identity.keystore
    if wanted != identity.keystore:
        print(
            f"device-agent: {config.source}: identity.keystore is {identity.keystore!r}; "
            f"set it to {wanted!r} to use a {wanted} key",
            file=sys.stderr,
        )
        return EX_USAGE
    made = create_key(identity, replace=args.replace, state_dir=config.state.directory)
    where = "in the TPM, blob" if wanted == "tpm" else "file"
    if made:
        print(f"created a key {where} {identity.key_path}")
    else:
        print(f"{identity.key_path}: a key exists already (--replace to make a new one)")
    return EX_OK


def _csr(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent.identity.enroll import write_csr_for

    path = write_csr_for(config.identity, args.out)
    print(f"wrote the CSR for {config.identity.registration_id!r} to {path}")
    return EX_OK


def _install(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent.identity.enroll import install_certificate

    path = install_certificate(config.identity, args.file, now=datetime.now(UTC))
    print(f"installed {args.file} as {path}")
    return EX_OK


def _show(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent.identity.enroll import describe

    info = describe(config.identity, now=datetime.now(UTC))
    if args.json:
        json.dump(info, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
        return EX_OK
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for inner, item in value.items():
                print(f"  {inner + ':':<14} {item}")
        else:
            print(f"{key + ':':<16} {value}")
    return EX_OK
