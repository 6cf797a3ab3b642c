package lease

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestSpreadOffsetsShareRepositories: with equal loads each repository goes
// to the replica with the smallest offset; over many repositories every
// replica gets about its share, and a replica's offsets do not change.
func TestSpreadOffsetsShareRepositories(t *testing.T) {
	holders := []string{"node-1-3f9a1c20b7d4", "node-1-8e02ffa1c613", "node-2-5b7d0e9a4421"}
	var spreads []*Spread
	for _, h := range holders {
		spreads = append(spreads, NewSpread(h, time.Second, 8*time.Second))
	}
	const repos = 300
	won := map[string]int{}
	for i := range repos {
		name := fmt.Sprintf("velero-ns%d-default-kopia", i)
		best := -1
		for j, s := range spreads {
			o := s.Offset(name)
			if o < 0 || o >= 1 {
				t.Fatalf("offset of %s for %s: %v, want [0, 1)", holders[j], name, o)
			}
			if o != s.Offset(name) {
				t.Fatalf("offset of %s for %s changed", holders[j], name)
			}
			if best < 0 || o < spreads[best].Offset(name) {
				best = j
			}
		}
		won[holders[best]]++
	}
	for _, h := range holders {
		if won[h] < repos/3-30 || won[h] > repos/3+30 {
			t.Errorf("replica %s wins %d of %d repositories, want about %d", h, won[h], repos, repos/3)
		}
	}

	// Names one character apart get unrelated offsets.
	lo, hi := 1.0, 0.0
	for i := range 6 {
		o := spreads[0].Offset(fmt.Sprintf("r%d", i))
		lo, hi = min(lo, o), max(hi, o)
	}
	if hi-lo < 0.3 {
		t.Errorf("offsets of r0..r5 lie within %.3f of each other, want them spread over [0, 1)", hi-lo)
	}
}

func TestSpreadWaitGrowsWithRuns(t *testing.T) {
	s := NewSpread("node-1-3f9a1c20b7d4", time.Second, 4*time.Second)
	o := s.Offset("a")
	for _, c := range []struct {
		runs int
		want time.Duration
	}{
		{0, time.Duration(o * float64(time.Second))},
		{1, time.Duration((o + 1) * float64(time.Second))},
		{3, time.Duration((o + 3) * float64(time.Second))},
		// Beyond the cap of Max/Step - 1 only the offset counts.
		{4, time.Duration((o + 3) * float64(time.Second))},
		{1000, time.Duration((o + 3) * float64(time.Second))},
	} {
		if got := s.Wait("a", c.runs); got < c.want-time.Microsecond || got > c.want+time.Microsecond {
			t.Errorf("wait with %d other runs: %v, want %v", c.runs, got, c.want)
		}
	}

	// Past four runs the load grows by two steps per doubling, up to the
	// cap of Max/Step - 1.
	wide := NewSpread("node-1-3f9a1c20b7d4", time.Second, 12*time.Second)
	for _, c := range []struct {
		runs int
		want float64
	}{{4, 4}, {8, 6}, {16, 8}, {32, 10}, {46, 11}, {1000, 11}} {
		want := time.Duration((o + c.want) * float64(time.Second))
		if got := wide.Wait("a", c.runs); got < want-time.Microsecond || got > want+time.Microsecond {
			t.Errorf("wait with %d other runs and a 12s maximum: %v, want %v", c.runs, got, want)
		}
	}

	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	end := s.Started("b", t0)
	s.Started("c", t0)
	if got := s.Runs("a", t0); got != 2 {
		t.Errorf("runs seen by a: %d, want 2", got)
	}
	if got := s.Runs("b", t0); got != 1 {
		t.Errorf("runs seen by b: %d, want 1 (its own does not count)", got)
	}
	// A run that ended still counts until Max after its start, so that
	// quick runs of one slot count for each other.
	end(t0, t0.Add(time.Second), true)
	if got := s.Runs("a", t0.Add(3*time.Second)); got != 2 {
		t.Errorf("runs seen by a 3s after b started: %d, want 2", got)
	}
	if got := s.Runs("a", t0.Add(4*time.Second)); got != 1 {
		t.Errorf("runs seen by a after Max (4s): %d, want 1 (c still runs)", got)
	}
	// A run that did no work (it found the cycle done) does not count.
	s.Started("d", t0.Add(5*time.Second))(t0.Add(5*time.Second), t0.Add(5*time.Second), false)
	if got := s.Runs("a", t0.Add(5*time.Second)); got != 1 {
		t.Errorf("runs seen by a after d did no work: %d, want 1", got)
	}
}

