package repository

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/maintenance"
	"go.uber.org/zap"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kopia-maintd/kopia-maintd/lease"
	safetygate "github.com/kopia-maintd/kopia-maintd/safety"
)

// fakeClockLease returns a valid lease on the named repository whose
// deadline follows the returned fake clock: 48 minutes after the clock's
// start (duration 1h, default margin). Renewals fail, so the deadline stays.
func fakeClockLease(t testing.TB, name string) (*lease.Held, *testclock.FakeClock) {
	t.Helper()

	clk := testclock.NewFakeClock(time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC))

	lm, err := lease.New(lease.Options{Backend: clockLeases{clk}, Holder: "test", Duration: time.Hour, RenewInterval: 40 * time.Minute, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}

	held, err := lm.Acquire(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { _ = held.Release(context.Background()) })

	return held, clk
}

// clockLeases grants every lease at its clock's time and renews none.
type clockLeases struct{ clk *testclock.FakeClock }

func (b clockLeases) TryAcquire(context.Context, string, string, time.Duration) (time.Time, error) {
	return b.clk.Now(), nil
}

func (clockLeases) Renew(context.Context, string, string, time.Duration) (time.Time, error) {
	return time.Time{}, errors.New("renewals fail in this test")
}

func (clockLeases) Release(context.Context, string, string) error { return nil }

// admitted returns the admission of a gate whose checks all passed for the
// named repository.
func admitted(t testing.TB, name string) safetygate.Admission {
	t.Helper()

	pass := func(group string) safetygate.Checker {
		return safetygate.CheckerFunc(func(context.Context) ([]safetygate.Check, error) {
			return []safetygate.Check{{Name: group, Verdict: safetygate.Pass, Reason: "nothing seen"}}, nil
		})
	}

	g := &safetygate.Gate{RepositoryName: name, Allow: true, Kubernetes: pass(safetygate.CheckKubernetes), Repository: pass(safetygate.CheckRepositoryActivity)}

	a, d, err := g.Admit(context.Background())
	if err != nil || !a.Valid() {
		t.Fatalf("admit: %v (decision %+v)", err, d)
	}

	return a
}

func noKubernetes(context.Context) error { return nil }

// hookStorage is a memStorage whose calls a test can intercept.
type hookStorage struct {
	*memStorage

	mu       sync.Mutex
	onGet    func(ctx context.Context, id blob.ID) error
	onPut    func(ctx context.Context, id blob.ID) error
	onDelete func(ctx context.Context, id blob.ID) error
}

func (s *hookStorage) hooks() (get, put, del func(context.Context, blob.ID) error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.onGet, s.onPut, s.onDelete
}

func (s *hookStorage) GetBlob(ctx context.Context, id blob.ID, offset, length int64, out blob.OutputBuffer) error {
	if get, _, _ := s.hooks(); get != nil {
		if err := get(ctx, id); err != nil {
			return err
		}
	}

	return s.memStorage.GetBlob(ctx, id, offset, length, out)
}

func (s *hookStorage) PutBlob(ctx context.Context, id blob.ID, data blob.Bytes, opts blob.PutOptions) error {
	if _, put, _ := s.hooks(); put != nil {
		if err := put(ctx, id); err != nil {
			return err
		}
	}

	return s.memStorage.PutBlob(ctx, id, data, opts)
}

func (s *hookStorage) DeleteBlob(ctx context.Context, id blob.ID) error {
	if _, _, del := s.hooks(); del != nil {
		if err := del(ctx, id); err != nil {
			return err
		}
	}

	return s.memStorage.DeleteBlob(ctx, id)
}

// newHookedFixture is newUnsafeFixture on a hookStorage.
func newHookedFixture(t *testing.T) (*unsafeFixture, *hookStorage) {
	t.Helper()

	clk := &fakeClock{t: time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC), tick: time.Millisecond}
	st := newMemStorage(clk.Now)
	hs := &hookStorage{memStorage: st}

	m, err := NewManager(Options{
		StateDirectory: filepath.Join(t.TempDir(), "state"),
		Identity:       Identity{Username: "maintd", Hostname: "sim"},
		Logger:         zap.NewNop(),
		Now:            clk.Now,
	}, []Spec{{
		Name: "r", Storage: CustomStorage(func(context.Context) (blob.Storage, error) { return hs, nil }),
		Password: staticPassword(testPassword), Create: true, Ownership: Ownership{Policy: PolicyNever},
	}})
	if err != nil {
		t.Fatal(err)
	}

	f := &unsafeFixture{t: t, clk: clk, st: st, m: m}
	f.run(Quick, nil)
	f.writer = newTestClient(t, st, testPassword, "velero", "node-1", clk.Now)

	return f, hs
}

func (f *unsafeFixture) counts() (puts, deletes int) {
	f.st.mu.Lock()
	defer f.st.mu.Unlock()

	return f.st.puts, f.st.deletes
}

