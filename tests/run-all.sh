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
for file in $(git ls-files '*_test.go' | xargs grep -l '^func Fuzz'); do
	for target in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | cut -d' ' -f2); do
		echo "fuzzing $target in ./$(dirname "$file") for 10s"
		go test -run XXX -fuzz "^$target\$" -fuzztime 10s -fuzzminimizetime 5s "./$(dirname "$file")"
	done
done
