package repository

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kopia/kopia/repo/blob"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kopia-maintd/kopia-maintd/lease"
	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// leaseTarget is one real storage for the lease record tests.
type leaseTarget struct {
	name string
	spec func(t *testing.T) Spec
}

func leaseTargets() []leaseTarget {
	return []leaseTarget{
		{"filesystem", func(t *testing.T) Spec {
			return fsSpec("r", filepath.Join(t.TempDir(), "repo"), true, PolicyNever)
		}},
		{"minio", func(t *testing.T) Spec {
			mc := harness.StartMinIO(t)
			mc.MakeBucket(t, "leases")
			return s3Spec("r", mc, "leases", "kopia/ns1/", false)
		}},
	}
}

// TestLeaseRecordConditionalWrites: on real storage, a create of an
// existing record and a replace naming an old version are refused with
// ErrLeaseRecordConflict and change nothing; the right version is
// accepted.
func TestLeaseRecordConditionalWrites(t *testing.T) {
	for _, tc := range leaseTargets() {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			m := newTestManager(t, Identity{Username: "maintd", Hostname: "a"}, tc.spec(t))
			rec := m.LeaseRecord("r")

			if data, v, _, err := rec.Read(ctx); err != nil || v != "" || data != nil {
				t.Fatalf("Read of no record: %q, %q, %v", data, v, err)
			}
			v1, err := rec.Swap(ctx, "", []byte(`{"holder":"a"}`))
			if err != nil || v1 == "" {
				t.Fatalf("create: %q, %v", v1, err)
			}
			if _, err := rec.Swap(ctx, "", []byte(`{"holder":"b"}`)); !errors.Is(err, ErrLeaseRecordConflict) {
				t.Fatalf("second create: %v, want ErrLeaseRecordConflict", err)
			}
			v2, err := rec.Swap(ctx, v1, []byte(`{"holder":"a","n":2}`))
			if err != nil || v2 == v1 {
				t.Fatalf("replace naming the current version: %q, %v", v2, err)
			}
			if _, err := rec.Swap(ctx, v1, []byte(`{"holder":"b"}`)); !errors.Is(err, ErrLeaseRecordConflict) {
				t.Fatalf("replace naming an old version: %v, want ErrLeaseRecordConflict", err)
			}
			data, v, modified, err := rec.Read(ctx)
			if err != nil || v != v2 || string(data) != `{"holder":"a","n":2}` {
				t.Fatalf("Read = %q, %q, %v; want the second write, version %q", data, v, err, v2)
			}
			if age := time.Since(modified); age < -time.Minute || age > time.Minute {
				t.Errorf("storage timestamp %v is not about now", modified)
			}
			// Many more renewals: older generations are cleaned up and
			// the record stays readable.
			for range 20 {
				if v, err = rec.Swap(ctx, v, []byte(`{"holder":"a"}`)); err != nil {
					t.Fatal(err)
				}
			}
			if spec, _ := m.spec("r"); spec.Storage.Filesystem != nil {
				entries, err := os.ReadDir(filepath.Join(spec.Storage.Filesystem.Path, LeaseRecordDir))
				if err != nil || len(entries) > 2 {
					t.Errorf("lease record directory holds %d entries, %v; want the two newest generations", len(entries), err)
				}
			}
			// The record is no old-format holder.
			if blobs, err := m.LeaseBlobs(ctx, "r"); err != nil || len(blobs) != 0 {
				t.Errorf("LeaseBlobs = %+v, %v; want none", blobs, err)
			}
		})
	}
}

