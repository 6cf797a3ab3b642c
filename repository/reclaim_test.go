package repository

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/maintenance"
)

func TestSafeDropTimeMirrorsKopia(t *testing.T) {
	day := func(d, h int) time.Time { return time.Date(2026, 11, d, h, 0, 0, 0, time.UTC) }
	runs := func(ts ...time.Time) []gcRun {
		var out []gcRun
		for _, x := range ts {
			out = append(out, gcRun{start: x, end: x.Add(time.Minute)})
		}

		return out
	}

	tests := []struct {
		name string
		runs []gcRun
		want time.Time
	}{
		{"no runs", nil, time.Time{}},
		{"one run", runs(day(1, 0)), time.Time{}},
		{"two runs 3h apart: margin not met", runs(day(1, 0), day(1, 3)), time.Time{}},
		{"two runs a day apart", runs(day(1, 0), day(2, 0)), day(1, 0).Add(-time.Hour)},
		{"three daily runs: the newest qualifying earlier run", runs(day(1, 0), day(2, 0), day(3, 0)), day(2, 0).Add(-time.Hour)},
		{"order does not matter", runs(day(3, 0), day(1, 0), day(2, 0)), day(2, 0).Add(-time.Hour)},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := safeDropTime(tc.runs, maintenance.SafetyFull); !got.Equal(tc.want) {
				t.Fatalf("safeDropTime = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPredictDeletionTimeline(t *testing.T) {
	day := func(d, h int) time.Time { return time.Date(2026, 11, d, h, 0, 0, 0, time.UTC) }
	// History: a full cycle on day 10 that rewrote (nothing), then one on
	// day 11 that deleted packs; so day 12 rewrites, day 13 deletes, day 14
	// rewrites, day 15 deletes.
	model := cycleModel{
		safety:          maintenance.SafetyFull,
		gcRuns:          []gcRun{{day(10, 0), day(10, 0)}, {day(11, 0), day(11, 0)}},
		lastFullRewrite: day(10, 0), lastRewrite: day(10, 0), lastDelete: day(11, 0),
	}
	cycles := model.simulate(futureFullCycles(day(12, 0), 24*time.Hour, 8))

	tests := []struct {
		name  string
		pack  packState
		want  time.Time
		cycle int
	}{
		{
			// Written day 11 10:00 and unreferenced by day 12's GC, too young
			// to mark: marked day 13, two GCs later (day 15) dropped, and day
			// 15 deletes packs (day 14 rewrites).
			"recent unreferenced", packState{written: day(11, 10), indexed: true, unref: 1, pendingMark: day(11, 10)},
			day(15, 0), 4,
		},
		{
			// Marked by day 11's GC: day 12's drop horizon is day 10 23:00,
			// day 13's is day 11 23:00: dropped and deleted on day 13.
			"marked on day 11", packState{written: day(5, 0), indexed: true, unref: 1, lastMark: day(11, 0)},
			day(13, 0), 2,
		},
		{
			// Marked by day 12's GC (it was 25h old): dropped on day 14, a
			// rewriting cycle, deleted on day 15.
			"marked on day 12", packState{written: day(5, 0), indexed: true, unref: 1, lastMark: day(12, 0)},
			day(15, 0), 4,
		},
		{"orphan, old enough: next deleting cycle", packState{written: day(5, 0)}, day(13, 0), 2},
		{"orphan only 22h old at the next deleting cycle", packState{written: day(12, 2)}, day(15, 0), 4},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, cycle := predictDeletion(&tc.pack, cycles, maintenance.SafetyFull)
			if !got.Equal(tc.want) || cycle != tc.cycle {
				t.Fatalf("predicted deletion %v (cycle %d), want %v (cycle %d)", got, cycle, tc.want, tc.cycle)
			}
		})
	}
}

// TestReclaimPredictionMatchesKopia runs daily full cycles (and quick cycles
// between them) on a fake clock with a live writer, deletes a 64 MiB
// snapshot, and holds the reclaim explanation to what kopia then does:
// every retained pack disappears at the full cycle predicted for it, none
// earlier, and the retained bytes are the bytes those deletions free.
func TestReclaimPredictionMatchesKopia(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-day simulation")
	}

	ctx := context.Background()
	start := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)
	clk := &fakeClock{t: start}
	st := newMemStorage(clk.Now)

	m := newSimManager(t, clk, st)

	nextMidnight := func(t time.Time) time.Time { return t.Truncate(24 * time.Hour).Add(24 * time.Hour) }
	run := func(cycle Cycle) *Report {
		t.Helper()

		now := clk.Now()
		rep, err := m.Run(ctx, testLease(t, "r"), "r", RunRequest{
			Cycle: cycle, NextQuick: now.Add(6 * time.Hour), NextFull: nextMidnight(now),
			QuickInterval: 6 * time.Hour, FullInterval: 24 * time.Hour,
		})
		if err != nil {
			t.Fatalf("%s cycle at %v: %v", cycle, now, err)
		}

		return rep
	}

	run(Full) // creates the repository: day 0 00:00

	writer := newTestClient(t, st, testPassword, "writer", "client", clk.Now)

	var (
		prediction  *Reclaim
		predictions []*Reclaim // every full cycle's, checked at the end
		deletedAt   = map[blob.ID]time.Time{}
		deletion    time.Time
		seed        int64
	)

	for clk.Now().Before(start.Add(8 * 24 * time.Hour)) {
		clk.Advance(6 * time.Hour)
		now := clk.Now()

		seed++
		writer.snapshot(fmt.Sprintf("/small/%d", seed), map[string][]byte{"f": randomBytes(seed, 200<<10)})

		if now.Equal(start.Add(24*time.Hour + 6*time.Hour)) {
			// Day 1: a 64 MiB snapshot at 10:00, deleted at 14:00.
			clk.Advance(4 * time.Hour)

			big := map[string][]byte{}
			for i := range 4 {
				big[fmt.Sprintf("part%d", i)] = randomBytes(1000+int64(i), 16<<20)
			}

			id := writer.snapshot("/big", big)

			clk.Advance(4 * time.Hour)
			writer.deleteSnapshot(id)
			deletion = clk.Now()

			clk.Advance(4 * time.Hour) // back on the 6-hour grid: 18:00
			now = clk.Now()
		}

		cycle := Quick
		if now.Hour() == 0 {
			cycle = Full
		}

		rep := run(cycle)

		// Which predicted packs did this run delete?
		if len(predictions) > 0 {
			present := map[blob.ID]bool{}
			for _, prefix := range []blob.ID{"p", "q"} {
				_ = st.ListBlobs(ctx, prefix, func(bm blob.Metadata) error {
					present[bm.BlobID] = true
					return nil
				})
			}

			for _, p := range predictions {
				for id := range p.predicted {
					if !present[id] && deletedAt[id].IsZero() {
						deletedAt[id] = now
					}
				}
			}
		}

		if cycle == Full && rep.Reclaim != nil {
			r := rep.Reclaim
			predictions = append(predictions, r)
			t.Logf("full cycle %v: unreferenced %d retained %d (recent %d marked %d orphan %d) shared %d eligible %v",
				now, r.UnreferencedBytes, r.RetainedBytes, r.RecentBytes, r.MarkedBytes, r.OrphanBytes, r.SharedBytes, r.EligibleAt)
		}

		if cycle == Full && prediction == nil && !deletion.IsZero() && rep.Reclaim != nil && rep.Reclaim.RetainedBytes >= 60<<20 {
			prediction = rep.Reclaim
			t.Logf("at %v (deletion +%v): unreferenced %d, retained %d (recent %d, marked %d, orphan %d, shared %d), eligible %v (cycle %d), all by %v",
				now, now.Sub(deletion), prediction.UnreferencedBytes, prediction.RetainedBytes, prediction.RecentBytes,
				prediction.MarkedBytes, prediction.OrphanBytes, prediction.SharedBytes,
				prediction.EligibleAt, prediction.EligibleCycle, prediction.AllEligibleAt)
		}
	}

	if prediction == nil {
		t.Fatal("no full cycle after the deletion reported the deleted snapshot as retained")
	}

	if prediction.EligibleAt.IsZero() || prediction.AllEligibleAt.IsZero() {
		t.Fatalf("no deletion predicted: %+v", prediction)
	}

	end := clk.Now()

	// Every full cycle's prediction held: each retained pack went at the
	// cycle predicted then, or is still there when that cycle lies beyond
	// the simulation.
	checked := 0

	for _, p := range predictions {
		for id, want := range p.predicted {
			got := deletedAt[id]

			switch {
			case want.at.After(end):
				if !got.IsZero() {
					t.Errorf("prediction of %v: pack %s predicted to go at %v, deleted at %v", p.ComputedAt, id, want.at, got)
				}
			case !got.Equal(want.at):
				t.Errorf("prediction of %v: pack %s predicted to go at %v, deleted at %v", p.ComputedAt, id, want.at, got)
			}

			checked++
		}
	}

	t.Logf("%d pack predictions from %d full cycles checked against kopia's deletions", checked, len(predictions))

	var freed int64

	for id, want := range prediction.predicted {
		got := deletedAt[id]
		if !got.Equal(want.at) {
			t.Errorf("pack %s (%d bytes): predicted deletion %v, kopia deleted it at %v", id, want.length, want.at, got)
		}

		if !got.IsZero() && !got.After(prediction.AllEligibleAt) {
			freed += want.length
		}
	}

	if freed != prediction.RetainedBytes {
		t.Errorf("retained %d bytes, kopia freed %d of them by %v", prediction.RetainedBytes, freed, prediction.AllEligibleAt)
	}

	t.Logf("big snapshot deleted at %v; eligible %v (+%v), all retained bytes gone by %v (+%v)",
		deletion, prediction.EligibleAt, prediction.EligibleAt.Sub(deletion), prediction.AllEligibleAt, prediction.AllEligibleAt.Sub(deletion))

	writer.verifyAll()
}

