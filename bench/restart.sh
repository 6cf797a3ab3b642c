#!/usr/bin/env bash
# Start-up cost of kopia-maintd with N repositories (default 1,000) whose
# cycles are not due, measured twice on the same state directory: the first
# start reads every repository's run history (a repository open, so a key
# derivation, each); the second answers from the histories read by the first
# while the repositories' kopia.maintenance blobs are unchanged.
#
#   bash bench/restart.sh [N]
#
# Uses the small reference repositories of bench/run.sh (run it once first).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-1000}
ref=$(ls -d "$HOME"/.cache/kopia-maintd/bench/kopia-v0.22.3/small-* | head -1)
[[ -d $ref ]] || { echo "no small reference repositories: run bash bench/run.sh --quick once" >&2; exit 1; }
work=${TMPDIR:-/tmp}/kopia-maintd-restart
rm -rf "$work"; mkdir -p "$work/repos"
bin=$work/kopia-maintd
(cd "$root" && go build -o "$bin" ./cmd/kopia-maintd)
mapfile -t smalls < <(ls -d "$ref"/*/ | sort)
{
  printf 'identity: {username: maintd, hostname: bench}\nstateDirectory: %s/state\n' "$work"
  printf 'server: {listenAddress: "127.0.0.1:%s"}\nlog: {level: debug, format: json}\n' "${PORT:-19790}"
  printf 'lease: {kind: repository, spreadStep: 0s}\n'
  printf 'defaults:\n  schedule: {quick: "@every 8760h", full: "@every 8760h", jitter: 0s}\n  ownership: {takeover: if-unowned}\n'
  printf 'repositories:\n'
  for ((i = 0; i < n; i++)); do
    r=$(printf 'r%04d' "$i")
    cp -a "${smalls[i % ${#smalls[@]}]}" "$work/repos/$r"
    printf '  - {name: %s, passwordEnv: KOPIA_PASSWORD, storage: {filesystem: {path: %s}}}\n' "$r" "$work/repos/$r"
  done
} >"$work/config.yaml"
tick=$(getconf CLK_TCK)
for start in first second; do
  log=$work/$start.log
  t0=$(date +%s.%N)
  KOPIA_PASSWORD=bench-only-password "$bin" run --config "$work/config.yaml" >"$log" 2>&1 &
  pid=$!
  until grep -q 'run histories read' "$log"; do
    kill -0 $pid 2>/dev/null || { echo "daemon exited:"; tail -5 "$log"; exit 1; }
    sleep 0.2
  done
  t1=$(date +%s.%N)
  read -r -a st </proc/$pid/stat
  hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
  cpu=$(( (st[13] + st[14]) ))
  kill -TERM $pid; wait $pid || true
  awk -v s="$start" -v n="$n" -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" -v c="$cpu" -v k="$tick" -v h="$hwm" \
    'BEGIN {printf "%s start, %d repositories: histories read after %.1f s wall, %.1f s CPU, VmHWM %d MiB\n", s, n, w, c / k, h / 1024}' 
done