// TestRunRefusesWithoutAValidLease: every write API refuses, before it
// touches storage, without a lease that Acquire made for this repository and
// that is still valid.
func TestRunRefusesWithoutAValidLease(t *testing.T) {
	f := newUnsafeFixture(t)
	f.writer.snapshot("/data", map[string][]byte{"a": randomBytes(1, 1<<20)})
	f.clk.Advance(time.Hour)

	released := testLease(t, "r")
	if err := released.Release(context.Background()); err != nil {
		t.Fatal(err)
	}

	expired, clk := fakeClockLease(t, "r")
	clk.SetTime(expired.Deadline())

	for _, tc := range []struct {
		name string
		held *lease.Held
		want string
	}{
		{"nil", nil, "no lease given"},
		{"zero value", &lease.Held{}, lease.ErrNotHeld.Error()},
		{"another repository's", testLease(t, "other"), `the lease given is for "other"`},
		{"released", released, lease.ErrReleased.Error()},
		{"expired", expired, lease.ErrExpired.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			puts, deletes := f.counts()
			ctx := context.Background()

			_, runErr := f.m.Run(ctx, tc.held, "r", RunRequest{Cycle: Full})
			_, takeErr := f.m.TakeOwnership(ctx, tc.held, "r")
			_, backErr := f.m.HandBack(ctx, tc.held, "r", "velero@node-1")

			for op, err := range map[string]error{"run": runErr, "take": takeErr, "hand back": backErr} {
				if !errors.Is(err, ErrNoLease) || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: err = %v, want ErrNoLease saying %q", op, err, tc.want)
				}
			}

			if p, d := f.counts(); p != puts || d != deletes {
				t.Fatalf("storage saw %d puts and %d deletes", p-puts, d-deletes)
			}
		})
	}
}

// TestOpenOutsideALeaseCreatesNothing: a repository is created only by an
// operation inside its lease; an open without one (status, activity) that
// finds an empty storage writes nothing to it.
func TestOpenOutsideALeaseCreatesNothing(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC), tick: time.Millisecond}
	st := newMemStorage(clk.Now)
	m := newSimManager(t, clk, st)

	s, err := m.openWith(context.Background(), "r", nil, true)
	if err == nil {
		s.Close()
		t.Fatal("an open outside a lease created the repository")
	}

	if !errors.Is(err, ErrNoLease) {
		t.Fatalf("err = %v, want ErrNoLease", err)
	}

	if st.puts != 0 || len(st.blobs) != 0 {
		t.Fatalf("storage holds %d blobs after %d puts, want none", len(st.blobs), st.puts)
	}

	// Inside a lease the same repository is created.
	if _, err := m.Run(context.Background(), testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatalf("first run inside the lease: %v", err)
	}

	if len(st.blobs) == 0 {
		t.Fatal("the run inside the lease created nothing")
	}
}

