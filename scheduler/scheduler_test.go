package scheduler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	_ "time/tzdata" // CRON_TZ specs must not depend on the host's zoneinfo

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	testclock "k8s.io/utils/clock/testing"
)

// guard bounds every wait of a test on the scheduler, so a bug fails the test instead of hanging
// it. It is real time, but nothing in the tests depends on it passing.
const guard = 10 * time.Second

// call is one Run of the fake maintainer.
type call struct {
	job    Job
	at     time.Time
	result chan error // the test's answer, for a blocking maintainer
}

func (c *call) String() string {
	s := fmt.Sprintf("%s %s at %v", c.job.Repository, c.job.Cycle, c.at.Sub(day0))
	if c.job.CatchUp {
		s += " catch-up"
	}
	if c.job.Unsafe {
		s += " unsafe"
	}
	return s
}

// fakeMaintainer records calls. With result set it answers at once; otherwise Run blocks until
// the test sends on call.result or ctx is done.
type fakeMaintainer struct {
	clock *testclock.FakeClock
	calls chan *call

	mu       sync.Mutex
	result   func(Job) error
	last     map[string][2]time.Time
	lastErr  map[string]error
	inflight map[string]int
	total    int
	maxTotal int
	overlap  bool
	// cancelled, when set, receives each blocked call whose ctx was cancelled; Run then waits
	// for call.result before returning, so a test can hold a cancelled run.
	cancelled chan *call
}

func (m *fakeMaintainer) Run(ctx context.Context, job Job) error {
	m.mu.Lock()
	m.inflight[job.Repository]++
	if m.inflight[job.Repository] > 1 {
		m.overlap = true
	}
	m.total++
	m.maxTotal = max(m.maxTotal, m.total)
	result := m.result
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.inflight[job.Repository]--
		m.total--
		m.mu.Unlock()
	}()

	c := &call{job: job, at: m.clock.Now(), result: make(chan error, 1)}
	m.calls <- c
	if result != nil {
		return result(job)
	}
	select {
	case err := <-c.result:
		return err
	case <-ctx.Done():
		if m.cancelled == nil {
			return ctx.Err()
		}
		m.cancelled <- c
		if err := <-c.result; err != nil {
			return err
		}
		return ctx.Err()
	}
}

func (m *fakeMaintainer) LastSuccess(_ context.Context, repository string) (quick, full time.Time, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.last[repository]
	return l[quickIdx], l[fullIdx], m.lastErr[repository]
}

func (m *fakeMaintainer) setResult(f func(Job) error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.result = f
}

func succeed(Job) error { return nil }

// fakeRecorder records events as strings with times relative to day0.
type fakeRecorder struct {
	mu     sync.Mutex
	events []string
}

func (r *fakeRecorder) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
}

func (r *fakeRecorder) RunStarted(repository, cycle string, at time.Time) {
	r.add("started %s %s %v", repository, cycle, at.Sub(day0))
}

func (r *fakeRecorder) RunFinished(repository, cycle, result string, started, finished time.Time) {
	r.add("finished %s %s %s %v-%v", repository, cycle, result, started.Sub(day0), finished.Sub(day0))
}

func (r *fakeRecorder) NextRun(repository, cycle string, at time.Time) {
	r.add("next %s %s %v", repository, cycle, at.Sub(day0))
}

func (r *fakeRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.events
	r.events = nil
	return e
}

// harness runs a Scheduler on a fake clock and lets the test wait until its dispatcher is idle.
type harness struct {
	t     *testing.T
	clock *testclock.FakeClock
	m     *fakeMaintainer
	rec   *fakeRecorder
	logs  *observer.ObservedLogs
	opts  Options
	s     *Scheduler

	cancel context.CancelFunc
	errc   chan error

	mu     sync.Mutex
	idle   idleState
	notify chan struct{} // closed and replaced on every idle
}

