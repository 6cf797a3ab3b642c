package repository

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob"
	"go.uber.org/zap"
)

// unsafeFixture is a repository on a fake clock maintained by a manager,
// with a backup client writing to it.
type unsafeFixture struct {
	t      *testing.T
	clk    *fakeClock
	st     *memStorage
	m      *Manager
	writer *testClient
}

// newSimManager returns a manager of one repository "r" on st, which it
// creates and owns, with kopia and the manager on clk.
func newSimManager(t *testing.T, clk *fakeClock, st *memStorage) *Manager {
	t.Helper()

	m, err := NewManager(Options{
		StateDirectory: filepath.Join(t.TempDir(), "state"),
		Identity:       Identity{Username: "maintd", Hostname: "sim"},
		Logger:         zap.NewNop(),
		Now:            clk.Now,
	}, []Spec{{
		Name: "r", Storage: CustomStorage(func(context.Context) (blob.Storage, error) { return st, nil }),
		Password: staticPassword(testPassword), Create: true, Ownership: Ownership{Policy: PolicyNever},
	}})
	if err != nil {
		t.Fatal(err)
	}

	return m
}

func newUnsafeFixture(t *testing.T) *unsafeFixture {
	t.Helper()

	clk := &fakeClock{t: time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC), tick: time.Millisecond}
	st := newMemStorage(clk.Now)

	m := newSimManager(t, clk, st)

	f := &unsafeFixture{t: t, clk: clk, st: st, m: m}
	f.run(Quick, nil)
	f.writer = newTestClient(t, st, testPassword, "velero", "node-1", clk.Now)

	return f
}

func (f *unsafeFixture) run(cycle Cycle, unsafe *UnsafeRun) (*Report, error) {
	f.t.Helper()

	return f.m.Run(context.Background(), testLease(f.t, "r"), "r", RunRequest{Cycle: cycle, Unsafe: unsafe})
}

func (f *unsafeFixture) activity(quiet time.Duration) []Activity {
	f.t.Helper()

	acts, err := f.m.Activity(context.Background(), nil, "r", quiet)
	if err != nil {
		f.t.Fatalf("activity: %v", err)
	}

	return acts
}

// refuseAny is the guard of a gate that refuses on any evidence.
func refuseAny(_ context.Context, acts []Activity) error {
	if len(acts) > 0 {
		return fmt.Errorf("%d signs of another writer, first: %s", len(acts), acts[0])
	}

	return nil
}

func TestActivitySeesOtherWritersButNotOurs(t *testing.T) {
	f := newUnsafeFixture(t)
	quiet := 30 * time.Minute

	if acts := f.activity(quiet); len(acts) != 0 {
		t.Fatalf("right after our own run: activity %v, want none (our own writes are ours)", acts)
	}

	f.clk.Advance(time.Minute)
	f.writer.snapshot("/data", map[string][]byte{"a": randomBytes(1, 1<<20)})
	f.clk.Advance(5 * time.Minute)

	acts := f.activity(quiet)
	if len(acts) == 0 {
		t.Fatal("a snapshot written 5 minutes ago is not seen as another writer's activity")
	}

	for _, a := range acts {
		if a.Kind != ActivityRecentWrite || a.Age < 5*time.Minute || a.Age > 6*time.Minute || a.Session == "" {
			t.Fatalf("unexpected evidence %+v", a)
		}
	}

	t.Logf("evidence: %s", acts[0])

	// A SafetyNone cycle is refused before it starts, and nothing ran.
	_, err := f.run(Full, &UnsafeRun{Admission: admitted(t, "r"), QuietPeriod: quiet, Guard: refuseAny, Kubernetes: noKubernetes})

	var ge *GuardError
	if !errors.As(err, &ge) || ge.Started {
		t.Fatalf("unsafe run with a recent writer: err = %v, want a refusal before the start", err)
	}

	// Quiet for longer than the quiet period: no evidence, the cycle runs.
	f.clk.Advance(quiet)

	if acts := f.activity(quiet); len(acts) != 0 {
		t.Fatalf("after the quiet period: activity %v", acts)
	}

	if _, err := f.run(Full, &UnsafeRun{Admission: admitted(t, "r"), QuietPeriod: quiet, Guard: refuseAny, Kubernetes: noKubernetes}); err != nil {
		t.Fatalf("unsafe run after the quiet period: %v", err)
	}

	f.writer.verifyAll()
}

