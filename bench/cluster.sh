#!/usr/bin/env bash
# cluster.sh — async job throughput of one ebb node against three, on the
# same three-server NATS JetStream cluster (--nats-replicas 3), on loopback,
# in one run. Each measurement gets a fresh NATS cluster. N (default 1500)
# jobs from C (default 16) clients, each sleeping SLEEP_MS (default 20) in a
# Go function with max_instances 8 per node; prints Markdown rows. Then the
# latency of a forwarded hop: HOP (default 500) sync invokes of a Go
# function with max_instances 1 through the node holding its instance and as
# many through another node, which forwards them, interleaved.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1500}
C=${C:-16}
SLEEP_MS=${SLEEP_MS:-20}
HOP=${HOP:-500}
tmp=$(mktemp -d)
pids=()
stop_nats() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	pids=()
}
trap 'stop_nats; rm -rf "$tmp"' EXIT
go build -o "$tmp/ebb" ./cmd/ebb
go build -o "$tmp/nats-server" github.com/nats-io/nats-server/v2
mkdir "$tmp/work"
CGO_ENABLED=0 go build -o "$tmp/work/bootstrap" ./internal/platform/testdata/asyncfn
printf 'name: work\nruntime: exec\nhandler: ./bootstrap\nmemory: 64\nmax_instances: 8\n' >"$tmp/work/ebb.yaml"
mkdir "$tmp/one"
cp "$tmp/work/bootstrap" "$tmp/one/"
printf 'name: one\nruntime: exec\nhandler: ./bootstrap\nmemory: 64\nmax_instances: 1\n' >"$tmp/one/ebb.yaml"

# start_nats runs three clustered nats-servers on fresh ports and stores and
# waits until the leader of JetStream's meta group sees both others current.
start_nats() {
	local base=$((20000 + RANDOM % 30000)) i j routes d
	urls=""
	for i in 0 1 2; do
		routes=""
		for j in 0 1 2; do
			[[ $j == "$i" ]] || routes+="${routes:+,}nats://127.0.0.1:$((base + 10 + j))"
		done
		d="$tmp/nats$i-$base"
		mkdir -p "$d"
		"$tmp/nats-server" -n "n$i" -a 127.0.0.1 -p $((base + i)) -m $((base + 20 + i)) -js -sd "$d" \
			--cluster_name bench --cluster "nats://127.0.0.1:$((base + 10 + i))" --routes "$routes" >"$d/log" 2>&1 &
		pids+=($!)
		urls+="${urls:+,}nats://127.0.0.1:$((base + i))"
	done
	for _ in $(seq 600); do
		for i in 0 1 2; do
			if curl -sf "http://127.0.0.1:$((base + 20 + i))/jsz" | python3 -c '
import json, sys
m = json.load(sys.stdin).get("meta_cluster") or {}
ok = m.get("leader") and m.get("cluster_size") == 3 and len(m.get("replicas") or []) == 2 and all(r.get("current") and not r.get("offline") for r in m["replicas"])
sys.exit(0 if ok else 1)' 2>/dev/null; then
				return 0
			fi
		done
		sleep 0.1
	done
	echo "cluster.sh: FAIL: the NATS cluster did not form" >&2
	exit 1
}

if [[ -z ${HOP_ONLY:-} ]]; then # HOP_ONLY=1 measures the hop alone
	echo "cluster.sh: $N jobs of ${SLEEP_MS} ms, $C clients, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ)" >&2
	for nodes in 1 3; do
		start_nats
		go run ./bench/async -ebb "$tmp/ebb" -fn "$tmp/work" -n "$N" -c "$C" -nats "$urls" -nodes "$nodes" -replicas 3 \
			-payload "{\"sleep_ms\":$SLEEP_MS}" | { [[ $nodes == 1 ]] && cat || tail -n 1; }
		stop_nats
	done
fi

echo "cluster.sh: forwarded hop: $HOP invokes each way, 3 nodes" >&2
start_nats
go run ./bench/async -ebb "$tmp/ebb" -fn "$tmp/one" -nats "$urls" -nodes 3 -replicas 3 -hop "$HOP"
stop_nats