func newHarness(t *testing.T, start time.Time, concurrency int) *harness {
	t.Helper()
	clk := testclock.NewFakeClock(start)
	core, logs := observer.New(zapcore.DebugLevel)
	h := &harness{
		t:     t,
		clock: clk,
		m: &fakeMaintainer{
			clock:    clk,
			calls:    make(chan *call, 1000),
			last:     map[string][2]time.Time{},
			lastErr:  map[string]error{},
			inflight: map[string]int{},
		},
		rec:    &fakeRecorder{},
		logs:   logs,
		notify: make(chan struct{}),
	}
	h.opts = Options{
		Clock:       clk,
		Logger:      zap.New(core),
		Concurrency: concurrency,
		Maintainer:  h.m,
		Recorder:    h.rec,
	}
	return h
}

// recent records a last success of both cycles of each repository 1 minute before now.
func (h *harness) recent(repos ...string) {
	for _, r := range repos {
		h.m.last[r] = [2]time.Time{h.clock.Now().Add(-time.Minute), h.clock.Now().Add(-time.Minute)}
	}
}

// start creates the Scheduler and runs it until the test ends.
func (h *harness) start(repos ...Repository) {
	h.t.Helper()
	s, err := New(h.opts, repos)
	if err != nil {
		h.t.Fatalf("New: %v", err)
	}
	h.s = s
	s.onIdle = func(st idleState) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.idle = st
		close(h.notify)
		h.notify = make(chan struct{})
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.errc = make(chan error, 1)
	go func() { h.errc <- s.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case <-h.errc:
		case <-time.After(guard):
			h.t.Error("Run did not return after cancel")
		}
	})
}

// waitIdle waits until the dispatcher is idle in a state that satisfies pred.
func (h *harness) waitIdle(what string, pred func(idleState) bool) idleState {
	h.t.Helper()
	deadline := time.NewTimer(guard)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		st, ch := h.idle, h.notify
		h.mu.Unlock()
		if st.seq > 0 && pred(st) {
			return st
		}
		select {
		case <-ch:
		case <-deadline.C:
			h.t.Fatalf("timed out waiting for %s; last idle state %+v", what, st)
		}
	}
}

// settle waits until no run and no LastSuccess call is in flight.
func (h *harness) settle() idleState {
	h.t.Helper()
	return h.waitIdle("no run in flight", func(st idleState) bool { return st.inflight == 0 && st.lookups == 0 })
}

// advance sets the clock to to while the dispatcher is idle and, if that fires its timer, waits
// until it has handled the wake-up.
func (h *harness) advance(to time.Time) {
	h.t.Helper()
	h.mu.Lock()
	st := h.idle
	h.mu.Unlock()
	h.clock.SetTime(to)
	if !st.timer.IsZero() && !to.Before(st.timer) {
		h.waitIdle("the timer to be handled", func(n idleState) bool { return n.seq > st.seq })
	}
}

// runUntil repeatedly advances to the next run time, letting runs finish, until the next run
// time is after end; it then sets the clock to end and returns all calls made.
func (h *harness) runUntil(end time.Time) []*call {
	h.t.Helper()
	for {
		st := h.settle()
		if st.wake.IsZero() || st.wake.After(end) {
			break
		}
		h.advance(st.wake)
	}
	h.advance(end)
	h.settle()
	return h.drain()
}

// drain returns the calls made so far and not yet taken.
func (h *harness) drain() []*call {
	var out []*call
	for {
		select {
		case c := <-h.m.calls:
			out = append(out, c)
		default:
			return out
		}
	}
}

// nextCall waits for the next call.
func (h *harness) nextCall() *call {
	h.t.Helper()
	select {
	case c := <-h.m.calls:
		return c
	case <-time.After(guard):
		h.t.Fatal("timed out waiting for a maintenance run")
		return nil
	}
}

func callStrings(calls []*call) []string {
	out := make([]string, 0, len(calls))
	for _, c := range calls {
		out = append(out, c.String())
	}
	return out
}

func wantCalls(t *testing.T, got []*call, want ...string) {
	t.Helper()
	if g := callStrings(got); !slices.Equal(g, want) {
		t.Errorf("runs:\n got  %q\n want %q", g, want)
	}
}