// TestSpreadTurnFollowsRuns: a turn is re-evaluated when another run starts
// or turns out to have done nothing, and ends early when the context does.
func TestSpreadTurnFollowsRuns(t *testing.T) {
	const step = 200 * time.Millisecond
	s := NewSpread("h", step, 10*step)
	// A repository whose offset leaves the test time to act while the
	// turn waits.
	name := ""
	for i := 0; name == ""; i++ {
		if n := fmt.Sprintf("r%d", i); s.Offset(n) > 0.6 {
			name = n
		}
	}
	o := s.Offset(name)
	ctx := context.Background()

	since := time.Now()
	if err := s.Turn(ctx, name, since); err != nil {
		t.Fatal(err)
	}
	if got, want := time.Since(since), time.Duration(o*float64(step)); got < want {
		t.Errorf("idle turn came after %v, want at least %v", got, want)
	}

	// Another run starts while a waits: a's turn moves a step later.
	since = time.Now()
	done := make(chan time.Duration, 1)
	go func() {
		_ = s.Turn(ctx, name, since)
		done <- time.Since(since)
	}()
	end := s.Started("b", since)
	if got, want := <-done, time.Duration((o+1)*float64(step)); got < want {
		t.Errorf("turn with one other run came after %v, want at least %v", got, want)
	}

	// That run turns out to have done no work while a waits behind three:
	// the turn comes earlier.
	s.Started("c", since)
	s.Started("d", since)
	since = time.Now()
	go func() {
		_ = s.Turn(ctx, name, since)
		done <- time.Since(since)
	}()
	time.Sleep(step / 4)
	end(time.Now(), time.Now(), false)
	if got, long := <-done, time.Duration((o+3)*float64(step)); got >= long {
		t.Errorf("turn took %v after a run did no work, want less than the %v three runs ask", got, long)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Turn(cctx, name, time.Now()); err == nil {
		t.Error("Turn with a cancelled context returned nil")
	}
}

func TestSpreadMine(t *testing.T) {
	s := NewSpread("h", time.Second, time.Second)
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

	if s.Mine("a", t0) {
		t.Error("Mine before any run")
	}
	// The turn ended before t0; the lease was held and the work began at t0.
	end := s.Started("a", t0.Add(-time.Second))
	if s.Mine("a", t0.Add(time.Second)) {
		t.Error("Mine for a run still in progress: its successes are not recorded yet")
	}
	end(t0, t0.Add(time.Minute), true)
	end(t0, t0.Add(time.Hour), true) // a second call changes nothing
	for _, c := range []struct {
		at   time.Time
		want bool
	}{
		{t0.Add(-time.Second), false},
		{t0, true},
		{t0.Add(30 * time.Second), true},
		{t0.Add(time.Minute), true},
		{t0.Add(time.Minute + time.Millisecond), false},
	} {
		if got := s.Mine("a", c.at); got != c.want {
			t.Errorf("Mine(a, %v): %v, want %v", c.at.Sub(t0), got, c.want)
		}
	}
	if s.Mine("b", t0) {
		t.Error("Mine for another repository")
	}

	// A run that found the work done is not the last run.
	s.Started("a", t0.Add(2*time.Hour))(t0.Add(2*time.Hour), t0.Add(2*time.Hour+time.Second), false)
	if !s.Mine("a", t0.Add(30*time.Second)) {
		t.Error("a run that did no work replaced the last one")
	}
}

// TestSpreadSplitsASlotEvenly replays the wait rule for replicas that all
// see a slot's repositories fall due at once: each replica's next turn is
// the smallest wait among its repositories not yet taken, and a repository
// goes to whichever replica's turn comes first. For every set of holder
// identities tried the split is as even as the numbers allow while each
// replica has at most four, and within a few beyond.
func TestSpreadSplitsASlotEvenly(t *testing.T) {
	split := func(holders []string, repos int) []int {
		spreads := make([]*Spread, len(holders))
		for i, h := range holders {
			spreads[i] = NewSpread(h, time.Second, 12*time.Second)
		}
		// Wait is Step × (Offset + load): the offsets are fixed per
		// replica and repository, so they are read once.
		offsets := make([][]float64, len(holders))
		for r, s := range spreads {
			for m := range repos {
				offsets[r] = append(offsets[r], s.Offset(fmt.Sprintf("repo-%d", m)))
			}
		}
		taken := make([]bool, repos)
		runs := make([]int, len(holders))
		for range repos {
			best, bestRepo := -1, -1
			var bestWait float64
			for r, s := range spreads {
				load := s.load(runs[r])
				for m := range repos {
					if taken[m] {
						continue
					}
					if w := offsets[r][m] + load; best < 0 || w < bestWait {
						best, bestRepo, bestWait = r, m, w
					}
				}
			}
			taken[bestRepo] = true
			runs[best]++
		}
		return runs
	}

	for _, c := range []struct{ replicas, repos, spread int }{
		// While the load grows linearly (up to 4 runs each) the split is
		// as even as the numbers allow.
		{2, 4, 0}, {3, 4, 1}, {2, 6, 0}, {3, 6, 0}, {4, 16, 0},
		// Past that, by two steps per doubling: within a few.
		{5, 30, 2}, {3, 100, 4}, {5, 100, 3}, {10, 200, 4},
	} {
		worst := 0
		for set := range 50 {
			holders := make([]string, c.replicas)
			for i := range holders {
				holders[i] = fmt.Sprintf("node-%d-%04x", i, set*7919+i)
			}
			runs := split(holders, c.repos)
			lo, hi := runs[0], runs[0]
			for _, n := range runs {
				lo, hi = min(lo, n), max(hi, n)
			}
			if hi-lo > c.spread {
				t.Errorf("%d replicas, %d repositories, holders %v: split %v, want at most %d apart", c.replicas, c.repos, holders, runs, c.spread)
			}
			worst = max(worst, hi-lo)
		}
		t.Logf("%d replicas, %d repositories: at most %d apart over 50 sets of holders", c.replicas, c.repos, worst)
	}
}
