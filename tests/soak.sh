#!/usr/bin/env bash
# Soak: mounts a 4-layer chain with chainfs and reads every layer's view for
# DURATION (default 5m) from READERS (default 8) goroutines at random
# offsets, checking each byte against `qemu-img convert -O raw` of the
# layer, while sampling the daemon's RSS. Prints reads, bytes, errors,
# mismatches and peak RSS; exits non-zero on any error or mismatch.
#
#   bash tests/soak.sh                 # 5 minutes
#   DURATION=30s bash tests/soak.sh    # a quick one
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5m}
READERS=${READERS:-8}
bash tests/install-deps.sh
work=$(mktemp -d /var/tmp/chainfs-soak.XXXXXX)
mnt=$work/mnt
cleanup() {
	[ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null || true
	fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
go build -o "$work/chainfs" ./cmd/chainfs
go build -o "$work/soak" ./tests/soak

cd "$work"
echo "building the chain in $work"
head -c 256M /dev/urandom > base.raw
truncate -s 300M base.raw                      # a hole at the end, unaligned size below
qemu-img create -q -f qcow2 -o cluster_size=64k,compression_type=zstd -b base.raw -F raw mid.qcow2 320M
qemu-img create -q -f qcow2 -o cluster_size=32k,extended_l2=on -b mid.qcow2 -F qcow2 top.qcow2 320M
qemu-img create -q -f qcow2 -o cluster_size=4k -b top.qcow2 -F qcow2 up.qcow2 320M
{
	for i in $(seq 0 97 5000); do echo "write -c -P $((i % 251)) $((i * 64))k 64k"; done
	for i in $(seq 3 211 5000); do echo "write -z $((i * 64))k 64k"; done
} | qemu-io -f qcow2 mid.qcow2 >/dev/null
{
	for i in $(seq 0 13 9000); do echo "write -P $((i % 253)) $((i * 32 + 5))k 3k"; done
	for i in $(seq 7 101 9000); do echo "write -z $((i * 32))k 2k"; done
} | qemu-io -f qcow2 top.qcow2 >/dev/null
{
	for i in $(seq 0 7 70000); do echo "write -P $((i % 241)) $((i * 4))k 4k"; done
} | qemu-io -f qcow2 up.qcow2 >/dev/null
mkdir -p ref "$mnt"
n=0
for img in up.qcow2 top.qcow2 mid.qcow2 base.raw; do
	fmt=qcow2; [ "$img" = base.raw ] && fmt=raw
	qemu-img convert -f "$fmt" -O raw "$img" "ref/$n-$img.raw"
	n=$((n + 1))
done

./chainfs mount up.qcow2 "$mnt"
pid=$(pgrep -f "chainfs.*$mnt" | head -1)
peak=0
( while kill -0 "$pid" 2>/dev/null; do
	rss=$(awk '/VmRSS/ {print $2}' /proc/"$pid"/status 2>/dev/null || echo 0)
	echo "$rss"
	sleep 0.5
  done ) > rss.log &
sampler=$!
ls -ls "$mnt"
status=0
./soak -mnt "$mnt" -ref ref -readers "$READERS" -duration "$DURATION" || status=$?
kill "$sampler" 2>/dev/null || true
peak=$(sort -n rss.log | tail -1)
echo "daemon peak RSS: $((peak / 1024)) MiB (VmHWM $(awk '/VmHWM/ {print $2}' /proc/"$pid"/status) KiB)"
exit $status