func hm(h, m int) time.Duration { return time.Duration(h)*time.Hour + time.Duration(m)*time.Minute }

func TestCronAndJitter(t *testing.T) {
	h := newHarness(t, at(10*time.Minute), 4)
	h.m.result = succeed
	h.recent("a", "b")
	const maxJitter = 10 * time.Minute
	j := JitterFor("a", maxJitter)
	if j <= 0 || j >= maxJitter {
		t.Fatalf("jitter of a is %v, the test needs it in (0, %v)", j, maxJitter)
	}
	h.start(
		// 03:00 in New York is 08:00 UTC in January.
		Repository{Name: "a", Quick: "@hourly", Full: "CRON_TZ=America/New_York 0 3 * * *", Jitter: maxJitter},
		Repository{Name: "b", Quick: "@every 45m", Full: "@weekly"},
	)
	h.settle()
	if q, f, ok := h.s.Next("a"); !ok || !q.Equal(at(time.Hour+j)) || !f.Equal(at(8*time.Hour+j)) {
		t.Errorf("Next(a) = %v, %v, %v; want %v, %v, true", q, f, ok, at(time.Hour+j), at(8*time.Hour+j))
	}

	calls := h.runUntil(at(3 * time.Hour))
	wantCalls(t, calls,
		"b quick at 45m0s", // @every fires at multiples of 45m since the epoch, not 45m after start
		fmt.Sprintf("a quick at %v", time.Hour+j),
		"b quick at 1h30m0s",
		fmt.Sprintf("a quick at %v", 2*time.Hour+j),
		"b quick at 2h15m0s",
		"b quick at 3h0m0s",
	)

	// At 08:00+j both cycles of a are due: the full cycle runs and covers the quick one.
	calls = h.runUntil(at(9 * time.Hour))
	var gotA []*call
	for _, c := range calls {
		if c.job.Repository == "a" {
			gotA = append(gotA, c)
		}
	}
	var want []string
	for hour := 3; hour <= 7; hour++ {
		want = append(want, fmt.Sprintf("a quick at %v", time.Duration(hour)*time.Hour+j))
	}
	want = append(want, fmt.Sprintf("a full at %v", 8*time.Hour+j))
	wantCalls(t, gotA, want...)
	full := gotA[len(gotA)-1].job
	if !full.NextQuick.Equal(at(9*time.Hour+j)) || !full.NextFull.Equal(at(32*time.Hour+j)) {
		t.Errorf("full job next = %v, %v; want %v, %v", full.NextQuick, full.NextFull, at(9*time.Hour+j), at(32*time.Hour+j))
	}
	if full.QuickInterval != time.Hour || full.FullInterval != 24*time.Hour {
		t.Errorf("full job intervals = %v, %v; want 1h, 24h", full.QuickInterval, full.FullInterval)
	}
}

func TestCatchUpOnceAfterDowntime(t *testing.T) {
	start := at(hm(10, 17))
	h := newHarness(t, start, 2)
	h.m.result = succeed
	h.m.last["a"] = [2]time.Time{start.Add(-72 * time.Hour), start.Add(-72 * time.Hour)}
	h.start(Repository{Name: "a", Quick: "@hourly", Full: "@daily"})

	h.settle()
	calls := h.drain()
	wantCalls(t, calls, "a full at 10h17m0s catch-up")
	if job := calls[0].job; !job.NextQuick.Equal(at(11*time.Hour)) || !job.NextFull.Equal(at(24*time.Hour)) {
		t.Errorf("catch-up job next = %v, %v; want 11:00, next midnight", job.NextQuick, job.NextFull)
	}

	calls = h.runUntil(at(24 * time.Hour))
	var want []string
	for hour := 11; hour <= 23; hour++ {
		want = append(want, fmt.Sprintf("a quick at %v", time.Duration(hour)*time.Hour))
	}
	want = append(want, "a full at 24h0m0s")
	wantCalls(t, calls, want...)
}

