#!/usr/bin/env bash
# The test command: installs what is missing, then checks formatting and
# vet, and runs every test (unit, QEMU-oracle and end-to-end mounts) under
# the race detector, plus the decoders once more with GOMAXPROCS=1, then
# every fuzz target for 10 seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
export PATH="$PATH:/usr/local/go/bin"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt would change: $unformatted" >&2; exit 1; fi
go vet ./...
GOMAXPROCS=1 go test -count=1 ./layers/... ./status/...
go test -race -count=1 -timeout 30m ./...
# Every fuzz target for a short while (its corpus in testdata/fuzz was
# already run as tests above); a crasher fails the run and is written to
# the package's testdata/fuzz for a commit with its fix.
#
# Go 1.26's fuzz coordinator can fail a run that found nothing with a bare
# "context deadline exceeded" when -fuzztime ends while a worker is busy
# (golang/go#75804, fixed in Go 1.27). Such a run, which wrote no crasher,
# is reported and not counted as a failure; any other failure is.
crashers() { # the inputs kept for target $2 of package $1
	local f=("$1/testdata/fuzz/$2"/*)
	[ -e "${f[0]}" ] && echo "${#f[@]}" || echo 0
}
for file in $(git ls-files '*_test.go' | xargs grep -l '^func Fuzz'); do
	for target in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | cut -d' ' -f2); do
		pkg=$(dirname "$file")
		echo "fuzzing $target in ./$pkg for 10s"
		before=$(crashers "$pkg" "$target")
		out=$(mktemp)
		if go test -run XXX -fuzz "^$target\$" -fuzztime 10s -fuzzminimizetime 5s "./$pkg" 2>&1 | tee "$out"; [ "${PIPESTATUS[0]}" = 0 ]; then
			rm -f "$out"
			continue
		fi
		after=$(crashers "$pkg" "$target")
		if [ "$after" = "$before" ] && grep -q '^    context deadline exceeded$' "$out"; then
			echo "$target: the fuzz coordinator's deadline race (golang/go#75804), no crasher written: not a failure"
			rm -f "$out"
			continue
		fi
		rm -f "$out"
		exit 1
	done
done
