#!/usr/bin/env bash
# proxy.sh — warm proxy overhead of ebb's function URL (/fn/NAME/...).
#
# One run measures, with wrk on loopback, the same hello-http server reached
# three ways: directly; through nginx as a plain keep-alive reverse proxy (the
# yardstick); and through ebb, where the function is deployed with
# min_instances: 1 so every request is warm. Each target is measured at one
# connection (latency) and 32 connections (throughput), and the script prints
# a Markdown table plus the two ratios the proxy-overhead goal is stated in:
#
#   added p50 at 1 conn:   (ebb - direct) / (nginx - direct)   goal <= 1.5
#   throughput at 32 conn: ebb / nginx                          goal >= 0.6
#
# Raw wrk output, logs and the summary go to bench/out/proxy-<time>/.
# DURATION (default 10s) sets each measured run; NGINX_WORKERS (default auto)
# sets nginx's worker_processes (1 compares one nginx worker with ebb); BENCH_ENFORCE=1 makes a missed
# goal exit with status 3. Any error response, socket error or failed check
# fails the run: numbers from a broken setup are never printed as results.
set -euo pipefail
BENCH_NAME=proxy.sh
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-10s}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
[[ $NGINX_WORKERS == auto || $NGINX_WORKERS =~ ^[1-9][0-9]*$ ]] || die "NGINX_WORKERS must be auto or a positive number, got '$NGINX_WORKERS'"
WARMUP=${WARMUP:-2s}
FN=hello-http

need wrk curl nginx make go setsid
bench_setup proxy
build_all

direct_port='' nginx_port='' ebb_port=''
free_port direct_port
free_port nginx_port
free_port ebb_port

# 1. The server itself, started directly on its own port.
PORT=$direct_port HOST=127.0.0.1 setsid "$BENCH_ROOT/examples/hello-http/server" >"$BENCH_OUT/direct.log" 2>&1 &
direct_pid=$!
bench_track "$direct_pid"
wait_http "http://127.0.0.1:$direct_port/" "$direct_pid" "$BENCH_OUT/direct.log" 10

# 2. nginx as a plain keep-alive reverse proxy in front of it, with every
# file it writes inside the temp dir.
ngx="$BENCH_TMP/nginx"
mkdir -p "$ngx/tmp"
cat >"$ngx/nginx.conf" <<EOF
user root;
daemon off;
worker_processes $NGINX_WORKERS;
pid $ngx/nginx.pid;
error_log $ngx/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path $ngx/tmp/body;
    proxy_temp_path $ngx/tmp/proxy;
    fastcgi_temp_path $ngx/tmp/fastcgi;
    upstream direct {
        server 127.0.0.1:$direct_port;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://direct;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
cp "$ngx/nginx.conf" "$BENCH_OUT/nginx.conf"
setsid nginx -p "$ngx" -c "$ngx/nginx.conf" -e "$ngx/error.log" >"$BENCH_OUT/nginx.log" 2>&1 &
nginx_pid=$!
bench_track "$nginx_pid"
wait_http "http://127.0.0.1:$nginx_port/" "$nginx_pid" "$BENCH_OUT/nginx.log" 10

# 3. ebb, with a bench copy of hello-http that is always warm and, like the
# direct server, a single instance.
start_ebb "$ebb_port" "$BENCH_OUT/ebb.log"
fn_dir=$(bench_copy "$BENCH_ROOT/examples/$FN" "$FN" min_instances=1 max_instances=1 concurrency=64)
cp "$fn_dir/ebb.yaml" "$BENCH_OUT/$FN.ebb.yaml"
deploy "$fn_dir" "$BENCH_OUT/deploy.log"

declare -A url=(
	[direct]="http://127.0.0.1:$direct_port/"
	[nginx]="http://127.0.0.1:$nginx_port/"
	[ebb]="$EBB_URL/fn/$FN/"
)
targets=(direct nginx ebb)
for t in "${targets[@]}"; do
	expect_body "${url[$t]}" hello
done
log "all three targets answer 'hello'"

# to_us VALUE — wrk's latency (e.g. 45.10us, 1.20ms, 1.00s) in microseconds.
to_us() {
	awk -v v="$1" 'BEGIN {
		if (match(v, /^[0-9.]+/) == 0) { exit 1 }
		n = substr(v, 1, RLENGTH); u = substr(v, RLENGTH + 1)
		if (u == "us") f = 1; else if (u == "ms") f = 1000; else if (u == "s") f = 1000000; else if (u == "m") f = 60000000; else exit 1
		printf "%.1f", n * f
	}'
}