func TestNoCatchUpWhenRecent(t *testing.T) {
	start := at(hm(10, 17))
	h := newHarness(t, start, 2)
	h.m.result = succeed
	h.m.last["a"] = [2]time.Time{start.Add(-10 * time.Minute), start.Add(-2 * time.Hour)}
	h.start(Repository{Name: "a", Quick: "@hourly", Full: "@daily"})

	st := h.settle()
	wantCalls(t, h.drain())
	if !st.wake.Equal(at(11 * time.Hour)) {
		t.Errorf("first wake = %v, want 11:00", st.wake.Sub(day0))
	}
	wantCalls(t, h.runUntil(at(11*time.Hour)), "a quick at 11h0m0s")
}

func TestCatchUpWhenLastSuccessFails(t *testing.T) {
	start := at(hm(10, 17))
	h := newHarness(t, start, 2)
	h.m.result = succeed
	h.m.last["a"] = [2]time.Time{start.Add(-time.Minute), start.Add(-time.Minute)}
	h.m.lastErr["a"] = errors.New("repository unreachable")
	h.recent("b")
	h.start(
		Repository{Name: "a", Quick: "@hourly", Full: "@daily"},
		Repository{Name: "b", Quick: "@hourly", Full: "@daily"},
	)
	h.settle()
	wantCalls(t, h.drain(), "a full at 10h17m0s catch-up")
	if n := h.logs.FilterMessage("read last maintenance success failed; running catch-up").Len(); n != 1 {
		t.Errorf("lookup failure logged %d times, want 1", n)
	}
}

func TestFullCoversQuick(t *testing.T) {
	h := newHarness(t, at(hm(23, 30)), 2)
	h.m.result = succeed
	h.recent("a")
	h.start(Repository{Name: "a", Quick: "@hourly", Full: "@daily"})

	calls := h.runUntil(at(24 * time.Hour))
	wantCalls(t, calls, "a full at 24h0m0s")
	if job := calls[0].job; !job.NextQuick.Equal(at(25*time.Hour)) || !job.NextFull.Equal(at(48*time.Hour)) {
		t.Errorf("full job next = %v, %v; want 25h, 48h", job.NextQuick.Sub(day0), job.NextFull.Sub(day0))
	}
	wantCalls(t, h.runUntil(at(25*time.Hour)), "a quick at 25h0m0s")
}

func TestBackoff(t *testing.T) {
	start := at(30 * time.Second)
	h := newHarness(t, start, 2)
	h.m.last["a"] = [2]time.Time{{}, start.Add(-time.Hour)} // quick never ran
	n := 0
	h.m.result = func(Job) error {
		n++ // only the dispatcher's runs call this, one at a time
		if n == 9 {
			return nil
		}
		return errors.New("bucket unreachable")
	}
	h.start(Repository{Name: "a", Quick: "@hourly", Full: "@daily"})

	calls := h.runUntil(at(hm(4, 1)))
	var gaps []time.Duration
	for i := 1; i < len(calls); i++ {
		gaps = append(gaps, calls[i].at.Sub(calls[i-1].at))
	}
	wantGaps := []time.Duration{
		time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 16 * time.Minute, 32 * time.Minute,
		time.Hour, time.Hour, // 64m capped at the hourly interval
		hm(0, 56) + 30*time.Second, // success at 03:03:30: back to the cron slot 04:00
		time.Minute,                // the failure count was reset
	}
	if !slices.Equal(gaps, wantGaps) {
		t.Errorf("gaps between runs = %v, want %v (runs %q)", gaps, wantGaps, callStrings(calls))
	}
	for i, c := range calls {
		if c.job.Cycle != Quick {
			t.Errorf("run %d is %s, want quick", i, c.job.Cycle)
		}
		// Retries of the failed catch-up are still catch-ups; the run at the cron slot is not.
		if wantCatchUp := i < 9; c.job.CatchUp != wantCatchUp {
			t.Errorf("run %d catch-up = %v, want %v", i, c.job.CatchUp, wantCatchUp)
		}
	}

	errs := h.logs.FilterMessage("maintenance run finished").FilterLevelExact(zapcore.ErrorLevel).All()
	if len(errs) != 10 {
		t.Fatalf("%d error logs, want 10", len(errs))
	}
	if n := h.logs.FilterLevelExact(zapcore.ErrorLevel).Len(); n != len(errs) {
		t.Errorf("%d error logs in all, want each failure logged once (%d)", n, len(errs))
	}
	fields := errs[0].ContextMap()
	if fields["repository"] != "a" || fields["cycle"] != "quick" || fields["result"] != "failure" ||
		fields["error"] != "bucket unreachable" || !fields["retry_at"].(time.Time).Equal(at(hm(0, 1)+30*time.Second)) {
		t.Errorf("error log fields = %v", fields)
	}
}

