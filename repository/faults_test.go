package repository

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/manifest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// errInjected is the fault randomFaults returns.
var errInjected = errors.New("injected storage fault")

// randomFaults fails a random share of the calls to the storage under it:
// reads, writes, deletions and listings (also in the middle of a listing).
type randomFaults struct {
	blob.Storage

	mu   sync.Mutex
	rng  *rand.Rand
	rate float64 // share of calls that fail; 0 turns faults off
	// faults counts injected faults by operation.
	faults map[string]*atomic.Int64
}

func newRandomFaults(st blob.Storage, seed uint64) *randomFaults {
	f := &randomFaults{Storage: st, rng: rand.New(rand.NewPCG(seed, 99)), faults: map[string]*atomic.Int64{}}
	for _, op := range []string{"get", "metadata", "put", "delete", "list"} {
		f.faults[op] = &atomic.Int64{}
	}

	return f
}

func (f *randomFaults) setRate(r float64) {
	f.mu.Lock()
	defer f.mu.Unlock()

	f.rate = r
}

func (f *randomFaults) fail(op string) error {
	f.mu.Lock()
	hit := f.rate > 0 && f.rng.Float64() < f.rate
	f.mu.Unlock()

	if !hit {
		return nil
	}

	f.faults[op].Add(1)

	return fmt.Errorf("%s: %w", op, errInjected)
}

func (f *randomFaults) rng2() float64 {
	f.mu.Lock()
	defer f.mu.Unlock()

	return f.rng.Float64()
}

func (f *randomFaults) GetBlob(ctx context.Context, id blob.ID, offset, length int64, out blob.OutputBuffer) error {
	if err := f.fail("get"); err != nil {
		return err
	}

	return f.Storage.GetBlob(ctx, id, offset, length, out)
}

func (f *randomFaults) GetMetadata(ctx context.Context, id blob.ID) (blob.Metadata, error) {
	if err := f.fail("metadata"); err != nil {
		return blob.Metadata{}, err
	}

	return f.Storage.GetMetadata(ctx, id)
}

func (f *randomFaults) PutBlob(ctx context.Context, id blob.ID, data blob.Bytes, opts blob.PutOptions) error {
	if err := f.fail("put"); err != nil {
		return err
	}

	return f.Storage.PutBlob(ctx, id, data, opts)
}

func (f *randomFaults) DeleteBlob(ctx context.Context, id blob.ID) error {
	if err := f.fail("delete"); err != nil {
		return err
	}

	return f.Storage.DeleteBlob(ctx, id)
}

func (f *randomFaults) ListBlobs(ctx context.Context, prefix blob.ID, cb func(blob.Metadata) error) error {
	if err := f.fail("list"); err != nil {
		return err
	}

	// Partway through a listing, at a tenth of the rate: a listing has
	// many entries, and kopia retries a failed listing from the start.
	return f.Storage.ListBlobs(ctx, prefix, func(bm blob.Metadata) error {
		if f.rng2() < 0.1 {
			if err := f.fail("list"); err != nil {
				return err
			}
		}

		return cb(bm)
	})
}

// TestStorageFaults maintains a repository through storage that fails a
// share of its calls (reads, writes, deletions, listings, also partway
// through a listing) for four virtual days of hourly quick and daily full
// SafetyFull cycles, while a client writes and deletes snapshots through
// healthy storage. Runs may fail; none panics, every failure is an error
// that names the repository and carries the storage's cause, and after the
// faults stop, cycles succeed again and every live snapshot reads back
// intact, from the writer and from a fresh client.
func TestStorageFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-day simulation")
	}

	for _, rate := range []float64{0.002, 0.01} {
		t.Run(fmt.Sprintf("rate-%g", rate), func(t *testing.T) { storageFaults(t, rate) })
	}
}

