"""Root runs the commands; the files they make belong to the service user.

Theory of operation
-------------------
The unit runs the agent as ``device-agent`` (``User=``), and its state directory
(``StateDirectory=``, tmpfiles.d) belongs to that user. An admin runs ``device-agent
provision`` or ``check`` as root. Run as root, ``provision`` left ``state.json`` owned by
root with mode 0600: the service could not read it, discarded it as corrupt and
registered with DPS again; ``check`` as root passed while the service could not read a
root-owned key. So:

* :func:`act_as_service_user` — a command that writes what the service uses, or checks
  what the service can read, calls it first. Run as root, the process *becomes* the
  service account for the rest of its life (supplementary groups, gid, uid, in that
  order; irreversibly), so every file it creates is the service's and every read is
  checked with the service's rights. Not root: nothing changes.
* :func:`give_to_service_user` — for a file root must create where the service cannot
  write (``/etc/device-agent``, read-only to the sandboxed service): mode first, then
  the owner, so the file is never readable by anyone else on the way.

Which account is the service's: the owner of the state directory when that is not root
(what systemd and tmpfiles.d made it), else, for the packaged state directory
``/var/lib/device-agent`` only, the user ``device-agent`` if it exists. A state
directory owned by root (a development checkout, the test suite run as root) means
there is no separate service account: nothing changes.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PACKAGED_STATE_DIR",
    "SERVICE_USER",
    "ServiceAccount",
    "act_as_service_user",
    "give_to_service_user",
    "service_account",
]

#: The unit's ``User=``.
SERVICE_USER = "device-agent"
#: The unit's ``StateDirectory=`` (what the Debian package's tmpfiles.d file makes).
PACKAGED_STATE_DIR = Path("/var/lib/device-agent")


@dataclass(frozen=True)
class ServiceAccount:
    """The user the service runs as, with its primary and supplementary groups."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.name} (uid {self.uid})"


def _account(entry: pwd.struct_passwd) -> ServiceAccount:
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return ServiceAccount(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def service_account(state_dir: Path) -> ServiceAccount | None:
    """The service's account as this machine shows it (see the module doc), or None."""
    try:
        owner = state_dir.stat().st_uid
    except OSError:
        owner = None
    if owner is not None:
        if owner == 0:
            return None
        try:
            return _account(pwd.getpwuid(owner))
        except KeyError:  # owned by a uid with no passwd entry: act as that uid alone
            gid = state_dir.stat().st_gid
            return ServiceAccount(str(owner), owner, gid, (gid,))
    if state_dir != PACKAGED_STATE_DIR:
        return None
    try:
        return _account(pwd.getpwnam(SERVICE_USER))
    except KeyError:
        return None


def act_as_service_user(state_dir: Path) -> ServiceAccount | None:
    """Run as root: become the service account for good; returns it. Else None, no change.

    The packaged state directory is created first (0700, the service's) if missing.
    """
    if os.geteuid() != 0:
        return None
    account = service_account(state_dir)
    if account is None:
        return None
    if not state_dir.exists():
        state_dir.mkdir(mode=0o700, parents=True)
        os.chown(state_dir, account.uid, account.gid)
    os.setgroups(list(account.groups))
    os.setgid(account.gid)
    os.setuid(account.uid)
    return account


def give_to_service_user(path: Path, *, mode: int, state_dir: Path) -> ServiceAccount | None:
    """Make ``path`` (created by root) the service account's with ``mode``; returns it.

    Not root, or no service account: only the mode is set.
    """
    os.chmod(path, mode)
    if os.geteuid() != 0:
        return None
    account = service_account(state_dir)
    if account is not None:
        os.chown(path, account.uid, account.gid)
    return account
