package maintain

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kopia-maintd/kopia-maintd/lease"
	"github.com/kopia-maintd/kopia-maintd/repository"
	"github.com/kopia-maintd/kopia-maintd/scheduler"
)

var t0 = time.Date(2026, 12, 1, 4, 0, 0, 0, time.UTC)

// clockBackend grants every lease at its clock's time; renewals fail, so a
// lease's deadline only moves when the test says so.
type clockBackend struct{ clk *testclock.FakeClock }

func (b clockBackend) TryAcquire(context.Context, string, string, time.Duration) (time.Time, error) {
	return b.clk.Now(), nil
}

func (clockBackend) Renew(context.Context, string, string, time.Duration) (time.Time, error) {
	return time.Time{}, errors.New("renewals fail in this test")
}

func (clockBackend) Release(context.Context, string, string) error { return nil }

// newLeaseManager returns a lease manager on a fake clock: leases of 1m,
// valid for 48s after their acquisition.
func newLeaseManager(t *testing.T) (*lease.Manager, *testclock.FakeClock) {
	t.Helper()

	clk := testclock.NewFakeClock(t0)

	lm, err := lease.New(lease.Options{Backend: clockBackend{clk}, Holder: "me", Duration: time.Minute, RenewInterval: 15 * time.Second, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}

	return lm, clk
}

// heldElsewhere is an Acquirer whose leases another process holds.
type heldElsewhere struct{}

func (heldElsewhere) Acquire(_ context.Context, name string) (*lease.Held, error) {
	return nil, &lease.HeldError{Name: name, Holder: "replica-2", Age: 3 * time.Second}
}

// leaseMetrics records lease metrics.
type leaseMetrics struct {
	mu      sync.Mutex
	skipped []string
	held    []string
}

func (m *leaseMetrics) LeaseSkipped(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()

	m.skipped = append(m.skipped, name)
}

func (m *leaseMetrics) LeaseHeld(name string, held bool) {
	m.mu.Lock()
	defer m.mu.Unlock()

	if !held {
		m.held = append(m.held, name+" released")
	}
}

func TestWithSkipsALeaseHeldElsewhere(t *testing.T) {
	met := &leaseMetrics{}
	l := &Leases{Acquirer: heldElsewhere{}, Metrics: met, Log: zaptest.NewLogger(t)}

	called := false
	err := l.With(context.Background(), "r", func(context.Context, *lease.Held) error {
		called = true
		return nil
	})

	var he *lease.HeldError
	if !errors.As(err, &he) || he.Holder != "replica-2" {
		t.Fatalf("err = %v, want the *lease.HeldError of replica-2", err)
	}

	if called {
		t.Fatal("the work ran without the lease")
	}

	if len(met.skipped) != 1 || met.skipped[0] != "r" {
		t.Fatalf("skipped = %v, want [r]", met.skipped)
	}
}

// TestWithHandsOverAValidLeaseAndReleasesIt: the work gets the lease of its
// own repository, valid while it runs, released (and no longer valid) once
// With returns.
func TestWithHandsOverAValidLeaseAndReleasesIt(t *testing.T) {
	lm, _ := newLeaseManager(t)
	met := &leaseMetrics{}
	l := &Leases{Acquirer: lm, Metrics: met, Log: zaptest.NewLogger(t)}

	var got *lease.Held

	err := l.With(context.Background(), "r", func(ctx context.Context, held *lease.Held) error {
		got = held

		if err := held.Check(); err != nil {
			t.Errorf("Check inside the work: %v", err)
		}

		if held.Name() != "r" {
			t.Errorf("lease of %q, want r", held.Name())
		}

		if ctx != held.Context() {
			t.Error("the work's context is not the lease's")
		}

		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	if err := got.Check(); !errors.Is(err, lease.ErrReleased) {
		t.Fatalf("Check after With = %v, want ErrReleased", err)
	}

	if len(met.held) != 1 {
		t.Fatalf("lease_held updates = %v, want one release", met.held)
	}
}

// TestWithReportsALeaseLostDuringTheWork: the work's context ends when the
// lease's clock passes the deadline, and With says the lease was lost (a
// cancellation, not a failure of the work).
func TestWithReportsALeaseLostDuringTheWork(t *testing.T) {
	lm, clk := newLeaseManager(t)
	l := &Leases{Acquirer: lm, Log: zaptest.NewLogger(t), Fenced: func(string) int64 { return 7 }}

	err := l.With(context.Background(), "r", func(ctx context.Context, held *lease.Held) error {
		clk.SetTime(held.Deadline())

		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Second):
			t.Fatal("the work's context did not end at the deadline")
			return nil
		}
	})

	if !errors.Is(err, ErrLeaseLost) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want ErrLeaseLost and context.Canceled", err)
	}
}

