#!/usr/bin/env bash
# async.sh — end-to-end async job throughput for a no-op Go function.
# N (default 1000) jobs from C (default 16) clients; prints a Markdown row.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
C=${C:-16}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/ebb" ./cmd/ebb
mkdir "$tmp/noop"
CGO_ENABLED=0 go build -o "$tmp/noop/bootstrap" ./internal/platform/testdata/asyncfn
printf 'name: noop\nruntime: exec\nhandler: ./bootstrap\nmemory: 64\nmax_instances: 8\n' >"$tmp/noop/ebb.yaml"
go run ./bench/async -ebb "$tmp/ebb" -fn "$tmp/noop" -n "$N" -c "$C"
