#!/usr/bin/env bash
# Deep backing chains (issue 13): what chainfs costs on chains hundreds of
# layers deep, as incremental backups stack them. Run by hand, from
# anywhere in a clone (compare.sh runs it too when WORKLOADS has DEEP):
#
#	bash tests/bench/deep.sh             # full run, some 10 minutes
#	QUICK=1 bash tests/bench/deep.sh     # smoke run: 64 layers at most, 1 round
#
#   D1  first `ls -l`, and first `du -s`, of a fresh mount of N layers of
#       1 GiB (N = 32 64 128 256): a qcow2 base holding 1 MiB, each overlay
#       one 64 KiB cluster at its own offset. Wall time and the daemon's
#       CPU time; linear in N is the target (<= 0.5 s at 256).
#   D2  dd bs=1M of the top view of 256 layers against 3 layers holding the
#       same guest data (a 1 GiB random base; 255 clusters written by 255
#       overlays, or by 2), after one pass that loads the tables, the
#       view's page cache dropped before each run. Target: >= 0.9x.
#   D3  every layer's map and depth of the 256-layer chain of D1 in one
#       process against one map of its top: the Go benchmark
#       BenchmarkDeepChain (status/bench_test.go). Target: <= 3x.
#   D4  256 layers of 1 TiB each (each overlay's cluster 4 GiB from the
#       last): mount time (chainfs mount returns once the mount is up),
#       the daemon's RSS after mounting, after `ls -l`, after reading every
#       map and depth file, after reading 1 GiB of the top view, and its
#       peak (VmHWM). Targets: mount < 1 s, RSS <= 64 MiB.
#
# Images are built with qemu-img and qemu-io: each overlay is written on
# its own (whole clusters, so no backing data is copied up) and then
# given its backing file with `qemu-img rebase -u`, which keeps building
# 256 layers from costing 256 opens of a growing chain.
#
# Environment: N=3 rounds per measurement (QUICK: 1), QUICK=1, KEEP=1
# (keep the work directory), BENCH_TMP=DIR (parent of the work directory,
# default $TMPDIR or /var/tmp), QUIET_MAX=10 QUIET_BUSY=0.25 (wait for idle
# CPUs before each round), DEEP="D1 D2 D3 D4" (which to run).
set -euo pipefail

cd "$(dirname "$0")/../.."
REPO=$PWD
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
	N=${N:-1}
	DEPTHS=${DEPTHS:-"32 64"}
	MAXDEPTH=64
else
	N=${N:-3}
	DEPTHS=${DEPTHS:-"32 64 128 256"}
	MAXDEPTH=256
fi
QUIET_MAX=${QUIET_MAX:-10}
QUIET_BUSY=${QUIET_BUSY:-0.25}
DEEP=${DEEP:-D1 D2 D3 D4}
KEEP=${KEEP:-0}

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
want() { case " $DEEP " in *" $1 "*) return 0 ;; esac; return 1; }

command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
for t in go qemu-img qemu-io fusermount3 dd xargs; do
	command -v "$t" >/dev/null || die "$t is missing (bash tests/install-deps.sh)"
done