// TestLeaseRecordRacingManagers: lease managers of several processes (each
// its own repository manager) race for one lease on real storage. Every
// round exactly one wins; the winner keeps it through renewals; a takeover
// after it goes stale makes its next renewal fail with lease.ErrLost.
func TestLeaseRecordRacingManagers(t *testing.T) {
	for _, tc := range leaseTargets() {
		t.Run(tc.name, func(t *testing.T) {
			// A racer waiting on the fake clock (the list-based fallback's
			// settle delay) fails the test instead of hanging it.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			spec := tc.spec(t)
			clk := testclock.NewFakeClock(time.Now())
			const racers = 6
			backends := make([]lease.Backend, racers)
			for i := range backends {
				m := newTestManager(t, Identity{Username: "maintd", Hostname: fmt.Sprint(i)}, spec)
				backends[i] = lease.NewRecord(
					func(string) lease.Record { return m.LeaseRecord("r") },
					func(string) lease.Store { return testLeaseStore{m: m, name: "r"} },
					time.Second, clk)
			}
			const duration = time.Minute
			for round := range 3 {
				var (
					wg     sync.WaitGroup
					wins   atomic.Int32
					winner atomic.Int32
				)
				start := make(chan struct{})
				for i, b := range backends {
					wg.Go(func() {
						<-start
						_, err := b.TryAcquire(ctx, "r", fmt.Sprintf("h%d", i), duration)
						if err == nil {
							wins.Add(1)
							winner.Store(int32(i))
							return
						}
						if _, ok := errors.AsType[*lease.HeldError](err); !ok {
							t.Errorf("round %d, racer %d: %v", round, i, err)
						}
					})
				}
				close(start)
				wg.Wait()
				if n := wins.Load(); n != 1 {
					t.Fatalf("round %d: %d winners, want exactly 1", round, n)
				}
				w := int(winner.Load())
				hs, err := backends[(w+1)%racers].(lease.Inspector).Inspect(ctx, "r")
				if err != nil || len(hs) != 1 || hs[0].Holder != fmt.Sprintf("h%d", w) {
					t.Fatalf("round %d: Inspect = %+v, %v; want h%d", round, hs, err, w)
				}
				clk.Step(15 * time.Second)
				if _, err := backends[w].Renew(ctx, "r", fmt.Sprintf("h%d", w), duration); err != nil {
					t.Fatalf("round %d: winner's renewal: %v", round, err)
				}
				// The winner stops renewing; another takes over once it
				// saw the record unchanged for a duration.
				next := (w + 1) % racers
				_, err = backends[next].TryAcquire(ctx, "r", fmt.Sprintf("h%d", next), duration)
				if _, ok := errors.AsType[*lease.HeldError](err); !ok {
					t.Fatalf("round %d: claimant while the winner is live: %v", round, err)
				}
				clk.Step(duration)
				if _, err := backends[next].TryAcquire(ctx, "r", fmt.Sprintf("h%d", next), duration); err != nil {
					t.Fatalf("round %d: takeover: %v", round, err)
				}
				if _, err := backends[w].Renew(ctx, "r", fmt.Sprintf("h%d", w), duration); !errors.Is(err, lease.ErrLost) {
					t.Fatalf("round %d: renewal after the takeover: %v, want lease.ErrLost", round, err)
				}
				if err := backends[next].Release(ctx, "r", fmt.Sprintf("h%d", next)); err != nil {
					t.Fatal(err)
				}
			}
			// All of it went through the record, none through the
			// list-based fallback's blobs.
			m := newTestManager(t, Identity{Username: "maintd", Hostname: "check"}, spec)
			if blobs, err := m.LeaseBlobs(ctx, "r"); err != nil || len(blobs) != 0 {
				t.Errorf("lease blobs = %+v, %v; want none", blobs, err)
			}
		})
	}
}

// TestLeaseRecordReadDuringSwaps: a read racing a stream of replacements
// never fails and always returns a version together with the data written
// as that version (a stat followed by a conditional GET made such a read fail
// with "pre-conditions you specified did not hold" when a swap landed in
// between).
func TestLeaseRecordReadDuringSwaps(t *testing.T) {
	for _, tc := range leaseTargets() {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			m := newTestManager(t, Identity{Username: "maintd", Hostname: "a"}, tc.spec(t))
			rec := m.LeaseRecord("r")

			var mu sync.Mutex
			written := map[string]string{} // version -> data
			v, err := rec.Swap(ctx, "", []byte(`{"n":0}`))
			if err != nil {
				t.Fatal(err)
			}
			written[v] = `{"n":0}`

			done := make(chan struct{})
			var writerErr error
			go func() {
				defer close(done)
				for n := 1; n <= 150; n++ {
					data := fmt.Sprintf(`{"n":%d}`, n)
					nv, err := rec.Swap(ctx, v, []byte(data))
					if err != nil {
						writerErr = err
						return
					}
					mu.Lock()
					written[nv] = data
					mu.Unlock()
					v = nv
				}
			}()

			reads := 0
			for running := true; running; reads++ {
				select {
				case <-done:
					running = false
				default:
				}
				data, rv, _, err := rec.Read(ctx)
				if err != nil {
					t.Fatalf("read %d during swaps: %v", reads, err)
				}
				// The writer records a version after its swap returns; wait
				// for it before comparing.
				deadline := time.Now().Add(10 * time.Second)
				for {
					mu.Lock()
					want, ok := written[rv]
					mu.Unlock()
					if ok {
						if want != string(data) {
							t.Fatalf("read %d: version %q carries %s, was written with %s", reads, rv, data, want)
						}
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("read %d: version %q was never written", reads, rv)
					}
					time.Sleep(time.Millisecond)
				}
			}
			<-done
			if writerErr != nil {
				t.Fatal(writerErr)
			}
			if reads < 2 {
				t.Fatalf("only %d reads overlapped the swaps", reads)
			}
		})
	}
}

