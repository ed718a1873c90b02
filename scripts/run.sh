#!/usr/bin/env bash
# run.sh — `make run`: start `bin/ebb serve` in the foreground, wait until it
# is healthy, deploy every examples/*/ that has an ebb.yaml, and print how to
# call them. Ctrl-C stops the server (it is this script's process, by exec).
#
# Environment: EBB_LISTEN (default 127.0.0.1:8080), EBB_DATA (default
# ./ebb-data), EBB_API_KEY (passed to the CLI if the server needs one).
set -euo pipefail
cd "$(dirname "$0")/.."

EBB_LISTEN=${EBB_LISTEN:-127.0.0.1:8080}
EBB_DATA=${EBB_DATA:-./ebb-data}
export EBB_URL="http://$EBB_LISTEN"
HEALTH_WAIT_S=${HEALTH_WAIT_S:-60}

die() {
	echo "run.sh: $*" >&2
	exit 1
}

[[ -x bin/ebb ]] || die "bin/ebb is missing: run 'make build' first"
for b in examples/hello-go/bootstrap examples/hello-http/server; do
	[[ -x $b ]] || die "$b is missing: run 'make build' first"
done
# A server already answering here would receive our deploys and make the
# output below lie about which process is serving.
if curl -fsS -o /dev/null --max-time 1 "$EBB_URL/healthz" 2>/dev/null; then
	die "something already serves $EBB_URL; stop it or set EBB_LISTEN"
fi

manifest_field() { # FILE FIELD — a top-level scalar from an ebb.yaml
	sed -n "s/^$2:[[:space:]]*\([^#]*[^#[:space:]]\).*/\1/p" "$1" | head -n1
}

server_pid=$$

# The deployer runs beside the server; if anything fails it stops the
# server, so `make run` never leaves a half-deployed platform running.
(
	fail() {
		echo "run.sh: $*" >&2
		kill -TERM "$server_pid" 2>/dev/null || true
		exit 1
	}
	deadline=$((SECONDS + HEALTH_WAIT_S))
	until curl -fsS -o /dev/null --max-time 1 "$EBB_URL/healthz" 2>/dev/null; do
		kill -0 "$server_pid" 2>/dev/null || exit 1 # the server has said why
		((SECONDS < deadline)) || fail "$EBB_URL/healthz not ready after ${HEALTH_WAIT_S}s"
		sleep 0.1
	done

	names=()
	for dir in examples/*/; do
		[[ -f $dir/ebb.yaml ]] || continue
		echo "run.sh: deploying $dir"
		bin/ebb deploy "$dir" || fail "deploy $dir failed"
		names+=("$(manifest_field "$dir/ebb.yaml" name):$(manifest_field "$dir/ebb.yaml" runtime)")
	done

	# The CLI's default server needs no EBB_URL in the examples.
	cli="bin/ebb"
	[[ $EBB_URL == http://127.0.0.1:8080 ]] || cli="EBB_URL=$EBB_URL bin/ebb"

	echo
	echo "ebb is serving on $EBB_URL (data in $EBB_DATA). Try:"
	for nr in "${names[@]}"; do
		name=${nr%%:*} runtime=${nr#*:}
		case $runtime in
		http)
			echo "  curl $EBB_URL/fn/$name/"
			echo "  curl -d '{\"x\":1}' $EBB_URL/fn/$name/echo"
			;;
		onnx)
			echo "  curl $EBB_URL/v2/models/$name"
			echo "  curl -d '{\"inputs\":[{\"name\":\"input\",\"datatype\":\"FP32\",\"shape\":[1,64],\"data\":[$(printf '0.5,%.0s' {1..63})0.5]}]}' $EBB_URL/v2/models/$name/infer"
			;;
		*)
			echo "  $cli invoke $name -d '{\"name\":\"ada\"}'"
			echo "  curl -i -d '{\"name\":\"ada\"}' $EBB_URL/v1/functions/$name/invoke"
			;;
		esac
	done
	echo "  $cli ls"
	echo "  $cli logs NAME"
	echo "Ctrl-C stops the server."
	echo
) &

exec bin/ebb serve --listen "$EBB_LISTEN" --data "$EBB_DATA"
