"""A private network namespace with loopback up, without iproute2.

``unshare --net`` (util-linux, in every Debian base system) gives a process its own
network namespace, whose ``lo`` starts down. :func:`loopback_up` brings it up with the
same ioctl ``ip link set lo up`` makes, so nothing needs the ``ip`` command.
:func:`netns_argv` wraps a command line: ``unshare`` runs this module, which brings
loopback up and then ``exec``s the command.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import sys
from collections.abc import Sequence

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP, IFREQ = 0x8913, 0x8914, 0x1, "16sh14x"


def loopback_up() -> None:
    """``ip link set lo up`` for the current network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        current = fcntl.ioctl(probe, SIOCGIFFLAGS, struct.pack(IFREQ, b"lo", 0))
        flags = struct.unpack(IFREQ, current)[1]
        fcntl.ioctl(probe, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


def netns_argv(command: Sequence[str], *, own_pids: bool = False) -> list[str]:
    """``command`` in a new network namespace (as a mapped root user), loopback up.

    ``own_pids``: a PID namespace too, so everything the command started dies with it
    (should the caller kill it at a timeout).
    """
    pid_options = ["--pid", "--fork", "--kill-child"] if own_pids else []
    return [
        "unshare",
        "--net",
        "--map-root-user",
        *pid_options,
        sys.executable,
        "-m",
        "tests.support.netns",
        *command,
    ]


if __name__ == "__main__":
    loopback_up()
    os.execvp(sys.argv[1], sys.argv[1:])  # noqa: S606 - becomes the command, as exec does
