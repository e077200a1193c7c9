#!/usr/bin/env bash
# Install device-agent from this checkout on a Debian bookworm / Raspberry Pi OS device.
#
# Usage: deploy/install.sh [--root DIR] [--prefix DIR] [--python PATH] [--enable]
#                          [--config-example FILE] [--systemd-extra auto|yes|no]
#                          [--wheelhouse DIR]
#
# What it does, in order:
#   1. a virtualenv in PREFIX (default /opt/device-agent) made with PYTHON (default
#      /usr/bin/python3, which the service user can run), and the project installed into
#      it: the core dependencies, plus the `systemd` extra (journald logging) when
#      libsystemd-dev, pkg-config, a C compiler and the Python headers are there;
#   2. /usr/bin/device-agent -> PREFIX/bin/device-agent (what the unit's ExecStart= runs);
#   3. systemd/device-agent.service -> /etc/systemd/system/device-agent.service (and
#      the first-boot identity import, device-agent-import.service and .path, beside it),
#      systemd/device-agent.sysusers.conf -> /etc/sysusers.d/device-agent.conf,
#      systemd/device-agent.tmpfiles.conf -> /etc/tmpfiles.d/device-agent.conf,
#      README.md and the example configs -> /usr/share/doc/device-agent/;
#   4. /etc/device-agent/ (0750), and agent.toml copied from the example config
#      (deploy/agent.azure.toml unless --config-example says otherwise) only if there is
#      no agent.toml yet: an existing configuration is never touched;
#   5. with systemd running as PID 1 (and no --root): systemd-sysusers (the service user
#      and the i2c/gpio groups), systemd-tmpfiles --create, systemctl daemon-reload.
#      Otherwise it prints the commands to run;
#   6. only with --enable: enables the unit (and starts it, unless agent.toml was only
#      just copied from the example and still needs editing). Without --enable the
#      service is never enabled or started.
#
# Options:
#   --root DIR        install into DIR as if it were / (a scratch root, an image being
#                     built); same as DESTDIR=DIR. Runs no systemd tool: with --enable
#                     it links the unit into multi-user.target.wants itself.
#   --prefix DIR      where the virtualenv goes (default /opt/device-agent).
#   --python PATH     the interpreter for the virtualenv (default /usr/bin/python3):
#                     Python 3.11 or newer with the venv module (python3-venv), at a
#                     path the service user can run (not one under /root).
#   --enable          enable the service (and start it, see 6.).
#   --config-example FILE   the example copied to /etc/device-agent/agent.toml.
#   --systemd-extra auto|yes|no   install systemd-python for journald logging (default
#                     auto: when it can be built). Without it the agent still logs to
#                     the journal through stderr, with priorities.
#   --wheelhouse DIR  install offline from the wheels in DIR (pip --no-index
#                     --find-links DIR); pip's own PIP_* environment variables apply too.
#                     pip builds this checkout in an isolated environment, so DIR must
#                     also hold the build backend's wheels: setuptools (>= 64) and wheel
#                     (`pip download -d DIR . setuptools wheel` on a connected machine of
#                     the same architecture, or Debian's python3-setuptools-whl and
#                     python3-wheel-whl in /usr/share/python-wheels). It is checked first.
#
# Exit status: 0 installed, 1 failed, 64 usage error.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly SRC
readonly UNIT_NAME=device-agent.service
readonly EX_USAGE=64

root=${DESTDIR:-}
prefix=/opt/device-agent
python=/usr/bin/python3
example=$SRC/deploy/agent.azure.toml
systemd_extra=auto
wheelhouse=""
enable=0

say() { printf 'install.sh: %s\n' "$*"; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}
usage_error() {
    printf 'install.sh: %s (see --help)\n' "$*" >&2
    exit "$EX_USAGE"
}
usage() { sed -n '2,/^set -euo pipefail$/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

# --- arguments ------------------------------------------------------------------------------

need_value() {
    if [ "$#" -lt 2 ] || [ -z "$2" ]; then
        usage_error "$1 needs a value"
    fi
}

while [ "$#" -gt 0 ]; do
    case $1 in
        --root | --prefix | --python | --config-example | --systemd-extra | --wheelhouse)
            need_value "$@"
            case $1 in
                --root) root=$2 ;;
                --prefix) prefix=$2 ;;
                --python) python=$2 ;;
                --config-example) example=$2 ;;
                --systemd-extra) systemd_extra=$2 ;;
                --wheelhouse) wheelhouse=$2 ;;
            esac
            shift 2
            ;;
        --root=* | --prefix=* | --python=* | --config-example=* | --systemd-extra=* | --wheelhouse=*)
            set -- "${1%%=*}" "${1#*=}" "${@:2}"
            ;;
        --enable)
            enable=1
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) usage_error "unknown argument: $1" ;;
    esac
