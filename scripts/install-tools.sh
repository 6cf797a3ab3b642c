#!/usr/bin/env bash
# Installs the real components the test suite runs against, each built from
# the Go module proxy or taken from Debian's packages, and caches them under
# $KOPIA_MAINTD_CACHE (default $HOME/.cache/kopia-maintd) keyed by version.
# Safe to run repeatedly: a cached binary is reused.
#
# Usage: scripts/install-tools.sh [minio] [kopia] [staticcheck] [prometheus]
#          [toxiproxy] [etcd] [kube-apiserver] [kubectl]
# Without arguments it installs the default set (all of them).
# Tests find the tools in $KOPIA_MAINTD_TOOLS, default $cache/tools/bin.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${KOPIA_MAINTD_CACHE:-$HOME/.cache/kopia-maintd}
bin=${KOPIA_MAINTD_TOOLS:-$cache/tools/bin}
mkdir -p "$bin"
export GOFLAGS=${GOFLAGS:-}
export GOCACHE=${GOCACHE:-$cache/gocache}

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
# The kopia CLI in two versions: v0.22.3, the one Velero 1.18 ships (and the
# plain `kopia` link), and v0.23.1, the daemon's own library version. Each
# version's tool module is tools/<dir> (see kopia_module).
KOPIA_VERSIONS="v0.22.3 v0.23.1"
KOPIA_DEFAULT_VERSION=v0.22.3
# staticcheck 2026.1, the release for Go 1.26. The module proxy knows
# staticcheck only by module version (2025.1.1 is v0.6.1), not by release name.
STATICCHECK_VERSION=v0.7.0
# The version tools/kube-apiserver/go.mod requires (k8s.io/kubernetes).
KUBE_APISERVER_VERSION=v1.36.3
# The version tools/kubectl/go.mod requires (k8s.io/kubectl, the staging
# module of Kubernetes v1.36.3, the same release as the API server).
KUBECTL_VERSION=v0.36.3

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

# kopia_module prints the tools module that pins kopia CLI version $1.
kopia_module() {
  case "$1" in
    v0.22.3) echo "$here/tools/kopia" ;;
    v0.23.1) echo "$here/tools/kopia-v0.23" ;;
    *) log "no tools module for kopia $1"; return 1 ;;
  esac
}

# install_kopia builds every kopia CLI version in KOPIA_VERSIONS into
# $bin/kopia-<version> and links $bin/kopia to the default one.
install_kopia() {
  local v dest
  for v in $KOPIA_VERSIONS; do
    dest="$bin/kopia-$v"
    if [ ! -x "$dest" ]; then
      log "building kopia CLI $v"
      # Build next to dest and rename, so a test never runs a half-written
      # binary.
      (cd "$(kopia_module "$v")" &&
        GOFLAGS="-mod=mod -buildvcs=false" go build -o "$dest.tmp" github.com/kopia/kopia &&
        mv "$dest.tmp" "$dest")
    fi
  done
  ln -sf "$bin/kopia-$KOPIA_DEFAULT_VERSION" "$bin/kopia"
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
  if [ -z "$(system_command prometheus)" ] || [ -z "$(system_command promtool)" ]; then
    log "installing prometheus from Debian packages"
    apt_install prometheus
  fi
  link_system_command prometheus
  link_system_command promtool
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

# system_command prints the path of a command installed on the system: found
# on PATH without $bin, whose links to it this script makes (with $bin first
# on PATH, a plain lookup finds the link itself and would link it to itself).
system_command() {
  local path
  path=$(printf '%s' "$PATH" | tr ':' '\n' | { grep -vxF "$bin" || true; } | paste -sd: -)
  PATH="$path" command -v "$1" || true
}

# link_system_command links a system command into $bin.
link_system_command() {
  local target; target=$(system_command "$1")
  if [ -z "$target" ]; then
    log "$1 is not installed"
    return 1
  fi
  ln -sf "$target" "$bin/$1"
}

# apt_install installs Debian packages, as root or through sudo -n.
apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# install_etcd installs etcd from Debian (3.4 on bookworm, package
# etcd-server; its service is not needed) and links it into $bin. The
# Kubernetes tests run a kube-apiserver against it.
install_etcd() {
  if [ -z "$(system_command etcd)" ]; then
    log "installing etcd from Debian packages"
    apt_install etcd-server
  fi
  link_system_command etcd
}

# install_kube_apiserver builds the real kube-apiserver from the tools module
# in tools/kube-apiserver (about 6 minutes and 100 MB the first time).
install_kube_apiserver() {
  local dest="$bin/kube-apiserver-$KUBE_APISERVER_VERSION"
  if [ ! -x "$dest" ]; then
    log "building kube-apiserver $KUBE_APISERVER_VERSION (about 6 minutes the first time)"
    # Stamp the version as Kubernetes' own build does, so /version reports
    # it instead of v0.0.0-master.
    local v=${KUBE_APISERVER_VERSION#v} pkg=k8s.io/component-base/version
    local major=${v%%.*} minor=${v#*.}; minor=${minor%%.*}
    (cd "$here/tools/kube-apiserver" &&
      GOFLAGS="-mod=mod -buildvcs=false" go build -o "$dest.tmp" -ldflags "-s -w \
        -X $pkg.gitVersion=$KUBE_APISERVER_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor \
        -X $pkg.gitTreeState=clean" . &&
      mv "$dest.tmp" "$dest")
  fi
  ln -sf "$dest" "$bin/kube-apiserver"
}

# install_kubectl builds the real kubectl from the tools module in
# tools/kubectl (about 3.5 minutes with an empty build cache, 40 s after
# kube-apiserver, with which it shares most packages). The manifest tests
# render deploy/ with `kubectl kustomize` and dry-run it against the API
# server.
install_kubectl() {
  local dest="$bin/kubectl-$KUBECTL_VERSION"
  if [ ! -x "$dest" ]; then
    log "building kubectl $KUBECTL_VERSION (about 3 minutes the first time)"
    # k8s.io/kubectl v0.X.Y is Kubernetes v1.X.Y: stamp that, as Kubernetes'
    # own build does, so `kubectl version --client` does not say v0.0.0.
    local v=${KUBECTL_VERSION#v0.} pkg=k8s.io/component-base/version
    local minor=${v%%.*}
    (cd "$here/tools/kubectl" &&
      GOFLAGS="-mod=mod -buildvcs=false" go build -o "$dest.tmp" -ldflags "-s -w \
        -X $pkg.gitVersion=v1.$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor \
        -X $pkg.gitTreeState=clean" . &&
      mv "$dest.tmp" "$dest")
  fi
  ln -sf "$dest" "$bin/kubectl"
}

what=${*:-minio kopia staticcheck prometheus toxiproxy etcd kube_apiserver kubectl}
for t in $what; do "install_${t//-/_}"; done
log "tools in $bin"
