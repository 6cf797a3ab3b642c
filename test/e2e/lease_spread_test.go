package e2e

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// The replicas of TestLeaseReplicasSpread share spreadRepos repositories
// whose quick cycles all fall due every spreadEvery. The slot leaves room
// for runs of several seconds and for the follow-ups of skipped runs
// (duration plus renewInterval later) to end before the next slot: under
// the race detector and a loaded machine one run takes up to 4s.
const (
	spreadRepos = 4
	spreadEvery = 15 * time.Second
)

// spreadConfig is the configuration the replicas share (one per replica
// only for its state directory and listen address): spreadRepos filesystem
// repositories with quick cycles every spreadEvery, all due at the same
// moments.
func spreadConfig(t *testing.T, dir, name string, create bool) string {
	t.Helper()

	var repos strings.Builder
	for i := 1; i <= spreadRepos; i++ {
		fmt.Fprintf(&repos, "  - name: r%d\n    create: %v\n    storage: {filesystem: {path: %s/repo-r%d}}\n    passwordFile: password\n", i, create, dir, i)
	}

	return leaseTestConfig(t, dir, name, harness.FreeAddr(t), fmt.Sprintf(`concurrency: %d
lease: {kind: repository, duration: 4s, renewInterval: 1s}
defaults:
  schedule: {quick: "@every %s", full: "@every 24h", jitter: 0s}
  ownership: {takeover: always}
repositories:
%s`, spreadRepos, spreadEvery, repos.String()))
}

// spreadRun is one successful maintenance run in a replica's log, by the
// time it was dispatched (plus a second).
type spreadRun struct {
	proc, repo string
	at         time.Time
}

// spreadRuns returns the successful runs in the logs of procs, in time order.
func spreadRuns(procs []*klProc) []spreadRun {
	var out []spreadRun

	for _, p := range procs {
		lines, _ := klParse(p.d.logs(), 0)
		for _, l := range lines {
			if l.Msg == "maintenance run finished" && l.Result == "success" {
				// The dispatch time, which is the slot: give it a second
				// against the rounding of duration_seconds.
				start := l.at.Add(time.Second - time.Duration(l.Seconds*float64(time.Second)))
				out = append(out, spreadRun{proc: p.name, repo: l.Repo, at: start})
			}
		}
	}

	sort.Slice(out, func(i, j int) bool { return out[i].at.Before(out[j].at) })

	return out
}

// spreadAllTried reports whether every process has logged the end of a
// run of every repository that was not a catch-up, whatever its result.
func spreadAllTried(procs []*klProc) bool {
	for _, p := range procs {
		lines, _ := klParse(p.d.logs(), 0)
		tried := map[string]bool{}
		for _, l := range lines {
			if l.Msg == "maintenance run finished" && !l.CatchUp {
				tried[l.Repo] = true
			}
		}
		if len(tried) < spreadRepos {
			return false
		}
	}

	return true
}

