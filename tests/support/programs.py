"""Every external program the suite, the demo and the Makefile run, and its Debian package.

``make test`` runs as root on a fresh Debian bookworm (``debootstrap --variant=minbase``
plus the README's prerequisites) and installs what it needs itself: the Makefile's
``SYSTEM_PACKAGES``. ``tests/test_programs.py`` finds the programs the code runs and
checks each is listed here, and each package here is in the Makefile's list, in the
minbase system or a README prerequisite.

To run a new program from a test: add a line to :data:`PROGRAMS` (program -> the
Debian package that ships it, as ``dpkg -S $(command -v PROG)`` says) and, unless the
package is in :data:`BASE_PACKAGES`, a ``SYSTEM_PACKAGES += ...`` line to the Makefile.
"""

from __future__ import annotations

from typing import Final

#: Program (argv[0]) -> the Debian package that provides it.
PROGRAMS: Final[dict[str, str]] = {
    # The base system.
    "bash": "bash",
    "sh": "dash",
    "grep": "grep",
    "id": "coreutils",
    "test": "coreutils",
    "touch": "coreutils",
    "rm": "coreutils",
    "echo": "coreutils",
    "cat": "coreutils",
    "unshare": "util-linux",
    "mount": "mount",  # tests/faults: a small tmpfs as a full state disk
    "umount": "mount",
    "dpkg": "dpkg",
    "dpkg-query": "dpkg",
    "apt-get": "apt",
    # The README's prerequisites (installed before the two commands).
    "make": "make",
    "git": "git",
    # The Makefile's SYSTEM_PACKAGES (or what they depend on: see PULLED_IN).
    "python3": "python3-minimal",
    "openssl": "openssl",
    "systemd-analyze": "systemd",
    "systemd-sysusers": "systemd",
    "systemd-tmpfiles": "systemd",
    # make deb, the image builder and the system tests (tests/support/nspawn.py).
    "cp": "coreutils",
    "dpkg-deb": "dpkg",
    "dpkg-scanpackages": "dpkg-dev",
    "debootstrap": "debootstrap",
    "nsenter": "util-linux",
    "systemd-nspawn": "systemd-container",
    # The TPM tests (tests/support/tpm.py): swtpm and its tools, and apt's fetch of
    # trixie's tpm2-openssl.
    "swtpm": "swtpm",
    "swtpm_ioctl": "swtpm-tools",
    "tpm2_flushcontext": "tpm2-tools",
    "tpm2_rc_decode": "tpm2-tools",
    "apt-cache": "apt",
    # The Bosch compensation checked against the datasheets' C code (tests/hal).
    "gcc": "gcc",
    # devcloud's web console tests (Playwright drives Debian's chromium).
    "chromium": "chromium",
    # Microsoft's DTDL parser (WebAssembly under node; the npm package fetched with npm).
    "node": "nodejs",
    "npm": "npm",
    # The real HTTP proxy of the proxy tests.
    "tinyproxy": "tinyproxy-bin",
}

#: Programs another package than the table's may ship on some machines (still checked
#: by name): a nodejs built by NodeSource ships npm itself, and conflicts with Debian's.
OTHER_OWNERS: Final[dict[str, frozenset[str]]] = {"npm": frozenset({"nodejs"})}

#: Packages of ``debootstrap --variant=minbase bookworm`` (Priority: required, and apt).
BASE_PACKAGES: Final = frozenset(
    {
        "apt",
        "base-files",
        "base-passwd",
        "bash",
        "bsdutils",
        "coreutils",
        "dash",
        "debconf",
        "debianutils",
        "diffutils",
        "dpkg",
        "findutils",
        "grep",
        "gzip",
        "hostname",
        "libc-bin",
        "login",
        "mawk",
        "mount",
        "ncurses-bin",
        "passwd",
        "perl-base",
        "sed",
        "sysvinit-utils",
        "tar",
        "util-linux",
    }
)

#: Package -> the listed package that depends on it (so it is installed with it).
PULLED_IN: Final[dict[str, str]] = {"python3-minimal": "python3-venv"}

#: What the README's "two commands" section asks to install first.
PREREQUISITES: Final = frozenset({"make", "git"})
