package repository

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/manifest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// The soak's size. CI runs the defaults; a longer soak is
// `go test -tags testing ./repository -run TestSafetySoak -soak.days 90 -soak.seeds 50`.
var (
	soakDays  = flag.Int("soak.days", 30, "virtual days of each seed of TestSafetySoak")
	soakSeeds = flag.Int("soak.seeds", 10, "seeds of TestSafetySoak")
)

// soakWriter is one of the soak's backup clients: it snapshots its own
// source every few virtual hours and deletes some of its snapshots, as a
// retention policy and as users do.
type soakWriter struct {
	c    *testClient
	rng  *rand.Rand
	name string
	seq  int
	// live are the writer's snapshots, oldest first.
	live []manifest.ID
	// files holds the contents of each live snapshot, by snapshot, to tell
	// what is live and what is not.
	files map[manifest.ID]map[string][]byte
	// deleted records when each snapshot went, with its files.
	deleted []soakDeletion
}

type soakDeletion struct {
	at    time.Time
	files map[string][]byte
}

// soakPool is content several writers share (a file of the same bytes in
// many snapshots of many clients), so packs hold contents that stay live
// beside contents whose snapshots are deleted.
const soakPool = 24

func soakPoolFile(i int) []byte { return randomBytes(int64(7_000_000+i), 96<<10) }

// step is the writer's virtual hour: maybe a snapshot, maybe a deletion.
func (w *soakWriter) step(now time.Time) {
	if w.rng.IntN(3) != 0 {
		return
	}

	w.seq++
	files := map[string][]byte{
		// New data of this snapshot only.
		"new.bin": randomBytes(w.rng.Int64(), 32<<10+w.rng.IntN(224<<10)),
		// Shared data.
		"shared.bin": soakPoolFile(w.rng.IntN(soakPool)),
	}

	// Data carried over from one of the writer's earlier snapshots.
	if len(w.live) > 0 {
		prev := w.files[w.live[w.rng.IntN(len(w.live))]]
		files["kept.bin"] = prev["new.bin"]
	}

	id := w.c.snapshot(fmt.Sprintf("/%s/src", w.name), files)
	w.live = append(w.live, id)
	w.files[id] = files

	// Retention: at most 12 snapshots; and now and then a random one goes.
	for len(w.live) > 12 || (len(w.live) > 1 && w.rng.IntN(4) == 0) {
		i := 0
		if len(w.live) <= 12 {
			i = w.rng.IntN(len(w.live))
		}

		gone := w.live[i]
		w.c.deleteSnapshot(gone)
		w.deleted = append(w.deleted, soakDeletion{at: now, files: w.files[gone]})
		delete(w.files, gone)
		w.live = slices.Delete(w.live, i, i+1)
	}
}

// soakBytes returns the distinct bytes of the files of all writers' live
// snapshots, and of the files of snapshots deleted since since that no live
// snapshot has.
func soakBytes(ws []*soakWriter, since time.Time) (live, recentlyDeleted int64) {
	seen := map[[32]byte]bool{}
	key := func(b []byte) [32]byte {
		var k [32]byte

		copy(k[:], b) // the files are random: their first bytes identify them

		return k
	}

	for _, w := range ws {
		for _, files := range w.files {
			for _, b := range files {
				if k := key(b); !seen[k] {
					seen[k] = true
					live += int64(len(b))
				}
			}
		}
	}

	for _, w := range ws {
		for _, d := range w.deleted {
			if d.at.Before(since) {
				continue
			}

			for _, b := range d.files {
				if k := key(b); !seen[k] {
					seen[k] = true
					recentlyDeleted += int64(len(b))
				}
			}
		}
	}

	return live, recentlyDeleted
}

// TestSafetySoak maintains a repository for soak.days virtual days (a quick
// cycle every hour, a full cycle at 00:00, SafetyFull) while three backup
// clients, each with its own long-lived connection, write snapshots and
// delete some, in parallel with the maintenance run of the same hour and
// with each other, for soak.seeds seeds. Every day each client reads back
// every file of every live snapshot it made; at the end a fresh client reads
// back all of them. Zero mismatches and zero failed runs are allowed. At the
// end the pack bytes must not exceed the live data plus what SafetyFull's
// margins still protect (soakPackBreakdown.protected); both are reported.
func TestSafetySoak(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-week simulation")
	}

	days, seeds := *soakDays, *soakSeeds
	if raceEnabled && !isFlagSet("soak.seeds") && !isFlagSet("soak.days") {
		// The race detector makes every virtual hour many times slower,
		// and races show in a week of two seeds as well as in ten months.
		// CI runs the full soak in a step of its own, without -race
		// (scripts/test.sh).
		days, seeds = 7, 2
	}

	for seed := 1; seed <= seeds; seed++ {
		t.Run(fmt.Sprintf("seed-%d", seed), func(t *testing.T) {
			t.Parallel()
			soak(t, uint64(seed), days)
		})
	}
}

func isFlagSet(name string) bool {
	set := false

	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })

	return set
}