# run_wrk TARGET CONNS THREADS FILE — one measured run; fails on any error
# response or socket error. Sets P50 and P99 (µs) and RPS.
run_wrk() {
	local target=$1 conns=$2 threads=$3 file=$4 line
	wrk -t"$threads" -c"$conns" -d"$DURATION" --latency "${url[$target]}" >"$file" 2>&1 ||
		die "wrk against $target failed: $(tail -n 5 "$file")"
	if line=$(grep -E 'Non-2xx or 3xx responses' "$file"); then
		die "$target at $conns connections: $line (see $file)"
	fi
	if line=$(grep -E 'Socket errors' "$file"); then
		die "$target at $conns connections: $line (see $file)"
	fi
	P50=$(to_us "$(awk '$1 == "50%" {print $2}' "$file")") || die "no p50 in $file"
	P99=$(to_us "$(awk '$1 == "99%" {print $2}' "$file")") || die "no p99 in $file"
	RPS=$(awk '/^Requests\/sec:/ {print $2}' "$file")
	[[ -n $RPS ]] || die "no Requests/sec in $file"
	awk -v r="$RPS" 'BEGIN { exit !(r > 0) }' || die "$target at $conns connections served no requests ($file)"
}

# Warm every path (connection pools, page cache, CPU frequency) before
# measuring anything; these runs must be clean too.
for t in "${targets[@]}"; do
	log "warm-up: $t ($WARMUP, 32 connections)"
	DURATION=$WARMUP run_wrk "$t" 32 2 "$BENCH_OUT/warmup-$t.txt"
done

declare -A p50 p99 rps
for conns in 1 32; do
	threads=1
	((conns > 1)) && threads=2
	for t in "${targets[@]}"; do
		log "measure: $t, $conns connection(s), $DURATION"
		run_wrk "$t" "$conns" "$threads" "$BENCH_OUT/$t-c$conns.txt"
		p50[$t,$conns]=$P50 p99[$t,$conns]=$P99 rps[$t,$conns]=$RPS
	done
done

# The function must have stayed warm on one instance the whole time.
curl -fsS "$EBB_URL/v1/functions/$FN" >"$BENCH_OUT/$FN.status.json" || die "GET /v1/functions/$FN failed"
kill -0 "$direct_pid" 2>/dev/null || die "the direct server died during the run"
kill -0 "$nginx_pid" 2>/dev/null || die "nginx died during the run"
kill -0 "$EBB_PID" 2>/dev/null || die "ebb died during the run"

fmt_us() { awk -v v="$1" 'BEGIN { if (v >= 1000) printf "%.2f ms", v / 1000; else printf "%.0f µs", v }'; }

summary="$BENCH_OUT/summary.md"
enforce_failed=0
{
	bench_header "Warm proxy overhead (bench/proxy.sh)"
	echo "hello-http (GET / → \"hello\") on loopback, wrk $DURATION per row: 1 connection is \`-t1 -c1\`, 32 is \`-t2 -c32\`."
	echo "nginx: keep-alive reverse proxy (upstream keepalive 64, HTTP/1.1), worker_processes $NGINX_WORKERS. ebb: \`/fn/$FN/\`, min_instances 1, max_instances 1."
	echo
	echo "| target | conns | p50 | p99 | req/s |"
	echo "|---|---:|---:|---:|---:|"
	for conns in 1 32; do
		for t in "${targets[@]}"; do
			printf '| %s | %s | %s | %s | %.0f |\n' "$t" "$conns" "$(fmt_us "${p50[$t,$conns]}")" "$(fmt_us "${p99[$t,$conns]}")" "${rps[$t,$conns]}"
		done
	done
	echo
	awk -v e="${p50[ebb,1]}" -v n="${p50[nginx,1]}" -v d="${p50[direct,1]}" 'BEGIN {
		ea = e - d; na = n - d
		printf "- Added p50 at 1 connection: ebb %+.0f µs, nginx %+.0f µs over direct", ea, na
		if (na <= 0) { printf "; ratio undefined (nginx added nothing measurable): goal not assessed\n"; exit 2 }
		r = ea / na
		printf "; ebb/nginx = %.2f (goal ≤ 1.5): %s\n", r, (r <= 1.5 ? "met" : "MISSED")
		exit (r <= 1.5 ? 0 : 1)
	}' || enforce_failed=1
	awk -v e="${rps[ebb,32]}" -v n="${rps[nginx,32]}" 'BEGIN {
		r = e / n
		printf "- Throughput at 32 connections: ebb %.0f req/s, nginx %.0f req/s; ebb/nginx = %.2f (goal ≥ 0.6): %s\n", e, n, r, (r >= 0.6 ? "met" : "MISSED")
		exit (r >= 0.6 ? 0 : 1)
	}' || enforce_failed=1
} >"$summary"

echo
cat "$summary"
echo
echo "raw output: $BENCH_OUT"
if ((enforce_failed)) && [[ ${BENCH_ENFORCE:-0} == 1 ]]; then
	exit 3
fi