func TestFailingRepositoryDoesNotDelayAnother(t *testing.T) {
	start := at(30 * time.Second)
	h := newHarness(t, start, 1)
	h.m.last["bad"] = [2]time.Time{{}, start.Add(-time.Hour)}
	h.recent("good")
	h.m.result = func(job Job) error {
		if job.Repository == "bad" {
			return errors.New("wrong password")
		}
		return nil
	}
	h.start(
		Repository{Name: "bad", Quick: "@hourly", Full: "@daily"},
		Repository{Name: "good", Quick: "*/5 * * * *", Full: "@daily"},
	)

	calls := h.runUntil(at(40 * time.Minute))
	var good, bad []time.Duration
	for _, c := range calls {
		if c.job.Repository == "good" {
			good = append(good, c.at.Sub(day0))
		} else {
			bad = append(bad, c.at.Sub(start))
		}
	}
	wantGood := []time.Duration{5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 20 * time.Minute, 25 * time.Minute, 30 * time.Minute, 35 * time.Minute, 40 * time.Minute}
	if !slices.Equal(good, wantGood) {
		t.Errorf("good ran at %v, want %v", good, wantGood)
	}
	wantBad := []time.Duration{0, time.Minute, 3 * time.Minute, 7 * time.Minute, 15 * time.Minute, 31 * time.Minute}
	if !slices.Equal(bad, wantBad) {
		t.Errorf("bad ran at start+%v, want %v", bad, wantBad)
	}
}

func TestConcurrencyLimit(t *testing.T) {
	start := at(time.Minute)
	h := newHarness(t, start, 2)
	h.m.last["a"] = [2]time.Time{{}, start.Add(-time.Hour)}
	h.m.last["b"] = [2]time.Time{{}, start.Add(-time.Hour)}
	h.recent("c", "d")
	h.start(
		// a and b catch up at once; their next slot is after the test ends.
		Repository{Name: "a", Quick: "0 12 * * *", Full: "@daily"},
		Repository{Name: "b", Quick: "0 12 * * *", Full: "@daily"},
		Repository{Name: "c", Quick: "@hourly", Full: "@daily"},    // due 01:00
		Repository{Name: "d", Quick: "30 0 * * *", Full: "@daily"}, // due 00:30
	)
	h.waitIdle("a and b running", func(st idleState) bool { return st.started == 2 && st.lookups == 0 })
	first := []*call{h.nextCall(), h.nextCall()}
	slices.SortFunc(first, func(x, y *call) int { return strings.Compare(x.job.Repository, y.job.Repository) })
	wantCalls(t, first, "a quick at 1m0s catch-up", "b quick at 1m0s catch-up")

	h.advance(at(30 * time.Minute)) // d is due, no free slot
	h.advance(at(time.Hour))        // c is due, no free slot
	if st := h.settleRunning(2); st.started != 2 {
		t.Fatalf("%d runs started with 2 slots busy, want 2", st.started)
	}

	// d has waited longest, so it gets the first free slot.
	first[0].result <- nil
	d := h.nextCall()
	wantCalls(t, []*call{d}, "d quick at 1h0m0s")
	first[1].result <- nil
	c := h.nextCall()
	wantCalls(t, []*call{c}, "c quick at 1h0m0s")
	d.result <- nil
	c.result <- nil
	st := h.settle()
	if st.started != 4 || st.finished != 4 {
		t.Errorf("started %d, finished %d runs; want 4, 4", st.started, st.finished)
	}
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	if h.m.maxTotal != 2 {
		t.Errorf("at most %d runs at once, want 2", h.m.maxTotal)
	}
}

