#!/usr/bin/env bash
# The speed comparison of issue 6: chainfs against QEMU's own FUSE export
# (qemu-storage-daemon --export type=fuse) and against a minimal go-fuse
# server that serves a raw file by pread (tests/bench/ceiling). Run by
# hand, from anywhere in a clone; not part of CI's pass/fail:
#
#	bash tests/bench/compare.sh             # full run, ~10-15 minutes
#	QUICK=1 bash tests/bench/compare.sh     # smoke run, ~2 minutes
#
# It builds the images itself in a work directory under $TMPDIR (default
# /var/tmp), mounts each image with chainfs and with qemu-storage-daemon
# side by side, checks that the views read the same bytes, runs every
# workload in alternating pairs (chainfs, peer[, ceiling]) with the FUSE
# file's page cache dropped before each run and the host image files
# kept warm, and prints medians and the median of pairwise ratios:
#
#   W1  dd bs=1M of a 1 GiB incompressible 3-layer chain (64 KiB clusters,
#       every 3rd cluster rewritten in the middle layer, every 5th in the
#       top), also against the ceiling
#   W2  dd bs=1M of 256 MiB of compressible, non-uniform data, zstd
#   W3  the same data compressed with zlib
#   W4  fio 4 KiB random reads (psync) of the W1 view, 1 job and 4 jobs,
#       fixed time, also against the ceiling; O_DIRECT by default, so
#       that every read reaches the daemon (buffered, the jobs re-read
#       pages the page cache already holds: with 4 jobs most of the
#       "IOPS" were cache hits); W4_DIRECT=0 for buffered reads, each job
#       in its own part of the file
#   W6  cp --sparse=always of a 4 TiB qcow2 view with four small extents
#   W3R fio 4 KiB random reads (psync, 1 job, W3R_RUNTIME seconds) of the
#       W3 zlib view (issue 10)
#   DQ  O_DIRECT queues, as backup tools and VMs read (issue 10): fio
#       libaio --direct=1 on the W1 view, also against the ceiling:
#       DQ4k 4 KiB random at iodepth 32, DQ64k 64 KiB random at iodepth
#       16, DQ1M 1 MiB sequential at iodepth 4
#   EXT4 tar of every file of an ext4 filesystem holding Go's source tree
#       (mke2fs -d), stored zlib-compressed with a small uncompressed
#       overlay (issue 10): each run puts a read-only loop device on the
#       view, mounts it, runs tar -c of the whole tree into a pipe, and
#       unmounts, so the view and the filesystem start cold
#
# and each daemon's peak RSS during each workload (VmRSS sampled every
# 100 ms). Must run as root (drop_caches fallback) or at least be able
# to mount FUSE filesystems.
#
# Environment:
#   N=5            pairs per workload (QUICK: 1)
#   QUICK=1        smoke run: N=1, W1 256 MiB, text 64 MiB, fio 3 s
#   W1_SIZE=1G     size of the W1 chain (K/M/G suffixes)
#   TEXT_SIZE=256M size of the W2/W3 data
#   FIO_RUNTIME=10 seconds per fio run
#   W4_DIRECT=1    fio --direct (0: buffered, page cache dropped first)
#   W6_TIMEOUT=300 seconds before a W6 copy counts as failed
#   QUIET_MAX=10   seconds to wait before each round for the CPUs to be
#                  at most QUIET_BUSY=0.25 busy (others' work skews runs)
#   W3R_RUNTIME=3  seconds per W3R fio run
#   EXT4_SRC=DIR   the tree EXT4 puts in its filesystem (default: the
#                  src directory of the Go that builds chainfs)
#   WORKLOADS="W1 W2 W3 W4 W6 W3R DQ EXT4"   which to run; add DEEP for
#                  the deep-chain measurements of tests/bench/deep.sh
#                  (issue 13: ls -l, du -s, reads, maps, RSS and mount time
#                  for chains of up to 256 layers), run first;
#                  WORKLOADS=DEEP runs only those
#   RT=1           run the daemons and the measured commands at real-time
#                  priority (chrt -r 50): on a machine others share, their
#                  work then no longer preempts the measurement (it still
#                  shares caches and memory bandwidth); the header says so
#   PROFILE=1      also record a perf profile of the chainfs daemon over
#                  one extra W1, W2, W3 and W4 (4 jobs) run each, and
#                  print its top symbols
#   KEEP=1         keep the work directory (images, logs, results)
#   BENCH_TMP=DIR  parent of the work directory
set -euo pipefail

