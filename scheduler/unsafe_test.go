package scheduler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
)

// events returns the recorder's events that start with one of prefixes.
func (h *harness) events(prefixes ...string) []string {
	var out []string
	for _, e := range h.rec.take() {
		for _, p := range prefixes {
			if strings.HasPrefix(e, p) {
				out = append(out, e)
				break
			}
		}
	}
	return out
}

func TestUnsafeWindowFiresAtSlot(t *testing.T) {
	h := newHarness(t, at(time.Hour), 2)
	h.m.result = succeed
	h.recent("a", "b")
	const maxJitter = 10 * time.Minute
	j := JitterFor("a", maxJitter)
	a := Repository{Name: "a", Quick: "@hourly", Full: "@daily", Jitter: maxJitter, UnsafeWindows: []string{"30 4 * * *", "CRON_TZ=UTC 0 4 * * 0"}}
	b := Repository{Name: "b", Quick: "@hourly", Full: "@daily"}

	if got, ok, err := NextUnsafeTime(a, at(time.Hour)); err != nil || !ok || !got.Equal(at(hm(4, 30)+j)) {
		t.Errorf("NextUnsafeTime(a) = %v, %v, %v; want %v", got.Sub(day0), ok, err, hm(4, 30)+j)
	}
	if _, ok, err := NextUnsafeTime(b, at(time.Hour)); err != nil || ok {
		t.Errorf("NextUnsafeTime(b) = %v, %v; want no window", ok, err)
	}
	h.start(a, b)
	h.settle()
	if got, ok := h.s.NextUnsafe("a"); !ok || !got.Equal(at(hm(4, 30)+j)) {
		t.Errorf("NextUnsafe(a) = %v, %v; want %v (the jittered slot)", got.Sub(day0), ok, hm(4, 30)+j)
	}
	for _, name := range []string{"b", "unknown"} {
		if _, ok := h.s.NextUnsafe(name); ok {
			t.Errorf("NextUnsafe(%s) reports a window", name)
		}
	}
	h.rec.take()

	var gotA []*call
	for _, c := range h.runUntil(at(5 * time.Hour)) {
		if c.job.Repository == "a" {
			gotA = append(gotA, c)
		}
	}
	wantCalls(t, gotA,
		fmt.Sprintf("a quick at %v", time.Hour+j),
		fmt.Sprintf("a quick at %v", 2*time.Hour+j),
		fmt.Sprintf("a quick at %v", 3*time.Hour+j),
		fmt.Sprintf("a quick at %v", 4*time.Hour+j),
		fmt.Sprintf("a full at %v unsafe", hm(4, 30)+j),
	)
	unsafe := gotA[len(gotA)-1].job
	if unsafe.Cycle != Full || unsafe.CatchUp || !unsafe.NextQuick.Equal(at(5*time.Hour+j)) || !unsafe.NextFull.Equal(at(24*time.Hour+j)) {
		t.Errorf("unsafe job = %+v; want a full cycle, next quick %v, next full %v", unsafe, 5*time.Hour+j, 24*time.Hour+j)
	}
	// The Recorder sees a full cycle; the regular full keeps its slot.
	slot := hm(4, 30) + j
	want := []string{fmt.Sprintf("started a full %v", slot), fmt.Sprintf("finished a full success %v-%v", slot, slot)}
	if gotEvents := h.events("started a full", "finished a full"); !slices.Equal(gotEvents, want) {
		t.Errorf("recorder events %q, want %q", gotEvents, want)
	}
	if got, ok := h.s.NextUnsafe("a"); !ok || !got.Equal(at(hm(28, 30)+j)) {
		t.Errorf("after the window NextUnsafe(a) = %v, want %v", got.Sub(day0), hm(28, 30)+j)
	}
	if _, full, _ := h.s.Next("a"); !full.Equal(at(24*time.Hour + j)) {
		t.Errorf("after the window the regular full is next at %v, want %v", full.Sub(day0), 24*time.Hour+j)
	}
	started := h.logs.FilterMessage("maintenance run started").FilterField(zapcore.Field{Key: "unsafe", Type: zapcore.BoolType, Integer: 1}).All()
	if len(started) != 1 || started[0].ContextMap()["repository"] != "a" || started[0].ContextMap()["cycle"] != "full" {
		t.Errorf("unsafe start logs = %v, want one for a full", started)
	}

	// Sunday 04:00 UTC (day0 is a Wednesday) comes before Thursday's 04:30.
	update := func(repos ...Repository) {
		t.Helper()
		before := h.settle()
		if err := h.s.Update(repos); err != nil {
			t.Fatal(err)
		}
		h.waitIdle("the update handled", func(st idleState) bool { return st.seq > before.seq })
	}
	update(Repository{Name: "a", Quick: "@hourly", Full: "@daily", Jitter: maxJitter, UnsafeWindows: []string{"CRON_TZ=UTC 0 4 * * 0"}}, b)
	if got, ok := h.s.NextUnsafe("a"); !ok || !got.Equal(at(4*24*time.Hour+4*time.Hour+j)) {
		t.Errorf("after an Update NextUnsafe(a) = %v, want Sunday 04:00+%v", got.Sub(day0), j)
	}
	update(Repository{Name: "a", Quick: "@hourly", Full: "@daily", Jitter: maxJitter}, b)
	if _, ok := h.s.NextUnsafe("a"); ok {
		t.Error("NextUnsafe(a) still reports a window after an Update removed it")
	}
}

