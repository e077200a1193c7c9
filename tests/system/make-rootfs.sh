#!/bin/sh
# The base OS the system tests boot under systemd-nspawn: Debian bookworm, minbase,
# with systemd as init, D-Bus, and the interpreter the device package's venv is made
# with. Usage: make-rootfs.sh DIR PACKAGE... (DIR must not exist yet).
# tests/support/nspawn.py caches the result under a key of this script's text, the
# suite and the package list: change any of them and the rootfs is built again.
set -eu
dir=$1
shift
packages=$(echo "$@" | tr ' ' ,)
debootstrap --variant=minbase --include="$packages" bookworm "$dir"
# Images carry no machine identity; systemd makes one at boot (--volatile keeps it off
# the base). An empty file is the documented "not yet set" state.
: > "$dir/etc/machine-id"
rm -f "$dir/var/lib/dbus/machine-id"
# A container has no consoles to spawn gettys on, and nothing to fsck or remount.
ln -sf /dev/null "$dir/etc/systemd/system/getty@.service"
ln -sf /dev/null "$dir/etc/systemd/system/console-getty.service"
ln -sf /dev/null "$dir/etc/systemd/system/systemd-remount-fs.service"
# Installing packages in a container: no documentation, no prompts.
printf 'APT::Install-Recommends "false";\n' > "$dir/etc/apt/apt.conf.d/90-system-tests"
rm -f "$dir"/var/cache/apt/archives/*.deb
