# shellcheck shell=bash
# lib.sh — helpers shared by the benchmark scripts; source it, don't run it.
#
# Every process a script starts is registered with bench_track and stopped by
# bench_cleanup on exit (SIGTERM, then SIGKILL to its whole process group
# after a grace period), so a failed or interrupted run leaves nothing behind.
# Every check fails loudly through die: a benchmark that silently measured an
# error page is worse than no benchmark.

export LC_ALL=C
BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_NAME=${BENCH_NAME:-$(basename "$0")}
BENCH_PIDS=()
BENCH_PORTS=()
BENCH_TMP=

die() {
	echo "$BENCH_NAME: FAIL: $*" >&2
	exit 1
}

log() {
	echo "$BENCH_NAME: $*" >&2
}

need() {
	local cmd
	for cmd in "$@"; do
		command -v "$cmd" >/dev/null || die "$cmd is required but not installed"
	done
}

# bench_setup creates the temp dir and the output dir and installs the traps.
# Sets BENCH_TMP and BENCH_OUT.
bench_setup() {
	BENCH_TMP=$(mktemp -d "/tmp/ebb-bench.XXXXXX")
	BENCH_OUT="$BENCH_ROOT/bench/out/${1}-$(date -u +%Y%m%dT%H%M%SZ)"
	mkdir -p "$BENCH_OUT"
	trap bench_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

bench_track() {
	BENCH_PIDS+=("$1")
}

bench_cleanup() {
	local status=$? pid i
	trap - EXIT INT TERM
	for pid in "${BENCH_PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${BENCH_PIDS[@]}"; do
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "process $pid ignored SIGTERM for 10s; killing its process group"
			kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
		fi
		wait "$pid" 2>/dev/null || true
	done
	if [[ -n $BENCH_TMP && -d $BENCH_TMP ]]; then
		rm -rf "$BENCH_TMP"
	fi
	exit "$status"
}

# free_port VAR — stores in VAR a loopback port nobody listens on and that
# this script has not handed out before.
free_port() {
	local -n _port=$1
	local p used i
	for ((i = 0; i < 200; i++)); do
		p=$((20000 + RANDOM % 40000))
		used=0
		for q in "${BENCH_PORTS[@]}"; do [[ $q == "$p" ]] && used=1; done
		((used)) && continue
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			BENCH_PORTS+=("$p")
			_port=$p
			return 0
		fi
	done
	die "no free loopback port found"
}

# wait_http URL PID LOGFILE [TIMEOUT_S] — waits until URL answers 2xx, failing
# as soon as PID exits (showing the end of its log).
wait_http() {
	local url=$1 pid=$2 logfile=$3 timeout=${4:-60}
	local deadline=$((SECONDS + timeout))
	until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -n 30 "$logfile" >&2 || true
			die "process $pid exited before $url answered (log: $logfile)"
		fi
		((SECONDS < deadline)) || {
			tail -n 30 "$logfile" >&2 || true
			die "$url did not answer within ${timeout}s (log: $logfile)"
		}
		sleep 0.1
	done
}

# expect_body URL WANT — one request; fails unless it is a 200 with body WANT.
expect_body() {
	local url=$1 want=$2 got code
	got=$(curl -sS --max-time 30 -w '\n%{http_code}' "$url") || die "GET $url failed"
	code=${got##*$'\n'}
	got=${got%$'\n'*}
	[[ $code == 200 ]] || die "GET $url: status $code, body: ${got:0:300}"
	[[ $got == "$want" ]] || die "GET $url: body ${got:0:300}, want $want"
}

# build_ebb — builds bin/ebb and the example binaries the way `make build` does.
build_all() {
	log "building bin/ebb and the examples"
	make -C "$BENCH_ROOT" --no-print-directory -s build >&2 || die "make build failed"
}

# start_ebb PORT LOGFILE — starts `bin/ebb serve` on 127.0.0.1:PORT with a
# fresh data dir in BENCH_TMP and waits for /healthz. Sets EBB_PID and
# EBB_URL. setsid gives it its own process group so cleanup can reach any
# instance it leaves behind.
start_ebb() {
	local port=$1 logfile=$2
	EBB_URL="http://127.0.0.1:$port"
	export EBB_URL
	# shellcheck disable=SC2086 # EBB_SERVE_FLAGS is a flag list
	setsid "$BENCH_ROOT/bin/ebb" serve --listen "127.0.0.1:$port" --data "$BENCH_TMP/ebb-data" ${EBB_SERVE_FLAGS:-} >"$logfile" 2>&1 &
	EBB_PID=$!
	bench_track "$EBB_PID"
	wait_http "$EBB_URL/healthz" "$EBB_PID" "$logfile" 60
	log "ebb serving on $EBB_URL (pid $EBB_PID, log $logfile)"
}

# try_start_ebb PORT LOGFILE [SERVE_FLAG...] — like start_ebb, with extra
# flags for `ebb serve` and its own data dir per port, but returns 1 (having
# logged why) instead of failing the script, so that a script can go on
# measuring what does not need this server (a flag not there yet, a crash).
try_start_ebb() {
	local port=$1 logfile=$2 deadline
	shift 2
	EBB_URL="http://127.0.0.1:$port"
	export EBB_URL
	setsid "$BENCH_ROOT/bin/ebb" serve --listen "127.0.0.1:$port" --data "$BENCH_TMP/ebb-data-$port" "$@" >"$logfile" 2>&1 &
	EBB_PID=$!
	bench_track "$EBB_PID"
	deadline=$((SECONDS + 60))
	until curl -fsS -o /dev/null --max-time 2 "$EBB_URL/healthz" 2>/dev/null; do
		if ! kill -0 "$EBB_PID" 2>/dev/null; then
			tail -n 20 "$logfile" >&2 || true
			log "ebb serve $* exited before answering (log: $logfile)"
			return 1
		fi
		if ((SECONDS >= deadline)); then
			tail -n 20 "$logfile" >&2 || true
			log "ebb serve $* did not answer within 60s (log: $logfile)"
			return 1
		fi
		sleep 0.1
	done
	log "ebb serving on $EBB_URL (pid $EBB_PID, flags: ${*:-none}, log $logfile)"
}

# stop_ebb — stops the server started last (SIGTERM, then SIGKILL to its
# process group after 10s), so that the next one measures on a quiet machine.
stop_ebb() {
	local i
	[[ -n ${EBB_PID:-} ]] || return 0
	kill -TERM "$EBB_PID" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		kill -0 "$EBB_PID" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL -- "-$EBB_PID" 2>/dev/null || true
	wait "$EBB_PID" 2>/dev/null || true
	EBB_PID=
}

# bench_copy SRC NAME KEY=VALUE... — copies example SRC to BENCH_TMP/fn/NAME
# with its manifest's name and the given top-level keys replaced, and prints
# the new directory. The copy keeps the example itself untouched.
bench_copy() {
	local src=$1 name=$2 dst kv key keys=(name)
	shift 2
	dst="$BENCH_TMP/fn/$name"
	mkdir -p "$(dirname "$dst")"
	cp -r "$src" "$dst"
	rm -rf "$dst/__pycache__"
	for kv in "$@"; do keys+=("${kv%%=*}"); done
	local pattern
	pattern="^($(
		IFS='|'
		echo "${keys[*]}"
	)):"
	grep -Ev "$pattern" "$src/ebb.yaml" >"$dst/ebb.yaml" || true
	{
		echo "name: $name"
		for kv in "$@"; do
			key=${kv%%=*}
			echo "$key: ${kv#*=}"
		done
	} >>"$dst/ebb.yaml"
	echo "$dst"
}

# deploy DIR LOGFILE — deploys with the CLI; fails loudly on error.
deploy() {
	local dir=$1 logfile=$2
	"$BENCH_ROOT/bin/ebb" deploy "$dir" >>"$logfile" 2>&1 || {
		tail -n 20 "$logfile" >&2
		die "ebb deploy $dir failed (log: $logfile)"
	}
}

# bench_header TITLE — the first lines of a summary: what ran, where, when.
bench_header() {
	local rev
	rev=$(git -C "$BENCH_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
	if [[ -n $(git -C "$BENCH_ROOT" status --porcelain 2>/dev/null) ]]; then rev="$rev+dirty"; fi
	echo "### $1"
	echo
	echo "$(date -u +%Y-%m-%d), commit $rev, $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(go version | awk '{print $3}')."
	echo
}
