#!/usr/bin/env bash
# Performance proof of kopia-maintd against the kopia CLI (docs/performance.md).
#
#   bash bench/run.sh            # the full run (reference state cached after the first)
#   bash bench/run.sh --quick    # a smoke run of a few minutes on small repositories
#
# Extra flags go to maintbench (bench/cmd/maintbench), for example
# --pairs=5 or --only=large-fs,idle. Results are printed as a Markdown table
# and written as JSON to bench/results/<mode>-<time>.json. The reference
# repositories are cached under $HOME/.cache/kopia-maintd/bench; delete that
# folder to regenerate them.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tools=${KOPIA_MAINTD_TOOLS:-$HOME/.cache/kopia-maintd/tools/bin}
kopia=$tools/kopia-v0.22.3
minio=$tools/minio
for t in "$kopia" "$minio"; do
	[[ -x $t ]] || { echo "missing $t: run scripts/install-tools.sh" >&2; exit 1; }
done

bin=$HOME/.cache/kopia-maintd/bench/bin
mkdir -p "$bin" bench/results
go build -o "$bin/kopia-maintd" ./cmd/kopia-maintd
go build -o "$bin/maintbench" ./bench/cmd/maintbench

mode=full
for a in "$@"; do [[ $a == --quick || $a == -quick ]] && mode=quick; done
out=bench/results/$mode-$(date -u +%Y%m%dT%H%M%SZ).json
exec "$bin/maintbench" -daemon "$bin/kopia-maintd" -kopia "$kopia" -minio "$minio" -out "$out" "$@"
