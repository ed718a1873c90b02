#!/usr/bin/env bash
# zygote.sh — python cold starts with the fork-server (zygote) against fresh
# interpreters, memory of forked instances, and a burst from zero.
#
# Runs bench/zygote (an in-process ebb on a temp data dir) with a function
# whose module scope imports numpy and sklearn and fits a small model. Needs
# Debian's /usr/bin/python3 with python3-sklearn (PYTHON overrides). ROUNDS
# (default 20) cold starts per variant. Prints a Markdown summary; the
# platform log goes to bench/out/zygote-<time>/. Exits non-zero on any failed
# request or a round that was not cold.
set -euo pipefail
BENCH_NAME=zygote.sh
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-20}
PYTHON=${PYTHON:-/usr/bin/python3}
need go
"$PYTHON" -c 'import numpy, sklearn' 2>/dev/null || die "$PYTHON cannot import numpy and sklearn (Debian: python3-sklearn)"
bench_setup zygote
go build -C "$BENCH_ROOT" -o "$BENCH_TMP/zygote" ./bench/zygote || die "build bench/zygote failed"
"$BENCH_TMP/zygote" -n "$ROUNDS" -python "$PYTHON" -out "$BENCH_OUT" | tee "$BENCH_OUT/summary.md"
