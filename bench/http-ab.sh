#!/usr/bin/env bash
# http-ab.sh — http cold starts of several ebb binaries side by side, against
# the direct start of the same server, in interleaved blocks: for a change on
# the cold path, before and after in the same minutes (this VM drifts more
# between runs than such a change moves).
#
#   bash bench/http-ab.sh ROUNDS BLOCKS BIN...
#
# Each BIN runs as `serve --sandbox on` with its own data dir and a copy of
# examples/hello-http (idle_timeout 100ms, min_instances 0); every block runs
# the direct baseline (bench/baseline http) then ROUNDS cold starts of each
# BIN (bench/coldstart, each checked cold). Prints, over all blocks, the p50s,
# each BIN's ratio to the direct start, and from its log the p50 of init
# (claim or spawn to listening) and duration (the first request).
set -euo pipefail
BENCH_NAME=http-ab.sh
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

(($# >= 3)) || die "usage: bash bench/http-ab.sh ROUNDS BLOCKS BIN..."
ROUNDS=$1
BLOCKS=$2
shift 2
need curl go setsid
PYTHON=${PYTHON:-/usr/bin/python3}

bench_setup http-ab
make -C "$BENCH_ROOT" --no-print-directory -s examples >&2 || die "make examples failed"
go build -C "$BENCH_ROOT" -o "$BENCH_TMP/coldstart" ./bench/coldstart || die "build bench/coldstart failed"
go build -C "$BENCH_ROOT" -o "$BENCH_TMP/baseline" ./bench/baseline || die "build bench/baseline failed"

urls=()
names=()
k=0
for bin in "$@"; do
	[[ -x $bin ]] || die "$bin is not an executable"
	port=''
	free_port port
	url="http://127.0.0.1:$port"
	setsid "$bin" serve --listen "127.0.0.1:$port" --data "$BENCH_TMP/data$k" --sandbox on >"$BENCH_OUT/ebb$k.log" 2>&1 &
	pid=$!
	bench_track "$pid"
	wait_http "$url/healthz" "$pid" "$BENCH_OUT/ebb$k.log" 60
	dir=$(bench_copy "$BENCH_ROOT/examples/hello-http" hello-http idle_timeout=100ms min_instances=0)
	EBB_URL=$url "$bin" deploy "$dir" >>"$BENCH_OUT/deploy.log" 2>&1 || die "deploy to $bin failed ($BENCH_OUT/deploy.log)"
	urls+=("$url")
	names+=("$bin")
	k=$((k + 1))
done

for ((b = 1; b <= BLOCKS; b++)); do
	log "block $b of $BLOCKS"
	"$BENCH_TMP/baseline" http -server "$BENCH_ROOT/examples/hello-http/server" -path /echo -n "$ROUNDS" \
		-log "$BENCH_OUT/baseline.log" >"$BENCH_OUT/direct-$b.txt" 2>&1 || die "baseline failed ($BENCH_OUT/direct-$b.txt)"
	for ((j = 0; j < k; j++)); do
		"$BENCH_TMP/coldstart" -url "${urls[$j]}" -fn hello-http -path /echo -n "$ROUNDS" \
			>"$BENCH_OUT/ebb$j-$b.txt" 2>&1 || die "coldstart against ${names[$j]} failed ($BENCH_OUT/ebb$j-$b.txt)"
	done
done

"$PYTHON" - "$BENCH_OUT" "${names[@]}" <<'PY'
import glob, json, re, statistics, sys
out, names = sys.argv[1], sys.argv[2:]
def rounds(pattern, cold):
    ms = []
    for f in sorted(glob.glob(pattern)):
        for line in open(f):
            m = re.match(r"round\s*\d+:\s*([0-9.]+) ms(.*)", line)
            if m and (not cold or m.group(2).strip() == "cold"):
                ms.append(float(m.group(1)))
    return ms
direct = rounds(out + "/direct-*.txt", False)
p50 = statistics.median(direct)
print(f"| binary | rounds | cold p50 | / direct | init p50 | first request p50 |")
print(f"|---|---:|---:|---:|---:|---:|")
print(f"| direct start | {len(direct)} | {p50:.2f} ms | | | |")
for j, name in enumerate(names):
    ms = rounds(f"{out}/ebb{j}-*.txt", True)
    recs = [json.loads(l) for l in open(f"{out}/ebb{j}.log") if '"msg":"invocation"' in l and '"cold_start":true' in l]
    init = statistics.median(r["init_ms"] for r in recs)
    dur = statistics.median(r["duration_ms"] for r in recs)
    print(f"| `{name}` | {len(ms)} | {statistics.median(ms):.2f} ms | {statistics.median(ms) / p50:.3f}× | {init:.2f} ms | {dur:.2f} ms |")
print(f"\nraw output: {out}")
PY
