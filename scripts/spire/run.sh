#!/usr/bin/env bash
# Run a throwaway local SPIRE deployment (one server, one agent), mint one
# JWT-SVID through the agent's Workload API, write it out, tear it all down.
#
#   scripts/spire/run.sh AUDIENCE OUTDIR
#
# AUDIENCE is one aud value (spire-agent splits a comma list into several).
#
# Writes (no trailing newlines on the .jwt/.txt files):
#   OUTDIR/svid.jwt       compact JWT-SVID (header.payload.signature)
#   OUTDIR/bundle.jwks    trust domain bundle in SPIFFE format = a JWKS whose
#                         keys carry "use":"jwt-svid" (JWT signing keys) or
#                         "use":"x509-svid" (CA certs, x5c)
#   OUTDIR/spiffe_id.txt  the SVID's SPIFFE ID (its "sub" claim)
# Logs, and the decoded SVID header and claims, go to stderr.
#
# Env (all optional):
#   MANDATE_SPIRE_BIN           dir with spire-server/spire-agent (default: build.sh)
#   MANDATE_SPIRE_TRUST_DOMAIN  default example.org
#   MANDATE_SPIRE_JWT_ISSUER    "iss" claim, default https://spire.example.org
#   MANDATE_SPIRE_JWT_TTL       JWT-SVID lifetime, default 5m
#   MANDATE_SPIRE_JWT_KEY_TYPE  ec-p256 (ES256, SPIRE's default) | rsa-2048 (RS256) | ...
#   MANDATE_SPIRE_TIMEOUT       seconds allowed for each wait step, default 60
#
# Needs jq and base64. No network beyond 127.0.0.1; never reads stdin.
set -euo pipefail