cd "$(dirname "$0")/../.."
REPO=$PWD

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
	N=${N:-1}
	W1_SIZE=${W1_SIZE:-256M}
	TEXT_SIZE=${TEXT_SIZE:-64M}
	FIO_RUNTIME=${FIO_RUNTIME:-3}
else
	N=${N:-5}
	W1_SIZE=${W1_SIZE:-1G}
	TEXT_SIZE=${TEXT_SIZE:-256M}
	FIO_RUNTIME=${FIO_RUNTIME:-10}
fi
W4_DIRECT=${W4_DIRECT:-1}
QUIET_MAX=${QUIET_MAX:-10}
QUIET_BUSY=${QUIET_BUSY:-0.25}
W6_TIMEOUT=${W6_TIMEOUT:-300}
W3R_RUNTIME=${W3R_RUNTIME:-3}
WORKLOADS=${WORKLOADS:-W1 W2 W3 W4 W6 W3R DQ EXT4}
PROFILE=${PROFILE:-0}
RT=${RT:-0}
RTP=()
if [ "$RT" = 1 ]; then RTP=(chrt -r 50); fi
KEEP=${KEEP:-0}

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
want() { case " $WORKLOADS " in *" $1 "*) return 0 ;; esac; return 1; }

if want DEEP; then
	bash tests/bench/deep.sh
	WORKLOADS=$(echo " $WORKLOADS " | sed 's/ DEEP / /g')
	[ -n "${WORKLOADS// /}" ] || exit 0
fi

# ---------------------------------------------------------------- setup

bash tests/install-deps.sh
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || die "Go is not installed (needed to build chainfs)"
for t in qemu-img qemu-io qemu-storage-daemon fio fusermount3 dd cp cmp timeout mke2fs debugfs losetup tar sha256sum; do
	command -v "$t" >/dev/null || die "$t is missing"
done

parent=${BENCH_TMP:-${TMPDIR:-/var/tmp}}
WORK=$(mktemp -d "$parent/chainfs-bench.XXXXXX")
mkdir -p "$WORK/bin" "$WORK/img" "$WORK/mnt" "$WORK/exp" "$WORK/log" "$WORK/out"
RESULTS=$WORK/out/results.tsv
: >"$RESULTS"