func soak(t *testing.T, seed uint64, days int) {
	ctx := context.Background()
	day0 := time.Date(2025, 6, 2, 0, 0, 0, 0, time.UTC)
	clock := &fakeClock{t: day0}
	st := newMemStorage(clock.Now)

	m, err := NewManager(Options{
		StateDirectory: filepath.Join(t.TempDir(), "state"),
		Identity:       Identity{Username: "maintd", Hostname: "soak"},
		Logger:         zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		Now:            clock.Now,
		// kopia ages its cache files by the wall clock, which hardly moves
		// in a simulation: nothing cached is ever swept, and every open
		// scans the growing cache, which makes a 30-day soak several times
		// slower for no coverage (the other simulations keep the cache).
		NoCache: true,
	}, []Spec{{
		Name:      "soak",
		Storage:   CustomStorage(func(context.Context) (blob.Storage, error) { return st, nil }),
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

		return m.Run(ctx, testLease(t, "soak"), "soak", RunRequest{
			Cycle:         cycle,
			NextQuick:     now.Add(time.Hour),
			NextFull:      now.Truncate(24 * time.Hour).Add(24 * time.Hour),
			QuickInterval: time.Hour,
			FullInterval:  24 * time.Hour,
		})
	}

	if _, err := run(day0); err != nil {
		t.Fatalf("first run: %v", err)
	}

	writers := make([]*soakWriter, 3)
	for i := range writers {
		name := fmt.Sprintf("writer%d", i+1)
		writers[i] = &soakWriter{
			c:     newTestClient(t, st, testPassword, name, "soak", clock.Now),
			rng:   rand.New(rand.NewPCG(seed, uint64(i))),
			name:  name,
			files: map[manifest.ID]map[string][]byte{},
		}
	}

	var (
		runs, fulls, compactions int
		peak, rewritten          int64
	)

	end := day0.Add(time.Duration(days) * 24 * time.Hour)

	for now := day0.Add(time.Hour); !now.After(end); now = now.Add(time.Hour) {
		clock.Set(now)

		var (
			wg     sync.WaitGroup
			rep    *Report
			runErr error
		)

		wg.Go(func() { rep, runErr = run(now) })

		for _, w := range writers {
			wg.Go(func() { w.step(now) })
		}

		wg.Wait()

		if t.Failed() {
			t.FailNow()
		}

		if runErr != nil {
			t.Fatalf("%s: run: %v", now.Format(time.DateTime), runErr)
		}

		for _, task := range rep.Tasks {
			if !task.Success {
				t.Fatalf("%s: %s cycle: task %s failed: %s", now.Format(time.DateTime), rep.Cycle, task.Task, task.Error)
			}
		}

		runs++

		if c := rep.Compaction; c != nil && c.RewrittenBytes > 0 {
			compactions++
			rewritten += c.RewrittenBytes
		}

		peak = max(peak, st.totalBytes("p"))

		if now.Hour() == 0 {
			fulls++

			for _, w := range writers {
				w.c.verifyAll()
			}
		}
	}

	reader := newTestClient(t, st, testPassword, "reader", "soak", clock.Now)

	var snapshots int

	for _, w := range writers {
		w.c.verifyAll()

		for id, sums := range w.c.want {
			reader.want[id] = sums
		}

		snapshots += len(w.live)

		if len(w.c.want) != len(w.live) {
			t.Fatalf("%s: client tracks %d snapshots, writer %d", w.name, len(w.c.want), len(w.live))
		}
	}

	reader.verifyAll()

	deletions := 0
	for _, w := range writers {
		deletions += len(w.deleted)
	}

	bd, err := soakBreakdown(ctx, reader.rep, end, DefaultLiveRatioThreshold)
	if err != nil {
		t.Fatalf("measure packs: %v", err)
	}

	live, recent := soakBytes(writers, end.Add(-soakProtectedWindow))
	packs := st.totalBytes("p")
	held := bd.protected()
	bound := live + recent + held

	t.Logf("seed %d: %d days, %d runs (%d full), %d live snapshots read back intact, %d deleted; compaction rewrote %d bytes in %d cycles; pack bytes %d (peak %d); live data %d; protected by SafetyFull's margins %d (data deleted in the last %s %d, held in packs without live data beyond it and framing %d); pack bytes over live + protected %.2f, over live + deleted in the window %.2f",
		seed, days, runs, fulls, snapshots, deletions, rewritten, compactions, packs, peak, live, recent+held, soakProtectedWindow, recent, held, float64(packs)/float64(bound), float64(packs)/float64(live+recent))
	t.Logf("seed %d: %s", seed, bd)

	// The repository holds no more than the live data and what the margins
	// still protect.
	if packs > bound {
		t.Errorf("seed %d: pack bytes %d exceed the live data %d plus what SafetyFull's margins protect %d by %d", seed, packs, live, recent+held, packs-bound)
	}
}

// soakProtectedWindow is how long SafetyFull keeps a deleted snapshot's
// data with daily full cycles: snapshot GC marks a content only once it is
// 24 h old, and the step's rewrite (every other day) gives the unmarked
// contents it moves a fresh timestamp, so the mark may come two cycles after
// the deletion; kopia drops a mark two snapshot GCs later; the emptied pack
// goes with the next deletion of orphaned packs, a day after a rewrite day:
// at most five days.
const soakProtectedWindow = 5 * 24 * time.Hour
