package lease

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	testclock "k8s.io/utils/clock/testing"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeBackend grants every lease at the clock's time and renews it, or
// fails with renewErr.
type fakeBackend struct {
	clk *testclock.FakeClock

	mu         sync.Mutex
	acquireErr error
	renewErr   error
	renews     int
	releases   []string
}

func (b *fakeBackend) TryAcquire(ctx context.Context, name, holder string, d time.Duration) (time.Time, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.acquireErr != nil {
		return time.Time{}, b.acquireErr
	}
	return b.clk.Now(), nil
}

func (b *fakeBackend) Renew(ctx context.Context, name, holder string, d time.Duration) (time.Time, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.renews++
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	if b.renewErr != nil {
		return time.Time{}, b.renewErr
	}
	return b.clk.Now(), nil
}

func (b *fakeBackend) Release(ctx context.Context, name, holder string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.releases = append(b.releases, name+"/"+holder)
	return nil
}

func (b *fakeBackend) set(renewErr error) {
	b.mu.Lock()
	b.renewErr = renewErr
	b.mu.Unlock()
}

func (b *fakeBackend) counts() (renews int, releases []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.renews, append([]string(nil), b.releases...)
}

// fakeRecorder records lease events as strings.
type fakeRecorder struct {
	mu     sync.Mutex
	events []string
}

func (r *fakeRecorder) Held(name string, held bool) { r.add(fmt.Sprintf("held %s %v", name, held)) }
func (r *fakeRecorder) Acquired(name string)        { r.add("acquired " + name) }
func (r *fakeRecorder) Lost(name, reason string)    { r.add("lost " + name + " " + reason) }
func (r *fakeRecorder) add(e string) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *fakeRecorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.events, "; ")
}

type fixture struct {
	clk      *testclock.FakeClock
	backend  *fakeBackend
	rec      *fakeRecorder
	m        *Manager
	renewals chan error
}

func newHarness(t *testing.T, d, renew, margin time.Duration) *fixture {
	t.Helper()
	clk := testclock.NewFakeClock(t0)
	h := &fixture{clk: clk, backend: &fakeBackend{clk: clk}, rec: &fakeRecorder{}, renewals: make(chan error, 1000)}
	m, err := New(Options{
		Backend: h.backend, Holder: "me", Duration: d, RenewInterval: renew, Margin: margin,
		Clock: clk, Logger: zaptest.NewLogger(t), Recorder: h.rec,
	})
	if err != nil {
		t.Fatal(err)
	}
	m.testHookRenewed = func(_ string, err error) { h.renewals <- err }
	h.m = m
	return h
}

func (h *fixture) acquire(t *testing.T, name string) *Held {
	t.Helper()
	held, err := h.m.Acquire(context.Background(), name)
	if err != nil {
		t.Fatalf("Acquire(%s): %v", name, err)
	}
	t.Cleanup(func() { _ = held.Release(context.Background()) })
	return held
}

// step moves the clock and waits for the renewal that it triggers.
func (h *fixture) step(t *testing.T, d time.Duration) error {
	t.Helper()
	h.clk.Step(d)
	select {
	case err := <-h.renewals:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("no renewal after stepping the clock by %v to %v", d, h.clk.Now())
		return nil
	}
}

func waitDone(t *testing.T, ctx context.Context) error {
	t.Helper()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-time.After(10 * time.Second):
		t.Fatal("lease context not cancelled")
		return nil
	}
}

func TestNewValidates(t *testing.T) {
	b := &fakeBackend{}
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"no backend", Options{Holder: "h", Duration: time.Minute, RenewInterval: 15 * time.Second}, "backend: required"},
		{"no holder", Options{Backend: b, Duration: time.Minute, RenewInterval: 15 * time.Second}, "holder: required"},
		{"no duration", Options{Backend: b, Holder: "h", RenewInterval: time.Second}, "duration: 0s, must be positive"},
		{"margin too large", Options{Backend: b, Holder: "h", Duration: time.Minute, RenewInterval: time.Second, Margin: time.Minute}, "margin: 1m0s, must be at least 0 and less than the duration 1m0s"},
		{"renew too slow", Options{Backend: b, Holder: "h", Duration: time.Minute, RenewInterval: 48 * time.Second}, "renewInterval: 48s, must be less than duration minus margin (48s)"},
		{"no renew interval", Options{Backend: b, Holder: "h", Duration: time.Minute}, "renewInterval: 0s, must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := New(Options{Backend: b, Holder: "h", Duration: time.Minute, RenewInterval: 15 * time.Second}); err != nil {
		t.Fatalf("New with valid options: %v", err)
	}
}