if [[ $# -ne 2 || -z "$1" || -z "$2" ]]; then
	echo "usage: $0 AUDIENCE OUTDIR" >&2
	exit 2
fi
audience="$1"
outdir="$2"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
trust_domain="${MANDATE_SPIRE_TRUST_DOMAIN:-example.org}"
jwt_issuer="${MANDATE_SPIRE_JWT_ISSUER:-https://spire.example.org}"
jwt_ttl="${MANDATE_SPIRE_JWT_TTL:-5m}"
jwt_key_type="${MANDATE_SPIRE_JWT_KEY_TYPE:-ec-p256}"
step_timeout="${MANDATE_SPIRE_TIMEOUT:-60}"
workload_id="spiffe://${trust_domain}/ci/deployer"

log() { printf 'spire-run: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in jq base64; do
	command -v "$tool" >/dev/null || die "$tool is required"
done

# build.sh is a no-op (prints the cached bin dir) once the binaries exist.
bin_dir="${MANDATE_SPIRE_BIN:-$("${here}/build.sh")}"
server="${bin_dir}/spire-server"
agent="${bin_dir}/spire-agent"
[[ -x "$server" && -x "$agent" ]] || die "spire binaries not found in ${bin_dir}"

# Everything lives in one temp dir. It is under /tmp (not $TMPDIR) because
# unix socket paths must stay under ~104 bytes.
tmp="$(mktemp -d /tmp/mandate-spire.XXXXXX)"
server_sock="${tmp}/server.sock"
agent_sock="${tmp}/agent.sock"
server_pid=""
agent_pid=""
watchdog_pid=""

# Stop a child: SIGTERM, then SIGKILL if it has not exited after 5s.
stop() {
	local pid="$1" i
	[[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# Runs on every exit, success or not: stop both daemons, delete the temp
# dir; on failure first dump the daemon logs so CI shows why.
cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	if [[ $rc -ne 0 ]]; then
		for f in server agent; do
			[[ -s "${tmp}/${f}.log" ]] || continue
			log "---- last lines of spire-${f} log ----"
			tail -n 40 "${tmp}/${f}.log" >&2
		done
	fi
	kill "$watchdog_pid" 2>/dev/null
	stop "$agent_pid"
	stop "$server_pid"
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# SIGKILL (e.g. a Go test's exec.CommandContext on timeout) runs no trap, so
# a watchdog kills the daemons and removes the temp dir once this shell is
# gone. Its output goes to /dev/null so it never holds a caller's pipe open.
(
	while kill -0 $$ 2>/dev/null; do sleep 1; done
	for f in "${tmp}"/*.pid; do
		[[ -f "$f" ]] && kill -KILL "$(cat "$f")" 2>/dev/null || true
	done
	rm -rf "$tmp"
) </dev/null >/dev/null 2>&1 &
watchdog_pid=$!

# wait_for DESCRIPTION PID CMD...: retry CMD until it succeeds, failing fast
# if the daemon PID died, or after $step_timeout seconds.
wait_for() {
	local what="$1" pid="$2" deadline=$((SECONDS + step_timeout))
	shift 2
	until "$@" >"${tmp}/last.out" 2>&1; do
		kill -0 "$pid" 2>/dev/null || die "${what}: process ${pid} exited"
		((SECONDS < deadline)) || die "${what}: timed out after ${step_timeout}s: $(cat "${tmp}/last.out")"
		sleep 0.2
	done
}

# A port nothing listens on right now. bind_port = 0 is rejected by SPIRE,
# so probe; the small race with other processes is handled by retrying below.
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		(exec 3<>"/dev/tcp/127.0.0.1/${p}") 2>/dev/null || { echo "$p"; return; }
	done
}

b64url_decode() {
	local s="${1//-/+}"
	s="${s//_//}"
	case $((${#s} % 4)) in 2) s+="==" ;; 3) s+="=" ;; esac
	printf '%s' "$s" | base64 -d
}

start_time=$SECONDS
log "temp dir ${tmp}; binaries $("$server" --version 2>&1) from ${bin_dir}"

# ---- server ---------------------------------------------------------------
# memory key manager: keys die with the run, nothing to clean up or leak.
write_server_conf() {
	cat >"${tmp}/server.conf" <<EOF
server {
  bind_address = "127.0.0.1"
  bind_port = "$1"
  socket_path = "${server_sock}"
  trust_domain = "${trust_domain}"
  data_dir = "${tmp}/server"
  log_level = "INFO"
  jwt_issuer = "${jwt_issuer}"
  jwt_key_type = "${jwt_key_type}"
  default_jwt_svid_ttl = "${jwt_ttl}"
  # Default 5s: how stale the server's entry cache may be when the agent
  # syncs. 1s makes the new entry visible sooner (logs an "experimental" warning).
  experimental {
    cache_reload_interval = "1s"
  }
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "${tmp}/server/datastore.sqlite3"
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
}
EOF
}

for attempt in 1 2 3; do
	port="$(free_port)"
	write_server_conf "$port"
	"$server" run -config "${tmp}/server.conf" </dev/null >"${tmp}/server.log" 2>&1 &
	server_pid=$!
	echo "$server_pid" >"${tmp}/server.pid"
	# healthcheck talks over the admin unix socket; also make sure the
	# agent-facing TCP port accepts before handing it to the agent.
	if (wait_for "spire-server healthcheck" "$server_pid" \
		"$server" healthcheck -socketPath "$server_sock" &&
		wait_for "spire-server port ${port}" "$server_pid" \
			bash -c "exec 3<>/dev/tcp/127.0.0.1/${port}"); then
		break
	fi
	grep -q 'address already in use' "${tmp}/server.log" && ((attempt < 3)) || exit 1
	log "port ${port} was taken, retrying"
	stop "$server_pid"
	server_pid=""
	rm -rf "${tmp}/server"
done
log "spire-server healthy on 127.0.0.1:${port} after $((SECONDS - start_time))s"

# ---- join token + workload entry -----------------------------------------
token="$("$server" token generate -socketPath "$server_sock" -ttl 600 | awk '/^Token:/ {print $2}')"
[[ -n "$token" ]] || die "could not generate a join token"
# A join_token agent's own SPIFFE ID; used as the entry's parent. The entry
# is registered before the agent starts so its first sync already has it.
agent_id="spiffe://${trust_domain}/spire/agent/join_token/${token}"
"$server" entry create -socketPath "$server_sock" \
	-parentID "$agent_id" \
	-spiffeID "$workload_id" \
	-selector "unix:uid:$(id -u)" >"${tmp}/entry.out" ||
	die "entry create failed: $(cat "${tmp}/entry.out")"
log "registered ${workload_id} (parent ${agent_id}, selector unix:uid:$(id -u))"

# ---- agent ----------------------------------------------------------------
# insecure_bootstrap: fine for a local throwaway server; the token is in the
# config file rather than argv so it does not show up in ps.
cat >"${tmp}/agent.conf" <<EOF
agent {
  data_dir = "${tmp}/agent"
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "${port}"
  socket_path = "${agent_sock}"
  trust_domain = "${trust_domain}"
  insecure_bootstrap = true
  join_token = "${token}"
  # Default 5s between entry syncs with the server; 1s cuts the wait for the
  # workload entry to reach the agent.
  experimental {
    sync_interval = "1s"
  }
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
EOF
"$agent" run -config "${tmp}/agent.conf" </dev/null >"${tmp}/agent.log" 2>&1 &
agent_pid=$!
echo "$agent_pid" >"${tmp}/agent.pid"
wait_for "spire-agent healthcheck" "$agent_pid" "$agent" healthcheck -socketPath "$agent_sock"
log "spire-agent healthy after $((SECONDS - start_time))s"

# ---- JWT-SVID -------------------------------------------------------------
# Retried: until the agent has synced the entry the Workload API answers
# "no identity issued".
wait_for "fetch JWT-SVID" "$agent_pid" \
	"$agent" api fetch jwt -audience "$audience" -socketPath "$agent_sock" -output json
svid="$(jq -er '.[0].svids[0].svid' "${tmp}/last.out")" || die "no svid in: $(cat "${tmp}/last.out")"
spiffe_id="$(jq -er '.[0].svids[0].spiffe_id' "${tmp}/last.out")"

"$server" bundle show -socketPath "$server_sock" -format spiffe >"${tmp}/bundle.jwks"

IFS=. read -r h p _ <<<"$svid"
header="$(b64url_decode "$h")"
claims="$(b64url_decode "$p")"
kid="$(jq -r .kid <<<"$header")"

# Sanity-check what the consumer will rely on, so a bad run fails here.
jq -e --arg kid "$kid" 'any(.keys[]; .kid == $kid and .use == "jwt-svid")' \
	"${tmp}/bundle.jwks" >/dev/null || die "bundle has no jwt-svid key with kid ${kid}"
jq -e --arg iss "$jwt_issuer" --arg sub "$workload_id" --arg aud "$audience" \
	'.iss == $iss and .sub == $sub and (($aud | split(",")) - ([.aud] | flatten)) == []' \
	<<<"$claims" >/dev/null || die "unexpected claims: ${claims}"
[[ "$spiffe_id" == "$workload_id" ]] || die "got SPIFFE ID ${spiffe_id}, want ${workload_id}"

mkdir -p "$outdir"
printf '%s' "$svid" >"${outdir}/svid.jwt"
cp "${tmp}/bundle.jwks" "${outdir}/bundle.jwks"
printf '%s' "$spiffe_id" >"${outdir}/spiffe_id.txt"

{
	echo "spire-run: JWT-SVID header:"
	jq . <<<"$header"
	echo "spire-run: JWT-SVID claims:"
	jq --arg now "$(date +%s)" '. + {exp_in_seconds: (.exp - ($now | tonumber))}' <<<"$claims"
	echo "spire-run: bundle keys (kid / use / kty / crv):"
	jq -r '.keys[] | "  \(.kid // "-") \(.use) \(.kty) \(.crv // "-")"' "${outdir}/bundle.jwks"
} >&2
log "wrote ${outdir}/{svid.jwt,bundle.jwks,spiffe_id.txt} in $((SECONDS - start_time))s"