// TestLeaseRecordProbeConcurrent: processes proving at the same time that
// one S3 store honours conditional writes all find that it does (a shared
// probe object, created and deleted by each, made some conclude it did not,
// and fall back to lease blobs).
func TestLeaseRecordProbeConcurrent(t *testing.T) {
	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, "leases")
	spec := s3Spec("r", mc, "leases", "kopia/ns1/", false)
	cli, err := newMinioClient(spec.Storage.S3)
	if err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		conditionalWrites.Delete(spec.Storage.Location())
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			r := &s3Record{cli: cli, bucket: "leases", key: "kopia/ns1/" + LeaseRecordBlob, probe: "kopia/ns1/" + leaseProbeBlob, location: spec.Storage.Location()}
			wg.Go(func() {
				// Every goroutine probes itself: the cache is filled by
				// whichever finishes first.
				conditionalWrites.Delete(r.location)
				errs[i] = r.proveConditional(context.Background())
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, probe %d: %v", round, i, err)
			}
		}
	}
}

// TestLeaseRecordOldFormatBlob: a live lease blob written by an older
// daemon (the list-based protocol) keeps a new daemon out until it has not
// changed for a duration; the new daemon then deletes it. On S3, the older
// daemon's listing shows the record as a live holder.
func TestLeaseRecordOldFormatBlob(t *testing.T) {
	for _, tc := range leaseTargets() {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			spec := tc.spec(t)
			m := newTestManager(t, Identity{Username: "maintd", Hostname: "a"}, spec)
			clk := testclock.NewFakeClock(time.Now())
			b := lease.NewRecord(
				func(string) lease.Record { return m.LeaseRecord("r") },
				func(string) lease.Store { return testLeaseStore{m: m, name: "r"} },
				time.Second, clk)
			if _, err := m.PutLeaseBlob(ctx, "r", "old-daemon-1"); err != nil {
				t.Fatal(err)
			}
			_, err := b.TryAcquire(ctx, "r", "new-daemon", time.Minute)
			if he, ok := errors.AsType[*lease.HeldError](err); !ok || he.Holder != "old-daemon-1" {
				t.Fatalf("TryAcquire beside a live old-format blob: %v", err)
			}
			clk.Step(time.Minute)
			if _, err := b.TryAcquire(ctx, "r", "new-daemon", time.Minute); err != nil {
				t.Fatalf("TryAcquire once the old-format blob is stale: %v", err)
			}
			if blobs, err := m.LeaseBlobs(ctx, "r"); err != nil || len(blobs) != 0 {
				t.Errorf("old-format blobs after the takeover: %+v, %v", blobs, err)
			}
			if spec.Storage.S3 == nil {
				return
			}
			// What an older daemon lists: the record, as a holder.
			st, err := m.leaseStorage(ctx, "r")
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close(ctx) //nolint:errcheck
			var names []string
			if err := st.ListBlobs(ctx, LeaseBlobPrefix, func(bm blob.Metadata) error {
				names = append(names, strings.TrimPrefix(string(bm.BlobID), LeaseBlobPrefix))
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if len(names) != 1 || names[0] != strings.TrimPrefix(LeaseRecordBlob, LeaseBlobPrefix) {
				t.Errorf("an older daemon lists %v, want the record only", names)
			}
		})
	}
}