// TestDeadlineMargin: the deadline is the time of the last acquire or
// renewal plus duration minus the margin (Duration/5 by default).
func TestDeadlineMargin(t *testing.T) {
	for _, tc := range []struct {
		name             string
		d, renew, margin time.Duration
		wantLeft         time.Duration
	}{
		{"default margin", time.Minute, 15 * time.Second, 0, 48 * time.Second},
		{"explicit margin", time.Minute, 15 * time.Second, 5 * time.Second, 55 * time.Second},
		{"short", 4 * time.Second, time.Second, time.Second, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.d, tc.renew, tc.margin)
			held := h.acquire(t, "repo")
			if got, want := held.Deadline(), t0.Add(tc.wantLeft); !got.Equal(want) {
				t.Fatalf("Deadline after acquire = %v, want %v", got, want)
			}
			if err := h.step(t, tc.renew); err != nil {
				t.Fatalf("renewal: %v", err)
			}
			if got, want := held.Deadline(), t0.Add(tc.renew+tc.wantLeft); !got.Equal(want) {
				t.Fatalf("Deadline after renewal = %v, want %v", got, want)
			}
			// Renewals now fail: the lease is valid up to, not at, its
			// deadline.
			h.backend.set(errors.New("backend down"))
			deadline := held.Deadline()
			h.clk.FakePassiveClock.SetTime(deadline.Add(-time.Nanosecond))
			if err := held.Check(); err != nil {
				t.Fatalf("Check 1ns before the deadline: %v", err)
			}
			h.clk.FakePassiveClock.SetTime(deadline)
			if err := held.Check(); !errors.Is(err, ErrExpired) {
				t.Fatalf("Check at the deadline: %v, want ErrExpired", err)
			}
		})
	}
}

// TestWallClockJump: a jump of the wall clock past the deadline (a machine
// waking up) fails Check at once, before any timer has fired, and the
// watchdog cancels the context; the renewer does not renew the lapsed lease.
func TestWallClockJump(t *testing.T) {
	t.Run("check", func(t *testing.T) {
		h := newHarness(t, time.Minute, 15*time.Second, 0)
		held := h.acquire(t, "repo")
		if err := held.Check(); err != nil {
			t.Fatalf("Check: %v", err)
		}
		// Only the time changes: no timer or ticker fires, as after a
		// suspend before the runtime notices.
		h.clk.FakePassiveClock.SetTime(t0.Add(10 * time.Minute))
		if err := held.Check(); !errors.Is(err, ErrExpired) {
			t.Fatalf("Check after the jump: %v, want ErrExpired", err)
		}
		if cause := waitDone(t, held.Context()); !errors.Is(cause, ErrExpired) {
			t.Fatalf("cause = %v, want ErrExpired", cause)
		}
		// Sticky: time going back does not revive it.
		h.clk.FakePassiveClock.SetTime(t0)
		if err := held.Check(); !errors.Is(err, ErrExpired) {
			t.Fatalf("Check after the clock went back: %v, want ErrExpired", err)
		}
		if got, want := h.rec.String(), "acquired repo; held repo true; lost repo expired; held repo false"; got != want {
			t.Errorf("recorded %q, want %q", got, want)
		}
	})
	t.Run("watchdog", func(t *testing.T) {
		h := newHarness(t, time.Minute, 15*time.Second, 0)
		held := h.acquire(t, "repo")
		h.clk.SetTime(t0.Add(10 * time.Minute)) // fires the timers
		if cause := waitDone(t, held.Context()); !errors.Is(cause, ErrExpired) {
			t.Fatalf("cause = %v, want ErrExpired", cause)
		}
		held.wg.Wait()
		if renews, _ := h.backend.counts(); renews != 0 {
			t.Errorf("%d renewals after the deadline passed, want 0", renews)
		}
	})
	t.Run("just before", func(t *testing.T) {
		h := newHarness(t, time.Minute, 15*time.Second, 0)
		held := h.acquire(t, "repo")
		h.clk.FakePassiveClock.SetTime(held.Deadline().Add(-time.Millisecond))
		if err := held.Check(); err != nil {
			t.Fatalf("Check just before the deadline: %v", err)
		}
	})
}

