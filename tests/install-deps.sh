#!/usr/bin/env bash
# Installs what chainfs's tests and demo need on a Debian machine, if missing:
# FUSE 3, QEMU's image tools (the oracle), libnbd's nbdinfo, fio, and
# qemu-storage-daemon for the comparison benchmark.
set -euo pipefail
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v qemu-img >/dev/null && command -v qemu-nbd >/dev/null || need+=(qemu-utils)
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-curl.so ] || dpkg -s qemu-block-extra >/dev/null 2>&1 || need+=(qemu-block-extra)
command -v nbdinfo >/dev/null || need+=(libnbd-bin)
command -v fio >/dev/null || need+=(fio)
command -v qemu-storage-daemon >/dev/null || need+=(qemu-system-common)
if [ ${#need[@]} -gt 0 ]; then
	echo "installing: ${need[*]}"
	sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "no /dev/fuse on this machine: FUSE tests cannot run" >&2; exit 1; }