func TestCoveredRule(t *testing.T) {
	due := t0

	for _, tc := range []struct {
		name string
		due  time.Time
		last time.Time
		mine bool
		want bool
	}{
		{"done by another replica after the slot", due, due.Add(time.Minute), false, true},
		{"done by this process", due, due.Add(time.Minute), true, false},
		{"done before the slot", due, due.Add(-time.Minute), false, false},
		{"done at the slot itself", due, due, false, false},
		{"no slot (a catch-up run)", time.Time{}, due, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := covered(tc.due, tc.last, tc.mine); got != tc.want {
				t.Fatalf("covered = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestScheduledWithoutSpread: a scheduled job runs inside its lease and its
// Covered function follows the rule.
func TestScheduledWithoutSpread(t *testing.T) {
	lm, _ := newLeaseManager(t)
	l := &Leases{Acquirer: lm, Log: zaptest.NewLogger(t)}
	job := scheduler.Job{Repository: "r", Due: t0}

	err := l.Scheduled(context.Background(), job, func(_ context.Context, held *lease.Held, covered func(time.Time) bool) error {
		if err := held.Check(); err != nil || held.Name() != "r" {
			t.Errorf("lease %q: %v", held.Name(), err)
		}

		if !covered(t0.Add(time.Second)) || covered(t0.Add(-time.Second)) {
			t.Error("Covered does not follow the rule")
		}

		return &repository.DoneError{Repository: "r"}
	})

	var done *repository.DoneError
	if !errors.As(err, &done) {
		t.Fatalf("err = %v, want the work's DoneError", err)
	}
}

func TestLeaseStatusOf(t *testing.T) {
	d := time.Minute

	for _, tc := range []struct {
		name string
		hs   []lease.Holding
		want LeaseStatus
	}{
		{"free", nil, LeaseStatus{State: LeaseFree}},
		{
			"held: renewed within the duration",
			[]lease.Holding{{Holder: "a", Renewed: t0.Add(-59 * time.Second)}},
			LeaseStatus{State: LeaseHeld, Holder: "a", Renewed: t0.Add(-59 * time.Second)},
		},
		{
			"stale: a full duration without renewal",
			[]lease.Holding{{Holder: "a", Renewed: t0.Add(-time.Minute)}},
			LeaseStatus{State: LeaseStale, Holder: "a", Renewed: t0.Add(-time.Minute)},
		},
		{
			"racing claimants: the newest decides",
			[]lease.Holding{{Holder: "old", Renewed: t0.Add(-5 * time.Minute)}, {Holder: "new", Renewed: t0.Add(-time.Second)}},
			LeaseStatus{State: LeaseHeld, Holder: "new", Renewed: t0.Add(-time.Second)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := LeaseStatusOf(tc.hs, d, t0); got != tc.want {
				t.Fatalf("LeaseStatusOf = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// failingInspector cannot read the lease.
type failingInspector struct{}

func (failingInspector) Inspect(context.Context, string) ([]lease.Holding, error) {
	return nil, errors.New("forbidden: leases")
}

func (failingInspector) Duration() time.Duration { return time.Minute }

func TestInspectLeaseUnreadable(t *testing.T) {
	got := InspectLease(context.Background(), failingInspector{}, "r", t0)
	if got.State != LeaseUnknown || got.Error != "forbidden: leases" {
		t.Fatalf("InspectLease = %+v, want unknown with the error", got)
	}
}
