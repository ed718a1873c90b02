#!/usr/bin/env bash
# keepalive.sh — keep-alive policies on synthetic traces: APPS apps
# (default 300) over DAYS days (default 3) for each mix in MIXES (default
# "paper poisson-rare": the distributions Shahrad et al., ATC'20, measured,
# and the earlier stress mix with a third of the apps rare and Poisson) and
# each seed in SEEDS (default "1 2 3"), replayed by `ebb sim` through
# POLICIES (default: hybrid, ebb's default; hybrid:exchange=0s, the
# paper's rule; the previous default; fixed:20m), each against fixed:10m. Prints a Markdown row
# per mix, seed and policy; the JSON reports go to bench/out/keepalive/.
set -euo pipefail
cd "$(dirname "$0")/.."
APPS=${APPS:-300}
DAYS=${DAYS:-3}
SEEDS=${SEEDS:-1 2 3}
MIXES=${MIXES:-paper poisson-rare}
POLICIES=${POLICIES:-hybrid hybrid:exchange=0s hybrid:exchange=30m,exchange-idle=0,exchange-memory=0,search=false fixed:20m}
out=bench/out/keepalive
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/ebb" ./cmd/ebb
pol=()
for p in $POLICIES; do pol+=(--policy "$p"); done
echo "| mix | seed | policy | cold % p50 | cold % p75 | cold % p99 | p75 vs fixed:10m | wasted MB·min vs fixed:10m | policy ns/invocation |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
for mix in $MIXES; do
	for seed in $SEEDS; do
		dir="$tmp/$mix.$seed"
		"$tmp/ebb" sim --synthesize "$APPS" --seed "$seed" --days "$DAYS" --mix "$mix" "$dir" >"$out/synthesize.$mix.$seed.txt"
		traces=()
		for ((d = 1; d <= DAYS; d++)); do traces+=(--trace "$(printf '%s/invocations.d%02d.csv' "$dir" "$d")"); done
		"$tmp/ebb" sim "${traces[@]}" --memory "$dir/memory.csv" "${pol[@]}" --json >"$out/report.$mix.$seed.json"
		python3 - "$mix" "$seed" "$out/report.$mix.$seed.json" <<'PY'
import json, sys
mix, seed, rep = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
for p in rep["policies"]:
    c, v = p["cold_start_pct"], p["vs_fixed_10m"]
    f = lambda x: "-" if x is None else f"{x:.3f}"
    print(f"| {mix} | {seed} | {p['policy']} | {c['p50']:.1f} | {c['p75']:.1f} | {c['p99']:.1f} | {f(v['cold_start_pct_p75'])} | {f(v['wasted_memory_mb_minutes'])} | {p['policy_ns_per_invocation']:.0f} |")
PY
	done
done
