#!/usr/bin/env bash
# The demo: builds chainfs, mounts the sample chain shipped in
# testdata/sample (top.qcow2 -> mid.qcow2 -> base.raw) at a temporary
# directory, shows the files, each layer's map and allocation depth, and a
# SEEK_DATA/SEEK_HOLE-aware copy, then unmounts. Installs what is missing
# on a Debian machine first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
export PATH="$PATH:/usr/local/go/bin"

work=$(mktemp -d)
mnt="$work/mnt"
mkdir "$mnt"
cleanup() {
	if grep -q " $mnt fuse.chainfs " /proc/mounts; then
		"$work/chainfs" umount "$mnt" || fusermount3 -u -z "$mnt" || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

show() { # show CMD...: echo a command, then run it
	printf '\n$ %s\n' "$*"
	"$@"
}

go build -o "$work/chainfs" ./cmd/chainfs
export PATH="$work:$PATH"
cd testdata/sample
show chainfs info top.qcow2
show chainfs mount --log-file "$work/chainfs.log" top.qcow2 "$mnt"
show ls -ls "$mnt"
for raw in $(ls -U "$mnt" | grep '\.raw$'); do
	layer=${raw%.raw}
	show cat "$mnt/$layer.map.json"
	show cat "$mnt/$layer.depth"
done
show cp --sparse=always "$mnt/0-top.qcow2.raw" "$work/top.raw"
show du -k --apparent-size "$work/top.raw"
show du -k "$work/top.raw"
show chainfs umount "$mnt"
for _ in $(seq 50); do grep -q "msg=unmounted" "$work/chainfs.log" && break; sleep 0.1; done
show cat "$work/chainfs.log"
