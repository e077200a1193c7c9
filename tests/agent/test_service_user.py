"""Root acting as the service user (agent.store.service_user), for real: setuid in a child.

The service account is the owner of the state directory; here that is ``nobody`` (or a
bare uid), so the tests need root to chown and to switch users. Each switch happens in
a child process (it is irreversible).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.store.service_user import (
    ServiceAccount,
    act_as_service_user,
    give_to_service_user,
    service_account,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
NOBODY = pwd.getpwnam("nobody")


def owned_by_nobody(folder: Path) -> Path:
    folder.mkdir(mode=0o700)
    os.chown(folder, NOBODY.pw_uid, NOBODY.pw_gid)
    return folder


REPO = Path(__file__).resolve().parents[2]
#: The child runs as nobody after the switch: an interpreter under /root (pyenv) could not
#: import anything more then, so it is the system's (the module needs only the stdlib).
SYSTEM_PYTHON = "/usr/bin/python3"


def in_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEM_PYTHON, "-c", code, *args],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def test_a_state_directory_owned_by_root_means_no_service_account(tmp_path: Path) -> None:
    assert service_account(tmp_path) is None
    assert service_account(tmp_path / "missing") is None  # not the packaged directory


def test_the_owner_of_the_state_directory_is_the_service_account(tmp_path: Path) -> None:
    state = owned_by_nobody(tmp_path / "state")
    account = service_account(state)
    assert account == ServiceAccount(
        "nobody",
        NOBODY.pw_uid,
        NOBODY.pw_gid,
        tuple(os.getgrouplist("nobody", NOBODY.pw_gid)),
    )
    bare = tmp_path / "bare"
    bare.mkdir()
    os.chown(bare, 54321, 54322)
    assert service_account(bare) == ServiceAccount("54321", 54321, 54322, (54322,))


@pytest.fixture(name="reachable")
def reachable_fixture() -> Iterator[Path]:
    """A folder in /tmp itself: pytest's tmp_path sits under a 0700 root folder."""
    folder = Path(tempfile.mkdtemp(prefix="service-user-"))
    yield folder
    shutil.rmtree(folder)


def test_root_becomes_the_service_account_and_what_it_writes_is_the_services(
    reachable: Path,
) -> None:
    state = owned_by_nobody(reachable / "state")
    os.chmod(reachable, 0o755)  # noqa: S103 (nobody must reach the state folder)
    result = in_child(
        "import os, sys\n"
        "from pathlib import Path\n"
        "from agent.store.service_user import act_as_service_user\n"
        "account = act_as_service_user(Path(sys.argv[1]))\n"
        "Path(sys.argv[1], 'state.json').write_text('{}')\n"
        "print(account.name, os.getuid(), os.geteuid(), os.getgid(), sorted(os.getgroups()))\n"
        "os.setuid(0)\n",  # must fail: the switch is for good
        str(state),
    )
    assert result.returncode != 0
    assert "PermissionError" in result.stderr
    groups = sorted(set(os.getgrouplist("nobody", NOBODY.pw_gid)))
    uid, gid = NOBODY.pw_uid, NOBODY.pw_gid
    assert result.stdout.strip().split(maxsplit=4) == [
        "nobody",
        str(uid),
        str(uid),
        str(gid),
        str(groups),
    ]
    written = (state / "state.json").stat()
    assert (written.st_uid, written.st_gid) == (uid, gid)


def test_without_a_service_account_root_stays_root(tmp_path: Path) -> None:
    assert act_as_service_user(tmp_path) is None
    assert os.geteuid() == 0


def test_not_root_nothing_changes(tmp_path: Path) -> None:
    state = owned_by_nobody(tmp_path / "state")
    result = in_child(
        "import os, sys\n"
        "from pathlib import Path\n"
        # Imported first: the checkout may not be readable by nobody (a clone in /root).
        "from agent.store.service_user import act_as_service_user\n"
        f"os.setgid({NOBODY.pw_gid}); os.setuid({NOBODY.pw_uid})\n"
        "print(act_as_service_user(Path(sys.argv[1])), os.getuid())\n",
        str(state),
    )
    assert result.stdout.split() == ["None", str(NOBODY.pw_uid)], result.stderr


def test_a_file_root_makes_is_given_to_the_service_account_mode_first(tmp_path: Path) -> None:
    state = owned_by_nobody(tmp_path / "state")
    key = tmp_path / "device.key"
    key.write_bytes(b"secret")
    account = give_to_service_user(key, mode=0o600, state_dir=state)
    assert account is not None and account.name == "nobody"
    info = key.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (
        NOBODY.pw_uid,
        NOBODY.pw_gid,
        0o600,
    )
    plain = tmp_path / "chain.pem"
    plain.write_bytes(b"public")
    assert give_to_service_user(plain, mode=0o644, state_dir=tmp_path) is None
    assert (plain.stat().st_uid, plain.stat().st_mode & 0o777) == (0, 0o644)


def test_a_key_root_creates_in_a_root_folder_is_the_service_accounts(tmp_path: Path) -> None:
    """``keys create`` as root in /etc/device-agent (root's, group device-agent): the
    daemon, running as the state directory's owner, must be able to read the key."""
    from agent.config import IdentityConfig
    from agent.identity.enroll import create_key

    state = owned_by_nobody(tmp_path / "state")
    etc = tmp_path / "etc"
    etc.mkdir()
    identity = IdentityConfig(
        cert_chain_path=etc / "device.pem", key_path=etc / "device.key", registration_id="d1"
    )
    assert create_key(identity, state_dir=state)
    made = identity.key_path.stat()
    assert (made.st_uid, made.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert made.st_mode & 0o777 == 0o600
    assert etc.stat().st_uid == 0  # the folder stays root's