// settleRunning waits until exactly n runs are in flight and no lookup is.
func (h *harness) settleRunning(n int) idleState {
	h.t.Helper()
	return h.waitIdle(fmt.Sprintf("%d runs in flight", n), func(st idleState) bool { return st.inflight == n && st.lookups == 0 })
}

func TestSingleFlightPerRepository(t *testing.T) {
	h := newHarness(t, at(time.Minute), 2)
	h.recent("a")
	h.start(Repository{Name: "a", Quick: "*/5 * * * *", Full: "@daily"})

	st := h.settle()
	h.advance(st.wake)
	first := h.nextCall()
	wantCalls(t, []*call{first}, "a quick at 5m0s")
	h.settleRunning(1)
	// Slots 00:10, 00:15 and 00:20 pass while the run is in flight.
	for _, m := range []int{10, 15, 20, 22} {
		h.advance(at(hm(0, m)))
	}
	wantCalls(t, h.drain())

	first.result <- nil
	second := h.nextCall()
	wantCalls(t, []*call{second}, "a quick at 22m0s")
	second.result <- nil
	st = h.settle()
	wantCalls(t, h.drain())
	if st.started != 2 || !st.wake.Equal(at(25*time.Minute)) {
		t.Errorf("after the follow-up run: %d runs, next wake %v; want 2 runs, 25m", st.started, st.wake.Sub(day0))
	}
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	if h.m.overlap {
		t.Error("two runs of one repository overlapped")
	}
}

type notOwnerError struct{}

func (notOwnerError) Error() string { return "maintenance is owned by default@default" }
func (notOwnerError) Skipped() bool { return true }

func TestSkippedNoBackoff(t *testing.T) {
	start := at(30 * time.Second)
	h := newHarness(t, start, 2)
	h.m.last["a"] = [2]time.Time{{}, start.Add(-time.Hour)}
	h.m.result = func(Job) error { return fmt.Errorf("run maintenance: %w", notOwnerError{}) }
	h.start(Repository{Name: "a", Quick: "@hourly", Full: "@daily"})

	h.settle()
	wantCalls(t, h.drain(), "a quick at 30s catch-up")
	if q, _, _ := h.s.Next("a"); !q.Equal(at(time.Hour)) {
		t.Errorf("after a skipped run quick is next at %v, want the cron slot 1h", q.Sub(day0))
	}
	warns := h.logs.FilterMessage("maintenance run finished").FilterLevelExact(zapcore.WarnLevel).All()
	if len(warns) != 1 || warns[0].ContextMap()["result"] != "skipped" {
		t.Errorf("skipped run logs = %v, want one Warn with result skipped", warns)
	}

	// A skip does not count as a failure: the first failure afterwards backs off by the base.
	h.m.setResult(func(Job) error { return errors.New("boom") })
	wantCalls(t, h.runUntil(at(hm(1, 1))), "a quick at 1h0m0s", "a quick at 1h1m0s")

	var results []string
	for _, e := range h.rec.take() {
		if strings.HasPrefix(e, "finished") {
			results = append(results, strings.Fields(e)[3])
		}
	}
	if want := []string{"skipped", "failure", "failure"}; !slices.Equal(results, want) {
		t.Errorf("recorded results %v, want %v", results, want)
	}
}

