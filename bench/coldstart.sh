#!/usr/bin/env bash
# coldstart.sh — cold-start and warm-invoke latency of ebb, per runtime.
#
# Starts `bin/ebb serve` on a temp data dir, deploys bench copies of the
# examples with idle_timeout: 100ms (so they scale to zero between rounds),
# and runs bench/coldstart against them:
#
#   cold: ROUNDS rounds (default 20) per function, each one invoke after the
#         function has zero instances (hello-go: exec, hello-python: python,
#         hello-http: http through its function URL)
#   warm: hello-go, WARM_N sequential invokes at 1 client (p50/p99), then
#         32 concurrent clients for DURATION (throughput)
#
# Prints a Markdown summary; raw output goes to bench/out/coldstart-<time>/.
# Every measurement runs even if an earlier one failed, and then the script
# exits non-zero naming what failed: a round that was not cold, a non-200, a
# function that never scaled to zero.
set -euo pipefail
BENCH_NAME=coldstart.sh
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-20}
WARM_N=${WARM_N:-2000}
CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-10s}

((ROUNDS >= 20)) || log "warning: ROUNDS=$ROUNDS; the documented numbers use at least 20"

need curl make go setsid
bench_setup coldstart
build_all
go build -C "$BENCH_ROOT" -o "$BENCH_TMP/coldstart" ./bench/coldstart || die "build bench/coldstart failed"

ebb_port=''
free_port ebb_port
start_ebb "$ebb_port" "$BENCH_OUT/ebb.log"

# name:example:runtime:extra coldstart flags
cold_fns=(
	"hello-go:hello-go:exec:"
	"hello-python:hello-python:python:"
	"hello-http:hello-http:http:-path /echo"
)
for spec in "${cold_fns[@]}"; do
	IFS=: read -r name example _ _ <<<"$spec"
	dir=$(bench_copy "$BENCH_ROOT/examples/$example" "$name" idle_timeout=100ms min_instances=0)
	cp "$dir/ebb.yaml" "$BENCH_OUT/$name.ebb.yaml"
	deploy "$dir" "$BENCH_OUT/deploy.log"
done
# The warm runs use their own copy with a long keep-alive, so instances that
# the throughput run scales up stay warm while it is measured.
warm_fn=hello-go-warm
dir=$(bench_copy "$BENCH_ROOT/examples/hello-go" "$warm_fn" idle_timeout=10m min_instances=0 max_instances=10 concurrency=1)
cp "$dir/ebb.yaml" "$BENCH_OUT/$warm_fn.ebb.yaml"
deploy "$dir" "$BENCH_OUT/deploy.log"
log "deployed: ${cold_fns[*]%%:*} $warm_fn"

failed=()

# measure LABEL FILE ARGS... — runs the coldstart program, keeping its output
# and its verdict; a failure is recorded and reported at the end.
measure() {
	local label=$1 file=$2
	shift 2
	log "measure: $label"
	if ! "$BENCH_TMP/coldstart" -url "$EBB_URL" "$@" >"$file" 2>&1; then
		failed+=("$label ($file)")
		tail -n 5 "$file" >&2
	fi
}

for spec in "${cold_fns[@]}"; do
	IFS=: read -r name _ _ extra <<<"$spec"
	# shellcheck disable=SC2086 # extra is a flag list
	measure "cold $name" "$BENCH_OUT/cold-$name.txt" -fn "$name" -n "$ROUNDS" $extra
done
measure "warm $warm_fn, 1 client" "$BENCH_OUT/warm-$warm_fn-c1.txt" -fn "$warm_fn" -warm -n "$WARM_N"
measure "warm $warm_fn, $CLIENTS clients" "$BENCH_OUT/warm-$warm_fn-c$CLIENTS.txt" -fn "$warm_fn" -warm -c "$CLIENTS" -d "$DURATION"

kill -0 "$EBB_PID" 2>/dev/null || failed+=("ebb exited during the run (log: $BENCH_OUT/ebb.log)")
for name in "${cold_fns[@]%%:*}" "$warm_fn"; do
	curl -fsS "$EBB_URL/v1/functions/$name" >"$BENCH_OUT/$name.status.json" 2>/dev/null || true
done

# field FILE KEY — a value from the RESULT line, or "—" when the run has none.
field() {
	local v
	v=$(sed -n "s/^RESULT .* $2=\([^ ]*\).*/\1/p" "$1" 2>/dev/null | tail -n1)
	echo "${v:-—}"
}

# ms FILE KEY DECIMALS — a RESULT value in milliseconds, rounded, with unit.
ms() {
	local v
	v=$(field "$1" "$2")
	if [[ $v == — ]]; then echo —; else printf "%.${3}f ms" "$v"; fi
}

summary="$BENCH_OUT/summary.md"
{
	bench_header "Cold start and warm invoke latency (bench/coldstart.sh)"
	echo "Client-side request-arrival-to-response over loopback keep-alive. Cold: $ROUNDS rounds per function, each after the function has scaled to zero (idle_timeout 100ms), every round checked for \`Ebb-Cold-Start: true\`."
	echo
	echo "| function | runtime | cold / rounds | p50 | p95 | min | max |"
	echo "|---|---|---:|---:|---:|---:|---:|"
	for spec in "${cold_fns[@]}"; do
		IFS=: read -r name _ runtime _ <<<"$spec"
		f="$BENCH_OUT/cold-$name.txt"
		printf '| %s | %s | %s / %s | %s | %s | %s | %s |\n' "$name" "$runtime" \
			"$(field "$f" cold)" "$(field "$f" rounds)" "$(ms "$f" p50_ms 1)" "$(ms "$f" p95_ms 1)" "$(ms "$f" min_ms 1)" "$(ms "$f" max_ms 1)"
	done
	echo
	w1="$BENCH_OUT/warm-$warm_fn-c1.txt"
	wc="$BENCH_OUT/warm-$warm_fn-c$CLIENTS.txt"
	echo "Warm exec (hello-go, concurrency 1 per instance, max_instances 10):"
	echo
	echo "| clients | invokes | req/s | p50 | p99 |"
	echo "|---:|---:|---:|---:|---:|"
	printf '| 1 | %s sequential | — | %s | %s |\n' "$(field "$w1" n)" "$(ms "$w1" p50_ms 3)" "$(ms "$w1" p99_ms 3)"
	printf '| %s | %s in %s s | %s | %s | %s |\n' "$CLIENTS" "$(field "$wc" requests)" "$(field "$wc" duration_s)" "$(field "$wc" rps)" "$(ms "$wc" p50_ms 2)" "$(ms "$wc" p99_ms 2)"
	if [[ $(field "$wc" cold) != 0 && $(field "$wc" cold) != — ]]; then
		echo
		echo "Note: $(field "$wc" cold) cold starts fell inside the measured throughput window."
	fi
	if ((${#failed[@]})); then
		echo
		echo "**FAILED:**"
		printf -- '- %s\n' "${failed[@]}"
	fi
} >"$summary"

echo
cat "$summary"
echo
echo "raw output: $BENCH_OUT"
if ((${#failed[@]})); then
	die "${#failed[@]} measurement(s) failed; see the list above"
fi
