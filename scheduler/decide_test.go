package scheduler

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/robfig/cron/v3"
	"go.uber.org/zap"
)

// day0 is a fixed Wednesday midnight UTC that all tests count from.
var day0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return day0.Add(d) }

func mustParse(t *testing.T, spec string) cron.Schedule {
	t.Helper()
	s, err := cron.ParseStandard(spec)
	if err != nil {
		t.Fatalf("parse %q: %v", spec, err)
	}
	return s
}

func TestNextSlot(t *testing.T) {
	tests := []struct {
		name   string
		spec   string
		jitter time.Duration
		after  time.Time
		want   time.Time
	}{
		{"hourly no jitter", "@hourly", 0, at(30 * time.Minute), at(time.Hour)},
		{"exactly on a slot moves on", "@hourly", 0, at(time.Hour), at(2 * time.Hour)},
		{"jitter added", "@hourly", 7 * time.Minute, at(30 * time.Minute), at(time.Hour + 7*time.Minute)},
		{"slot passed but jittered time not", "@hourly", 7 * time.Minute, at(time.Hour + 3*time.Minute), at(time.Hour + 7*time.Minute)},
		{"on the jittered time moves on", "@hourly", 7 * time.Minute, at(time.Hour + 7*time.Minute), at(2*time.Hour + 7*time.Minute)},
		{"daily", "@daily", 0, at(time.Hour), at(24 * time.Hour)},
		{"five fields", "*/15 * * * *", 0, at(16 * time.Minute), at(30 * time.Minute)},
		{"every", "@every 90m", 0, at(10 * time.Minute), at(100 * time.Minute)},
		// New York is UTC-5 in January.
		{"CRON_TZ", "CRON_TZ=America/New_York 0 3 * * *", 0, at(time.Hour), at(8 * time.Hour)},
		{"TZ", "TZ=Asia/Tokyo 0 9 * * *", 0, at(time.Hour), at(24 * time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := nextSlot(mustParse(t, tt.spec), tt.jitter, tt.after)
			if !got.Equal(tt.want) {
				t.Errorf("nextSlot(%q, %v, %v) = %v, want %v", tt.spec, tt.jitter, tt.after, got, tt.want)
			}
		})
	}
}

func TestJitterFor(t *testing.T) {
	tests := []struct {
		name string
		max  time.Duration
	}{
		{"repo-a", 10 * time.Minute},
		{"repo-b", 10 * time.Minute},
		{"velero/default-kopia-abc", time.Hour},
		{"", time.Second},
		{"x", 1},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q/%v", tt.name, tt.max), func(t *testing.T) {
			j := JitterFor(tt.name, tt.max)
			if j < 0 || j >= tt.max {
				t.Errorf("JitterFor = %v, want in [0, %v)", j, tt.max)
			}
			if again := JitterFor(tt.name, tt.max); again != j {
				t.Errorf("JitterFor not deterministic: %v then %v", j, again)
			}
		})
	}
	if a, b := JitterFor("repo-a", time.Hour), JitterFor("repo-b", time.Hour); a == b {
		t.Errorf("different names got the same jitter %v", a)
	}
	for _, max := range []time.Duration{0, -time.Minute} {
		if j := JitterFor("repo-a", max); j != 0 {
			t.Errorf("JitterFor(max=%v) = %v, want 0", max, j)
		}
	}
}

func TestInterval(t *testing.T) {
	tests := []struct {
		spec string
		want time.Duration
	}{
		{"@hourly", time.Hour},
		{"@daily", 24 * time.Hour},
		{"@weekly", 7 * 24 * time.Hour},
		{"*/5 * * * *", 5 * time.Minute},
		{"@every 90m", 90 * time.Minute},
		{"CRON_TZ=Europe/Berlin 30 2 * * *", 24 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			if got := Interval(mustParse(t, tt.spec), at(time.Minute)); got != tt.want {
				t.Errorf("Interval = %v, want %v", got, tt.want)
			}
		})
	}
	if got := Interval(mustParse(t, "0 0 30 2 *"), day0); got != 0 {
		t.Errorf("Interval of a schedule that never fires = %v, want 0", got)
	}
}