done

case $systemd_extra in
    auto | yes | no) ;;
    *) usage_error "--systemd-extra must be auto, yes or no, not '$systemd_extra'" ;;
esac
case $prefix in
    /*) ;;
    *) usage_error "--prefix must be an absolute path, not '$prefix'" ;;
esac
prefix=${prefix%/}
[ -n "$prefix" ] || usage_error "--prefix must not be /"
if [ -n "$root" ]; then
    root=$(realpath -m -- "$root")
    [ "$root" != / ] || root=""
fi

# --- where things go ------------------------------------------------------------------------

readonly venv=$root$prefix
readonly link=$root/usr/bin/device-agent
readonly unit_dir=$root/etc/systemd/system
readonly sysusers_file=$root/etc/sysusers.d/device-agent.conf
readonly tmpfiles_file=$root/etc/tmpfiles.d/device-agent.conf
readonly doc_dir=$root/usr/share/doc/device-agent
readonly config_dir=$root/etc/device-agent
readonly config_file=$config_dir/agent.toml

systemd_running() { [ -z "$root" ] && [ -d /run/systemd/system ]; }

# --- checks before touching anything ------------------------------------------------------------

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    die "installing into / needs root (or use --root DIR)"
fi
[ -x "$python" ] || die "no Python interpreter at $python (apt-get install python3)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$python is older than Python 3.11"
"$python" -c 'import venv, ensurepip' 2>/dev/null ||
    die "$python cannot make virtualenvs (apt-get install python3-venv)"
[ -f "$example" ] || die "no example config at $example"
[ -z "$wheelhouse" ] || [ -d "$wheelhouse" ] || die "no wheelhouse folder at $wheelhouse"
if [ -n "$wheelhouse" ]; then
    for build_tool in setuptools wheel; do
        compgen -G "$wheelhouse/$build_tool-*.whl" >/dev/null ||
            die "no $build_tool wheel in $wheelhouse: building this checkout needs it (see --help, --wheelhouse)"
    done
fi
if [ -e "$link" ] && [ ! -L "$link" ]; then
    die "$link exists and is not a symbolic link; not replacing it"
fi
if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ] && [ -n "$(ls -A "$venv")" ]; then
    die "$venv exists and is not a virtualenv; not installing over it"
fi

# Why the systemd extra cannot be built here, or nothing if it can.
systemd_extra_missing() {
    local lacking=()
    command -v pkg-config >/dev/null || lacking+=(pkg-config)
    if command -v pkg-config >/dev/null && ! pkg-config --exists libsystemd; then
        lacking+=(libsystemd-dev)
    fi
    command -v cc >/dev/null || lacking+=(gcc)
    "$python" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
        lacking+=(python3-dev)
    printf "%s" "${lacking[*]}"
}

extras=""
case $systemd_extra in
    yes)
        missing=$(systemd_extra_missing)
        [ -z "$missing" ] || die "--systemd-extra yes needs: $missing (apt-get install $missing)"
        extras="[systemd]"
        ;;
    auto)
        missing=$(systemd_extra_missing)
        if [ -z "$missing" ]; then
            extras="[systemd]"
        else
            say "without the systemd extra (missing: $missing); logs reach journald through stderr"
        fi
        ;;
    no) ;;
esac

# --- 1. the virtualenv and the project --------------------------------------------------------

build_dir=$(mktemp -d "${TMPDIR:-/tmp}/device-agent-install.XXXXXX")
trap 'rm -rf -- "$build_dir"' EXIT

if [ -f "$venv/pyvenv.cfg" ]; then
    say "reusing the virtualenv in $venv"
else
    say "creating a virtualenv in $venv with $python"
    mkdir -p -- "$(dirname -- "$venv")"
    "$python" -m venv -- "$venv"
fi

# Build from a copy, so the checkout gets no build/ or *.egg-info and stays untouched.
tar -C "$SRC" -cf - --exclude='./.*' --exclude=__pycache__ --exclude='*.egg-info' \
    --exclude=./build . | tar -C "$build_dir" -xf -

pip_args=(install --disable-pip-version-check --upgrade)
[ -z "$wheelhouse" ] || pip_args+=(--no-index --find-links "$wheelhouse")
# Under --root, the bytecode is compiled below with the paths it will have on the device.
[ -z "$root" ] || pip_args+=(--no-compile)
say "installing device-agent${extras} into $venv"
"$venv/bin/python" -m pip "${pip_args[@]}" "$build_dir$extras"

if [ -n "$root" ]; then
    # Scripts, activate files and pyvenv.cfg name the virtualenv by its path under DIR;
    # on the device it is PREFIX. Rewrite them, and compile all bytecode again with the
    # device's paths (tracebacks name the files as they will be).
    "$python" - "$venv" "$prefix" <<'PY'
import pathlib, sys
venv, new = pathlib.Path(sys.argv[1]), sys.argv[2].encode()
old = bytes(venv)
for path in [venv / "pyvenv.cfg", *(venv / "bin").iterdir()]:
    if path.is_file() and not path.is_symlink():
        data = path.read_bytes()
        if old in data:
            path.write_bytes(data.replace(old, new))
PY
    "$venv/bin/python" -m compileall -q -f -s "$root" -p / "$venv/lib" >/dev/null
fi

# --- 2. the command -----------------------------------------------------------------------------

mkdir -p -- "$(dirname -- "$link")"
ln -sfn -- "$prefix/bin/device-agent" "$link"
say "linked ${link} -> $prefix/bin/device-agent"

# --- 3. systemd files and documentation ---------------------------------------------------------

install -D -m 0644 -- "$SRC/systemd/$UNIT_NAME" "$unit_dir/$UNIT_NAME"
for import_unit in device-agent-import.service device-agent-import.path; do
    install -m 0644 -- "$SRC/systemd/$import_unit" "$unit_dir/$import_unit"
done
install -D -m 0644 -- "$SRC/systemd/device-agent.sysusers.conf" "$sysusers_file"
install -D -m 0644 -- "$SRC/systemd/device-agent.tmpfiles.conf" "$tmpfiles_file"
install -D -m 0644 -- "$SRC/README.md" "$doc_dir/README.md"
install -d -m 0755 -- "$doc_dir/examples"
install -m 0644 -- "$SRC"/deploy/agent.*.toml "$doc_dir/examples/"
say "installed $unit_dir/$UNIT_NAME, $sysusers_file, $tmpfiles_file"

# --- 4. configuration -----------------------------------------------------------------------------

[ -d "$config_dir" ] || install -d -m 0750 -- "$config_dir"
fresh_config=0
if [ -e "$config_file" ]; then
    say "keeping the existing $config_file"
else
    install -m 0644 -- "$example" "$config_file"
    fresh_config=1
    say "copied $example to $config_file: edit it (id_scope, certificate paths) before starting"
fi

# --- 5. users, directories, systemd ---------------------------------------------------------------

if systemd_running; then
    systemd-sysusers "$sysusers_file"
    systemd-tmpfiles --create "$tmpfiles_file"
    systemctl daemon-reload
    say "created the service user and directories; systemd reloaded"
elif [ -n "$root" ]; then
    say "the service user and directories are not made yet; run them now, offline:"
    say "  systemd-sysusers --root=$root && systemd-tmpfiles --create --root=$root"
    say "or on the device: systemd-sysusers && systemd-tmpfiles --create"
else
    say "systemd is not running (PID 1); once it is, run:"
    say "  systemd-sysusers && systemd-tmpfiles --create && systemctl daemon-reload"
fi

# --- 6. enabling ------------------------------------------------------------------------------------

if [ "$enable" -eq 1 ]; then
    if systemd_running; then
        systemctl enable "$UNIT_NAME"
        if [ "$fresh_config" -eq 1 ]; then
            say "enabled; not started: edit $config_file, then: systemctl start device-agent"
        else
            systemctl start "$UNIT_NAME"
            say "enabled and started; see: systemctl status device-agent"
        fi
    else
        wants=$unit_dir/multi-user.target.wants
        mkdir -p -- "$wants"
        ln -sfn -- "/etc/systemd/system/$UNIT_NAME" "$wants/$UNIT_NAME"
        say "enabled: $UNIT_NAME starts at the next boot"
    fi
else
    say "not enabled; when the configuration is ready: systemctl enable --now device-agent"
    if systemd_running && systemctl is-active --quiet "$UNIT_NAME"; then
        say "the service is running the previous version: systemctl restart device-agent"
    fi
fi
say "next: device-agent check (as root, or as the service user)"