// TestRenewalsKeepAlive: renewals every RenewInterval keep the lease valid
// across many durations.
func TestRenewalsKeepAlive(t *testing.T) {
	h := newHarness(t, time.Minute, 15*time.Second, 0)
	held := h.acquire(t, "repo")
	for i := 1; i <= 100; i++ {
		if err := h.step(t, 15*time.Second); err != nil {
			t.Fatalf("renewal %d: %v", i, err)
		}
		if err := held.Check(); err != nil {
			t.Fatalf("Check after renewal %d at %v: %v", i, h.clk.Now(), err)
		}
		if want := h.clk.Now().Add(48 * time.Second); !held.Deadline().Equal(want) {
			t.Fatalf("Deadline after renewal %d = %v, want %v", i, held.Deadline(), want)
		}
	}
	if err := held.Context().Err(); err != nil {
		t.Fatalf("context ended after 25 minutes of renewals: %v", err)
	}
	if renews, _ := h.backend.counts(); renews != 100 {
		t.Errorf("renewals = %d, want 100", renews)
	}
}

// TestRenewFailuresExpire: failed renewals are retried until the deadline;
// then the context is cancelled with ErrExpired and the last error.
func TestRenewFailuresExpire(t *testing.T) {
	h := newHarness(t, time.Minute, 15*time.Second, 0)
	held := h.acquire(t, "repo")
	down := errors.New("connection refused")
	h.backend.set(down)
	deadline := held.Deadline() // t0+48s
	if err := h.step(t, 15*time.Second); !errors.Is(err, down) {
		t.Fatalf("renewal: %v, want %v", err, down)
	}
	retry := 15 * time.Second / 4
	attempts := 1
	for h.clk.Now().Add(retry).Before(deadline) {
		if err := h.step(t, retry); !errors.Is(err, down) {
			t.Fatalf("retry: %v", err)
		}
		attempts++
		if err := held.Check(); err != nil {
			t.Fatalf("Check at %v, before the deadline: %v", h.clk.Now(), err)
		}
	}
	if attempts < 8 {
		t.Errorf("%d renewal attempts before the deadline, want a retry every %v", attempts, retry)
	}
	h.clk.SetTime(deadline)
	cause := waitDone(t, held.Context())
	if !errors.Is(cause, ErrExpired) || !errors.Is(cause, down) {
		t.Fatalf("cause = %v, want ErrExpired with the renewal's error", cause)
	}
	if !strings.Contains(h.rec.String(), "lost repo renew-failed") {
		t.Errorf("recorded %q, want a loss for renew-failed", h.rec.String())
	}
	// A renewal that succeeds again does not revive it.
	h.backend.set(nil)
	if err := held.Check(); !errors.Is(err, ErrExpired) {
		t.Fatalf("Check: %v", err)
	}
}

// TestLostCancelsAtOnce: a renewal that finds the lease taken cancels well
// before the deadline.
func TestLostCancelsAtOnce(t *testing.T) {
	h := newHarness(t, time.Minute, 15*time.Second, 0)
	held := h.acquire(t, "repo")
	h.backend.set(fmt.Errorf("lease repo held by other: %w", ErrLost))
	if err := h.step(t, 15*time.Second); !errors.Is(err, ErrLost) {
		t.Fatalf("renewal: %v", err)
	}
	select {
	case <-held.Context().Done():
	default:
		t.Fatal("context not cancelled when the renewal returned")
	}
	if cause := context.Cause(held.Context()); !errors.Is(cause, ErrLost) {
		t.Fatalf("cause = %v, want ErrLost", cause)
	}
	if err := held.Check(); !errors.Is(err, ErrLost) {
		t.Fatalf("Check = %v, want ErrLost", err)
	}
	if h.clk.Now().After(held.Deadline()) {
		t.Fatalf("test broken: deadline %v already passed", held.Deadline())
	}
	if !strings.Contains(h.rec.String(), "lost repo taken") {
		t.Errorf("recorded %q, want a loss for taken", h.rec.String())
	}
}

