package repository

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/manifest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// fakeClock is the simulation's virtual time, shared by the manager, the
// writer and the storage's blob timestamps.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
	// tick, when set, moves the clock forward on every reading, as a real
	// clock does during a run (SafetyNone compares timestamps made within
	// one cycle).
	tick time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()

	now := c.t
	c.t = c.t.Add(c.tick)

	return now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()

	if t.Before(c.t) {
		panic(fmt.Sprintf("fake clock moved backwards from %v to %v", c.t, t))
	}

	c.t = t
}

// Advance moves the clock forward by d.
func (c *fakeClock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// packLengths lists the pack blobs ('p' prefix) in st with their lengths.
func packLengths(t *testing.T, st blob.Storage) map[blob.ID]int64 {
	t.Helper()

	packs := map[blob.ID]int64{}

	if err := st.ListBlobs(context.Background(), "p", func(bm blob.Metadata) error {
		packs[bm.BlobID] = bm.Length
		return nil
	}); err != nil {
		t.Fatalf("list pack blobs: %v", err)
	}

	return packs
}

// TestSafetyFullReclaimsDeletedSnapshotWithinWindow simulates five and a half
// days of the daemon maintaining a repository it created (a quick cycle every
// virtual hour, a full cycle instead of the quick one every day at 00:00, all
// SafetyFull) while a backup client writes a small snapshot of new data every
// three hours, in parallel with that hour's maintenance run, and checks when
// the packs of a deleted 64 MiB snapshot leave storage. The clock is fake and
// shared by the manager, the writer and the blob timestamps.
//
// Virtual timeline (day 0 00:00 = repository created; D = deletion):
//
//	day 1 10:00  the writer snapshots 64 MiB of unique data (its contents are
//	             timestamped 10:00)
//	day 1 14:00  the writer deletes that snapshot (D)
//	day 2 00:00  full: snapshot GC sees the contents unreferenced but only 14h
//	             old, under MinContentAgeSubjectToGC (24h): not marked
//	day 3 00:00  full: now 38h old, so GC marks them deleted. The index still
//	             lists them (as deleted), so their packs are still referenced
//	day 4 00:00  full: drop-deleted-content needs two GC cycles over the mark
//	             (RequireTwoGCCycles, 4h MarginBetweenSnapshotGC): its safe
//	             drop time is the start of the previous GC (day 3 00:00)
//	             minus DropContentFromIndexExtraMargin (1h), which is before
//	             the marks: nothing dropped yet
//	day 5 00:00  full: safe drop time = day 4 00:00 - 1h, after the marks: the
//	             entries are dropped, the packs become unreferenced, and being
//	             older than PackDeleteMinAge (24h) full-delete-blobs removes
//	             them: D+82h
//
// The last step has a catch: kopia alternates full-rewrite-contents and
// full-delete-blobs between full cycles (a rewrite is followed by no deletion
// for MinRewriteToOrphanDeletionDelay, 1h, and no new rewrite runs until a
// deletion has followed the previous one), so with one full cycle a day packs
// are deleted only every other day. Counting from the first full cycle on
// day 0 (a rewrite), day 5 is a deletion day; had the repository been created
// a day later, the packs would go at the day 6 00:00 full cycle, D+106h. The
// test pins the D+96h bound to this schedule and also checks the lower bound:
// nothing goes in the first 24h after the deletion, which SafetyFull's
// margins guarantee (SafetyNone, with no minimum ages and no two-cycle rule,
// would let the first full cycle after the deletion remove them).
//
// Only the big snapshot's full-size packs (at least 60% of the maximum pack
// size, the ones full-rewrite-contents never touches) are asserted on; a short
// remainder pack can be held back by the rewrite logic (see the reclamation
// gap in REFERENCE.md).
func TestSafetyFullReclaimsDeletedSnapshotWithinWindow(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-day simulation")
	}

	const (
		quickInterval = time.Hour
		// quickEvery is how often the simulation runs the quick cycle; the
		// daemon's default, every hour, costs one kopia repository open (and
		// its scrypt key derivation) per virtual hour.
		quickEvery   = quickInterval
		fullInterval = 24 * time.Hour
		bigFiles     = 4
		bigFileSize  = 16 << 20 // 64 MiB in all
		smallSize    = 300 << 10
		window       = 96 * time.Hour
		minKeep      = 24 * time.Hour
	)

	ctx := context.Background()
	day0 := time.Date(2025, 3, 3, 0, 0, 0, 0, time.UTC)
	clock := &fakeClock{t: day0}
	bigWriteAt := day0.Add(24*time.Hour + 10*time.Hour)
	deleteAt := day0.Add(24*time.Hour + 14*time.Hour)
	end := deleteAt.Add(window)

	st := newMemStorage(clock.Now)
	spec := Spec{
		Name:      "sim",
		Storage:   CustomStorage(func(context.Context) (blob.Storage, error) { return st, nil }),
		Password:  staticPassword(testPassword),
		Create:    true,
		Ownership: Ownership{Policy: PolicyNever},
	}

	m, err := NewManager(Options{
		StateDirectory: filepath.Join(t.TempDir(), "state"),
		Identity:       Identity{Username: "maintd", Hostname: "sim"},
		Logger:         zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		Now:            clock.Now,
	}, []Spec{spec})
	if err != nil {
		t.Fatalf("new manager: %v", err)
	}

	// run performs the daemon's cycle for the current virtual hour: a full
	// cycle at 00:00, a quick one otherwise. concurrently runs beside it on
	// the test goroutine (the writer), so maintenance and a live client use
	// the repository at the same time.
	run := func(concurrently func()) {
		t.Helper()

		now := clock.Now()
		cycle := Quick

		if now.Hour() == 0 {
			cycle = Full
		}

		req := RunRequest{
			Cycle:         cycle,
			NextQuick:     now.Add(quickEvery),
			NextFull:      now.Truncate(24 * time.Hour).Add(fullInterval),
			QuickInterval: quickInterval,
			FullInterval:  fullInterval,
		}

		var (
			wg     sync.WaitGroup
			rep    *Report
			runErr error
		)

		wg.Add(1)

		go func() {
			defer wg.Done()

			rep, runErr = m.Run(ctx, testLease(t, "sim"), "sim", req)
		}()

		if concurrently != nil {
			func() {
				defer wg.Wait() // also when the writer fails the test
				concurrently()
			}()
		}

		wg.Wait()

		if runErr != nil {
			t.Fatalf("%s: %s cycle: %v", now.Format(time.DateTime), cycle, runErr)
		}

		var sums []string

		for _, task := range rep.Tasks {
			if !task.Success {
				t.Fatalf("%s: %s cycle: task %s failed: %s", now.Format(time.DateTime), cycle, task.Task, task.Error)
			}

			switch task.Task {
			case "full-rewrite-contents", "full-drop-deleted-content", "full-delete-blobs":
				sums = append(sums, task.Task+": "+task.Summary)
			}
		}

		if cycle == Full {
			t.Logf("%s full cycle (D%+.0fh), pack bytes %d: %s", now.Format(time.DateTime), now.Sub(deleteAt).Hours(), st.totalBytes("p"), strings.Join(sums, "; "))
		}
	}

	// The first run creates the repository, so the writer connects after it.
	run(nil)

	writer := newTestClient(t, st, testPassword, "writer", "sim", clock.Now)

	mp, err := writer.rep.(repo.DirectRepository).ContentReader().ContentFormat().GetMutableParameters(ctx)
	if err != nil {
		t.Fatalf("read pack size: %v", err)
	}

	fullPackMin := int64(mp.MaxPackSize) * 60 / 100

	var (
		smallSeq    int64
		before      int64 // 'p' bytes just before the big write
		peak        int64
		tracked     = map[blob.ID]int64{} // full packs of the big snapshot -> length
		short       = map[blob.ID]int64{}
		goneAt      = map[blob.ID]time.Time{}
		shortGoneAt = map[blob.ID]time.Time{}
	)

	observe := func() {
		now := clock.Now()
		packs := packLengths(t, st)

		if n := st.totalBytes("p"); n > peak {
			peak = n
		}

		for id := range tracked {
			if _, ok := packs[id]; !ok {
				if _, seen := goneAt[id]; !seen {
					goneAt[id] = now
				}
			}
		}

		for id := range short {
			if _, ok := packs[id]; !ok {
				if _, seen := shortGoneAt[id]; !seen {
					shortGoneAt[id] = now
				}
			}
		}
	}

	smallSnapshot := func() {
		smallSeq++
		writer.snapshot(fmt.Sprintf("/small/%d", smallSeq), map[string][]byte{
			"a.bin": randomBytes(1000+2*smallSeq, smallSize),
			"b.bin": randomBytes(1001+2*smallSeq, smallSize/3),
		})
	}

	var bigSnapshot manifest.ID

	for now := day0.Add(time.Hour); !now.After(end); now = now.Add(time.Hour) {
		clock.Set(now)

		var concurrently func()
		if now.Hour()%3 == 0 {
			concurrently = smallSnapshot
		}

		switch {
		case now.Hour() == 0 || now.Sub(day0)%quickEvery == 0:
			run(concurrently)
		case concurrently != nil:
			concurrently()
		}

		observe()

		switch {
		case now.Equal(bigWriteAt):
			before = st.totalBytes("p")
			prev := packLengths(t, st)

			files := map[string][]byte{}
			for i := range bigFiles {
				files[fmt.Sprintf("big-%d.bin", i)] = randomBytes(int64(1_000_000+i), bigFileSize)
			}

			bigSnapshot = writer.snapshot("/big", files)

			for id, n := range packLengths(t, st) {
				if _, old := prev[id]; old {
					continue
				}

				if n >= fullPackMin {
					tracked[id] = n
				} else {
					short[id] = n
				}
			}

			observe()

			if len(tracked) < 2 {
				t.Fatalf("big snapshot filled %d full packs (%v), short %v: want at least 2", len(tracked), tracked, short)
			}

			t.Logf("big snapshot %s wrote %d full packs %v and short packs %v", bigSnapshot, len(tracked), tracked, short)

		case now.Equal(deleteAt):
			writer.deleteSnapshot(bigSnapshot)
			observe()
		}
	}

	// Every full pack of the deleted snapshot left storage, none in the first
	// day after the deletion and the last within the window.
	var ids []blob.ID
	for id := range tracked {
		ids = append(ids, id)
	}

	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })

	var last time.Time

	for _, id := range ids {
		at, gone := goneAt[id]
		if !gone {
			t.Errorf("full pack %s (%d bytes) of the deleted snapshot is still in storage at D+%.0fh", id, tracked[id], end.Sub(deleteAt).Hours())
			continue
		}

		if at.Sub(deleteAt) < minKeep {
			t.Errorf("full pack %s left storage %v after the deletion, before SafetyFull's %v", id, at.Sub(deleteAt), minKeep)
		}

		if at.After(last) {
			last = at
		}

		t.Logf("full pack %s (%d bytes) left storage at %s, %.0fh after the deletion", id, tracked[id], at.Format(time.DateTime), at.Sub(deleteAt).Hours())
	}

	for id, n := range short {
		if at, gone := shortGoneAt[id]; gone {
			t.Logf("short pack %s (%d bytes) left storage %.0fh after the deletion", id, n, at.Sub(deleteAt).Hours())
		} else {
			t.Logf("short pack %s (%d bytes) is still in storage at the end", id, n)
		}
	}

	if !last.IsZero() && last.Sub(deleteAt) > window {
		t.Errorf("the deleted snapshot's full packs left storage %v after the deletion, want within %v", last.Sub(deleteAt), window)
	}

	t.Logf("pack bytes: %d before the big write, %d at the peak, %d at the end (D+%.0fh)", before, peak, st.totalBytes("p"), end.Sub(deleteAt).Hours())

	// Every live snapshot still reads back intact, seen by the writer after a
	// refresh and by a fresh client that never cached anything.
	writer.refresh()
	writer.verifyAll()

	reader := newTestClient(t, st, testPassword, "reader", "sim", clock.Now)
	reader.want = writer.want
	reader.verifyAll()

	if len(writer.want) != int(smallSeq) {
		t.Fatalf("writer tracks %d live snapshots, wrote %d small ones", len(writer.want), smallSeq)
	}

	t.Logf("verified %d live snapshots", len(writer.want))
}