func TestShutdownWaitsForRunsInFlight(t *testing.T) {
	start := at(time.Minute)
	h := newHarness(t, start, 2)
	h.m.cancelled = make(chan *call, 2)
	h.start(
		Repository{Name: "a", Quick: "@hourly", Full: "@daily"},
		Repository{Name: "b", Quick: "@hourly", Full: "@daily"},
	)
	h.settleRunning(2)
	h.nextCall()
	h.nextCall()
	if !h.s.Started() {
		t.Error("Started() = false while running")
	}

	h.cancel()
	held := []*call{<-h.m.cancelled, <-h.m.cancelled}
	select {
	case err := <-h.errc:
		t.Fatalf("Run returned %v while two runs were in flight", err)
	default:
	}
	held[0].result <- nil
	h.waitIdle("one run finished", func(st idleState) bool { return st.finished == 1 })
	select {
	case err := <-h.errc:
		t.Fatalf("Run returned %v while a run was in flight", err)
	default:
	}
	held[1].result <- nil
	select {
	case err := <-h.errc:
		if err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	case <-time.After(guard):
		t.Fatal("Run did not return after its runs returned")
	}
	h.errc <- nil // for the cleanup
	if h.s.Started() {
		t.Error("Started() = true after Run returned")
	}
	wantCalls(t, h.drain())
	var finished []string
	for _, e := range h.rec.take() {
		if strings.HasPrefix(e, "finished") {
			finished = append(finished, e)
		}
	}
	slices.Sort(finished)
	want := []string{"finished a full cancelled 1m0s-1m0s", "finished b full cancelled 1m0s-1m0s"}
	if !slices.Equal(finished, want) {
		t.Errorf("recorded %q, want %q", finished, want)
	}
}

func TestRecorder(t *testing.T) {
	h := newHarness(t, at(30*time.Minute), 2)
	h.m.result = succeed
	h.recent("a")
	h.start(Repository{Name: "a", Quick: "@hourly", Full: "@daily"})
	h.settle()
	h.runUntil(at(time.Hour))
	h.m.setResult(func(Job) error { return errors.New("boom") })
	h.runUntil(at(2 * time.Hour))

	want := []string{
		"next a quick 1h0m0s",
		"next a full 24h0m0s",
		"started a quick 1h0m0s",
		"next a quick 2h0m0s",
		"finished a quick success 1h0m0s-1h0m0s",
		"started a quick 2h0m0s",
		"next a quick 3h0m0s",
		"finished a quick failure 2h0m0s-2h0m0s",
		"next a quick 2h1m0s",
	}
	if got := h.rec.take(); !slices.Equal(got, want) {
		t.Errorf("recorder events:\n got  %q\n want %q", got, want)
	}
	started := h.logs.FilterMessage("maintenance run started").All()
	if len(started) != 2 || started[0].ContextMap()["repository"] != "a" || started[0].ContextMap()["cycle"] != "quick" {
		t.Errorf("start logs = %v", started)
	}
}

func TestUpdate(t *testing.T) {
	start := at(time.Minute)
	h := newHarness(t, start, 2)
	h.recent("a")
	h.start(Repository{Name: "a", Quick: "*/5 * * * *", Full: "@daily"})
	h.settle()
	h.advance(at(5 * time.Minute))
	running := h.nextCall()
	h.settleRunning(1)

	// Remove a while it runs and add b, which has never been maintained.
	if err := h.s.Update([]Repository{{Name: "b", Quick: "@hourly", Full: "@daily"}}); err != nil {
		t.Fatal(err)
	}
	b := h.nextCall()
	wantCalls(t, []*call{b}, "b full at 5m0s catch-up")
	if _, _, ok := h.s.Next("a"); ok {
		t.Error("Next still reports the removed repository")
	}
	b.result <- nil
	running.result <- nil
	st := h.settle()
	if st.finished != 2 || !st.wake.Equal(at(time.Hour)) {
		t.Errorf("after update: %d finished, wake %v; want 2, 1h", st.finished, st.wake.Sub(day0))
	}
	if err := h.s.Update([]Repository{{Name: "b", Quick: "bogus", Full: "@daily"}}); err == nil {
		t.Error("Update accepted a bad spec")
	}
	if _, _, ok := h.s.Next("b"); !ok {
		t.Error("a rejected Update changed the repository set")
	}
}

// heldError is a skip that asks for a follow-up, as a lease another process holds does.
type heldError struct{ retry time.Duration }

func (heldError) Error() string               { return "lease held by replica-b" }
func (heldError) Skipped() bool               { return true }
func (e heldError) RetryAfter() time.Duration { return e.retry }