// spreadShares counts the runs in [from, to) by process and logs them, with
// who ran which repository in each slot. It fails when a process ran all of
// a slot's repositories while another live one ran none. (A replica that
// ran none may have been busy: a run of the slot before can overrun into
// this one when the race detector slows the daemons down.)
func spreadShares(t *testing.T, what string, runs []spreadRun, from, to time.Time, live ...string) (map[string]int, int) {
	t.Helper()

	by := map[string]int{}
	repos := map[string]map[string]bool{}
	total := 0

	for _, r := range runs {
		if r.at.Before(from) || !r.at.Before(to) {
			continue
		}

		by[r.proc]++
		total++

		if repos[r.proc] == nil {
			repos[r.proc] = map[string]bool{}
		}

		repos[r.proc][r.repo] = true
	}

	// Who ran which repository in each slot, for the log.
	slots := map[int64]map[string]string{}
	for _, r := range runs {
		if r.at.Before(from) || !r.at.Before(to) {
			continue
		}

		slot := r.at.Truncate(spreadEvery).Unix()
		if slots[slot] == nil {
			slots[slot] = map[string]string{}
		}

		slots[slot][r.repo] += r.proc
	}

	for slot := from.Truncate(spreadEvery); slot.Before(to); slot = slot.Add(spreadEvery) {
		row := make([]string, 0, spreadRepos)
		for i := 1; i <= spreadRepos; i++ {
			row = append(row, fmt.Sprintf("r%d:%-2s", i, slots[slot.Unix()][fmt.Sprintf("r%d", i)]))
		}

		t.Logf("  slot %s  %s", slot.Format("15:04:05"), strings.Join(row, " "))

		count := map[string]int{}
		for _, procs := range slots[slot.Unix()] {
			for _, p := range procs {
				count[string(p)]++
			}
		}

		for _, p := range live {
			for _, q := range live {
				if count[p] == spreadRepos && count[q] == 0 {
					t.Errorf("slot %s: %s ran %d of %d repositories while %s ran none", slot.Format("15:04:05"), p, count[p], spreadRepos, q)
				}
			}
		}
	}

	var parts []string
	for _, p := range []string{"a", "b", "c"} {
		parts = append(parts, fmt.Sprintf("%s %d runs of %d repositories", p, by[p], len(repos[p])))
	}

	t.Logf("%s: %d runs: %s", what, total, strings.Join(parts, ", "))

	return by, total
}

