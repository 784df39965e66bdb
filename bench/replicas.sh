#!/usr/bin/env bash
# Issuance on one replica against three, on one PostgreSQL database, each replica in its own
# cgroup with the same CPU quota: small machines of their own, emulated on one host. Prints both
# runs of `mandate bench --scenario issue` and the ratio of their aggregate rates.
#
# Needs root (cgroup v1 at /sys/fs/cgroup/cpu), psql, go, jq, and MANDATE_TEST_POSTGRES: a URL
# of a PostgreSQL server where a throw-away database may be created (it is dropped at the end).
# Settings, from the environment:
#   QUOTA        percent of one core each replica may use (default 30: three replicas take 90%
#                of a core, leaving the rest of a 2-core host to PostgreSQL and the load)
#   DURATION     length of each timed run (default 15s); MAX_RATE sizes its pool (default 1500/s)
#   CONCURRENCY  requests in flight (default 64); AGENTS per run (default 4)
#   BASE_PORT    replicas listen on BASE_PORT, +1, +2 (default 18500)
#   CPUSETS      optional: the CPUs of each replica, space-separated, e.g. "0-1 2-3 4-5" on a
#                host with cores to spare (each replica also joins a cpuset cgroup of them);
#                default none: on 2 cores three replicas cannot have disjoint sets, and the
#                quota alone makes each a small machine
# Run from the repository's root: bash bench/replicas.sh
set -euo pipefail

: "${MANDATE_TEST_POSTGRES:?set MANDATE_TEST_POSTGRES to a postgres:// URL (a database is created and dropped there)}"
QUOTA=${QUOTA:-30}
DURATION=${DURATION:-15s}
MAX_RATE=${MAX_RATE:-1500}
CONCURRENCY=${CONCURRENCY:-64}
AGENTS=${AGENTS:-4}
BASE_PORT=${BASE_PORT:-18500}
CPUSETS=${CPUSETS:-}
CG=/sys/fs/cgroup/cpu
CS=/sys/fs/cgroup/cpuset

work=$(mktemp -d)
db=mandate_bench_$$
dsn=$(sed -E "s#^(postgres(ql)?://[^/]*)/[^?]*#\1/$db#" <<<"$MANDATE_TEST_POSTGRES")
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
	for i in 1 2 3; do rmdir "$CG/mandate-bench-$$-r$i" "$CS/mandate-bench-$$-r$i" 2>/dev/null || true; done
	psql "$MANDATE_TEST_POSTGRES" -qc "drop database if exists $db" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/mandate" ./cmd/mandate
psql "$MANDATE_TEST_POSTGRES" -qc "create database $db"
export MANDATE_CONFIG_DIR=$work/config
issuer=http://127.0.0.1:$BASE_PORT

# start_replica I: replica I in its own cgroup (quota QUOTA% of a core), on the shared database
# and master key, naming one issuer as replicas behind a load balancer do.
start_replica() {
	local i=$1 port=$((BASE_PORT + $1 - 1)) cg="$CG/mandate-bench-$$-r$1"
	mkdir -p "$cg" "$work/r$i"
	echo 100000 >"$cg/cpu.cfs_period_us"
	echo $((QUOTA * 1000)) >"$cg/cpu.cfs_quota_us"
	local cs=""
	if [ -n "$CPUSETS" ]; then
		local sets
		read -r -a sets <<<"$CPUSETS"
		cs="$CS/mandate-bench-$$-r$i"
		mkdir -p "$cs"
		cat "$CS/cpuset.mems" >"$cs/cpuset.mems"
		echo "${sets[$((i - 1))]:?CPUSETS names fewer than 3 sets}" >"$cs/cpuset.cpus"
	fi
	# The shell joins the cgroups, then becomes the server: it never runs outside them.
	bash -c 'echo $$ >"$1/cgroup.procs"; if [ -n "$2" ]; then echo $$ >"$2/cgroup.procs"; fi; shift 2; exec "$@"' _ "$cg" "$cs" \
		"$work/mandate" serve --data-dir "$work/r$i" --master-key-file "$work/r1/master.key" \
		--database "$dsn" --listen "127.0.0.1:$port" --issuer "$issuer" --log-level warn >"$work/r$i.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 100); do
		curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	echo "replica $i did not start:" >&2
	cat "$work/r$i.log" >&2
	return 1
}

run() { # run URL,URL…: one timed issuance run over those replicas, as JSON
	"$work/mandate" bench --servers "$1" --scenario issue --duration "$DURATION" --max-rate "$MAX_RATE" \
		--concurrency "$CONCURRENCY" --agents "$AGENTS" --json
}

# show: the run's figures, and the cores its replicas used (a replica that uses less than its
# quota waits on something else than its CPU: the database, a lock).
show() {
	jq -c '.runs[0] | {requests, errors, rate_per_second, latency_ms, server_cpu_ms_per_request,
		server_cores_used: (if .server_cpu_seconds then (.server_cpu_seconds / .seconds * 100 | round) / 100 else null end)}'
}

start_replica 1
"$work/mandate" login --server "$issuer" --token-file "$work/r1/bootstrap-token" >/dev/null
echo "one replica (${QUOTA}% of a core):"
one=$(run "$issuer")
show <<<"$one"

start_replica 2
start_replica 3
servers=$issuer,http://127.0.0.1:$((BASE_PORT + 1)),http://127.0.0.1:$((BASE_PORT + 2))
echo "three replicas (${QUOTA}% of a core each):"
three=$(run "$servers")
show <<<"$three"

jq -rn --argjson one "$one" --argjson three "$three" \
	'"aggregate issuance, three replicas / one: \(($three.runs[0].rate_per_second / $one.runs[0].rate_per_second * 100 | round) / 100)x"'