// TestUnsafeWindowNotCaughtUp: a window slot that came while the daemon was down, or while it
// could not watch (a suspended machine, a clock step), is skipped and logged, never run late.
func TestUnsafeWindowNotCaughtUp(t *testing.T) {
	repo := Repository{Name: "a", Quick: "@hourly", Full: "@daily", UnsafeWindows: []string{"0 4 * * *"}}

	t.Run("started after the slot", func(t *testing.T) {
		h := newHarness(t, at(hm(4, 1)), 1)
		h.m.result = succeed
		h.recent("a")
		h.start(repo)
		wantCalls(t, h.runUntil(at(5*time.Hour)), "a quick at 5h0m0s")
		if got, _ := h.s.NextUnsafe("a"); !got.Equal(at(28 * time.Hour)) {
			t.Errorf("NextUnsafe = %v, want tomorrow's 28h", got.Sub(day0))
		}
	})

	for _, tt := range []struct {
		name  string
		wake  time.Duration
		calls []string
	}{
		{"woken a little late", hm(4, 3), []string{"a full at 4h3m0s unsafe"}},
		{"woken past the limit", hm(4, 5) + time.Second, []string{"a quick at 4h5m1s"}},
		{"woken hours later", hm(9, 30), []string{"a quick at 9h30m0s"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, at(hm(3, 30)), 1)
			h.m.result = succeed
			h.recent("a")
			h.start(repo)
			h.settle()
			// The machine sleeps from 03:30 to tt.wake; the dispatcher's timer fires on waking.
			h.advance(at(tt.wake))
			h.settle()
			wantCalls(t, h.drain(), tt.calls...)
			missed := h.logs.FilterMessage("unsafe window missed; skipped").All()
			if len(tt.calls) == 1 && strings.HasSuffix(tt.calls[0], "unsafe") {
				if len(missed) != 0 {
					t.Errorf("a slot run on time was also logged as missed: %v", missed)
				}
				return
			}
			if len(missed) != 1 || missed[0].Level != zapcore.InfoLevel {
				t.Fatalf("missed slot logs = %v, want one at Info", missed)
			}
			fields := missed[0].ContextMap()
			if fields["repository"] != "a" || !fields["window_at"].(time.Time).Equal(at(4*time.Hour)) || !fields["next_window"].(time.Time).Equal(at(28*time.Hour)) {
				t.Errorf("missed slot log fields = %v", fields)
			}
			// Nothing runs late afterwards either.
			calls := h.runUntil(at(27 * time.Hour))
			if slices.ContainsFunc(calls, func(c *call) bool { return c.job.Unsafe }) {
				t.Errorf("an unsafe run came after the missed slot: %q", callStrings(calls))
			}
			wantCalls(t, h.runUntil(at(28*time.Hour)), "a full at 28h0m0s unsafe")
		})
	}
}

func TestUnsafeWindowCoversDueFull(t *testing.T) {
	h := newHarness(t, at(hm(3, 30)), 1)
	h.m.result = succeed
	h.recent("a")
	h.start(Repository{Name: "a", Quick: "@hourly", Full: "0 4 * * *", UnsafeWindows: []string{"0 4 * * *"}})
	h.settle()
	h.rec.take()

	calls := h.runUntil(at(5 * time.Hour))
	wantCalls(t, calls, "a full at 4h0m0s unsafe", "a quick at 5h0m0s")
	if job := calls[0].job; !job.NextQuick.Equal(at(5*time.Hour)) || !job.NextFull.Equal(at(28*time.Hour)) {
		t.Errorf("unsafe job next = %v, %v; want 5h, 28h", job.NextQuick.Sub(day0), job.NextFull.Sub(day0))
	}
	want := []string{
		"started a full 4h0m0s",
		"next a quick 5h0m0s",
		"next a full 28h0m0s",
		"finished a full success 4h0m0s-4h0m0s",
	}
	if got := h.events("started a full", "finished a full", "next"); len(got) < 4 || !slices.Equal(got[:4], want) {
		t.Errorf("recorder events %q, want them to start with %q", got, want)
	}
}

