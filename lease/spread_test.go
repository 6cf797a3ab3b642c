package lease

import (
	"testing"
	"time"
)

func TestSpreadDelayFollowsRecentWork(t *testing.T) {
	s := NewSpread(500*time.Millisecond, 4*time.Second)
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

	if d := s.Delay("a", t0); d != 0 {
		t.Errorf("idle process waits %v, want 0", d)
	}

	// b is running, c ran a minute ago with an hourly cycle (counts for
	// 90 minutes), d ran two hours ago (no longer counts).
	s.Started("b", t0, 90*time.Minute)
	s.Started("c", t0.Add(-2*time.Minute), 90*time.Minute)(t0.Add(-time.Minute), true)
	s.Started("d", t0.Add(-3*time.Hour), 90*time.Minute)(t0.Add(-2*time.Hour), true)

	if got := s.Load("a", t0); got != 2 {
		t.Errorf("load seen by a: %d, want 2 (b running, c recent)", got)
	}
	if got := s.Load("c", t0); got != 1 {
		t.Errorf("load seen by c: %d, want 1 (its own run does not count)", got)
	}
	// log2(3) × 0.5s
	if got, want := s.Delay("a", t0), 792481250*time.Nanosecond; got < want-time.Millisecond || got > want+time.Millisecond {
		t.Errorf("delay at load 2: %v, want %v", got, want)
	}
	if got := s.Delay("c", t0); got != 500*time.Millisecond {
		t.Errorf("delay at load 1: %v, want 500ms", got)
	}
	if got := s.Load("a", t0.Add(88*time.Minute)); got != 2 {
		t.Errorf("load 88 minutes on: %d, want 2", got)
	}
	if got := s.Load("a", t0.Add(91*time.Minute)); got != 1 {
		t.Errorf("load after c's keep time: %d, want 1 (b still running)", got)
	}

	// A less loaded process always waits less than a more loaded one, up
	// to the maximum.
	big := NewSpread(500*time.Millisecond, 4*time.Second)
	prev := time.Duration(-1)
	for i := range 300 {
		if d := big.Delay("x", t0); d < prev || d > 4*time.Second {
			t.Fatalf("delay at load %d: %v (previous %v, max 4s)", i, d, prev)
		} else {
			prev = d
		}
		big.Started(string(rune('A'+i%26))+string(rune('a'+i/26)), t0, time.Hour)
	}
	if prev != 4*time.Second {
		t.Errorf("delay at load 299: %v, want the 4s maximum", prev)
	}
}

func TestSpreadMine(t *testing.T) {
	s := NewSpread(time.Second, time.Second)
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

	if s.Mine("a", t0) {
		t.Error("Mine before any run")
	}
	done := s.Started("a", t0, time.Hour)
	if s.Mine("a", t0.Add(time.Second)) {
		t.Error("Mine for a run still in progress: its successes are not recorded yet")
	}
	done(t0.Add(time.Minute), true)
	done(t0.Add(time.Hour), true) // a second call changes nothing
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

	// A run that found the work done is neither load nor the last run.
	idle := s.Started("a", t0.Add(2*time.Hour), time.Hour)
	if got := s.Load("b", t0.Add(2*time.Hour)); got != 1 {
		t.Errorf("load while a's run is in progress: %d, want 1", got)
	}
	idle(t0.Add(2*time.Hour+time.Second), false)
	if got := s.Load("b", t0.Add(2*time.Hour+time.Second)); got != 0 {
		t.Errorf("load after a run that did no work: %d, want 0 (the earlier run is past its keep time)", got)
	}
	if !s.Mine("a", t0.Add(30*time.Second)) {
		t.Error("a run that did no work replaced the last one")
	}
}