// TestRelease: Release stops the renewals, releases in the backend once,
// fails Check and frees the name for a new Acquire.
func TestRelease(t *testing.T) {
	h := newHarness(t, time.Minute, 15*time.Second, 0)
	held := h.acquire(t, "repo")
	if err := h.step(t, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := held.Release(context.Background()); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := held.Release(context.Background()); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if cause := context.Cause(held.Context()); !errors.Is(cause, ErrReleased) {
		t.Errorf("cause = %v, want ErrReleased", cause)
	}
	if err := held.Check(); !errors.Is(err, ErrReleased) {
		t.Errorf("Check after Release = %v, want ErrReleased", err)
	}
	for range 10 {
		h.clk.Step(15 * time.Second)
	}
	renews, releases := h.backend.counts()
	if renews != 1 {
		t.Errorf("renewals = %d, want 1 (none after Release)", renews)
	}
	if len(releases) != 1 || releases[0] != "repo/me" {
		t.Errorf("backend releases = %v, want [repo/me]", releases)
	}
	if got, want := h.rec.String(), "acquired repo; held repo true; held repo false"; got != want {
		t.Errorf("recorded %q, want %q", got, want)
	}
	again := h.acquire(t, "repo")
	if err := again.Check(); err != nil {
		t.Fatalf("Check of the lease acquired again: %v", err)
	}
}

// TestReleasedLate: a run that ends after its deadline passed, before the
// watchdog noticed, counts as a loss.
func TestReleasedLate(t *testing.T) {
	h := newHarness(t, time.Minute, 15*time.Second, 0)
	held := h.acquire(t, "repo")
	h.clk.FakePassiveClock.SetTime(t0.Add(time.Minute))
	if err := held.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := h.rec.String(), "acquired repo; held repo true; lost repo released-late; held repo false"; got != want {
		t.Errorf("recorded %q, want %q", got, want)
	}
	if _, releases := h.backend.counts(); len(releases) != 1 {
		t.Errorf("backend releases = %v, want one", releases)
	}
}

// TestCancelStopsRenewing: cancelling Acquire's context (a crash, for the
// backend) stops the renewals without a release; Check still holds until
// the deadline.
func TestCancelStopsRenewing(t *testing.T) {
	h := newHarness(t, time.Minute, 15*time.Second, 0)
	ctx, cancel := context.WithCancel(context.Background())
	held, err := h.m.Acquire(ctx, "repo")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	held.wg.Wait()
	h.clk.Step(15 * time.Second)
	if renews, releases := h.backend.counts(); renews != 0 || len(releases) != 0 {
		t.Errorf("renewals %d, releases %v after cancel, want none", renews, releases)
	}
	if err := held.Check(); err != nil {
		t.Errorf("Check before the deadline: %v", err)
	}
	h.clk.Step(33 * time.Second)
	if err := held.Check(); !errors.Is(err, ErrExpired) {
		t.Errorf("Check at the deadline: %v", err)
	}
}

func TestAcquireHeld(t *testing.T) {
	h := newHarness(t, time.Minute, 15*time.Second, 0)
	h.acquire(t, "repo")
	_, err := h.m.Acquire(context.Background(), "repo")
	if he, ok := errors.AsType[*HeldError](err); !ok || !he.Skipped() {
		t.Fatalf("second Acquire in this process: %v, want a HeldError", err)
	}
	other := &HeldError{Name: "b", Holder: "other", Age: 3 * time.Second}
	h.backend.mu.Lock()
	h.backend.acquireErr = other
	h.backend.mu.Unlock()
	if _, err := h.m.Acquire(context.Background(), "b"); err != other {
		t.Fatalf("Acquire of a lease another holder has: %v, want %v", err, other)
	}
	// Renewed 3s ago: stale 57s from now, worth a look one renewal later.
	if got, want := other.RetryAfter(), 72*time.Second; got != want {
		t.Errorf("RetryAfter of a lease renewed 3s ago: %v, want %v", got, want)
	}
	if he, _ := errors.AsType[*HeldError](err); he.RetryAfter() != 0 {
		t.Errorf("RetryAfter of a lease this process holds: %v, want 0", he.RetryAfter())
	}
	h.backend.mu.Lock()
	h.backend.acquireErr = nil
	h.backend.mu.Unlock()
	h.acquire(t, "b") // the failed attempt left the name free
}

// TestHeldNotFromAcquireProvesNothing: only Acquire makes a Held that
// passes Check. A nil pointer and the zero value fail every check with
// ErrNotHeld, and their contexts are already cancelled, so a caller that
// forges one gets nothing done.
func TestHeldNotFromAcquireProvesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		held *Held
	}{
		{"nil", nil},
		{"zero value", &Held{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.held.Check(); !errors.Is(err, ErrNotHeld) {
				t.Fatalf("Check = %v, want ErrNotHeld", err)
			}
			if err := context.Cause(tc.held.Context()); !errors.Is(err, ErrNotHeld) {
				t.Fatalf("Context cause = %v, want ErrNotHeld", err)
			}
			if !tc.held.Deadline().IsZero() {
				t.Fatalf("Deadline = %v, want zero", tc.held.Deadline())
			}
			ctx, stop := tc.held.Bound(context.Background())
			defer stop()
			if err := context.Cause(ctx); !errors.Is(err, ErrNotHeld) {
				t.Fatalf("Bound context cause = %v, want ErrNotHeld", err)
			}
			if err := tc.held.Release(context.Background()); !errors.Is(err, ErrNotHeld) {
				t.Fatalf("Release = %v, want ErrNotHeld", err)
			}
		})
	}
}

