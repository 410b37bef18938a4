#!/usr/bin/env bash
# chainfs's decoders beside the C libraries (issue 10): how fast zlib (what
# QEMU inflates with), libdeflate (the fastest deflate decoder known) and
# libzstd (what QEMU decodes zstd with) decode the same compressed qcow2
# clusters as chainfs's pure-Go decoders, one core each. It sets the
# ratios compare.sh asks of chainfs against what any decoder could give.
# Run by hand, from anywhere in a clone; not part of CI:
#
#	bash tests/bench/decoders.sh
#
# Data sets (64 KiB clusters, qemu-img convert -c, zlib and zstd):
#   text   the W2/W3 data of compare.sh (benchtool text, 32 MiB)
#   cloud  Go's source files and tool binaries (what BenchmarkInflate
#          makes: layers/inflate_bench_test.go)
# For each: chainfs's BenchmarkInflate over those images (GOMAXPROCS=1,
# MB of cluster per CPU-second, ROUNDS runs), then refdec (decoders/
# refdec.c, built with gcc against Debian's libraries) over the same
# compressed streams, which the benchmark writes out beside the images.
#
# Environment: ROUNDS=3, KEEP=1 (keep the work directory), BENCH_TMP=DIR.
# Installs gcc, libdeflate-dev, libzstd-dev and zlib1g-dev if missing.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
KEEP=${KEEP:-0}
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
command -v qemu-img >/dev/null || die "qemu-img is missing (bash tests/install-deps.sh)"
need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)
for h in libdeflate:libdeflate-dev zstd:libzstd-dev zlib:zlib1g-dev; do
	[ -e "/usr/include/${h%%:*}.h" ] || need+=("${h#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
	sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	log "installing: ${need[*]}"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

parent=${BENCH_TMP:-${TMPDIR:-/var/tmp}}
WORK=$(mktemp -d "$parent/chainfs-decoders.XXXXXX")
cleanup() { [ "$KEEP" = 1 ] && log "kept $WORK" || rm -rf "$WORK"; }
trap cleanup EXIT

log "building refdec, benchtool and the layers benchmark"
gcc -O2 -Wall -o "$WORK/refdec" tests/bench/decoders/refdec.c -ldeflate -lz -lzstd
go build -o "$WORK/benchtool" ./tests/bench/benchtool
go test -c -o "$WORK/layers.test" ./layers

mkdir -p "$WORK/text" "$WORK/cloud"
"$WORK/benchtool" text "$WORK/text/disk.raw" 32M
for c in zlib zstd; do
	qemu-img convert -c -f raw -O qcow2 -o cluster_size=65536,compression_type=$c "$WORK/text/disk.raw" "$WORK/text/$c.qcow2"
done
rm "$WORK/text/disk.raw"
# BenchmarkInflate makes the cloud images in an empty directory, and
# writes the streams of both sets.
for set in text cloud; do
	INFLATE_BENCH_DIR=$WORK/$set GOMAXPROCS=1 "$WORK/layers.test" -test.run XXX \
		-test.bench 'Inflate/(zlib|zstd)/chainfs' -test.benchtime 1x >/dev/null
done

for set in text cloud; do
	echo "== $set data"
	for c in zlib zstd; do
		for r in $(seq "$ROUNDS"); do
			INFLATE_BENCH_DIR=$WORK/$set GOMAXPROCS=1 "$WORK/layers.test" -test.run XXX \
				-test.bench "Inflate/$c/chainfs" -test.benchtime 2000x |
				awk -v c="$c" '/^Benchmark/ { for (i = 1; i < NF; i++) if ($(i+1) == "MB/cpu-s") mb = $i; else if ($(i+1) == "cpu-ns/op") ns = $i
					printf "chainfs %s\t%.0f MB/cpu-s\t%.0f us/cluster\n", c, mb, ns / 1000 }'
			"$WORK/refdec" "$c" "$WORK/$set/$c.streams" 65536
		done
	done
done