# Everything started, by pid, and everything mounted, by path.
PIDS=()
MOUNTS=()
LOOPS=()
cleanup() {
	local rc=$? m p
	trap - EXIT INT TERM
	set +e
	if grep -qF " $WORK/mnt/ext4 " /proc/mounts; then umount "$WORK/mnt/ext4" 2>/dev/null || umount -l "$WORK/mnt/ext4"; fi
	for d in "${LOOPS[@]}"; do
		losetup -d "$d" 2>/dev/null
	done
	for m in "${MOUNTS[@]}"; do
		if grep -qF " $m " /proc/mounts; then
			fusermount3 -u "$m" 2>/dev/null || fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
		fi
	done
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null
	done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
	done
	rm -f "$WORK/out/w6-copy" 2>/dev/null
	if grep -qF " $WORK/" /proc/mounts; then
		log "something is still mounted under $WORK; leaving it in place"
	elif [ "$KEEP" = 1 ]; then
		log "kept $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "work directory $WORK"
log "building chainfs, the ceiling server and benchtool"
go build -o "$WORK/bin/chainfs" ./cmd/chainfs
go build -o "$WORK/bin/ceiling" ./tests/bench/ceiling
go build -o "$WORK/bin/benchtool" ./tests/bench/benchtool
CHAINFS=$WORK/bin/chainfs
BT=$WORK/bin/benchtool

# ---------------------------------------------------------------- images

IMG=$WORK/img
cd "$IMG"
if want W1 || want W4 || want DQ; then
	log "W1: $W1_SIZE random base, every 3rd cluster rewritten in the middle layer, every 5th in the top"
	"$BT" random base.raw "$W1_SIZE" 1
	qemu-img convert -f raw -O qcow2 -o cluster_size=65536 base.raw w1-base.qcow2
	rm base.raw
	"$BT" stripes mid.raw "$W1_SIZE" 64K 3 2
	qemu-img convert -f raw -O qcow2 -o cluster_size=65536 mid.raw w1-mid.qcow2
	rm mid.raw
	qemu-img rebase -u -f qcow2 -b w1-base.qcow2 -F qcow2 w1-mid.qcow2
	"$BT" stripes top.raw "$W1_SIZE" 64K 5 3
	qemu-img convert -f raw -O qcow2 -o cluster_size=65536 top.raw w1-top.qcow2
	rm top.raw
	qemu-img rebase -u -f qcow2 -b w1-mid.qcow2 -F qcow2 w1-top.qcow2
	# What the ceiling serves: the guest view of the top, flattened.
	qemu-img convert -f qcow2 -O raw w1-top.qcow2 w1-top.raw
	for l in base mid top; do
		log "  w1-$l.qcow2: $(qemu-img info --output=json -f qcow2 w1-$l.qcow2 | grep -m1 '"actual-size"' | tr -dc 0-9) bytes on disk"
	done
fi
if want W2 || want W3 || want W3R; then
	log "W2/W3: $TEXT_SIZE of compressible text with zero runs and incompressible stretches"
	"$BT" text text.raw "$TEXT_SIZE" 7
	if want W2; then qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd,cluster_size=65536 text.raw w2-zstd.qcow2; fi
	if want W3 || want W3R; then qemu-img convert -c -f raw -O qcow2 -o compression_type=zlib,cluster_size=65536 text.raw w3-zlib.qcow2; fi
	for f in w2-zstd.qcow2 w3-zlib.qcow2; do
		if [ -e $f ]; then log "  $f: $(stat -c %s $f) bytes for $(stat -c %s text.raw)"; fi
	done
fi
if want W6; then
	log "W6: 4 TiB qcow2 with four small extents"
	qemu-img create -q -f qcow2 -o cluster_size=65536 w6-4t.qcow2 4T
	T=$((1 << 40))
	qemu-io -f qcow2 \
		-c "write -q -P 0x11 0 65536" \
		-c "write -q -P 0x22 $((T + 65536)) 1048576" \
		-c "write -q -P 0x33 $((2 * T + 3 * 1048576)) 196608" \
		-c "write -q -P 0x44 $((4 * T - 262144)) 262144" \
		w6-4t.qcow2
fi
if want EXT4; then
	EXT4_SRC=${EXT4_SRC:-$(go env GOROOT)/src}
	[ -d "$EXT4_SRC" ] || die "EXT4_SRC $EXT4_SRC is not a directory"
	log "EXT4: ext4 of $EXT4_SRC ($(find "$EXT4_SRC" -type f | wc -l) files, $(du -sm "$EXT4_SRC" | cut -f1) MiB), zlib, with an overlay"
	# Fixed UUID, hash seed and time, so the filesystem is the same from
	# run to run of the script.
	E2FSPROGS_FAKE_TIME=1700000000 mke2fs -q -t ext4 -b 4096 -U 6c1b3c2e-0f6a-4d0e-9a55-3c1f0a2b4d10 \
		-E hash_seed=0b8d3b64-5f2c-4e55-8a0e-1d2c3b4a5f60,root_owner=0:0 -d "$EXT4_SRC" ext4.raw \
		$(($(du -sm "$EXT4_SRC" | cut -f1) * 2 + 64))M
	qemu-img convert -c -f raw -O qcow2 -o compression_type=zlib,cluster_size=65536 ext4.raw ext4-base.qcow2
	# The overlay: a new file written into a copy with debugfs (no mount
	# needed), and only the 64 KiB clusters that changed written into a
	# qcow2 overlay, uncompressed, as a guest's writes would land.
	cp ext4.raw ext4-mod.raw
	debugfs -w -R "write $REPO/README.md chainfs-overlay-README.md" ext4-mod.raw >/dev/null 2>&1
	qemu-img create -q -f qcow2 -o cluster_size=65536 -b ext4-base.qcow2 -F qcow2 ext4-top.qcow2 "$(stat -c %s ext4.raw)"
	n=0
	for off in $("$BT" diffclusters ext4.raw ext4-mod.raw 64K); do
		dd if=ext4-mod.raw of=cluster.tmp bs=64K skip=$((off / 65536)) count=1 status=none
		qemu-io -f qcow2 -c "write -q -s cluster.tmp $off 64k" ext4-top.qcow2
		n=$((n + 1))
	done
	rm -f cluster.tmp ext4.raw
	[ "$n" -gt 0 ] || die "EXT4: the overlay changed no cluster"
	log "  ext4-base.qcow2: $(stat -c %s ext4-base.qcow2) bytes for $(stat -c %s ext4-mod.raw); overlay: $n clusters"
fi
cd "$REPO"
HOSTFILES=("$IMG"/*)
warm_hosts() { cat "${HOSTFILES[@]}" >/dev/null; }
warm_hosts

# ---------------------------------------------------------------- mounts

wait_mounted() { # PATH PID
	local i
	for i in $(seq 300); do
		grep -qF " $1 " /proc/mounts && return 0
		[ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null && return 1
		sleep 0.1
	done
	return 1
}

# The pid of the background chainfs server of mount point $1: the process
# whose command line is "$CHAINFS mount --foreground ... $1".
chainfs_pid() {
	local p cl
	for p in /proc/[0-9]*; do
		cl=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
		case "$cl" in
		"$CHAINFS mount --foreground "*" $1 ") echo "${p#/proc/}"; return 0 ;;
		esac
	done
	return 1
}

declare -A VIEW PID
mount_chainfs() { # KEY IMAGE
	local mnt=$WORK/mnt/cfs-$1 pid
	mkdir -p "$mnt"
	MOUNTS+=("$mnt")
	"${RTP[@]}" "$CHAINFS" mount --log-file "$WORK/log/chainfs-$1.log" "$2" "$mnt" || die "chainfs mount $2 failed"
	wait_mounted "$mnt" || die "chainfs mount of $2 is not in /proc/mounts"
	pid=$(chainfs_pid "$mnt") || die "cannot find the chainfs server of $mnt"
	PIDS+=("$pid")
	VIEW[cfs-$1]=$(ls "$mnt"/0-*.raw)
	PID[cfs-$1]=$pid
	log "  chainfs $(basename "$2"): pid $pid, ${VIEW[cfs-$1]}"
}
mount_qsd() { # KEY IMAGE
	local exp=$WORK/exp/qsd-$1 pid
	: >"$exp"
	MOUNTS+=("$exp")
	"${RTP[@]}" qemu-storage-daemon \
		--blockdev "driver=file,node-name=file0,filename=$2,read-only=on" \
		--blockdev "driver=qcow2,node-name=fmt0,file=file0,read-only=on" \
		--export "type=fuse,id=exp0,node-name=fmt0,mountpoint=$exp,writable=off" \
		>"$WORK/log/qsd-$1.log" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	wait_mounted "$exp" "$pid" || die "qemu-storage-daemon export of $2 did not come up: $(cat "$WORK/log/qsd-$1.log")"
	VIEW[qsd-$1]=$exp
	PID[qsd-$1]=$pid
	log "  qemu-storage-daemon $(basename "$2"): pid $pid, $exp"
}
mount_ceiling() { # KEY RAW
	local mnt=$WORK/mnt/ceil-$1 pid
	mkdir -p "$mnt"
	MOUNTS+=("$mnt")
	"${RTP[@]}" "$WORK/bin/ceiling" -name view.raw "$2" "$mnt" >"$WORK/log/ceiling-$1.log" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	wait_mounted "$mnt" "$pid" || die "ceiling mount of $2 did not come up: $(cat "$WORK/log/ceiling-$1.log")"
	VIEW[ceil-$1]=$mnt/view.raw
	PID[ceil-$1]=$pid
	log "  ceiling $(basename "$2"): pid $pid, $mnt/view.raw"
}

log "mounting"
if want W1 || want W4 || want DQ; then
	mount_chainfs w1 "$IMG/w1-top.qcow2"
	mount_qsd w1 "$IMG/w1-top.qcow2"
	mount_ceiling w1 "$IMG/w1-top.raw"
fi
if want W2; then mount_chainfs w2 "$IMG/w2-zstd.qcow2"; mount_qsd w2 "$IMG/w2-zstd.qcow2"; fi
if want W3 || want W3R; then mount_chainfs w3 "$IMG/w3-zlib.qcow2"; mount_qsd w3 "$IMG/w3-zlib.qcow2"; fi
if want W6; then mount_chainfs w6 "$IMG/w6-4t.qcow2"; mount_qsd w6 "$IMG/w6-4t.qcow2"; fi
if want EXT4; then mount_chainfs ext4 "$IMG/ext4-top.qcow2"; mount_qsd ext4 "$IMG/ext4-top.qcow2"; fi

# ---------------------------------------------------------------- checks

log "checking that every view reads the bytes qemu-img reads"
if want W1 || want W4 || want DQ; then
	for k in cfs-w1 qsd-w1 ceil-w1; do
		cmp "${VIEW[$k]}" "$IMG/w1-top.raw" || die "$k differs from qemu-img convert of w1-top.qcow2"
	done
fi
for w in w2 w3; do
	[ -n "${VIEW[cfs-$w]:-}" ] || continue
	for k in cfs-$w qsd-$w; do
		cmp "${VIEW[$k]}" "$IMG/text.raw" || die "$k differs from the data it was converted from"
	done
done
if want W6; then
	for k in cfs-w6 qsd-w6; do
		[ "$(stat -c %s "${VIEW[$k]}")" = $((4 << 40)) ] || die "$k is not 4 TiB"
		timeout "$W6_TIMEOUT" cp --sparse=always "${VIEW[$k]}" "$WORK/out/w6-copy" || die "cp of $k failed or took over ${W6_TIMEOUT}s"
		qemu-img compare -q -f raw -F qcow2 "$WORK/out/w6-copy" "$IMG/w6-4t.qcow2" || die "cp --sparse=always of $k differs from w6-4t.qcow2"
		log "  $k: cp --sparse=always copy matches, $(du -k "$WORK/out/w6-copy" | cut -f1) KiB allocated"
		rm -f "$WORK/out/w6-copy"
	done
fi

# EXT4 runs mount the view's filesystem through a read-only loop device.
EXT4_MNT=$WORK/mnt/ext4
MOUNTS+=("$EXT4_MNT")
ext4_attach() { # VIEW: loop device and mount at $EXT4_MNT
	local dev
	dev=$(losetup -r -f --show "$1") || die "losetup of $1 failed"
	LOOPS+=("$dev")
	mkdir -p "$EXT4_MNT"
	mount -t ext4 -o ro,noload "$dev" "$EXT4_MNT" || die "mount of the ext4 in $1 ($dev) failed"
	EXT4_DEV=$dev
}
ext4_detach() {
	umount "$EXT4_MNT" || die "umount $EXT4_MNT failed"
	losetup -d "$EXT4_DEV" || die "losetup -d $EXT4_DEV failed"
	LOOPS=()
}
if want EXT4; then
	for k in cfs-ext4 qsd-ext4; do
		cmp "${VIEW[$k]}" "$IMG/ext4-mod.raw" || die "$k differs from the filesystem it was made from"
	done
	rm -f "$IMG/ext4-mod.raw"
	HOSTFILES=("$IMG"/*)
	sums=()
	for k in cfs-ext4 qsd-ext4; do
		ext4_attach "${VIEW[$k]}"
		sums+=("$(tar -C "$EXT4_MNT" -cf - . | sha256sum | cut -c1-16)")
		[ -e "$EXT4_MNT/chainfs-overlay-README.md" ] || die "$k: the overlay's file is missing"
		ext4_detach
	done
	[ "${sums[0]}" = "${sums[1]}" ] || die "tar of the ext4 differs between chainfs (${sums[0]}) and qsd (${sums[1]})"
	log "  EXT4: tar of the tree reads the same through both ($(echo "${sums[0]}"))"
fi

# Dropping a FUSE file's pages: POSIX_FADV_DONTNEED drops clean pages
# whatever keep_cache says; mincore then confirms none is left. If some
# are (or the file cannot be mapped to check), fall back to drop_caches
# and read the host images back in, so only the FUSE file starts cold.
DROP_FALLBACKS=0
drop_view() {
	local out res
	out=$("$BT" drop "$1") || die "benchtool drop $1"
	res=$(echo "$out" | awk '{print $2}')
	if [ "$res" != 0 ]; then
		if [ "$res" = -1 ] && [ "${2:-}" = qsd ]; then
			return 0 # qemu-storage-daemon's export cannot be mapped: direct_io, no page cache to drop
		fi
		DROP_FALLBACKS=$((DROP_FALLBACKS + 1))
		sync
		echo 1 >/proc/sys/vm/drop_caches
		warm_hosts
	fi
}

# Check once that the drop works: read the chainfs W1 view, drop, and see
# that the next read goes back to the daemon (a re-read from the page
# cache runs at memory speed, several GB/s).
if want W1; then
	v=${VIEW[cfs-w1]}
	dd if="$v" of=/dev/null bs=1M status=none
	log "  after a read: $("$BT" resident "$v" | awk '{print $2 " of " $3}') pages of the chainfs W1 view resident"
	drop_view "$v"
	log "  after the drop: $("$BT" resident "$v" | awk '{print $2 " of " $3}') pages resident; qsd export: $("$BT" resident "${VIEW[qsd-w1]}" | awk '{print $2}') (-1: cannot be mapped)"
fi

# ---------------------------------------------------------------- runs

# cache_stats KEY: the chainfs server of KEY logs its cache counters
# (SIGUSR1); prints "HITS MISSES READAHEAD_CLUSTERS READAHEAD_HITS".
cache_stats() {
	local log=$WORK/log/chainfs-$1.log n line
	n=$(grep -c "cache statistics" "$log" 2>/dev/null || true)
	kill -USR1 "${PID[cfs-$1]}" 2>/dev/null || { echo "0 0 0 0"; return; }
	for _ in $(seq 50); do
		[ "$(grep -c "cache statistics" "$log" 2>/dev/null || true)" -gt "${n:-0}" ] && break
		sleep 0.02
	done
	line=$(grep "cache statistics" "$log" | tail -1)
	for f in cluster_hits cluster_misses readahead_clusters readahead_hits; do
		printf '%s ' "$(echo "$line" | grep -o "$f=[0-9]*" | cut -d= -f2)"
	done
	echo
}

# run1 WORKLOAD SIDE KEY ROUND KIND: one measured run; appends
# "WORKLOAD SIDE ROUND VALUE RSS_KIB" to the results.
run1() {
	local wl=$1 side=$2 key=$3 round=$4 kind=$5 view=${VIEW[$3]} pid=${PID[$3]}
	local out secs rss cpu value work unit stats0=""
	drop_view "$view" "$side"
	if [ "$side" = chainfs ]; then stats0=$(cache_stats "${key#cfs-}"); fi
	case $kind in
	dd)
		unit=MiB/s
		work=$(stat -c %s "$view")
		out=$("${RTP[@]}" "$BT" run "$pid" -- dd if="$view" of=/dev/null bs=1M status=none 2>>"$WORK/log/runs.log") ||
			{ log "$wl $side: dd failed"; out="-1 0 0"; }
		read -r secs rss cpu <<<"$out"
		value=$(awk -v b="$work" -v s="$secs" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s; else print -1 }')
		;;
	fio*)
		unit=IOPS
		local jobs=${kind#fio} part=()
		if [ "$W4_DIRECT" = 0 ]; then
			# Buffered: one part of the file per job, so that jobs do not
			# read each other's pages from the cache.
			local sz
			sz=$(($(stat -c %s "$view") / jobs / 4096 * 4096))
			part=(--size="$sz" --offset_increment="$sz")
		fi
		out=$("${RTP[@]}" "$BT" run "$pid" -- fio --name=w4 --filename="$view" --readonly --ioengine=psync --rw=randread \
			--bs=4k --direct="$W4_DIRECT" "${part[@]}" --time_based --runtime="$FIO_RUNTIME" --numjobs="$jobs" \
			--group_reporting --output-format=json --output="$WORK/out/fio.json" 2>>"$WORK/log/runs.log") ||
			{ log "$wl $side: fio failed"; out="-1 0 0"; }
		read -r secs rss cpu <<<"$out"
		read -r value work _ <<<"$("$BT" fioiops "$WORK/out/fio.json" 2>>"$WORK/log/runs.log" || echo -1 0)"
		rm -f "$WORK/out/fio.json"
		;;
	zr)
		unit=IOPS
		out=$("${RTP[@]}" "$BT" run "$pid" -- fio --name=w3r --filename="$view" --readonly --ioengine=psync --rw=randread \
			--bs=4k --direct="$W4_DIRECT" --time_based --runtime="$W3R_RUNTIME" --numjobs=1 \
			--output-format=json --output="$WORK/out/fio.json" 2>>"$WORK/log/runs.log") ||
			{ log "$wl $side: fio failed"; out="-1 0 0"; }
		read -r secs rss cpu <<<"$out"
		read -r value work _ <<<"$("$BT" fioiops "$WORK/out/fio.json" 2>>"$WORK/log/runs.log" || echo -1 0)"
		rm -f "$WORK/out/fio.json"
		;;
	aio:*) # aio:RW:BS:IODEPTH, O_DIRECT through libaio
		local rw bs depth iops ios mibs bytes
		IFS=: read -r _ rw bs depth <<<"$kind"
		out=$("${RTP[@]}" "$BT" run "$pid" -- fio --name=dq --filename="$view" --readonly --ioengine=libaio --direct=1 \
			--rw="$rw" --bs="$bs" --iodepth="$depth" --time_based --runtime="$FIO_RUNTIME" --numjobs=1 \
			--output-format=json --output="$WORK/out/fio.json" 2>>"$WORK/log/runs.log") ||
			{ log "$wl $side: fio failed"; out="-1 0 0"; }
		read -r secs rss cpu <<<"$out"
		read -r iops ios mibs bytes <<<"$("$BT" fioiops "$WORK/out/fio.json" 2>>"$WORK/log/runs.log" || echo -1 0 -1 0)"
		rm -f "$WORK/out/fio.json"
		if [ "$bs" = 1M ]; then
			unit=MiB/s value=$mibs work=$bytes
		else
			unit=IOPS value=$iops work=$ios
		fi
		;;
	tar)
		unit=s
		work=1
		ext4_attach "$view"
		out=$("${RTP[@]}" "$BT" run "$pid" -- sh -c "tar -C '$EXT4_MNT' -cf - . | cat >/dev/null" 2>>"$WORK/log/runs.log") ||
			{ log "$wl $side: tar failed"; out="-1 0 0"; }
		ext4_detach
		read -r secs rss cpu <<<"$out"
		value=$secs
		;;
	cp)
		unit=s
		work=1
		out=$("${RTP[@]}" "$BT" run "$pid" -- timeout "$W6_TIMEOUT" cp --sparse=always "$view" "$WORK/out/w6-copy" 2>>"$WORK/log/runs.log") ||
			{ log "$wl $side: cp failed or timed out"; out="-1 0 0"; }
		read -r secs rss cpu <<<"$out"
		value=$secs
		# Free the copy's extents now, not during the next copy.
		rm -f "$WORK/out/w6-copy"
		sync -f "$WORK/out"
		;;
	esac
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$wl" "$side" "$round" "$value" "$rss" "$cpu" "$work" >>"$RESULTS"
	if [ -n "$stats0" ]; then
		local h0 m0 a0 ah0 h1 m1 a1 ah1
		read -r h0 m0 a0 ah0 <<<"$stats0"
		read -r h1 m1 a1 ah1 <<<"$(cache_stats "${key#cfs-}")"
		printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$wl" "$round" $((h1 - h0)) $((m1 - m0)) $((a1 - a0)) $((ah1 - ah0)) >>"$WORK/out/cache.tsv"
	fi
	log "  $wl round $round $side: $value $unit, daemon CPU ${cpu}s, peak RSS $((rss / 1024)) MiB"
}

# Before each round, wait up to QUIET_MAX seconds for the CPUs to be
# idle (at most QUIET_BUSY busy): other work on a 2-CPU machine swings a
# single run by several times.
BUSY_ROUNDS=0
ROUNDS=0
quiet() {
	local waited busy
	read -r waited busy <<<"$("$BT" quiet "$QUIET_MAX" "$QUIET_BUSY")"
	ROUNDS=$((ROUNDS + 1))
	if awk -v b="$busy" -v t="$QUIET_BUSY" 'BEGIN { exit !(b > t) }'; then
		BUSY_ROUNDS=$((BUSY_ROUNDS + 1))
		log "  the machine is still $(awk -v b="$busy" 'BEGIN { printf "%d", b * 100 }')% busy after ${waited}s: measuring anyway"
	fi
}

# pairs WORKLOAD KIND KEYSUFFIX WITH_CEILING
pairs() {
	local wl=$1 kind=$2 k=$3 ceil=$4 r
	log "$wl ($kind), $N rounds"
	for r in $(seq "$N"); do
		quiet
		run1 "$wl" chainfs "cfs-$k" "$r" "$kind"
		run1 "$wl" qsd "qsd-$k" "$r" "$kind"
		if [ "$ceil" = 1 ]; then run1 "$wl" ceiling "ceil-$k" "$r" "$kind"; fi
	done
}

START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
if want W1; then pairs W1 dd w1 1; fi
if want W2; then pairs W2 dd w2 0; fi
if want W3; then pairs W3 dd w3 0; fi
if want W4; then
	pairs W4j1 fio1 w1 1
	pairs W4j4 fio4 w1 1
fi
if want W6; then pairs W6 cp w6 0; fi
if want W3R; then pairs W3R zr w3 0; fi
if want DQ; then
	pairs DQ4k aio:randread:4k:32 w1 1
	pairs DQ64k aio:randread:64k:16 w1 1
	pairs DQ1M aio:read:1M:4 w1 1
fi
if want EXT4; then pairs EXT4 tar ext4 0; fi
ELAPSED=$(($(date +%s) - START))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

if [ "$PROFILE" = 1 ] && command -v perf >/dev/null; then
	log "profiling the chainfs daemon with perf (one more W1, W2, W3, W4 4-job run each)"
	prof() { # NAME KEY KIND
		local pid=${PID[$2]}
		perf record -q -g -F 999 -p "$pid" -o "$WORK/out/perf-$1.data" 2>>"$WORK/log/perf.log" &
		local ppid=$!
		sleep 0.5
		run1 "prof-$1" chainfs "$2" 0 "$3" 2>&3
		kill -INT "$ppid"
		wait "$ppid" 2>/dev/null || true
		local rep
		rep=$(perf report -i "$WORK/out/perf-$1.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | sed 's/[ -]*$//')
		echo "---- perf: chainfs during $1 (self %, top 20; in a VM, kernel samples pile up where interrupts are re-enabled)"
		echo "$rep" | head -20
		echo "---- of which user space ([.], top 20)"
		echo "$rep" | grep -F '[.]' | head -20
	}
	PROFOUT=$WORK/out/profile.txt
	{
		if want W1 || want W4; then prof W1 cfs-w1 dd; fi
		if want W2; then prof W2 cfs-w2 dd; fi
		if want W3; then prof W3 cfs-w3 dd; fi
		if want W4; then prof W4j4 cfs-w1 fio4; fi
		if want W3R; then prof W3R cfs-w3 zr; fi
		if want DQ; then prof DQ4k cfs-w1 aio:randread:4k:32; fi
		if want EXT4; then prof EXT4 cfs-ext4 tar; fi
	} 3>&2 >"$PROFOUT" 2>>"$WORK/log/perf.log" || true
fi

# ---------------------------------------------------------------- report

echo
echo "== chainfs vs qemu-storage-daemon FUSE export vs go-fuse pread ceiling"
echo "   $(date -u +%FT%TZ), $(uname -r), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')),"
echo "   $(qemu-storage-daemon --version | head -1), chainfs $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?'),"
echo "   real-time priority for daemons and measured commands: $([ "$RT" = 1 ] && echo yes || echo no)"
echo "   N=$N pairs, W1 $W1_SIZE, W2/W3 $TEXT_SIZE, fio ${FIO_RUNTIME}s direct=$W4_DIRECT, W3R ${W3R_RUNTIME}s, measured in ${ELAPSED}s; page-cache drop fallbacks: $DROP_FALLBACKS"
echo "   load average at start $LOAD_START, at end $LOAD_END; $BUSY_ROUNDS of $ROUNDS rounds started with the CPUs over $QUIET_BUSY busy"
echo "   (other processes skew single runs; the ratios pair neighbouring runs, and the CPU table below is steadier)"
echo "   ratio = median over rounds of chainfs/peer (W6: peer time / chainfs time); RSS = max VmRSS sampled every 100 ms"
echo
"$BT" report "$RESULTS"
echo
echo "chainfs's inflated-cluster cache per run (reads of compressed clusters found in memory / inflated;"
echo "clusters read ahead, and of them read), medians over rounds:"
"$BT" cachereport "$WORK/out/cache.tsv"
echo
echo "daemon VmHWM over the whole run (KiB):"
for k in "${!PID[@]}"; do
	printf '  %-8s %s\n' "$k" "$("$BT" hwm "${PID[$k]}")"
done | sort
echo
echo "per-run values (workload side round value rss_kib daemon_cpu_s work):"
sed 's/^/  /' "$RESULTS"
if [ -n "${PROFOUT:-}" ] && [ -s "$PROFOUT" ]; then
	echo
	cat "$PROFOUT"
fi
