#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs (or reuses) the tools
# the integration tests run against, then the gofmt check, go vet,
# staticcheck and the race-enabled tests of every package of the main module.
# The tools modules under tools/ are separate modules, so ./... leaves them out.
#
# Usage: scripts/test.sh            (CI runs it through .ci/run)
# Every step runs even when an earlier one failed, so one run reports every
# problem; the last line is the summary and the exit status is 0 only if all
# steps passed.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

export KOPIA_MAINTD_CACHE=${KOPIA_MAINTD_CACHE:-$HOME/.cache/kopia-maintd}
export KOPIA_MAINTD_TOOLS=${KOPIA_MAINTD_TOOLS:-$KOPIA_MAINTD_CACHE/tools/bin}
# Go's build cache goes under the same surviving cache as the tools (the one
# install-tools.sh uses), unless the environment names one: the race builds
# of the test binaries and of the daemon they start are most of a cold run's
# build time.
export GOCACHE=${GOCACHE:-$KOPIA_MAINTD_CACHE/gocache}
# A fresh clone may lack git or .git; nothing here needs VCS stamping.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false"
# Each test binary gets this long (the end-to-end package takes about 19
# minutes on a 2-core machine); the whole run should stay well under 30
# minutes, and CI allows 90.
TEST_TIMEOUT=${TEST_TIMEOUT:-40m}

start=$SECONDS
passed=()
failed=()

step() {
  local name=$1; shift
  local t0=$SECONDS
  printf '\n=== %s\n' "$name"
  if "$@"; then
    passed+=("$name")
    printf -- '--- %s ok (%ds)\n' "$name" $((SECONDS - t0))
  else
    failed+=("$name")
    printf -- '--- %s FAILED (%ds)\n' "$name" $((SECONDS - t0))
  fi
}

summary() {
  local total=$((SECONDS - start)) status=PASS
  [ ${#failed[@]} -eq 0 ] || status=FAIL
  printf '\ntest.sh: %s in %dm%02ds; passed: %s; failed: %s\n' "$status" \
    $((total / 60)) $((total % 60)) "${passed[*]:-none}" "${failed[*]:-none}"
  [ "$status" = PASS ]
}

gofmt_check() {
  local files
  files=$(find . -path ./.git -prune -o -path ./.local -prune -o -name '*.go' -print0 |
    xargs -0 -r gofmt -l) || return 1
  if [ -n "$files" ]; then
    echo "gofmt: these files need formatting (run gofmt -w on them):"
    echo "$files" | sed 's/^/  /'
    return 1
  fi
}

go version

# Without the tools the integration tests cannot run: stop here.
step install-tools bash scripts/install-tools.sh
if [ ${#failed[@]} -ne 0 ]; then
  summary
  exit 1
fi

# The end-to-end package is the longest (about 19 minutes, most of it spent
# waiting on lease handovers, daemons and the kopia CLI), so it starts first,
# in the background, and the checks, the other packages, the soaks, the load test and
# the fuzzing run beside it; its output is printed when it ends (step e2e).
e2e_log=$(mktemp "${TMPDIR:-/tmp}/kopia-maintd-e2e.XXXXXX")
# shellcheck disable=SC2064
trap "rm -f '$e2e_log'" EXIT
e2e_start=$SECONDS
go test -race -tags testing -count=1 -timeout "$TEST_TIMEOUT" -v ./test/e2e >"$e2e_log" 2>&1 &
e2e_pid=$!
# A pass prints each test's result and time; a failure prints everything.
e2e_wait() {
  local rc=0
  wait "$e2e_pid" || rc=$?
  if [ $rc -eq 0 ]; then
    grep -E '^(--- |ok |PASS|FAIL)' "$e2e_log"
  else
    cat "$e2e_log"
  fi
  printf 'e2e: %ds from its start\n' $((SECONDS - e2e_start))
  return $rc
}

step gofmt gofmt_check
# go.mod and go.sum must say exactly what the code imports.
step go-mod-tidy go mod tidy -diff
step vet go vet ./...
step staticcheck "$KOPIA_MAINTD_TOOLS/staticcheck" ./...
# kopia's "testing" build tag makes repositories created inside the test
# process use a fast, insecure password key derivation instead of scrypt
# (25x faster suites under -race). It changes nothing else unless
# KOPIA_FAKE_CLOCK_ENDPOINT is set. The daemon binary the end-to-end tests
# run and the kopia CLI are built without it, so production's scrypt path is
# still what those tests exercise.
mapfile -t others < <(go list ./... | grep -v '/test/e2e$')
step test go test -race -tags testing -count=1 -timeout "$TEST_TIMEOUT" "${others[@]}"

# The safety soaks at full size (10 seeds of 30 virtual days; the race run
# above does a week of two seeds): without -race, which would make them ten
# times slower without finding more. Their kopia caches and state go to
# memory when /dev/shm is there.
soak() {
  local tmp=${TMPDIR:-/tmp}
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    tmp=$(mktemp -d /dev/shm/kopia-maintd-soak.XXXXXX) || return 1
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
  fi
  TMPDIR=$tmp go test -tags testing -count=1 -timeout "$TEST_TIMEOUT" -run 'Soak' ./repository
}
step soak soak

# The load test at its CI size (100 MinIO repositories at concurrency 4, an
# hour of schedules 24 times faster: about 3 minutes) without -race; the
# race run above does 12 repositories. docs/reliability.md has the flags
# for the full 500.
step load go test -tags testing -count=1 -timeout "$TEST_TIMEOUT" -run '^TestLoad$' ./test/load

# Bounded fuzzing of what reads untrusted input: the configuration loader,
# the cron and jitter computation, the AWS credentials-file parser and the
# safety=none gate's decision. Their committed corpora (testdata/fuzz) also
# run as plain tests in the test step. KOPIA_MAINTD_FUZZTIME lengthens it.
#
# Go's fuzzing engine can end a short run with a bare "context deadline
# exceeded" when -fuzztime runs out while its workers are still starting
# (seen on a loaded machine); that is no finding. Such a run is tried once
# more; a real finding ("Failing input written to ...") fails at once.
fuzz() {
  local t=${KOPIA_MAINTD_FUZZTIME:-15s} rc=0 target out
  for target in ./cmd/kopia-maintd:FuzzConfig ./scheduler:FuzzNextTimes ./velero:FuzzParseAWSCredentials ./safety:FuzzGateDecision; do
    if out=$(go test -run '^$' -fuzz "^${target#*:}\$" -fuzztime "$t" "${target%%:*}" 2>&1); then
      printf '%s\n' "$out" | tail -2
      continue
    fi
    printf '%s\n' "$out"
    if grep -q 'Failing input written' <<<"$out" || ! grep -q 'context deadline exceeded' <<<"$out"; then
      rc=1
      continue
    fi
    echo "fuzz: ${target#*:} stopped on the engine's deadline without a finding; once more"
    go test -run '^$' -fuzz "^${target#*:}\$" -fuzztime "$t" "${target%%:*}" || rc=1
  done
  return $rc
}
step fuzz fuzz
step e2e e2e_wait

summary