func TestSkippedFollowUp(t *testing.T) {
	start := at(30 * time.Second)
	h := newHarness(t, start, 2)
	h.recent("a")
	var mu sync.Mutex
	var dues []time.Duration
	skips := 2
	h.m.result = func(j Job) error {
		mu.Lock()
		defer mu.Unlock()
		dues = append(dues, j.Due.Sub(day0))
		if skips > 0 {
			skips--
			return fmt.Errorf("acquire: %w", heldError{retry: 75 * time.Second})
		}
		return nil
	}
	h.start(Repository{Name: "a", Quick: "@hourly", Full: "@daily"})

	// The 1h slot is skipped twice; each follow-up comes 75s after the skip and carries the
	// slot's Due, then the run succeeds and the next one is the 2h slot.
	wantCalls(t, h.runUntil(at(hm(2, 0))),
		"a quick at 1h0m0s", "a quick at 1h1m15s", "a quick at 1h2m30s", "a quick at 2h0m0s")
	mu.Lock()
	if want := []time.Duration{time.Hour, time.Hour, time.Hour, 2 * time.Hour}; !slices.Equal(dues, want) {
		t.Errorf("Job.Due of the runs: %v, want %v", dues, want)
	}
	mu.Unlock()
	follow := h.logs.FilterMessage("maintenance run finished").FilterField(zap.Time("follow_up", at(hm(1, 1)+15*time.Second))).Len()
	if follow != 1 {
		t.Errorf("%d Warn lines naming the follow-up at 1h1m15s, want 1", follow)
	}

	// A follow-up later than the next slot is not made: the slot comes first, with its own Due.
	h.m.setResult(func(j Job) error {
		mu.Lock()
		defer mu.Unlock()
		dues = append(dues, j.Due.Sub(day0))
		return heldError{retry: 2 * time.Hour}
	})
	mu.Lock()
	dues = nil
	mu.Unlock()
	wantCalls(t, h.runUntil(at(hm(3, 30))), "a quick at 3h0m0s")
	mu.Lock()
	if want := []time.Duration{3 * time.Hour}; !slices.Equal(dues, want) {
		t.Errorf("Job.Due of the runs: %v, want %v", dues, want)
	}
	mu.Unlock()
	if q, _, _ := h.s.Next("a"); !q.Equal(at(4 * time.Hour)) {
		t.Errorf("after a skip asking for a retry past the slot, quick is next at %v, want 4h", q.Sub(day0))
	}
}

// TestLookupsDoneOnceTheStartUpReadsEnd: LookupsDone is called once when the
// start-up's LastSuccess calls are all answered (three with concurrency 2),
// with their number, and again for a repository a reload adds.
func TestLookupsDoneOnceTheStartUpReadsEnd(t *testing.T) {
	h := newHarness(t, at(hm(10, 17)), 2)
	h.m.result = succeed
	h.recent("a", "b", "c", "d")

	var (
		mu    sync.Mutex
		calls []int
	)

	h.opts.LookupsDone = func(n int) {
		mu.Lock()
		calls = append(calls, n)
		mu.Unlock()
	}

	repos := []Repository{{Name: "a", Quick: "@hourly", Full: "@daily"}, {Name: "b", Quick: "@hourly", Full: "@daily"}, {Name: "c", Quick: "@hourly", Full: "@daily"}}
	h.start(repos...)
	st := h.settle()

	mu.Lock()
	got := slices.Clone(calls)
	mu.Unlock()

	if !slices.Equal(got, []int{3}) {
		t.Fatalf("after the start-up: LookupsDone calls %v, want [3]", got)
	}

	if err := h.s.Update(append(repos, Repository{Name: "d", Quick: "@hourly", Full: "@daily"})); err != nil {
		t.Fatal(err)
	}

	h.waitIdle("d looked up", func(s idleState) bool { return s.seq > st.seq && s.lookups == 0 })

	mu.Lock()
	defer mu.Unlock()

	if !slices.Equal(calls, []int{3, 1}) {
		t.Fatalf("after adding d: LookupsDone calls %v, want [3 1]", calls)
	}
}