func storageFaults(t *testing.T, rate float64) {
	ctx := context.Background()
	day0 := time.Date(2025, 9, 1, 0, 0, 0, 0, time.UTC)
	clock := &fakeClock{t: day0}
	st := newMemStorage(clock.Now)
	faulty := newRandomFaults(st, uint64(rate*1e6))

	m, err := NewManager(Options{
		StateDirectory: filepath.Join(t.TempDir(), "state"),
		Identity:       Identity{Username: "maintd", Hostname: "faults"},
		Logger:         zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel)),
		Now:            clock.Now,
		NoCache:        true,
	}, []Spec{{
		Name:      "faults",
		Storage:   CustomStorage(func(context.Context) (blob.Storage, error) { return faulty, nil }),
		Password:  staticPassword(testPassword),
		Create:    true,
		Ownership: Ownership{Policy: PolicyNever},
	}})
	if err != nil {
		t.Fatalf("new manager: %v", err)
	}

	run := func(now time.Time) (*Report, error) {
		cycle := Quick
		if now.Hour() == 0 {
			cycle = Full
		}

		return m.Run(ctx, testLease(t, "faults"), "faults", RunRequest{
			Cycle: cycle, NextQuick: now.Add(time.Hour), NextFull: now.Truncate(24 * time.Hour).Add(24 * time.Hour),
			QuickInterval: time.Hour, FullInterval: 24 * time.Hour,
		})
	}

	if _, err := run(day0); err != nil {
		t.Fatalf("first run (no faults yet): %v", err)
	}

	writer := newTestClient(t, st, testPassword, "writer", "faults", clock.Now)
	rng := rand.New(rand.NewPCG(uint64(rate*1e6), 1))

	var (
		live           []manifest.ID
		failed, passed int
	)

	faulty.setRate(rate)

	check := func(now time.Time, rep *Report, err error) {
		if err == nil {
			for _, task := range rep.Tasks {
				if !task.Success {
					err = errors.New(task.Error)
				}
			}
		}

		if err == nil {
			passed++
			return
		}

		failed++

		// kopia's content rewrite logs each failed content and returns
		// only their count: the one error without the storage's cause.
		if msg := err.Error(); !strings.Contains(msg, "injected storage fault") && !strings.Contains(msg, "error rewriting contents in short packs: failed to rewrite") && !strings.Contains(msg, TaskCompactLive+": rewrite live contents of") {
			t.Errorf("%s: run failed without the storage's cause: %v", now.Format(time.DateTime), err)
		}
	}

	end := day0.Add(4 * 24 * time.Hour)
	for now := day0.Add(time.Hour); !now.After(end); now = now.Add(time.Hour) {
		clock.Set(now)

		if now.Hour()%2 == 0 {
			files := map[string][]byte{
				"new.bin":    randomBytes(rng.Int64(), 64<<10+rng.IntN(128<<10)),
				"shared.bin": soakPoolFile(rng.IntN(soakPool)),
			}
			live = append(live, writer.snapshot("/src", files))

			if len(live) > 8 {
				i := rng.IntN(len(live))
				writer.deleteSnapshot(live[i])
				live = append(live[:i], live[i+1:]...)
			}
		}

		rep, err := run(now)
		check(now, rep, err)
	}

	faults := map[string]int64{}
	for op, n := range faulty.faults {
		faults[op] = n.Load()
	}

	t.Logf("rate %g: %d runs passed, %d failed; injected faults %v", rate, passed, failed, faults)

	if failed == 0 {
		t.Fatalf("no run failed at fault rate %g: the faults were not exercised", rate)
	}

	// The faults stop: the next day's cycles all succeed, and nothing was
	// lost.
	faulty.setRate(0)

	for i := range 25 {
		now := end.Add(time.Duration(i+1) * time.Hour)
		clock.Set(now)

		rep, err := run(now)
		if err != nil {
			t.Fatalf("%s: run after the faults stopped: %v", now.Format(time.DateTime), err)
		}

		for _, task := range rep.Tasks {
			if !task.Success {
				t.Fatalf("%s: task %s after the faults stopped: %s", now.Format(time.DateTime), task.Task, task.Error)
			}
		}
	}

	writer.verifyAll()

	reader := newTestClient(t, st, testPassword, "reader", "faults", clock.Now)
	reader.want = writer.want
	reader.verifyAll()

	t.Logf("%d live snapshots read back intact", len(writer.want))
}
