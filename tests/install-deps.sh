#!/usr/bin/env bash
# Installs what chainfs's tests and demo need on a Debian machine, if missing:
# FUSE 3, QEMU's image tools (the oracle), libnbd's nbdinfo, fio, mke2fs
# (a file system in a snapshot, for the loop-mount test),
# qemu-storage-daemon for the comparison benchmark, and make, man-db and
# systemd's tools for the install test. Then a second oracle:
# QEMU's tools from Debian's bookworm-backports suite (10.0, which prints
# the current upstream `qemu-img map` format with "compressed"), unpacked
# beside the system's QEMU without replacing it, into
# $CHAINFS_QEMU_BACKPORTS (default /opt/chainfs/qemu-backports).
set -euo pipefail
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v qemu-img >/dev/null && command -v qemu-nbd >/dev/null || need+=(qemu-utils)
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-curl.so ] || dpkg -s qemu-block-extra >/dev/null 2>&1 || need+=(qemu-block-extra)
command -v nbdinfo >/dev/null || need+=(libnbd-bin)
command -v fio >/dev/null || need+=(fio)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v qemu-storage-daemon >/dev/null || need+=(qemu-system-common)
# make install, man chainfs, and systemd-analyze/systemd-escape for the
# man page's mount unit (tests/install_test.go; systemd need not run).
command -v make >/dev/null || need+=(make)
command -v man >/dev/null || need+=(man-db)
command -v systemd-analyze >/dev/null && command -v systemd-escape >/dev/null || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
	echo "installing: ${need[*]}"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "no /dev/fuse on this machine: FUSE tests cannot run" >&2; exit 1; }

bpo=${CHAINFS_QEMU_BACKPORTS:-/opt/chainfs/qemu-backports}
if [ ! -x "$bpo/usr/bin/qemu-img" ]; then
	echo "fetching qemu-utils from bookworm-backports into $bpo"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	mkdir -p "$tmp/parts" "$tmp/lists/partial" "$tmp/cache/archives/partial"
	cat >"$tmp/parts/backports.sources" <<-SOURCES
		Types: deb
		URIs: http://deb.debian.org/debian
		Suites: bookworm-backports
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	SOURCES
	# Only the backports suite, in a private state directory: the
	# machine's own package lists and installed QEMU stay as they are.
	apt=(apt-get -qq -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$tmp/parts"
		-o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o APT::Sandbox::User=root)
	$sudo "${apt[@]}" update
	(cd "$tmp" && $sudo "${apt[@]}" download qemu-utils/bookworm-backports)
	$sudo mkdir -p "$bpo"
	$sudo dpkg -x "$tmp"/qemu-utils_*.deb "$bpo"
fi
"$bpo/usr/bin/qemu-img" --version >/dev/null
