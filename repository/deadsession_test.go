package repository

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/content"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kopia-maintd/kopia-maintd/lease"
)

// leasesAt is freeLeases on a clock that reads at.
type leasesAt struct {
	freeLeases
	at time.Time
}

func (b leasesAt) TryAcquire(context.Context, string, string, time.Duration) (time.Time, error) {
	return b.at, nil
}

// leaseAt acquires a lease on "r" at now: Acquired is now.
func leaseAt(t *testing.T, now time.Time) *lease.Held {
	t.Helper()

	lm, err := lease.New(lease.Options{Backend: leasesAt{at: now}, Holder: "test", Duration: time.Hour, RenewInterval: time.Minute, Clock: clocktesting.NewFakeClock(now)})
	if err != nil {
		t.Fatal(err)
	}

	held, err := lm.Acquire(context.Background(), "r")
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { _ = held.Release(context.Background()) })

	return held
}

// refuseLive is the gate's guard: dead evidence does not refuse.
func refuseLive(_ context.Context, acts []Activity) error {
	for _, a := range acts {
		if a.Dead == "" {
			return fmt.Errorf("sign of another writer: %s", a)
		}
	}

	return nil
}

// TestOwnDeadSessionMarkerDoesNotShutTheGate: a run of this daemon dies
// after its session marker reached the storage and before the session was
// committed (its pack writes fail from then on, as for a process killed
// mid-write). The marker stays. Without a lease it counts as a writer;
// under a lease acquired after it was written it is reported as dead and
// the next safety=none cycle runs (and removes it). A marker of another
// client's dead session, and an own marker written after the lease was
// acquired, still refuse.
func TestOwnDeadSessionMarkerDoesNotShutTheGate(t *testing.T) {
	f, hs := newHookedFixture(t)
	ctx := context.Background()

	// Three short packs for a full cycle's rewrite to merge (it writes
	// contents, so it opens a write session with a marker).
	for i := range 3 {
		f.writer.snapshot(fmt.Sprintf("/data%d", i), map[string][]byte{"a": randomBytes(int64(20+i), 1<<20)})
		f.clk.Advance(time.Minute)
	}

	f.clk.Advance(3 * time.Hour)

	hs.onPut = func(_ context.Context, id blob.ID) error {
		if strings.HasPrefix(string(id), string(content.PackBlobIDPrefixSpecial)) || strings.HasPrefix(string(id), string(content.PackBlobIDPrefixRegular)) {
			return errors.New("process killed")
		}

		return nil
	}

	_, err := f.run(Full, nil)
	t.Logf("the killed run: %v", err)

	hs.onPut = nil

	markers := sessionMarkers(t, hs.memStorage)
	if len(markers) != 1 || !f.m.sessions("r").ours(string(content.SessionIDFromBlobID(markers[0]))) {
		t.Fatalf("after the killed run: session markers %v, want 1 of our own (the dead run's)", markers)
	}

	f.clk.Advance(time.Hour)

	// No lease, nothing proves the process is gone.
	acts := f.activity(30 * time.Minute)
	if len(acts) != 1 || acts[0].Kind != ActivitySessionMarker || acts[0].Dead != "" {
		t.Fatalf("without a lease: activity %v, want the marker as a live writer's", acts)
	}

	held := leaseAt(t, f.clk.Now())

	acts, err = f.m.Activity(ctx, held, "r", 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	if len(acts) != 1 || acts[0].Dead == "" || !strings.Contains(acts[0].String(), "not a writer") {
		t.Fatalf("under a later lease: activity %v, want the marker reported as dead", acts)
	}

	t.Logf("evidence: %s", acts[0])

	// Another client's dead session still refuses under the same lease.
	writerDies(t, f.writer)

	acts, err = f.m.Activity(ctx, held, "r", 0)
	if err != nil {
		t.Fatal(err)
	}

	var live int

	for _, a := range acts {
		if a.Kind == ActivitySessionMarker && a.Dead == "" {
			live++
		}
	}

	if live != 1 {
		t.Fatalf("with another client's dead marker: activity %v, want it as a live writer's", acts)
	}

	if _, err := f.m.Run(ctx, held, "r", RunRequest{Cycle: Full, Unsafe: &UnsafeRun{Admission: admitted(t, "r"), QuietPeriod: 0, Guard: refuseLive, Kubernetes: noKubernetes}}); !errors.As(err, new(*GuardError)) {
		t.Fatalf("safety=none run with another client's marker: err = %v, want a refusal", err)
	}

	// Once that client's marker is gone, the safety=none cycle runs
	// despite our own dead marker, and removes it with the dead session's
	// packs.
	for _, id := range sessionMarkers(t, hs.memStorage) {
		if !f.m.sessions("r").ours(string(content.SessionIDFromBlobID(id))) {
			if err := hs.DeleteBlob(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	}

	if _, err := f.m.Run(ctx, held, "r", RunRequest{Cycle: Full, Unsafe: &UnsafeRun{Admission: admitted(t, "r"), QuietPeriod: 0, Guard: refuseLive, Kubernetes: noKubernetes}}); err != nil {
		t.Fatalf("safety=none run with only our own dead marker: %v", err)
	}

	if m := sessionMarkers(t, hs.memStorage); len(m) != 0 {
		t.Fatalf("after the safety=none cycle: markers %v remain", m)
	}

	// An own marker written after the lease was acquired is not taken for
	// dead (the storage's clock is what counts, so a clock jump cannot
	// make it old).
	hs.onPut = func(_ context.Context, id blob.ID) error {
		if strings.HasPrefix(string(id), string(content.PackBlobIDPrefixSpecial)) {
			return errors.New("process killed")
		}

		return nil
	}

	for i := range 3 {
		f.writer.snapshot(fmt.Sprintf("/more%d", i), map[string][]byte{"a": randomBytes(int64(30+i), 1<<20)})
		f.clk.Advance(time.Minute)
	}

	f.clk.Advance(3 * time.Hour)

	_, err = f.m.Run(ctx, held, "r", RunRequest{Cycle: Full})
	t.Logf("the second killed run: %v", err)

	hs.onPut = nil

	acts, err = f.m.Activity(ctx, held, "r", 0)
	if err != nil {
		t.Fatal(err)
	}

	if len(acts) == 0 || acts[0].Dead != "" {
		t.Fatalf("own marker newer than the lease: activity %v, want it as a live writer's", acts)
	}
}

// sessionMarkers lists the session marker blobs in st.
func sessionMarkers(t *testing.T, st blob.Storage) []blob.ID {
	t.Helper()

	var ids []blob.ID

	if err := st.ListBlobs(context.Background(), content.BlobIDPrefixSession, func(bm blob.Metadata) error {
		ids = append(ids, bm.BlobID)
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	return ids
}

// writerDies has c write a pack and die before committing its session.
func writerDies(t *testing.T, c *testClient) {
	t.Helper()

	abandoned := errors.New("client died")

	err := repo.WriteSession(context.Background(), c.rep, repo.WriteSessionOptions{Purpose: "dies"}, func(ctx context.Context, w repo.RepositoryWriter) error {
		ow := w.NewObjectWriter(ctx, objectWriterOptions())
		if _, err := ow.Write(randomBytes(9, 30<<20)); err != nil {
			return err
		}

		return abandoned
	})
	if !errors.Is(err, abandoned) {
		t.Fatalf("dying writer: %v", err)
	}
}