parent=${BENCH_TMP:-${TMPDIR:-/var/tmp}}
WORK=$(mktemp -d "$parent/chainfs-deep.XXXXXX")
mkdir -p "$WORK/bin" "$WORK/mnt" "$WORK/log"
MOUNTS=()
cleanup() {
	local rc=$? m
	trap - EXIT INT TERM
	set +e
	for m in "${MOUNTS[@]}"; do
		if grep -qF " $m " /proc/mounts; then
			"$WORK/bin/chainfs" umount "$m" 2>/dev/null || fusermount3 -u -z "$m" 2>/dev/null
		fi
	done
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

log "work directory $WORK; building chainfs and benchtool"
go build -o "$WORK/bin/chainfs" ./cmd/chainfs
go build -o "$WORK/bin/benchtool" ./tests/bench/benchtool
CHAINFS=$WORK/bin/chainfs
BT=$WORK/bin/benchtool

# ---------------------------------------------------------------- images

# overlays DIR FIRST LAST SIZE STEP: lFIRST..lLAST.qcow2, each of SIZE
# with one 64 KiB cluster at i*STEP (pattern i%250+2) and backed by the
# layer below; l000.qcow2 must exist.
overlays() {
	local dir=$1 first=$2 last=$3 size=$4 step=$5
	(
		cd "$dir"
		seq "$first" "$last" | xargs -P 2 -I{} sh -c '
			f=$(printf l%03d.qcow2 {})
			qemu-img create -q -f qcow2 -o cluster_size=65536 "$f" '"$size"' &&
			qemu-io -f qcow2 -c "write -q -P $(( {} % 250 + 2 )) $(( {} * '"$step"' )) 64k" "$f" &&
			qemu-img rebase -q -u -f qcow2 -b "$(printf l%03d.qcow2 $(( {} - 1 )))" -F qcow2 "$f"'
	)
}

# D1 and D3: 1 GiB layers, base with 1 MiB.
if want D1 || want D3; then
	C1=$WORK/c1g
	mkdir -p "$C1"
	log "D1: $MAXDEPTH layers of 1 GiB"
	qemu-img create -q -f qcow2 -o cluster_size=65536 "$C1/l000.qcow2" 1G
	qemu-io -f qcow2 -c "write -q -P 1 0 1M" "$C1/l000.qcow2"
	overlays "$C1" 1 $((MAXDEPTH - 1)) 1G $((4 << 20))
fi
# D2: the same guest data through 256 and 3 layers.
if want D2; then
	C2=$WORK/data
	mkdir -p "$C2/deep" "$C2/shallow"
	log "D2: 1 GiB random base under $((MAXDEPTH - 1)) overlays, and under 2"
	"$BT" random "$C2/base.raw" 1G 1
	qemu-img convert -f raw -O qcow2 -o cluster_size=65536 "$C2/base.raw" "$C2/deep/l000.qcow2"
	rm "$C2/base.raw"
	cp "$C2/deep/l000.qcow2" "$C2/shallow/l000.qcow2"
	overlays "$C2/deep" 1 $((MAXDEPTH - 1)) 1G $((4 << 20))
	half=$((MAXDEPTH / 2))
	for part in "1 $((half - 1)) l001" "$half $((MAXDEPTH - 1)) l002"; do
		read -r from to name <<<"$part"
		cmds=()
		for i in $(seq "$from" "$to"); do cmds+=(-c "write -q -P $((i % 250 + 2)) $((i * 4 << 20)) 64k"); done
		qemu-img create -q -f qcow2 -o cluster_size=65536 "$C2/shallow/$name.qcow2" 1G
		qemu-io -f qcow2 "${cmds[@]}" "$C2/shallow/$name.qcow2"
	done
	qemu-img rebase -q -u -f qcow2 -b l000.qcow2 -F qcow2 "$C2/shallow/l001.qcow2"
	qemu-img rebase -q -u -f qcow2 -b l001.qcow2 -F qcow2 "$C2/shallow/l002.qcow2"
	DEEPTOP=$C2/deep/$(printf l%03d.qcow2 $((MAXDEPTH - 1)))
	qemu-img compare -q -f qcow2 -F qcow2 "$DEEPTOP" "$C2/shallow/l002.qcow2" ||
		die "the deep and shallow chains do not hold the same data"
fi
# D4: 1 TiB layers, clusters 4 GiB apart.
if want D4; then
	C4=$WORK/c1t
	mkdir -p "$C4"
	log "D4: $MAXDEPTH layers of 1 TiB"
	qemu-img create -q -f qcow2 -o cluster_size=65536 "$C4/l000.qcow2" 1T
	qemu-io -f qcow2 -c "write -q -P 1 0 1M" "$C4/l000.qcow2"
	overlays "$C4" 1 $((MAXDEPTH - 1)) 1T $((4 << 30))
fi
cat "$WORK"/*/*.qcow2 "$WORK"/*/*/*.qcow2 >/dev/null 2>&1 || true

# ---------------------------------------------------------------- helpers

# server_pid MNT: the chainfs server of mount point MNT.
server_pid() {
	local p cl
	for p in /proc/[0-9]*; do
		cl=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
		case "$cl" in "$CHAINFS mount --foreground "*" $1 ") echo "${p#/proc/}"; return 0 ;; esac
	done
	return 1
}

MNTN=0
# mountit IMAGE: mounts IMAGE on a fresh mount point; sets MNT and PID.
mountit() {
	MNTN=$((MNTN + 1))
	MNT=$WORK/mnt/$MNTN
	mkdir -p "$MNT"
	MOUNTS+=("$MNT")
	"$CHAINFS" mount --log-file "$WORK/log/$MNTN.log" "$1" "$MNT" || die "mount $1 failed"
	PID=$(server_pid "$MNT") || die "no server for $MNT"
}
umountit() { "$CHAINFS" umount "$MNT" >/dev/null; }

quiet() { "$BT" quiet "$QUIET_MAX" "$QUIET_BUSY" >/dev/null; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
RESULTS=()
result() { RESULTS+=("$(printf '%-58s %s' "$1" "$2")"); log "$1: $2"; }

# ---------------------------------------------------------------- D1

if want D1; then
	for depth in $DEPTHS; do
		top=$C1/$(printf l%03d.qcow2 $((depth - 1)))
		for what in "ls -l" "du -s"; do
			walls=() cpus=()
			for _ in $(seq "$N"); do
				quiet
				mountit "$top"
				[ "$(ls "$MNT" | wc -l)" = $((3 * depth)) ] || die "$depth layers: $(ls "$MNT" | wc -l) files"
				# shellcheck disable=SC2086
				read -r secs _ cpu <<<"$("$BT" run "$PID" -- sh -c "$what $MNT >/dev/null")"
				walls+=("$secs") cpus+=("$cpu")
				umountit
			done
			result "D1 first $what, $depth layers of 1 GiB" \
				"$(printf '%s\n' "${walls[@]}" | median) s wall, $(printf '%s\n' "${cpus[@]}" | median) s daemon CPU (median of $N)"
		done
	done
fi

# ---------------------------------------------------------------- D2

if want D2; then
	mountit "$DEEPTOP"
	DV=$(ls "$MNT"/0-*.raw) DPID=$PID
	mountit "$C2/shallow/l002.qcow2"
	SV=$(ls "$MNT"/0-*.raw) SPID=$PID
	cmp "$DV" "$SV" || die "the deep and shallow views differ"
	dd if="$DV" of=/dev/null bs=1M status=none
	dd if="$SV" of=/dev/null bs=1M status=none
	ratios=() dcpu=() scpu=() dmb=() smb=()
	for _ in $(seq "$N"); do
		quiet
		for side in deep shallow; do
			if [ $side = deep ]; then v=$DV p=$DPID; else v=$SV p=$SPID; fi
			"$BT" drop "$v" >/dev/null
			read -r secs _ cpu <<<"$("$BT" run "$p" -- dd if="$v" of=/dev/null bs=1M status=none)"
			mb=$(awk -v s="$secs" 'BEGIN { printf "%.0f", 1024 / s }')
			if [ $side = deep ]; then dmb+=("$mb") dcpu+=("$cpu"); else smb+=("$mb") scpu+=("$cpu"); fi
		done
		ratios+=("$(awk -v d="${dmb[-1]}" -v s="${smb[-1]}" 'BEGIN { printf "%.2f", d / s }')")
	done
	result "D2 dd bs=1M of 1 GiB through $MAXDEPTH layers" "$(printf '%s\n' "${dmb[@]}" | median) MiB/s, $(printf '%s\n' "${dcpu[@]}" | median) s daemon CPU"
	result "D2 dd bs=1M of 1 GiB through 3 layers" "$(printf '%s\n' "${smb[@]}" | median) MiB/s, $(printf '%s\n' "${scpu[@]}" | median) s daemon CPU"
	result "D2 $MAXDEPTH layers / 3 layers" "$(printf '%s\n' "${ratios[@]}" | median)x (median of per-round ratios: ${ratios[*]})"
	umountit
	MNT=$WORK/mnt/$((MNTN - 1))
	umountit
fi

# ---------------------------------------------------------------- D3

if want D3; then
	top=$C1/$(printf l%03d.qcow2 $((MAXDEPTH - 1)))
	quiet
	out=$(CHAINFS_DEEP_TOP=$top go test ./status -run XXX -bench DeepChain -benchtime "$((N + 1))x" -count 1 2>&1) ||
		die "go test -bench DeepChain: $out"
	echo "$out" | grep -E '^Benchmark' >&2
	one=$(echo "$out" | awk '/DeepChain\/open,_map_of_the_top/ { print $3 }')
	all=$(echo "$out" | awk '/DeepChain\/open,_map_and_depth_of_every_layer/ { print $3 }')
	result "D3 one map of the top of $MAXDEPTH layers (open included)" "$(awk -v n="$one" 'BEGIN { printf "%.1f ms", n / 1e6 }')"
	result "D3 map and depth of all $MAXDEPTH layers, one process" "$(awk -v n="$all" -v o="$one" 'BEGIN { printf "%.1f ms = %.2fx one map", n / 1e6, n / o }')"
fi

# ---------------------------------------------------------------- D4

if want D4; then
	top=$C4/$(printf l%03d.qcow2 $((MAXDEPTH - 1)))
	quiet
	start=$(date +%s.%N)
	mountit "$top"
	up=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.3f", e - s }')
	result "D4 mount of $MAXDEPTH layers of 1 TiB (chainfs mount returns)" "$up s"
	result "D4 daemon RSS after mounting" "$(($(rss "$PID") / 1024)) MiB"
	read -r secs peak cpu <<<"$("$BT" run "$PID" -- sh -c "ls -l $MNT >/dev/null")"
	result "D4 first ls -l" "$secs s wall, $cpu s daemon CPU, peak RSS $((peak / 1024)) MiB"
	read -r secs peak cpu <<<"$("$BT" run "$PID" -- sh -c "cat $MNT/*.map.json $MNT/*.depth >/dev/null")"
	result "D4 read every map and depth file" "$secs s wall, $cpu s daemon CPU, peak RSS $((peak / 1024)) MiB"
	read -r secs peak cpu <<<"$("$BT" run "$PID" -- dd if="$(ls "$MNT"/0-*.raw)" of=/dev/null bs=1M count=1024 status=none)"
	result "D4 dd of the first 1 GiB of the top view" "$secs s wall, $cpu s daemon CPU, peak RSS $((peak / 1024)) MiB"
	result "D4 daemon peak RSS over all of D4 (VmHWM)" "$(($("$BT" hwm "$PID") / 1024)) MiB"
	umountit
fi

echo
echo "== chainfs on deep backing chains (tests/bench/deep.sh)"
echo "   $(date -u +%FT%TZ), $(uname -r), $(nproc) CPUs, chainfs $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?'), N=$N"
echo "   load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (daemon CPU is steadier than wall time on a shared machine)"
printf '   %s\n' "${RESULTS[@]}"