func TestActivitySeesAStaleSessionMarker(t *testing.T) {
	f := newUnsafeFixture(t)

	// A client dies mid-write: a pack and its session marker reach storage,
	// the session is never committed.
	abandoned := errors.New("client died")
	err := repo.WriteSession(context.Background(), f.writer.rep, repo.WriteSessionOptions{Purpose: "dies"}, func(ctx context.Context, w repo.RepositoryWriter) error {
		ow := w.NewObjectWriter(ctx, objectWriterOptions())
		if _, err := ow.Write(randomBytes(7, 30<<20)); err != nil {
			return err
		}

		return abandoned
	})
	if !errors.Is(err, abandoned) {
		t.Fatalf("abandoned session: %v", err)
	}

	// Days later the data is old, but the marker still says someone was
	// writing: kopia keeps such sessions' packs for 96h and so does the gate.
	f.clk.Advance(3 * 24 * time.Hour)

	acts := f.activity(30 * time.Minute)

	var marker *Activity
	for i := range acts {
		if acts[i].Kind == ActivitySessionMarker {
			marker = &acts[i]
		}
	}

	if marker == nil || marker.Writer != "velero@node-1" || marker.Age < 72*time.Hour || marker.Age > 73*time.Hour {
		t.Fatalf("activity = %v, want the stale session marker of velero@node-1, 72h old", acts)
	}

	t.Logf("evidence: %s", marker)
}

func TestUnsafeCycleReclaimsDeletedSnapshotAtOnce(t *testing.T) {
	f := newUnsafeFixture(t)
	quiet := 30 * time.Minute

	keep := f.writer.snapshot("/keep", map[string][]byte{"k": randomBytes(3, 2<<20)})
	_ = keep

	big := map[string][]byte{}
	for i := range 4 {
		big[fmt.Sprintf("part%d", i)] = randomBytes(100+int64(i), 16<<20)
	}

	id := f.writer.snapshot("/big", big)
	f.writer.deleteSnapshot(id)

	before := f.st.totalBytes("p")

	// A SafetyFull cycle right now reclaims nothing: the data is minutes old.
	f.clk.Advance(quiet + time.Minute)

	if _, err := f.run(Full, nil); err != nil {
		t.Fatal(err)
	}

	if after := f.st.totalBytes("p"); after < before {
		t.Fatalf("a SafetyFull cycle reclaimed %d bytes of minutes-old data", before-after)
	}

	f.clk.Advance(quiet + time.Minute)

	rep, err := f.run(Full, &UnsafeRun{Admission: admitted(t, "r"), QuietPeriod: quiet, Guard: refuseAny, Kubernetes: noKubernetes})
	if err != nil {
		t.Fatalf("unsafe cycle: %v", err)
	}

	after := f.st.totalBytes("p")
	t.Logf("data packs: %d bytes before, %d after one safety=none cycle (%d tasks)", before, after, len(rep.Tasks))

	if before-after < 60<<20 {
		t.Fatalf("one safety=none cycle freed %d bytes, want the deleted 64 MiB", before-after)
	}

	f.writer.verifyAll()
}

func TestGuardCancelsUnsafeCycleBetweenTasks(t *testing.T) {
	f := newUnsafeFixture(t)
	quiet := 30 * time.Minute

	id := f.writer.snapshot("/big", map[string][]byte{"a": randomBytes(9, 8<<20)})
	f.writer.snapshot("/keep", map[string][]byte{"k": randomBytes(10, 1<<20)})
	f.writer.deleteSnapshot(id)
	f.clk.Advance(quiet + time.Minute)

	// The first call is the check before the cycle, the second the
	// re-check before snapshot GC, the third the one after it.
	calls := 0
	guard := func(_ context.Context, acts []Activity) error {
		calls++
		if calls == 3 {
			return errors.New("a Backup started")
		}

		return refuseAny(context.Background(), acts)
	}

	rep, err := f.run(Full, &UnsafeRun{Admission: admitted(t, "r"), QuietPeriod: quiet, Guard: guard, Kubernetes: noKubernetes})

	var ge *GuardError
	if !errors.As(err, &ge) || !ge.Started || !strings.Contains(err.Error(), "a Backup started") {
		t.Fatalf("err = %v, want a cancellation by the guard", err)
	}

	if len(rep.Tasks) == 0 || len(rep.Tasks) > 2 {
		t.Fatalf("tasks after the cancellation: %v, want the run to stop right after the first task", taskNames(rep))
	}

	t.Logf("cancelled after %v: %v", taskNames(rep), err)

	// kopia leaves a cancelled run safe: everything reads back and the next
	// SafetyFull cycle runs cleanly.
	f.writer.verifyAll()

	if _, err := f.run(Full, nil); err != nil {
		t.Fatalf("SafetyFull cycle after the cancellation: %v", err)
	}

	f.writer.verifyAll()
}
