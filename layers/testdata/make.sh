#!/usr/bin/env bash
# Regenerates the tiny qcow2 images that seed FuzzOpen and FuzzDecodeHeader
# (layers/fuzz_test.go). Needs qemu-img and qemu-io (QEMU 7.2 made the
# committed ones). Small clusters keep every image far below 200 KiB, so
# that the fuzzer mutates headers and tables rather than data.
set -euo pipefail
cd "$(dirname "$0")"
rm -f ./*.qcow2

img() { qemu-img create -q -f qcow2 "$@"; }
io() { local f=$1; shift; local a=(); for c in "$@"; do a+=(-c "$c"); done; qemu-io -f qcow2 "${a[@]}" "$f" >/dev/null; }

# Version 2 (compat=0.10), 512-byte clusters: data across several L2 tables.
img -o compat=0.10,cluster_size=512 v2.qcow2 128K
io v2.qcow2 "write -P 0x11 0 1k" "write -P 0x12 33k 1k" "write -P 0x13 100k 512"

# Version 3, 1 KiB clusters: data, plain zero, allocated zero, discard.
img -o cluster_size=1024 v3-zero.qcow2 64K
io v3-zero.qcow2 "write -P 0x21 0 4k" "write -z 0 1k" "write -z -u 1k 1k" "write -z 16k 2k" "discard 3k 1k"

# Extended L2 (needs 16 KiB clusters): subcluster data and zero.
img -o extended_l2=on,cluster_size=16384 extl2.qcow2 64K
io extl2.qcow2 "write -P 0x31 0 512" "write -z 1k 512" "write -P 0x32 20k 1k" "write -z 32k 1k"

# Compressed clusters, zlib and zstd, 512-byte clusters.
img -o cluster_size=512 zlib.qcow2 16K
io zlib.qcow2 "write -c -P 0x41 0 512" "write -c -P 0x42 1k 512" "write -P 0x43 2k 512"
img -o cluster_size=512,compression_type=zstd zstd.qcow2 16K
io zstd.qcow2 "write -c -P 0x51 0 512" "write -c -P 0x52 1k 512" "write -P 0x53 2k 512"

# Internal snapshots with later writes.
img -o cluster_size=512 snap.qcow2 16K
io snap.qcow2 "write -P 0x61 0 2k"
qemu-img snapshot -c s1 snap.qcow2
io snap.qcow2 "write -P 0x62 512 512" "discard 1k 512"
qemu-img snapshot -c s2 snap.qcow2

# A persistent bitmap.
img -o cluster_size=512 bitmap.qcow2 16K
qemu-img bitmap --add -g 512 bitmap.qcow2 b0
io bitmap.qcow2 "write -P 0x71 0 1k"

# A backing file name and format (OpenImage does not follow it).
img -o cluster_size=512,backing_file=v2.qcow2,backing_fmt=qcow2 backing.qcow2
io backing.qcow2 "write -P 0x81 512 512"

# Snapshots across a resize, an empty name, a bitmap in use and a disabled
# one: the shapes of the snapshot table and the bitmap directory.
img -o cluster_size=512 inner.qcow2 16K
io inner.qcow2 "write -P 0x91 0 4k"
qemu-img snapshot -c s1 inner.qcow2
qemu-img resize -q inner.qcow2 24K
qemu-img bitmap --add -g 512 inner.qcow2 b0
qemu-img bitmap --add -g 4k --disable inner.qcow2 "b/1"
io inner.qcow2 "write -P 0x92 2k 4k" "write -z 20k 1k"
qemu-img snapshot -c "" inner.qcow2
qemu-img bitmap --add inner.qcow2 in-use
io inner.qcow2 "write -P 0x93 12k 1k"
# Set the in-use flag (bit 0 of the flags at +12) of the third bitmap.
python3 - inner.qcow2 <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b')
f.seek(100); hl = struct.unpack('>I', f.read(4))[0]
off = hl
while True:
    f.seek(off); typ, n = struct.unpack('>II', f.read(8))
    if typ == 0x23852875:
        f.seek(off + 8 + 16); d = struct.unpack('>Q', f.read(8))[0]; break
    off += 8 + (n + 7) // 8 * 8
for _ in range(2):
    f.seek(d + 18); nl = struct.unpack('>H', f.read(2))[0]
    d += (24 + nl + 7) // 8 * 8
f.seek(d + 12); fl = struct.unpack('>I', f.read(4))[0]
f.seek(d + 12); f.write(struct.pack('>I', fl | 1))
PY

ls -l ./*.qcow2