func TestReclaimExplain(t *testing.T) {
	at := time.Date(2026, 11, 23, 4, 10, 0, 0, time.UTC)

	tests := []struct {
		r    *Reclaim
		want string
	}{
		{nil, "not computed yet (after the first full cycle)"},
		{&Reclaim{UnreferencedBytes: 0}, "0 B unreferenced; nothing held by safety margins"},
		{
			&Reclaim{UnreferencedBytes: 3435973837, RetainedBytes: 2254857830, EligibleAt: at, EligibleCycle: 2, AllEligibleAt: at},
			"3.2 GiB unreferenced; 2.1 GiB held by safety margins until 2026-11-23 04:10 UTC (second full cycle)",
		},
		{
			&Reclaim{UnreferencedBytes: 1 << 20, RetainedBytes: 1 << 20, EligibleAt: at, EligibleCycle: 1, AllEligibleAt: at.Add(48 * time.Hour), SharedBytes: 2048},
			"1.0 MiB unreferenced; 1.0 MiB held by safety margins until 2026-11-23 04:10 UTC (next full cycle), all of it by 2026-11-25 04:10 UTC; 2.0 KiB shares packs with live data and is not freed by deleting packs",
		},
		{&Reclaim{UnreferencedBytes: 5000, RetainedBytes: 4096}, "4.9 KiB unreferenced; 4.0 KiB held by safety margins, deletion not predicted within the next 14 full cycles"},
		{
			&Reclaim{UnreferencedBytes: 12 << 20, SharedBytes: 12 << 20, Compaction: &CompactionOutlook{Enabled: true, Packs: 1, Bytes: 12 << 20, RewriteBytes: 4 << 20, EligibleAt: at, AllEligibleAt: at}},
			"12.0 MiB unreferenced; nothing held by safety margins; 12.0 MiB dead in 1 pack shared with live data, freed by compaction (rewriting 4.0 MiB) by 2026-11-23 04:10 UTC",
		},
		{
			&Reclaim{UnreferencedBytes: 0, Compaction: &CompactionOutlook{Enabled: true, Packs: 3, Bytes: 3 << 30, RewriteBytes: 5 << 30, EligibleAt: at, PendingPacks: 2, PendingBytes: 3 << 30}},
			"0 B unreferenced; nothing held by safety margins; 3.0 GiB dead in 3 packs shared with live data, freed by compaction (rewriting 5.0 GiB), from 2026-11-23 04:10 UTC on; the per-cycle bound (maxBytesPerCycle) left 3.0 GiB of live data in 2 packs for the next cycles",
		},
		{
			&Reclaim{UnreferencedBytes: 12 << 20, SharedBytes: 12 << 20, Compaction: &CompactionOutlook{Packs: 1, Bytes: 12 << 20}},
			"12.0 MiB unreferenced; nothing held by safety margins; 12.0 MiB is dead space in 1 pack shared with live data, which only compaction frees (compaction is off)",
		},
	}

	for _, tc := range tests {
		if got := tc.r.Explain(); got != tc.want {
			t.Errorf("Explain() =\n %q\nwant\n %q", got, tc.want)
		}
	}
}