func TestNextTimes(t *testing.T) {
	r := Repository{Name: "repo-a", Quick: "@hourly", Full: "@daily", Jitter: 10 * time.Minute}
	j := JitterFor("repo-a", 10*time.Minute)
	q, f, err := NextTimes(r, at(30*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if want := at(time.Hour + j); !q.Equal(want) {
		t.Errorf("quick = %v, want %v", q, want)
	}
	if want := at(24*time.Hour + j); !f.Equal(want) {
		t.Errorf("full = %v, want %v", f, want)
	}
	if _, _, err := NextTimes(Repository{Name: "x", Quick: "bogus", Full: "@daily"}, day0); err == nil {
		t.Error("NextTimes accepted a bad spec")
	}
}

func TestBackoffDelay(t *testing.T) {
	tests := []struct {
		n        int
		interval time.Duration
		want     time.Duration
	}{
		{1, time.Hour, time.Minute},
		{2, time.Hour, 2 * time.Minute},
		{3, time.Hour, 4 * time.Minute},
		{6, time.Hour, 32 * time.Minute},
		{7, time.Hour, time.Hour},
		{1000, time.Hour, time.Hour},
		{1, 30 * time.Second, 30 * time.Second},
		{5, 24 * time.Hour, 16 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("n=%d/interval=%v", tt.n, tt.interval), func(t *testing.T) {
			if got := backoff(time.Minute, tt.n, tt.interval); got != tt.want {
				t.Errorf("backoff = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNeedsCatchUp(t *testing.T) {
	now := at(72 * time.Hour)
	tests := []struct {
		name string
		last time.Time
		err  error
		want bool
	}{
		{"never", time.Time{}, nil, true},
		{"lookup failed", now.Add(-time.Minute), errors.New("boom"), true},
		{"3 days ago", now.Add(-72 * time.Hour), nil, true},
		{"just over the interval", now.Add(-24*time.Hour - time.Second), nil, true},
		{"exactly the interval", now.Add(-24 * time.Hour), nil, false},
		{"recent", now.Add(-time.Hour), nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := needsCatchUp(now, tt.last, tt.err, 24*time.Hour); got != tt.want {
				t.Errorf("needsCatchUp = %v, want %v", got, tt.want)
			}
		})
	}
}

type skipErr struct{ skip bool }

func (e skipErr) Error() string { return "not the maintenance owner" }
func (e skipErr) Skipped() bool { return e.skip }

func TestClassify(t *testing.T) {
	tests := []struct {
		name         string
		err          error
		shuttingDown bool
		want         Result
	}{
		{"nil", nil, false, Success},
		{"nil while shutting down", nil, true, Success},
		{"plain error", errors.New("boom"), false, Failure},
		{"skipped", skipErr{true}, false, Skipped},
		{"wrapped skipped", fmt.Errorf("run: %w", skipErr{true}), false, Skipped},
		{"joined skipped", errors.Join(errors.New("a"), fmt.Errorf("b: %w", skipErr{true})), false, Skipped},
		{"Skipped false", skipErr{false}, false, Failure},
		{"cancelled", fmt.Errorf("run: %w", context.Canceled), false, Cancelled},
		{"deadline is a failure", context.DeadlineExceeded, false, Failure},
		{"any error while shutting down", errors.New("boom"), true, Cancelled},
		{"skipped while shutting down", skipErr{true}, true, Cancelled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify(tt.err, tt.shuttingDown); got != tt.want {
				t.Errorf("classify = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPickDue(t *testing.T) {
	now := at(time.Hour)
	st := func(name string, quick, full time.Duration, mods ...func(*repoState)) *repoState {
		s := &repoState{name: name, log: zap.NewNop()}
		s.cycles[quickIdx].next = at(quick)
		s.cycles[fullIdx].next = at(full)
		for _, m := range mods {
			m(s)
		}
		return s
	}
	running := func(s *repoState) { s.running = &Job{} }
	lookingUp := func(s *repoState) { s.lookingUp = true }
	removed := func(s *repoState) { s.removed = true }
	names := func(ss []*repoState) []string {
		var out []string
		for _, s := range ss {
			out = append(out, s.name)
		}
		return out
	}
	tests := []struct {
		name   string
		states []*repoState
		free   int
		want   []string
	}{
		{"none due", []*repoState{st("a", 2*time.Hour, 3*time.Hour)}, 2, nil},
		{"due now counts", []*repoState{st("a", time.Hour, 3*time.Hour)}, 2, []string{"a"}},
		{"oldest first", []*repoState{
			st("a", 50*time.Minute, 3*time.Hour),
			st("b", 10*time.Minute, 3*time.Hour),
			st("c", 3*time.Hour, 30*time.Minute),
		}, 3, []string{"b", "c", "a"}},
		{"limited by free", []*repoState{
			st("a", 50*time.Minute, 3*time.Hour),
			st("b", 10*time.Minute, 3*time.Hour),
			st("c", 3*time.Hour, 30*time.Minute),
		}, 2, []string{"b", "c"}},
		{"ties by name", []*repoState{st("b", 0, 3*time.Hour), st("a", 0, 3*time.Hour)}, 2, []string{"a", "b"}},
		{"no free slot", []*repoState{st("a", 0, 0)}, 0, nil},
		{"not schedulable", []*repoState{
			st("a", 0, 0, running), st("b", 0, 0, lookingUp), st("c", 0, 0, removed), st("d", 0, 0),
		}, 4, []string{"d"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := names(pickDue(now, tt.states, tt.free))
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("pickDue = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestDueCycle(t *testing.T) {
	now := at(time.Hour)
	tests := []struct {
		name        string
		quick, full time.Duration
		pending     bool
		want        int
		unsafe, due bool
	}{
		{"nothing", 2 * time.Hour, 2 * time.Hour, false, 0, false, false},
		{"quick", time.Hour, 2 * time.Hour, false, quickIdx, false, true},
		{"full", 2 * time.Hour, time.Hour, false, fullIdx, false, true},
		{"both: full covers quick", 0, time.Hour, false, fullIdx, false, true},
		{"unsafe window alone", 2 * time.Hour, 2 * time.Hour, true, fullIdx, true, true},
		{"unsafe window covers both", 0, time.Hour, true, fullIdx, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &repoState{unsafe: unsafeState{next: at(50 * time.Minute), pending: tt.pending}}
			s.cycles[quickIdx].next = at(tt.quick)
			s.cycles[fullIdx].next = at(tt.full)
			got, unsafe, due := s.dueCycle(now)
			if got != tt.want || unsafe != tt.unsafe || due != tt.due {
				t.Errorf("dueCycle = %v, %v, %v; want %v, %v, %v", got, unsafe, due, tt.want, tt.unsafe, tt.due)
			}
		})
	}
}

func TestWindowMissed(t *testing.T) {
	slot := at(4 * time.Hour)
	for _, tt := range []struct {
		name string
		now  time.Time
		want bool
	}{
		{"at the slot", slot, false},
		{"a timer a little late", slot.Add(time.Second), false},
		{"at the limit", slot.Add(missedWindowAfter), false},
		{"just past the limit", slot.Add(missedWindowAfter + time.Nanosecond), true},
		{"after a night asleep", slot.Add(8 * time.Hour), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := windowMissed(tt.now, slot); got != tt.want {
				t.Errorf("windowMissed(slot+%v) = %v, want %v", tt.now.Sub(slot), got, tt.want)
			}
		})
	}
}

func TestWakeAt(t *testing.T) {
	now := at(time.Hour)
	a := &repoState{name: "a"}
	a.cycles[quickIdx].next = at(30 * time.Minute) // due, waiting for a slot
	a.cycles[fullIdx].next = at(5 * time.Hour)
	b := &repoState{name: "b", running: &Job{}}
	b.cycles[quickIdx].next = at(90 * time.Minute)
	c := &repoState{name: "c"}
	c.cycles[quickIdx].next = at(2 * time.Hour)
	c.cycles[fullIdx].next = at(3 * time.Hour)
	if got, want := wakeAt(now, []*repoState{a, b, c}), at(2*time.Hour); !got.Equal(want) {
		t.Errorf("wakeAt = %v, want %v", got, want)
	}
	if got := wakeAt(now, []*repoState{b}); !got.IsZero() {
		t.Errorf("wakeAt with only a running repository = %v, want zero", got)
	}
	// A window slot wakes the dispatcher even while its repository runs, so that it sees the
	// slot come; a pending one, or one of a removed repository, does not.
	b.unsafe.next = at(100 * time.Minute)
	if got, want := wakeAt(now, []*repoState{a, b, c}), at(100*time.Minute); !got.Equal(want) {
		t.Errorf("wakeAt with a window of a running repository = %v, want %v", got, want)
	}
	b.unsafe.pending = true
	if got := wakeAt(now, []*repoState{b}); !got.IsZero() {
		t.Errorf("wakeAt with a pending window = %v, want zero", got)
	}
	b.unsafe.pending, b.removed = false, true
	if got := wakeAt(now, []*repoState{b}); !got.IsZero() {
		t.Errorf("wakeAt with a window of a removed repository = %v, want zero", got)
	}
}

func TestNewRejects(t *testing.T) {
	m := &fakeMaintainer{}
	ok := Repository{Name: "a", Quick: "@hourly", Full: "@daily"}
	tests := []struct {
		name  string
		opts  Options
		repos []Repository
	}{
		{"bad quick spec", Options{Maintainer: m, Concurrency: 1}, []Repository{{Name: "a", Quick: "bogus", Full: "@daily"}}},
		{"bad full spec", Options{Maintainer: m, Concurrency: 1}, []Repository{{Name: "a", Quick: "@hourly", Full: "61 * * * *"}}},
		{"bad time zone", Options{Maintainer: m, Concurrency: 1}, []Repository{{Name: "a", Quick: "CRON_TZ=Mars/Olympus 0 * * * *", Full: "@daily"}}},
		{"never fires", Options{Maintainer: m, Concurrency: 1}, []Repository{{Name: "a", Quick: "@hourly", Full: "0 0 30 2 *"}}},
		{"bad unsafe window", Options{Maintainer: m, Concurrency: 1}, []Repository{{Name: "a", Quick: "@hourly", Full: "@daily", UnsafeWindows: []string{"0 4 * * 0", "0 4 * * sunday"}}}},
		{"unsafe window never fires", Options{Maintainer: m, Concurrency: 1}, []Repository{{Name: "a", Quick: "@hourly", Full: "@daily", UnsafeWindows: []string{"0 0 31 4 *"}}}},
		{"empty name", Options{Maintainer: m, Concurrency: 1}, []Repository{{Quick: "@hourly", Full: "@daily"}}},
		{"duplicate", Options{Maintainer: m, Concurrency: 1}, []Repository{ok, ok}},
		{"no maintainer", Options{Concurrency: 1}, []Repository{ok}},
		{"zero concurrency", Options{Maintainer: m}, []Repository{ok}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.opts, tt.repos); err == nil {
				t.Error("New succeeded, want an error")
			}
		})
	}
}

// TestEveryAlignedAcrossStarts: replicas started at different moments agree on the slots of an
// @every schedule, and they are the multiples of its duration since the epoch.
func TestEveryAlignedAcrossStarts(t *testing.T) {
	r := Repository{Name: "r", Quick: "@every 7s", Full: "@every 90m"}
	base := time.Date(2026, 11, 21, 9, 0, 3, 250_000_000, time.UTC)
	var first [2]time.Time
	for i, offset := range []time.Duration{0, 500 * time.Millisecond, 1700 * time.Millisecond} {
		c, err := compile(r, base.Add(offset))
		if err != nil {
			t.Fatal(err)
		}
		q := nextSlot(c.scheds[quickIdx], 0, base.Add(offset))
		f := nextSlot(c.scheds[fullIdx], 0, base.Add(offset))
		if q.Unix()%7 != 0 || q.Nanosecond() != 0 || f.Unix()%(90*60) != 0 {
			t.Errorf("start +%v: slots %v, %v are not multiples of 7s and 90m since the epoch", offset, q, f)
		}
		if i == 0 {
			first = [2]time.Time{q, f}
		} else if !q.Equal(first[0]) || !f.Equal(first[1]) {
			t.Errorf("start +%v: slots %v, %v; a replica started at +0 has %v, %v", offset, q, f, first[0], first[1])
		}
	}
}
