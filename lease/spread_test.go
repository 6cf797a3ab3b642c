package lease

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	testclock "k8s.io/utils/clock/testing"
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

// turnProbe runs Turns of one Spread on a fake clock and reports, through
// the Spread's hook, each time one of them starts waiting and until when.
type turnProbe struct {
	clk     *testclock.FakeClock
	s       *Spread
	waiting chan time.Time
}

func newTurnProbe(step, maxWait time.Duration) *turnProbe {
	p := &turnProbe{clk: testclock.NewFakeClock(t0), waiting: make(chan time.Time, 16)}
	p.s = NewSpread("h", step, maxWait, WithSpreadClock(p.clk))
	p.s.testHookWaiting = func(_ string, until time.Time) { p.waiting <- until }
	return p
}

// turn starts Turn(ctx, name, since) and returns the channel its result
// arrives on.
func (p *turnProbe) turn(ctx context.Context, name string, since time.Time) chan error {
	done := make(chan error, 1)
	go func() { done <- p.s.Turn(ctx, name, since) }()
	return done
}

// waits receives the next wait a Turn started and checks it ends at want.
func (p *turnProbe) waits(t *testing.T, what string, want time.Time) {
	t.Helper()
	select {
	case got := <-p.waiting:
		if !got.Equal(want) {
			t.Fatalf("%s: turn waits until t0+%v, want t0+%v", what, got.Sub(t0), want.Sub(t0))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: Turn did not start waiting", what)
	}
}

// stepTo moves the clock to at - 1ns, checks the turn has not come, then to
// at and checks that it has.
func (p *turnProbe) stepTo(t *testing.T, what string, at time.Time, done chan error) {
	t.Helper()
	p.clk.SetTime(at.Add(-time.Nanosecond))
	// The turn's timer is still pending: it has not fired, so Turn has
	// not returned.
	if !p.clk.HasWaiters() {
		t.Fatalf("%s: no timer pending 1ns before the turn", what)
	}
	select {
	case err := <-done:
		t.Fatalf("%s: turn came 1ns early (%v)", what, err)
	default:
	}
	p.clk.SetTime(at)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: Turn = %v", what, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: the turn did not come at t0+%v", what, at.Sub(t0))
	}
}

// nameWithOffset returns the first of r0, r1, ... whose offset for s lies
// in [lo, hi).
func nameWithOffset(s *Spread, lo, hi float64) string {
	for i := 0; ; i++ {
		if n := fmt.Sprintf("r%d", i); s.Offset(n) >= lo && s.Offset(n) < hi {
			return n
		}
	}
}

// TestSpreadTurnFollowsRuns: on a fake clock, a turn comes exactly Wait
// after since, and moves (exactly) whenever another run starts, turns out
// to have done nothing, or stops counting Max after its start; it ends
// early when the context does.
func TestSpreadTurnFollowsRuns(t *testing.T) {
	const step, maxWait = time.Second, 4 * time.Second
	p := newTurnProbe(step, maxWait)
	s := p.s
	name := nameWithOffset(s, 0.2, 0.8)
	after := func(since time.Time, load float64) time.Time {
		return since.Add(time.Duration(float64(step) * (s.Offset(name) + load)))
	}
	ctx := context.Background()

	// Idle: the offset alone.
	since := p.clk.Now()
	done := p.turn(ctx, name, since)
	p.waits(t, "idle", after(since, 0))
	p.stepTo(t, "idle", after(since, 0), done)

	// A turn whose wait has already passed comes at once, without waiting.
	if err := s.Turn(ctx, name, p.clk.Now().Add(-step)); err != nil {
		t.Fatalf("Turn long after since: %v", err)
	}

	// Another run starts while the turn waits: it moves a step later.
	since = p.clk.Now()
	done = p.turn(ctx, name, since)
	p.waits(t, "idle", after(since, 0))
	endB := s.Started("b", since)
	p.waits(t, "after b started", after(since, 1))
	p.stepTo(t, "one other run", after(since, 1), done)

	// Behind three runs, one of which turns out to have done no work: the
	// turn moves a step earlier.
	s.Started("c", p.clk.Now())
	s.Started("d", p.clk.Now())
	since = p.clk.Now()
	done = p.turn(ctx, name, since)
	p.waits(t, "three other runs", after(since, 3))
	p.clk.Step(step / 4)
	endB(p.clk.Now(), p.clk.Now(), false)
	p.waits(t, "after b did no work", after(since, 2))
	p.stepTo(t, "two other runs", after(since, 2), done)

	// The context ends while the turn waits.
	cctx, cancel := context.WithCancel(ctx)
	done = p.turn(cctx, name, p.clk.Now())
	p.waits(t, "before the cancel", after(p.clk.Now(), 2))
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Turn after its context was cancelled: %v, want context.Canceled", err)
	}
}

// TestSpreadTurnWhenARunStopsCounting: a finished run counts for the
// others' turns until Max after its start; a turn that would come later
// than that is looked at again then, and comes by the lower load.
func TestSpreadTurnWhenARunStopsCounting(t *testing.T) {
	const step, maxWait = time.Second, 4 * time.Second
	p := newTurnProbe(step, maxWait)
	s := p.s
	name := nameWithOffset(s, 0.2, 0.8)
	o := s.Offset(name)
	ctx := context.Background()

	// b ran quickly at t0; c and d are still running.
	s.Started("b", t0)(t0, t0.Add(time.Millisecond), true)
	s.Started("c", t0)
	s.Started("d", t0)
	p.clk.Step(2 * step)
	since := p.clk.Now()
	if got := s.Runs(name, since); got != 3 {
		t.Fatalf("runs at t0+2s: %d, want 3", got)
	}

	// Three runs put the turn at since + (o+3) steps, after b stops
	// counting at t0+4s: the turn looks again then, and comes at
	// since + (o+2) steps.
	done := p.turn(ctx, name, since)
	p.waits(t, "three runs, b stops counting first", t0.Add(maxWait))
	p.clk.SetTime(t0.Add(maxWait))
	want := since.Add(time.Duration(float64(step) * (o + 2)))
	p.waits(t, "after b stopped counting", want)
	p.stepTo(t, "two runs", want, done)
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

func TestSpreadZeroStepNeverWaits(t *testing.T) {
	s := NewSpread("node-1-3f9a1c20b7d4", 0, 0)
	for _, runs := range []int{0, 1, 10, 1000} {
		if w := s.Wait("r1", runs); w != 0 {
			t.Errorf("Wait(r1, %d) = %v with a zero step, want 0", runs, w)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.Turn(ctx, "r1", time.Now()); err != nil {
		t.Errorf("Turn with a zero step: %v", err)
	}
}
