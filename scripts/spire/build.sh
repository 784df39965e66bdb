#!/usr/bin/env bash
# Build spire-server and spire-agent from source into a cache dir and print
# that bin dir on stdout (the only thing written to stdout).
#
#   scripts/spire/build.sh            # -> $HOME/.cache/mandate-spire/v1.13.3/bin
#
# Env:
#   MANDATE_SPIRE_CACHE    cache root (default $HOME/.cache/mandate-spire)
#   MANDATE_SPIRE_VERSION  SPIRE release tag (default v1.13.3)
#
# Cached binaries are reused, so a second call returns immediately. Needs Go
# (>= 1.25.3, SPIRE's go directive) and a C compiler: SPIRE's sqlite datastore
# is mattn/go-sqlite3, which only works with cgo.
set -euo pipefail

version="${MANDATE_SPIRE_VERSION:-v1.13.3}"
cache_root="${MANDATE_SPIRE_CACHE:-${HOME}/.cache/mandate-spire}"
bin_dir="${cache_root}/${version}/bin"

log() { printf 'spire-build: %s\n' "$*" >&2; }

# Present, runnable and of the expected version (see the -X flag below).
have_binaries() {
	local b
	for b in spire-server spire-agent; do
		[[ -x "${bin_dir}/${b}" ]] || return 1
		[[ "$("${bin_dir}/${b}" --version 2>&1)" == "${version#v}" ]] || return 1
	done
}

if have_binaries; then
	log "reusing cached binaries in ${bin_dir}"
	echo "${bin_dir}"
	exit 0
fi

command -v go >/dev/null || { log "go not found in PATH"; exit 1; }
cc="$(go env CC)"
command -v "${cc%% *}" >/dev/null || {
	log "C compiler '${cc}' not found: SPIRE's sqlite datastore needs cgo"
	exit 1
}

mkdir -p "${bin_dir}"
# Scratch module + staging dir live inside the cache root (same filesystem,
# so the final mv is an atomic rename) and are removed on any exit.
work="$(mktemp -d "${cache_root}/${version}/build.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

start=$(date +%s)
log "building SPIRE ${version} in scratch module ${work}/mod (this takes a few minutes cold)"
mkdir -p "${work}/mod" "${work}/out"
cd "${work}/mod"

# A throwaway module outside the repo: the project's go.mod is never touched,
# and no go.work / inherited GOFLAGS (e.g. -mod=vendor) may leak in.
export GOWORK=off GOFLAGS= CGO_ENABLED=1 GO111MODULE=on
go mod init mandate.local/spire-build >&2

# Not `go install pkg@version`: that also fetches the module's version list
# (to check for deprecation), which some proxies refuse (403 here). Pinning
# both commands as tools of the scratch module needs only the exact version.
# Its ~300 "go: added" lines are only shown if it fails.
go get -tool \
	"github.com/spiffe/spire/cmd/spire-server@${version}" \
	"github.com/spiffe/spire/cmd/spire-agent@${version}" >"${work}/get.log" 2>&1 ||
	{ cat "${work}/get.log" >&2; log "go get failed"; exit 1; }

# -trimpath/-s -w: smaller, reproducible binaries (stack traces keep names).
# gittag makes `--version` print "1.13.3" like a release build, not "-dev-unk".
go build -trimpath -o "${work}/out/" \
	-ldflags="-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=${version#v}" \
	github.com/spiffe/spire/cmd/spire-server \
	github.com/spiffe/spire/cmd/spire-agent >&2

# Rename each binary into place atomically: a concurrent caller sees either
# no binary or a complete one, never a partial write.
mv -f "${work}/out/spire-agent" "${bin_dir}/spire-agent"
mv -f "${work}/out/spire-server" "${bin_dir}/spire-server"

have_binaries || { log "built binaries do not run"; exit 1; }
log "built $("${bin_dir}/spire-server" --version 2>&1) in $(($(date +%s) - start))s:" \
	"$(du -sh "${bin_dir}" | cut -f1) in ${bin_dir}"
echo "${bin_dir}"