// TestLeaseRecordUnsupported: a storage the record cannot be written
// conditionally on reports ErrLeaseRecordUnsupported, and the lease
// backend falls back to lease blobs there.
func TestLeaseRecordUnsupported(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "custom")
	spec := fsSpec("r", dir, true, PolicyNever)
	spec.Storage = CustomStorage(func(ctx context.Context) (blob.Storage, error) {
		return (&Storage{Filesystem: &FilesystemStorage{Path: dir}}).openBlobStorage(ctx, true)
	})
	m := newTestManager(t, Identity{Username: "maintd", Hostname: "a"}, spec)
	if _, err := m.LeaseRecord("r").Swap(ctx, "", []byte("{}")); !errors.Is(err, ErrLeaseRecordUnsupported) {
		t.Fatalf("Swap on a custom storage: %v, want ErrLeaseRecordUnsupported", err)
	}
	b := lease.NewRecord(
		func(string) lease.Record { return m.LeaseRecord("r") },
		func(string) lease.Store { return testLeaseStore{m: m, name: "r"} },
		0, nil)
	if _, err := b.TryAcquire(ctx, "r", "a", time.Minute); err != nil {
		t.Fatal(err)
	}
	if blobs, err := m.LeaseBlobs(ctx, "r"); err != nil || len(blobs) != 1 || blobs[0].Holder != "a" {
		t.Fatalf("lease blobs = %+v, %v; want a's", blobs, err)
	}
}

// testLeaseStore is the lease blobs of one repository as a lease.Store.
type testLeaseStore struct {
	m    *Manager
	name string
}

func (s testLeaseStore) List(ctx context.Context) ([]lease.Entry, error) {
	bs, err := s.m.LeaseBlobs(ctx, s.name)
	out := make([]lease.Entry, len(bs))
	for i, b := range bs {
		out[i] = lease.Entry{Holder: b.Holder, Written: b.Written}
	}
	return out, err
}

func (s testLeaseStore) Put(ctx context.Context, holder string) (lease.Entry, error) {
	b, err := s.m.PutLeaseBlob(ctx, s.name, holder)
	return lease.Entry{Holder: b.Holder, Written: b.Written}, err
}

func (s testLeaseStore) Delete(ctx context.Context, holder string) error {
	return s.m.DeleteLeaseBlob(ctx, s.name, holder)
}

// TestLeaseRecordTwoManagers: two lease managers (the daemon's, on the real
// clock) acquire one lease on real storage at the same moment: exactly one
// holds it, and once it releases, the other takes it at once.
func TestLeaseRecordTwoManagers(t *testing.T) {
	for _, tc := range leaseTargets() {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			spec := tc.spec(t)
			managers := make([]*lease.Manager, 2)
			for i := range managers {
				m := newTestManager(t, Identity{Username: "maintd", Hostname: "a"}, spec)
				lm, err := lease.New(lease.Options{
					Backend: lease.NewRecord(
						func(string) lease.Record { return m.LeaseRecord("r") },
						func(string) lease.Store { return testLeaseStore{m: m, name: "r"} },
						time.Second, nil),
					Holder: fmt.Sprintf("replica-%d", i), Duration: 20 * time.Second, RenewInterval: 2 * time.Second,
				})
				if err != nil {
					t.Fatal(err)
				}
				managers[i] = lm
			}
			helds := make([]*lease.Held, 2)
			errs := make([]error, 2)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i, lm := range managers {
				wg.Go(func() {
					<-start
					helds[i], errs[i] = lm.Acquire(ctx, "r")
				})
			}
			close(start)
			wg.Wait()
			w := 0
			if helds[1] != nil {
				w = 1
			}
			if helds[w] == nil || helds[1-w] != nil {
				t.Fatalf("acquisitions: %v, %v; want exactly one", errs[0], errs[1])
			}
			if _, ok := errors.AsType[*lease.HeldError](errs[1-w]); !ok {
				t.Fatalf("loser: %v, want a HeldError", errs[1-w])
			}
			if err := helds[w].Check(); err != nil {
				t.Fatalf("winner's lease: %v", err)
			}
			if err := helds[w].Release(ctx); err != nil {
				t.Fatal(err)
			}
			h, err := managers[1-w].Acquire(ctx, "r")
			if err != nil {
				t.Fatalf("acquiring a released lease: %v", err)
			}
			if err := h.Release(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}
