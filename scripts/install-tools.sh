#!/usr/bin/env bash
# Installs the real components the test suite runs against, each built from
# the Go module proxy or taken from Debian's packages, and caches them under
# $KOPIA_MAINTD_CACHE (default $HOME/.cache/kopia-maintd) keyed by version.
# Safe to run repeatedly: a cached binary is reused.
#
# Usage: scripts/install-tools.sh [minio] [kopia] [staticcheck] [prometheus]
# Without arguments it installs the default set (minio kopia staticcheck prometheus).
# Tests find the tools in $KOPIA_MAINTD_TOOLS, default $cache/tools/bin.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${KOPIA_MAINTD_CACHE:-$HOME/.cache/kopia-maintd}
bin=${KOPIA_MAINTD_TOOLS:-$cache/tools/bin}
mkdir -p "$bin"
export GOFLAGS=${GOFLAGS:-}
export GOCACHE=${GOCACHE:-$cache/gocache}

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
KOPIA_VERSION=v0.22.3
# staticcheck 2026.1, the release for Go 1.26. The module proxy knows
# staticcheck only by module version (2025.1.1 is v0.6.1), not by release name.
STATICCHECK_VERSION=v0.7.0

log() { printf 'install-tools: %s\n' "$*" >&2; }

install_minio() {
  local dest="$bin/minio-$MINIO_VERSION"
  if [ ! -x "$dest" ]; then
    log "building minio $MINIO_VERSION (about 5 minutes the first time)"
    local tmp; tmp=$(mktemp -d)
    GOBIN="$tmp" GOFLAGS="-mod=mod -buildvcs=false" go install "github.com/minio/minio@$MINIO_VERSION"
    mv "$tmp/minio" "$dest"; rm -rf "$tmp"
  fi
  ln -sf "$dest" "$bin/minio"
}

install_kopia() {
  local dest="$bin/kopia-$KOPIA_VERSION"
  if [ ! -x "$dest" ]; then
    log "building kopia CLI $KOPIA_VERSION"
    (cd "$here/tools/kopia" && GOFLAGS="-mod=mod -buildvcs=false" go build -o "$dest" github.com/kopia/kopia)
  fi
  ln -sf "$dest" "$bin/kopia"
}

install_staticcheck() {
  local dest="$bin/staticcheck-$STATICCHECK_VERSION"
  if [ ! -x "$dest" ]; then
    log "installing staticcheck $STATICCHECK_VERSION"
    local tmp; tmp=$(mktemp -d)
    GOBIN="$tmp" go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
    mv "$tmp/staticcheck" "$dest"; rm -rf "$tmp"
  fi
  ln -sf "$dest" "$bin/staticcheck"
}

# install_prometheus installs Prometheus and promtool from Debian (2.42 on
# bookworm; the packaged services are not started) and links them into $bin.
# The end-to-end tests lint the daemon's /metrics with promtool.
install_prometheus() {
  if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    log "installing prometheus from Debian packages"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
  fi
  ln -sf "$(command -v prometheus)" "$bin/prometheus"
  ln -sf "$(command -v promtool)" "$bin/promtool"
}

# install_toxiproxy builds the toxiproxy server, which the tests put between
# the daemon and MinIO to slow the network down or cut it.
install_toxiproxy() {
  local v=v2.12.0 dest="$bin/toxiproxy-server-v2.12.0"
  if [ ! -x "$dest" ]; then
    log "building toxiproxy $v"
    local tmp; tmp=$(mktemp -d)
    GOBIN="$tmp" GOFLAGS="-mod=mod -buildvcs=false" go install "github.com/Shopify/toxiproxy/v2/cmd/server@$v"
    mv "$tmp/server" "$dest"; rm -rf "$tmp"
  fi
  ln -sf "$dest" "$bin/toxiproxy-server"
}

what=${*:-minio kopia staticcheck prometheus toxiproxy}
for t in $what; do "install_$t"; done
log "tools in $bin"