// TestLeaseReplicasSpread: three replicas share four repositories whose
// quick cycles are all due every 15s. Each run happens inside its repository's
// lease and no two replicas ever hold one lease at once; the replicas share
// the runs (none does far more than a third while the others are idle);
// every due slot is run once, not once per replica; and when a replica is
// SIGKILLed the other two pick its repositories up and share them.
func TestLeaseReplicasSpread(t *testing.T) {
	harness.BuildBinary(t, "./cmd/kopia-maintd")

	dir := t.TempDir()
	writeFile(t, dir, "password", password)

	initCfg := spreadConfig(t, dir, "init", true)
	for i := 1; i <= spreadRepos; i++ {
		if stdout, stderr, code := runCLI(t, "run-once", "--config", initCfg, "--repository", fmt.Sprintf("r%d", i), "--cycle", "full"); code != 0 {
			t.Fatalf("create repository r%d: %d\n%s%s", i, code, stdout, stderr)
		}
	}

	var procs []*klProc
	for _, name := range []string{"a", "b", "c"} {
		procs = append(procs, &klProc{name: name, d: startDaemon(t, spreadConfig(t, dir, name, false), "")})
	}

	// Four slots from the first one of the steady state. The runs that
	// start in them have ended a few seconds after the last.
	const steadySlots, afterSlots = 4, 4

	// The steady state begins once every replica has tried every
	// repository at a regular slot: the catch-up runs at start (the
	// repositories were created a while ago) and the slots that pass
	// during them are over. It can take a while under the race detector:
	// each start reads every repository.
	ready := time.Now()
	for deadline := ready.Add(4 * spreadEvery); ; time.Sleep(100 * time.Millisecond) {
		ready = time.Now()
		if ready.After(deadline) {
			t.Fatalf("the replicas did not all try every repository at a regular slot within %v", 4*spreadEvery)
		}
		if spreadAllTried(procs) {
			break
		}
	}

	steadyFrom := ready.Truncate(spreadEvery).Add(spreadEvery)
	steadyTo := steadyFrom.Add(steadySlots * spreadEvery)
	time.Sleep(time.Until(steadyTo.Add(spreadEvery / 2)))

	by, total := spreadShares(t, "three replicas", spreadRuns(procs), steadyFrom, steadyTo, "a", "b", "c")

	// Each repository runs once per slot, not once per replica. A run or
	// two may start late, in the next slot.
	if want := steadySlots * spreadRepos; total < want-2 || total > want {
		t.Errorf("%d runs in %d slots of %d repositories, want %d (one per repository and slot), at least %d", total, steadySlots, spreadRepos, want, want-2)
	}

	for _, p := range procs {
		share := float64(by[p.name]) / float64(max(total, 1))
		// Four repositories do not divide by three: a fair split gives
		// one replica two each slot (50%), the others one (25%).
		if share > 0.55 || share < 0.2 {
			t.Errorf("replica %s ran %.0f%% of the runs, want about a third (between 20%% and 55%%)", p.name, 100*share)
		}
	}

	// SIGKILL the replica that ran the most, right after it took a lease
	// for a run: the run it leaves unfinished is picked up by a survivor
	// once the lease is stale, before the next slot.
	victim := procs[0]
	for _, p := range procs {
		if by[p.name] > by[victim.name] {
			victim = p
		}
	}

	klSkipTo(procs)
	_, took := klWatch(t, []*klProc{victim}, "the busiest replica to take a lease", 3*spreadEvery, func(_ *klProc, l klLine) bool {
		return l.isLease("lease acquired")
	})

	killed := victim.kill(t)

	var survivors []*klProc
	for _, p := range procs {
		if p != victim {
			survivors = append(survivors, p)
		}
	}

	klSkipTo(survivors)
	taker, _ := klWatch(t, survivors, "a survivor to take lease "+took.Lease, 2*spreadEvery, func(_ *klProc, l klLine) bool {
		return l.isLease("lease acquired") && l.Lease == took.Lease
	})
	pickup := time.Since(killed)
	t.Logf("%s SIGKILLed holding lease %s; %s took it over %s later", victim.name, took.Lease, taker.name, pickup.Round(10*time.Millisecond))

	// Stale after duration (4s) since the last renewal, one renewInterval
	// (1s) for the follow-up to notice, and up to 4.5s of spread wait (the
	// offset and the survivor's own runs of the slot) and acquisition:
	// before the next slot would have run it.
	if limit := 9500 * time.Millisecond; pickup > limit {
		t.Errorf("lease %s of the killed replica taken over after %s, want within %s", took.Lease, pickup, limit)
	}

	afterFrom := killed.Truncate(spreadEvery).Add(spreadEvery)
	afterTo := afterFrom.Add(afterSlots * spreadEvery)
	time.Sleep(time.Until(afterTo.Add(spreadEvery / 2)))

	runs := spreadRuns(procs)
	by, total = spreadShares(t, fmt.Sprintf("after %s was killed", victim.name), runs, afterFrom, afterTo, survivors[0].name, survivors[1].name)

	if want := afterSlots * spreadRepos; total < want-2 || total > want {
		t.Errorf("%d runs in %d slots of %d repositories after the kill, want %d, at least %d", total, afterSlots, spreadRepos, want, want-2)
	}

	for _, p := range procs {
		if p == victim {
			continue
		}

		if share := float64(by[p.name]) / float64(max(total, 1)); share < 0.35 {
			t.Errorf("survivor %s ran %.0f%% of the runs, want about half (at least 35%%)", p.name, 100*share)
		}
	}

	// Every repository was run again by a survivor within a slot plus
	// duration (4s) plus renewInterval (1s) of the kill.
	var latest time.Duration

	for i := 1; i <= spreadRepos; i++ {
		repo := fmt.Sprintf("r%d", i)
		var first time.Time

		for _, r := range runs {
			if r.repo == repo && r.proc != victim.name && r.at.After(killed) {
				first = r.at
				break
			}
		}

		if limit := spreadEvery + 5*time.Second; first.IsZero() || first.Sub(killed) > limit {
			t.Errorf("repository %s: first run by a survivor started %v after the kill, want within %v", repo, first.Sub(killed), limit)
		}

		latest = max(latest, first.Sub(killed))
	}

	t.Logf("every repository was run by a survivor within %v of the kill", latest.Round(10*time.Millisecond))

	klCheckAll(t, procs)
}