// TestBoundEndsAtTheDeadline: a context from Bound whose parent never ends
// (kopia's context.WithoutCancel) ends exactly when the lease's clock
// reaches the deadline, survives a renewal that moved the deadline, and
// ends at once when the lease is released.
func TestBoundEndsAtTheDeadline(t *testing.T) {
	// A margin of 12.5s puts the deadlines between the watchdog's ticks
	// (every second from the acquisition): only Bound's own timer can end
	// the context at the deadline.
	h := newHarness(t, time.Minute, 15*time.Second, 12500*time.Millisecond)
	held := h.acquire(t, "repo")

	ctx, stop := held.Bound(context.WithoutCancel(context.Background()))
	defer stop()

	// The first renewal (at 15s) moves the deadline from 47.5s to 62.5s.
	if err := h.step(t, 15*time.Second); err != nil {
		t.Fatalf("renewal: %v", err)
	}
	if got, want := held.Deadline(), t0.Add(62500*time.Millisecond); !got.Equal(want) {
		t.Fatalf("Deadline = %v, want %v", got, want)
	}
	h.backend.set(errors.New("backend down"))

	// Past the first deadline: the renewal kept the context alive.
	h.clk.SetTime(t0.Add(47500 * time.Millisecond))
	if err := ctx.Err(); err != nil {
		t.Fatalf("context ended at the old deadline: %v", context.Cause(ctx))
	}

	// A nanosecond before the deadline nothing ends; at it, the context
	// does, whatever the watchdog's ticker does.
	h.clk.SetTime(held.Deadline().Add(-time.Nanosecond))
	if err := ctx.Err(); err != nil {
		t.Fatalf("context ended before the deadline: %v", context.Cause(ctx))
	}
	h.clk.SetTime(held.Deadline())
	if err := waitDone(t, ctx); !errors.Is(err, ErrExpired) {
		t.Fatalf("cause = %v, want ErrExpired", err)
	}

	// Released: a new Bound context is cancelled from the start.
	held2 := h.acquire(t, "other")
	ctx2, stop2 := held2.Bound(context.Background())
	defer stop2()
	if err := held2.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := waitDone(t, ctx2); !errors.Is(err, ErrReleased) {
		t.Fatalf("cause after Release = %v, want ErrReleased", err)
	}
}
