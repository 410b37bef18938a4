#!/usr/bin/env bash
# Regenerates testdata/sample (or the directory given as the argument),
# the small chain the demo mounts and the tests check:
#
#   top.qcow2  (qcow2, 16 KiB clusters, extended L2: 512-byte subclusters)
#     -> mid.qcow2 (qcow2, 4 KiB clusters)
#       -> base.raw (raw, 200000 bytes: shorter than the others and not a
#                    multiple of 512, so QEMU rounds it up to 200192)
#
# What each layer holds (offsets in KiB; top and mid are 512 KiB):
#   base.raw   [0,64) 0x11   [64,128) zeroes written out   [128,195.3) 0x22
#   mid.qcow2  [0,16) zero clusters over base's 0x11
#              [160,224) 0x44, across base's end
#              [256,320) 0x33, compressed clusters
#   top.qcow2  [4,6) 0x55, four subclusters of a cluster over mid's zeroes
#              [32,48) zero cluster over base's 0x11
#              [384,400) 0x66 where no layer has anything
# and no layer has anything at [224,256), [320,384) and [400,512): holes.
#
# base.raw is written out in full, with no holes, so that a git checkout
# (which cannot keep holes) shows the same maps as a fresh run.
set -euo pipefail
dir=${1:-"$(cd "$(dirname "$0")" && pwd)/sample"}
mkdir -p "$dir"
cd "$dir"
dir=$(pwd)
rm -f top.qcow2 mid.qcow2 base.raw

io() { # io FORMAT FILE CMD...: run qemu-io commands, failing on any error
	local fmt=$1 file=$2
	shift 2
	local args=()
	for c in "$@"; do args+=(-c "$c"); done
	out=$(qemu-io -f "$fmt" "${args[@]}" "$file" 2>&1) || { echo "$out" >&2; exit 1; }
	if grep -q 'failed\|^qemu-io:' <<<"$out"; then
		echo "$out" >&2
		exit 1
	fi
}

qemu-img create -q -f raw base.raw 200000
io raw base.raw \
	"write -P 0x11 0 64k" \
	"write -P 0 64k 64k" \
	"write -P 0x22 128k 68928" # up to the end: 131072 + 68928 = 200000
truncate -s 200000 base.raw

qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.raw -F raw mid.qcow2 512k
# One compressed cluster per command: qemu-io compresses the clusters of
# one write in parallel and stores them in whatever order they finish,
# which would make the file differ from run to run.
compressed=()
for ((off = 256 * 1024; off < 320 * 1024; off += 4096)); do
	compressed+=("write -c -P 0x33 $off 4k")
done
io qcow2 mid.qcow2 \
	"write -z 0 16k" \
	"write -P 0x44 160k 64k" \
	"${compressed[@]}"

qemu-img create -q -f qcow2 -o cluster_size=16384,extended_l2=on -b mid.qcow2 -F qcow2 top.qcow2 512k
io qcow2 top.qcow2 \
	"write -P 0x55 4k 2k" \
	"write -z 32k 16k" \
	"write -P 0x66 384k 16k"

ls -ls "$dir"
