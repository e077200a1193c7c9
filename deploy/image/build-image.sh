#!/usr/bin/env bash
# Turn a root filesystem into a device-agent golden image: one image, many devices,
# no identity and no state inside.
#
# Usage: deploy/image/build-image.sh --root DIR --deb FILE [--config FILE]
#                                    [--add SRC:DEST]...
#
# DIR is the image's root filesystem, already holding the base OS: a debootstrapped
# Debian bookworm, or the root partition of a Raspberry Pi OS image mounted on a loop
# device (its boot partition mounted at DIR/boot/firmware; see the README, "Golden
# images"). An image of another architecture needs qemu-user-static registered with
# binfmt_misc on the build host, so that `chroot DIR` runs its programs.
#
# What it does, in order:
#   1. installs the package with `apt-get install ./FILE` inside DIR (chroot, with
#      /proc, /sys and /dev mounted for the time of the install): its maintainer scripts
#      create the service user and enable the unit, as on a device;
#   2. --config FILE becomes /etc/device-agent/agent.toml (the configuration the fleet
#      shares: ID scope, DPS host, paths; never a device's certificate or key), and each
#      --add SRC:DEST copies a shared file (a fleet trust anchor, a server CA) into DIR;
#   3. makes sure the unit (and the identity import's path watch) is enabled
#      (systemctl --root), so every clone starts it;
#   4. `device-agent image-prep --machine-id` in DIR: removes the agent's state and
#      caches, the identity files the config names (certificate chain, key, passphrase)
#      and any copy of them in identity.import_dir, and empties /etc/machine-id (each
#      clone makes its own at first boot: clones that share a machine id share DHCP
#      leases and journal ids); the random seed goes too;
#   5. checks the result: the units enabled, no identity, no state, an empty machine id.
#      Any of those failing fails the build.
#
# Exit status: 0 built, 1 failed, 64 usage error.
set -euo pipefail

readonly EX_USAGE=64
readonly UNIT=device-agent.service
readonly WATCH=device-agent-import.path

root=""
deb=""
config=""
adds=()

say() { printf 'build-image: %s\n' "$*"; }
die() {
    printf 'build-image: error: %s\n' "$*" >&2
    exit 1
}
usage_error() {
    printf 'build-image: %s (see --help)\n' "$*" >&2
    exit "$EX_USAGE"
}
usage() { sed -n '2,/^set -euo pipefail$/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while [ "$#" -gt 0 ]; do
    case $1 in
        --root | --deb | --config | --add)
            [ "$#" -ge 2 ] && [ -n "$2" ] || usage_error "$1 needs a value"
            case $1 in
                --root) root=$2 ;;
                --deb) deb=$2 ;;
                --config) config=$2 ;;
                --add) adds+=("$2") ;;
            esac
            shift 2
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) usage_error "unknown argument: $1" ;;
    esac
done

[ -n "$root" ] || usage_error "--root DIR is required"
[ -n "$deb" ] || usage_error "--deb FILE is required"
[ "$(id -u)" -eq 0 ] || die "building an image needs root (chroot, file owners)"
root=$(realpath -e -- "$root") || die "no root filesystem at $root"
[ "$root" != / ] || die "--root / would turn this machine into an image"
[ -f "$root/etc/os-release" ] || die "$root holds no operating system (no etc/os-release)"
[ -f "$deb" ] || die "no package at $deb"
[ -z "$config" ] || [ -f "$config" ] || die "no config at $config"
for add in "${adds[@]}"; do
    case $add in
        *:/*) [ -f "${add%%:*}" ] || die "--add: no file at ${add%%:*}" ;;
        *) usage_error "--add takes SRC:/absolute/DEST, not '$add'" ;;
    esac
done

# --- 1. the package ---------------------------------------------------------------------------

mounted=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount -l -- "${mounted[$i]}" 2>/dev/null || true
    done
    rm -rf -- "$root/var/cache/device-agent-image"
}
trap cleanup EXIT

for fs in proc sys dev; do
    if ! mountpoint -q -- "$root/$fs"; then
        mount --rbind "/$fs" "$root/$fs"
        mount --make-rslave "$root/$fs"
        mounted+=("$root/$fs")
    fi
done

install -d -m 0755 -- "$root/var/cache/device-agent-image"
cp -- "$deb" "$root/var/cache/device-agent-image/"
pkg=/var/cache/device-agent-image/$(basename -- "$deb")
say "installing $(basename -- "$deb") into $root"
chroot "$root" env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=300 -y -q install --no-install-recommends "$pkg"

# --- 2. the fleet's configuration and shared files ----------------------------------------------

if [ -n "$config" ]; then
    install -m 0644 -- "$config" "$root/etc/device-agent/agent.toml"
    say "installed $config as /etc/device-agent/agent.toml"
fi
for add in "${adds[@]}"; do
    install -D -m 0644 -- "${add%%:*}" "$root${add#*:}"
    say "added ${add#*:}"
done

# --- 3. enabled ---------------------------------------------------------------------------------

systemctl --root="$root" enable "$UNIT" "$WATCH" >/dev/null 2>&1 ||
    die "cannot enable $UNIT and $WATCH in $root"

# --- 4. image-prep ------------------------------------------------------------------------------

# State, caches, the identity files the config names (in place, and any copy waiting in
# identity.import_dir on the boot partition), and the machine id.
chroot "$root" /usr/bin/device-agent image-prep --machine-id
rm -f -- "$root/var/lib/systemd/random-seed"
# Where the config keeps the identity, for the checks below.
identity=$(chroot "$root" /opt/device-agent/bin/python - <<'PY'
from agent.config import load_config
from agent.identity.importer import identity_files
identity = load_config("/etc/device-agent/agent.toml").identity
for path, _ in identity_files(identity):
    print(path)
    print(identity.import_dir / path.name)
PY
)

# --- 5. checks ----------------------------------------------------------------------------------

[ -L "$root/etc/systemd/system/multi-user.target.wants/$UNIT" ] || die "$UNIT is not enabled"
[ -L "$root/etc/systemd/system/paths.target.wants/$WATCH" ] || die "$WATCH is not enabled"
while IFS= read -r path; do
    [ -n "$path" ] || continue
    [ ! -e "$root$path" ] || die "identity file $path is still in the image"
done <<<"$identity"
left=$(find "$root/var/lib/device-agent" -mindepth 1 -print -quit 2>/dev/null || true)
[ -z "$left" ] || die "state left in the image: $left"
[ ! -s "$root/etc/machine-id" ] || die "/etc/machine-id is not empty"
say "image ready in $root: $UNIT enabled; no identity, no state, no machine id"