// TestUnsafeRunNeedsTheGatesAdmission: a SafetyNone cycle cannot start
// without the admission of a passed gate for its own repository.
func TestUnsafeRunNeedsTheGatesAdmission(t *testing.T) {
	f := newUnsafeFixture(t)
	quiet := 30 * time.Minute
	f.clk.Advance(quiet + time.Minute)

	for _, tc := range []struct {
		name string
		adm  safetygate.Admission
		want string
	}{
		{"no admission", safetygate.Admission{}, "the safety=none gate has not passed"},
		{"another repository's", admitted(t, "other"), `the gate passed for repository "other"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			puts, _ := f.counts()

			rep, err := f.run(Full, &UnsafeRun{Admission: tc.adm, QuietPeriod: quiet, Guard: refuseAny, Kubernetes: noKubernetes})
			if !errors.Is(err, ErrNotAdmitted) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrNotAdmitted saying %q", err, tc.want)
			}

			if rep != nil {
				t.Fatalf("report %+v of a refused run", rep)
			}

			if p, _ := f.counts(); p != puts {
				t.Fatalf("storage saw %d puts", p-puts)
			}
		})
	}

	// Admitted for "r", the cycle runs.
	if _, err := f.run(Full, &UnsafeRun{Admission: admitted(t, "r"), QuietPeriod: quiet, Guard: refuseAny, Kubernetes: noKubernetes}); err != nil {
		t.Fatalf("admitted run: %v", err)
	}
}

// deletedSnapshotFixture has a deleted snapshot whose data a SafetyNone
// cycle would reclaim, and is past the quiet period.
func deletedSnapshotFixture(t *testing.T) (*unsafeFixture, *hookStorage) {
	t.Helper()

	f, hs := newHookedFixture(t)
	id := f.writer.snapshot("/big", map[string][]byte{"a": randomBytes(9, 8<<20)})
	f.writer.snapshot("/keep", map[string][]byte{"k": randomBytes(10, 1<<20)})
	f.writer.deleteSnapshot(id)
	f.clk.Advance(31 * time.Minute)

	return f, hs
}

// TestUnsafeRecheckBeforeSnapshotGC: the repository and Kubernetes are
// re-checked synchronously right before snapshot GC; a refusal there
// cancels the cycle before snapshot GC marks anything and before any blob
// is deleted.
func TestUnsafeRecheckBeforeSnapshotGC(t *testing.T) {
	for _, tc := range []struct {
		name          string
		guard         func(calls int) error
		kube          func(calls int) error
		wantEvidence  string
		wantGuardCall int
	}{
		{
			name: "repository refuses on the second call",
			guard: func(calls int) error {
				if calls == 2 {
					return errors.New("a pack of session s1234 appeared")
				}

				return nil
			},
			kube:         func(int) error { return nil },
			wantEvidence: "a pack of session s1234 appeared",
		},
		{
			name:  "Kubernetes refuses on its first re-check",
			guard: func(int) error { return nil },
			kube: func(calls int) error {
				if calls == 1 {
					return errors.New("pod velero/node-agent-x Running")
				}

				return nil
			},
			wantEvidence: "pod velero/node-agent-x Running",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, _ := deletedSnapshotFixture(t)
			_, deletes := f.counts()

			var guardCalls, kubeCalls atomic.Int32

			u := &UnsafeRun{
				Admission: admitted(t, "r"), QuietPeriod: 30 * time.Minute,
				Guard: func(ctx context.Context, acts []Activity) error {
					if err := tc.guard(int(guardCalls.Add(1))); err != nil {
						return err
					}

					return refuseAny(ctx, acts)
				},
				Kubernetes: func(context.Context) error { return tc.kube(int(kubeCalls.Add(1))) },
			}

			rep, err := f.run(Full, u)

			var ge *GuardError
			if !errors.As(err, &ge) || !ge.Started || !strings.Contains(err.Error(), tc.wantEvidence) {
				t.Fatalf("err = %v, want a cancellation with %q", err, tc.wantEvidence)
			}

			for _, task := range rep.Tasks {
				if task.Task == string(maintenance.TaskSnapshotGarbageCollection) {
					t.Fatalf("snapshot GC ran before the refusal: tasks %v", taskNames(rep))
				}
			}

			if len(rep.Tasks) != 0 {
				t.Fatalf("tasks %v ran after the refusal", taskNames(rep))
			}

			if _, d := f.counts(); d != deletes {
				t.Fatalf("%d blobs deleted after the refusal", d-deletes)
			}

			f.writer.verifyAll()
		})
	}
}

// TestUnsafeFirstDeleteWaitsForARecheck: the first blob delete of a
// SafetyNone cycle waits for a synchronous re-check of its own; when that
// refuses, no blob is deleted and the cycle is cancelled.
func TestUnsafeFirstDeleteWaitsForARecheck(t *testing.T) {
	f, hs := deletedSnapshotFixture(t)

	var kubeCalls atomic.Int32

	var deletesSeen atomic.Int32

	hs.mu.Lock()
	// Deleting the marker of one of the run's own write sessions removes
	// nobody's data and is let through; anything else must wait.
	hs.onDelete = func(_ context.Context, id blob.ID) error {
		if !strings.HasPrefix(string(id), "s") {
			deletesSeen.Add(1)
		}

		return nil
	}
	hs.mu.Unlock()

	u := &UnsafeRun{
		Admission: admitted(t, "r"), QuietPeriod: 30 * time.Minute, Guard: refuseAny,
		// The re-check before snapshot GC passes; the one at the first
		// delete (the second call) refuses.
		Kubernetes: func(context.Context) error {
			if kubeCalls.Add(1) == 2 {
				return errors.New("Backup velero/nightly phase InProgress")
			}

			return nil
		},
	}

	rep, err := f.run(Full, u)

	var ge *GuardError
	if !errors.As(err, &ge) || !ge.Started || !strings.Contains(err.Error(), "Backup velero/nightly phase InProgress") {
		t.Fatalf("err = %v, want a cancellation at the first delete", err)
	}

	if n := deletesSeen.Load(); n != 0 {
		t.Fatalf("%d deletes reached storage", n)
	}

	if kubeCalls.Load() != 2 {
		t.Fatalf("Kubernetes re-checked %d times, want 2 (before snapshot GC, at the first delete)", kubeCalls.Load())
	}

	t.Logf("cancelled after tasks %v: %v", taskNames(rep), err)
	f.writer.verifyAll()
}

// TestUnsafeCycleStopsWhenTheScheduleCannotBeReadBack: the re-check after a
// task needs the run history; when reading it back fails, the SafetyNone
// cycle stops instead of carrying on unchecked.
func TestUnsafeCycleStopsWhenTheScheduleCannotBeReadBack(t *testing.T) {
	f, hs := deletedSnapshotFixture(t)

	var (
		written atomic.Bool
		failed  atomic.Int32
	)

	hs.mu.Lock()
	hs.onPut = func(_ context.Context, id blob.ID) error {
		if id == maintenanceScheduleBlobID {
			written.Store(true)
		}

		return nil
	}
	// The first read after the cycle rewrote its schedule (the re-check's
	// read back) fails; kopia's own later reads succeed.
	hs.onGet = func(_ context.Context, id blob.ID) error {
		if id == maintenanceScheduleBlobID && written.Load() && failed.Add(1) == 1 {
			return errors.New("injected read failure")
		}

		return nil
	}
	hs.mu.Unlock()

	guardCalls := 0
	u := &UnsafeRun{
		Admission: admitted(t, "r"), QuietPeriod: 30 * time.Minute, Kubernetes: noKubernetes,
		Guard: func(ctx context.Context, acts []Activity) error {
			guardCalls++
			return refuseAny(ctx, acts)
		},
	}

	_, err := f.run(Full, u)

	var ge *GuardError
	if !errors.As(err, &ge) || !ge.Started || !strings.Contains(err.Error(), "injected read failure") {
		t.Fatalf("err = %v (schedule reads failed %d times), want a cancellation naming the failed read", err, failed.Load())
	}

	hs.mu.Lock()
	hs.onGet, hs.onPut = nil, nil
	hs.mu.Unlock()

	f.writer.verifyAll()
}

// TestStorageCallEndsAtTheLeaseDeadline: a storage call that hangs, made
// under a context that never ends, returns when the lease's clock passes the
// deadline, and the run fails with the lease's expiry; nothing is written
// after it.
func TestStorageCallEndsAtTheLeaseDeadline(t *testing.T) {
	f, hs := newHookedFixture(t)
	f.clk.Advance(time.Hour)

	held, clk := fakeClockLease(t, "r")

	entered := make(chan struct{})
	returned := make(chan error, 1)

	var once sync.Once

	hs.mu.Lock()
	hs.onPut = func(ctx context.Context, id blob.ID) error {
		if id != maintenanceScheduleBlobID {
			return nil
		}

		blocked := false
		once.Do(func() { blocked = true })

		if !blocked {
			return nil
		}

		// The request hangs (a stalled server) until its context ends.
		close(entered)
		<-ctx.Done()
		returned <- context.Cause(ctx)

		return ctx.Err()
	}
	hs.mu.Unlock()

	runErr := make(chan error, 1)

	go func() {
		// A context that never ends, as kopia's context.WithoutCancel.
		_, err := f.m.Run(context.WithoutCancel(context.Background()), held, "r", RunRequest{Cycle: Full})
		runErr <- err
	}()

	select {
	case <-entered:
	case <-time.After(time.Minute):
		t.Fatal("the run never wrote its schedule")
	}

	// Just before the deadline the call still hangs.
	clk.SetTime(held.Deadline().Add(-time.Millisecond))

	select {
	case err := <-returned:
		t.Fatalf("the call returned before the deadline: %v", err)
	case <-time.After(100 * time.Millisecond):
	}

	puts, _ := f.counts()

	clk.SetTime(held.Deadline())

	select {
	case cause := <-returned:
		if !errors.Is(cause, lease.ErrExpired) {
			t.Fatalf("the call's context ended with %v, want ErrExpired", cause)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the hanging storage call did not return at the lease deadline")
	}

	select {
	case err := <-runErr:
		if err == nil {
			t.Fatal("the run succeeded after its lease expired")
		}

		t.Logf("run: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("the run did not end after its lease expired")
	}

	if p, _ := f.counts(); p != puts {
		t.Fatalf("%d writes reached storage after the deadline", p-puts)
	}
}

// TestUnsafeRunWritesParamsFirst: the params write before the cycle (a
// changed interval, a takeover) commits a write session of our own, which
// deletes that session's marker; the first-delete gate lets that through
// and the cycle runs.
func TestUnsafeRunWritesParamsFirst(t *testing.T) {
	f, _ := deletedSnapshotFixture(t)

	rep, err := f.m.Run(context.Background(), testLease(t, "r"), "r", RunRequest{
		Cycle: Full, QuickInterval: 2 * time.Hour, FullInterval: 12 * time.Hour,
		Unsafe: &UnsafeRun{Admission: admitted(t, "r"), QuietPeriod: 30 * time.Minute, Guard: refuseAny, Kubernetes: noKubernetes},
	})
	if err != nil {
		t.Fatalf("safety=none cycle with a params write first: %v", err)
	}

	if len(rep.Tasks) == 0 {
		t.Fatal("no task ran")
	}

	f.writer.verifyAll()
}