// TestUnsafeWindowAfterLongRun: slots that come while a long regular run is in flight give one
// unsafe run when it ends, and never a second run of the repository at once.
func TestUnsafeWindowAfterLongRun(t *testing.T) {
	h := newHarness(t, at(hm(2, 30)), 2)
	h.recent("a")
	h.start(Repository{Name: "a", Quick: "@hourly", Full: "0 3 * * *", UnsafeWindows: []string{"30 3 * * *", "0 4 * * *"}})
	h.settle()
	h.advance(at(3 * time.Hour))
	long := h.nextCall()
	wantCalls(t, []*call{long}, "a full at 3h0m0s")
	h.settleRunning(1)
	// Both window slots (03:30, 04:00) and the quick slot at 04:00 pass during the run.
	for _, m := range []time.Duration{hm(3, 30), hm(4, 0), hm(4, 10)} {
		h.advance(at(m))
	}
	wantCalls(t, h.drain())
	if got, ok := h.s.NextUnsafe("a"); !ok || !got.Equal(at(hm(3, 30))) {
		t.Errorf("NextUnsafe while waiting = %v, %v; want the pending 3h30m slot", got.Sub(day0), ok)
	}

	long.result <- nil
	unsafe := h.nextCall()
	wantCalls(t, []*call{unsafe}, "a full at 4h10m0s unsafe")
	if !unsafe.job.NextQuick.Equal(at(5 * time.Hour)) {
		t.Errorf("the unsafe run did not cover the due quick cycle: next quick %v", unsafe.job.NextQuick.Sub(day0))
	}
	unsafe.result <- nil
	st := h.settle()
	wantCalls(t, h.drain())
	if st.started != 2 || !st.wake.Equal(at(5*time.Hour)) {
		t.Errorf("after the unsafe run: %d runs, next wake %v; want 2 runs, 5h", st.started, st.wake.Sub(day0))
	}
	if got, _ := h.s.NextUnsafe("a"); !got.Equal(at(hm(27, 30))) {
		t.Errorf("NextUnsafe = %v, want 27h30m", got.Sub(day0))
	}
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	if h.m.overlap {
		t.Error("two runs of one repository overlapped")
	}
}

// TestUnsafeFailureWaitsForNextWindow: whatever stops an unsafe run, the next attempt is the next
// window slot; the regular cycles it covered run at once, and their backoff is untouched.
func TestUnsafeFailureWaitsForNextWindow(t *testing.T) {
	for _, tt := range []struct {
		name   string
		err    error
		result string
		level  zapcore.Level
	}{
		{"failure", errors.New("run maintenance: bucket unreachable"), "failure", zapcore.ErrorLevel},
		{"refused by the gate", fmt.Errorf("safety=none refused: %w", notOwnerError{}), "skipped", zapcore.WarnLevel},
		{"cancelled by the watcher", fmt.Errorf("backup velero/nightly-1 started: %w", context.Canceled), "cancelled", zapcore.WarnLevel},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, at(hm(3, 30)), 1)
			h.recent("a")
			h.m.result = func(job Job) error {
				if job.Unsafe {
					return tt.err
				}
				return nil
			}
			h.start(Repository{Name: "a", Quick: "@hourly", Full: "0 4 * * *", UnsafeWindows: []string{"0 4 * * *"}})
			h.settle()
			h.rec.take()

			wantCalls(t, h.runUntil(at(6*time.Hour)),
				"a full at 4h0m0s unsafe",
				"a full at 4h0m0s", // covered, so owed again at once
				"a quick at 5h0m0s",
				"a quick at 6h0m0s",
			)
			finished := h.events("finished")
			if len(finished) < 2 || finished[0] != fmt.Sprintf("finished a full %s 4h0m0s-4h0m0s", tt.result) || finished[1] != "finished a full success 4h0m0s-4h0m0s" {
				t.Errorf("finished events %q", finished)
			}
			if got, _ := h.s.NextUnsafe("a"); !got.Equal(at(28 * time.Hour)) {
				t.Errorf("NextUnsafe = %v, want the next slot 28h", got.Sub(day0))
			}
			logs := h.logs.FilterMessage("maintenance run finished").FilterField(zapcore.Field{Key: "unsafe", Type: zapcore.BoolType, Integer: 1}).All()
			if len(logs) != 1 || logs[0].Level != tt.level || !logs[0].ContextMap()["next_window"].(time.Time).Equal(at(28*time.Hour)) {
				t.Errorf("unsafe finish logs = %v, want one at %v with next_window 28h", logs, tt.level)
			}

			// The unsafe run's result did not count as a regular failure: the first regular
			// failure backs off by the base, and nothing unsafe runs before the next slot.
			h.m.setResult(func(job Job) error {
				if job.Unsafe {
					return nil
				}
				return errors.New("boom")
			})
			wantCalls(t, h.runUntil(at(hm(7, 1))), "a quick at 7h0m0s", "a quick at 7h1m0s")
			h.m.setResult(succeed)
			calls := h.runUntil(at(28 * time.Hour))
			var unsafe []string
			for _, c := range calls {
				if c.job.Unsafe {
					unsafe = append(unsafe, c.String())
				}
			}
			if want := []string{"a full at 28h0m0s unsafe"}; !slices.Equal(unsafe, want) {
				t.Errorf("unsafe runs %q, want %q", unsafe, want)
			}
		})
	}
}
