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

// spreadMax is the longest spread wait before a scheduled run's lease is
// taken (12 default lease.spreadSteps; see lease.Spread).
const spreadMax = 12 * time.Second

// spreadLogRounding allows for the millisecond timestamps of the log: a
// run's start is computed from its end line and its duration_seconds.
const spreadLogRounding = 10 * time.Millisecond

// spreadRun is one successful maintenance run in a replica's log: when it
// was dispatched (its slot's time or later) and when it ended.
type spreadRun struct {
	proc, repo string
	start, end time.Time
}

// slot returns the slot the run was dispatched in.
func (r spreadRun) slot() time.Time {
	return r.start.Add(spreadLogRounding).Truncate(spreadEvery)
}

// spreadRuns returns the successful runs in the logs of procs, in time order.
func spreadRuns(procs []*klProc) []spreadRun {
	var out []spreadRun

	for _, p := range procs {
		lines, _ := klParse(p.d.logs(), 0)
		for _, l := range lines {
			if l.Msg == "maintenance run finished" && l.Result == "success" {
				start := l.at.Add(-time.Duration(l.Seconds * float64(time.Second)))
				out = append(out, spreadRun{proc: p.name, repo: l.Repo, start: start, end: l.at})
			}
		}
	}

	sort.Slice(out, func(i, j int) bool { return out[i].start.Before(out[j].start) })

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

// spreadSlots checks the slots in [from, to) against runs: no repository
// is run twice in one slot (once per slot, not once per replica). It
// returns those problems, the slots without a run of a repository (the
// scheduler folds a slot that passes while a run of the repository is in
// progress, or while its lease is held by a process that died, into one
// later run: on a loaded machine a run can outlast a slot), the repositories
// without any run in the window, the runs in the window by process, and the
// table of who ran what, for the log.
func spreadSlots(runs []spreadRun, from, to time.Time) (problems, folded, idle []string, by map[string]int, table []string) {
	by = map[string]int{}
	bySlot := map[int64]map[string][]string{}
	perRepo := map[string]int{}

	for _, r := range runs {
		s := r.slot()
		if s.Before(from) || !s.Before(to) {
			continue
		}

		by[r.proc]++
		perRepo[r.repo]++

		if bySlot[s.Unix()] == nil {
			bySlot[s.Unix()] = map[string][]string{}
		}

		bySlot[s.Unix()][r.repo] = append(bySlot[s.Unix()][r.repo], r.proc)
	}

	for slot := from; slot.Before(to); slot = slot.Add(spreadEvery) {
		row := make([]string, 0, spreadRepos)

		for i := 1; i <= spreadRepos; i++ {
			repo := fmt.Sprintf("r%d", i)
			procs := bySlot[slot.Unix()][repo]
			row = append(row, fmt.Sprintf("%s:%-2s", repo, strings.Join(procs, "")))

			switch {
			case len(procs) > 1:
				problems = append(problems, fmt.Sprintf("slot %s: %s run %d times (by %v), want once", slot.Format("15:04:05"), repo, len(procs), procs))
			case len(procs) == 0:
				folded = append(folded, slot.Format("15:04:05")+" "+repo)
			}
		}

		table = append(table, fmt.Sprintf("slot %s  %s", slot.Format("15:04:05"), strings.Join(row, " ")))
	}

	for i := 1; i <= spreadRepos; i++ {
		if repo := fmt.Sprintf("r%d", i); perRepo[repo] == 0 {
			idle = append(idle, repo)
		}
	}

	return problems, folded, idle, by, table
}

// spreadCheckSlots waits (up to settle past the window) until every
// repository has a finished run in the slots [from, to), then fails the
// test for each slot run twice, for each repository not run at all, and
// for each live process that ran none of the window's runs. It returns the
// runs by process.
func spreadCheckSlots(t *testing.T, what string, procs []*klProc, from, to time.Time, settle time.Duration, live ...string) map[string]int {
	t.Helper()

	var (
		problems, folded, idle []string
		by                     map[string]int
		table                  []string
	)

	for deadline := to.Add(settle); ; time.Sleep(time.Second) {
		problems, folded, idle, by, table = spreadSlots(spreadRuns(procs), from, to)
		if len(idle) == 0 || time.Now().After(deadline) {
			break
		}
	}

	for _, row := range table {
		t.Logf("  %s", row)
	}

	total := 0
	parts := make([]string, 0, len(procs))

	for _, p := range procs {
		total += by[p.name]
		parts = append(parts, fmt.Sprintf("%s %d", p.name, by[p.name]))
	}

	// A slot without a finished run was folded into a later run, or (the
	// window's last) its runs were still going when it was checked.
	t.Logf("%s: %d runs (%s); slots without a finished run: %d %v", what, total, strings.Join(parts, ", "), len(folded), folded)

	for _, pr := range problems {
		t.Errorf("%s: %s", what, pr)
	}

	for _, repo := range idle {
		t.Errorf("%s: repository %s not run in any of the slots", what, repo)
	}

	// The split itself is the spread rule's, checked exactly in lease's
	// TestSpreadSplitsASlotEvenly (three replicas and four repositories:
	// 2/1/1, two and four: 2/2); what only processes show is that they do
	// share.
	for _, name := range live {
		if by[name] == 0 {
			t.Errorf("%s: replica %s ran none of the %d runs", what, name, total)
		}
	}

	return by
}

// TestLeaseReplicasSpread: three replicas share four repositories whose
// quick cycles are all due every 15s. No two replicas ever hold one lease
// at once; no slot runs a repository twice (once per slot, not once per
// replica; a slot that passes during a run is folded into a later one),
// and every repository keeps being run; all replicas share the work; and when a replica is SIGKILLed holding a
// lease, a survivor takes that lease over within duration + renewInterval
// + the spread maximum (plus a margin of half that), and the survivors
// carry on with every repository.
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

	// The lease timings of spreadConfig. A survivor takes over a killed
	// holder's lease once it is stale (duration after the last renewal),
	// when its follow-up looks again (renewInterval later), after its
	// spread wait (at most spreadMax); the margin, half of that, is for a
	// loaded machine.
	const (
		duration      = 4 * time.Second
		renewInterval = time.Second
		pickup        = duration + renewInterval + spreadMax
		margin        = pickup / 2
	)

	const steadySlots, afterSlots = 4, 4

	// settle is how long past a window the runs of its last slots are
	// waited for: a spread wait, a run that can take most of a slot on a
	// loaded machine, and one overrun slot. The check returns as soon as
	// every slot is accounted for.
	const settle = spreadMax + 3*spreadEvery

	// The steady state begins once every replica has tried every
	// repository at a regular slot: the catch-up runs at start (the
	// repositories were created a while ago) and the slots that pass
	// during them are over. It can take minutes under the race detector on
	// a loaded machine: each start reads every repository, and a quick
	// cycle can take most of a slot. (The limit only stops a test that
	// hangs; nothing is measured against it.)
	const startup = 20 * spreadEvery

	ready := time.Now()
	for deadline := ready.Add(startup); ; time.Sleep(100 * time.Millisecond) {
		ready = time.Now()
		if ready.After(deadline) {
			t.Fatalf("the replicas did not all try every repository at a regular slot within %v", startup)
		}
		if spreadAllTried(procs) {
			break
		}
	}

	steadyFrom := ready.Truncate(spreadEvery).Add(spreadEvery)
	steadyTo := steadyFrom.Add(steadySlots * spreadEvery)
	time.Sleep(time.Until(steadyTo))

	by := spreadCheckSlots(t, "three replicas", procs, steadyFrom, steadyTo, settle, "a", "b", "c")

	// SIGKILL the replica that ran the most, right after it took a lease
	// for a run: the run it leaves unfinished is picked up by a survivor
	// once the lease is stale.
	victim := procs[0]
	for _, p := range procs {
		if by[p.name] > by[victim.name] {
			victim = p
		}
	}

	klSkipTo(procs)
	_, took := klWatch(t, []*klProc{victim}, "the busiest replica to take a lease", 8*spreadEvery, func(_ *klProc, l klLine) bool {
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
	taker, taken := klWatch(t, survivors, "a survivor to take lease "+took.Lease, 2*(pickup+margin), func(_ *klProc, l klLine) bool {
		return l.isLease("lease acquired") && l.Lease == took.Lease
	})
	after := taken.at.Sub(killed)
	t.Logf("%s SIGKILLed holding lease %s; %s took it over %s later", victim.name, took.Lease, taker.name, after.Round(10*time.Millisecond))

	if limit := pickup + margin; after > limit {
		t.Errorf("lease %s of the killed replica taken over after %s, want within duration + renewInterval + spread maximum + margin = %s", took.Lease, after, limit)
	}

	// Every repository is run by a survivor from the next slot after the
	// kill plus the same pick-up time on (by the run's start; the run
	// itself is waited for as long as settle).
	limit := spreadEvery + pickup + margin

	var (
		missing []string
		latest  time.Duration
	)

	for deadline := killed.Add(limit + settle); ; time.Sleep(time.Second) {
		missing, latest = spreadFirstRuns(spreadRuns(survivors), killed)
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
	}

	if len(missing) > 0 {
		t.Errorf("repositories %v never run by a survivor after the kill", missing)
	}

	if latest > limit {
		t.Errorf("a repository's first run by a survivor started %v after the kill, want within the next slot + duration + renewInterval + spread maximum + margin = %v", latest, limit)
	}

	t.Logf("every repository was run by a survivor within %v of the kill", latest.Round(10*time.Millisecond))

	afterFrom := killed.Truncate(spreadEvery).Add(spreadEvery)
	afterTo := afterFrom.Add(afterSlots * spreadEvery)
	time.Sleep(time.Until(afterTo))

	spreadCheckSlots(t, fmt.Sprintf("after %s was killed", victim.name), survivors, afterFrom, afterTo, settle, survivors[0].name, survivors[1].name)

	klCheckAll(t, procs)
}

// spreadFirstRuns returns the repositories no run in runs started after
// at, and the longest time from at to the first run of the others.
func spreadFirstRuns(runs []spreadRun, at time.Time) (missing []string, longest time.Duration) {
	for i := 1; i <= spreadRepos; i++ {
		repo := fmt.Sprintf("r%d", i)
		found := false

		for _, r := range runs {
			if r.repo == repo && r.start.After(at) {
				longest = max(longest, r.start.Sub(at))
				found = true

				break
			}
		}

		if !found {
			missing = append(missing, repo)
		}
	}

	return missing, longest
}
