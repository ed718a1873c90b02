#!/usr/bin/env bash
# warm.sh — the memory that N deployed, idle python functions cost: the PSS
# of ebb's process tree (every process below `ebb serve`: zygotes, spare
# children, sandboxes, pasta) once the deploys' builds are done, and again
# after a restart on the same data dir.
#
# N (default 40) functions, each importing json and decimal; EBB_BIN
# (default bin/ebb, built here) is the binary measured, so that a build of
# another commit can be compared; EBB_SERVE_FLAGS are added to `ebb serve`
# (e.g. --warm-memory 96MiB). SETTLE_S (default 3) is how long the tree's
# PSS must stay within 1 MiB to count as settled. Prints a Markdown row:
# N, flags, MiB before any deploy, after the deploys, after a restart, and
# the first request's time after the restart (ms, at the client).
set -euo pipefail
BENCH_NAME=warm.sh
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

N=${N:-40}
SETTLE_S=${SETTLE_S:-3}
need curl python3
bench_setup warm
if [[ -z ${EBB_BIN:-} ]]; then
	go build -C "$BENCH_ROOT" -o "$BENCH_TMP/ebb" ./cmd/ebb || die "build ebb failed"
	EBB_BIN=$BENCH_TMP/ebb
fi

# tree_pss PID — the PSS (MiB) of PID's descendants, not PID itself.
tree_pss() {
	python3 - "$1" <<'PY'
import os, sys
def kids(pid):
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(x) for x in open(f"/proc/{pid}/task/{t}/children").read().split()]
        except OSError:
            pass
    return out
total, stack = 0, kids(int(sys.argv[1]))
while stack:
    p = stack.pop()
    try:
        for line in open(f"/proc/{p}/smaps_rollup"):
            if line.startswith("Pss:"):
                total += int(line.split()[1])
        stack += kids(p)
    except OSError:
        pass
print(f"{total / 1024:.1f}")
PY
}

# settled PID — waits until the tree's PSS changes by less than 1 MiB over
# SETTLE_S seconds (the builds a deploy or start asked for are done), then
# prints it.
settled() {
	local prev now i
	prev=$(tree_pss "$1")
	for ((i = 0; i < 120; i++)); do
		sleep "$SETTLE_S"
		now=$(tree_pss "$1")
		if python3 -c "import sys; sys.exit(0 if abs($now - $prev) < 1 else 1)"; then
			echo "$now"
			return
		fi
		prev=$now
	done
	die "the process tree's PSS did not settle"
}

serve() {
	local port=$1
	# shellcheck disable=SC2086 # EBB_SERVE_FLAGS is a flag list
	setsid "$EBB_BIN" serve --listen "127.0.0.1:$port" --data "$BENCH_TMP/data" ${EBB_SERVE_FLAGS:-} >>"$BENCH_OUT/ebb.log" 2>&1 &
	EBB_PID=$!
	bench_track "$EBB_PID"
	export EBB_URL="http://127.0.0.1:$port"
	wait_http "$EBB_URL/healthz" "$EBB_PID" "$BENCH_OUT/ebb.log" 60
}

free_port port
serve "$port"
base=$(settled "$EBB_PID")
mkdir -p "$BENCH_TMP/fn"
cat >"$BENCH_TMP/fn/main.py" <<'PY'
import json, decimal, os

def handler(event, context):
    return {"fn": os.environ["EBB_FUNCTION_NAME"], "sum": str(decimal.Decimal("1.2") + decimal.Decimal("0.1"))}
PY
for ((i = 0; i < N; i++)); do
	printf 'name: w%03d\nruntime: python\nhandler: main.handler\n' "$i" >"$BENCH_TMP/fn/ebb.yaml"
	"$EBB_BIN" deploy "$BENCH_TMP/fn" >/dev/null || die "deploy w$i failed"
done
deployed=$(settled "$EBB_PID")
stop_ebb
free_port port
serve "$port"
restarted=$(settled "$EBB_PID")
first=$(curl -fsS -X POST -d '{}' -w '\n%{time_total}' "$EBB_URL/v1/functions/w$(printf %03d $((N - 1)))/invoke") || die "first request failed"
secs=${first##*$'\n'}
first=${first%$'\n'*}
[[ $first == *'"sum": "1.3"'* || $first == *'"sum":"1.3"'* ]] || die "first request answered $first"
ms=$(python3 -c "print(round($secs * 1000))")
echo "| $N | ${EBB_SERVE_FLAGS:-defaults} | $base | $deployed | $restarted | $ms |" | tee "$BENCH_OUT/summary.md"
