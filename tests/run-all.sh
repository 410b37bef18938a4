#!/usr/bin/env bash
# The test command: installs what is missing, then checks formatting and
# vet, and runs every test (unit, QEMU-oracle and end-to-end mounts) under
# the race detector, plus the decoders once more with GOMAXPROCS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
export PATH="$PATH:/usr/local/go/bin"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt would change: $unformatted" >&2; exit 1; fi
go vet ./...
GOMAXPROCS=1 go test -count=1 ./layers/... ./status/...
go test -race -count=1 -timeout 30m ./...
