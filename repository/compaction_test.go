package repository

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/maintenance"
	"github.com/kopia/kopia/repo/maintenancestats"
)

func TestPlanCompaction(t *testing.T) {
	const mib = 1 << 20

	pack := func(id string, length, live, deleted int64) packLive {
		return packLive{id: blob.ID(id), length: length, live: live, deleted: deleted}
	}

	tests := []struct {
		name      string
		packs     []packLive
		threshold float64
		maxBytes  int64
		selected  []blob.ID
		short     []blob.ID
		pending   int
		dead      int64
	}{
		{
			name:      "full packs are left alone",
			packs:     []packLive{pack("p1", 20*mib, 20*mib-4096, 0), pack("p2", 10*mib, 9*mib, 0)},
			threshold: 0.5, maxBytes: 1 << 30,
			dead: 4096 + mib,
		},
		{
			name:      "a mixed pack whose deleted entries kopia dropped",
			packs:     []packLive{pack("p1", 16*mib, 4*mib, 0), pack("p2", 20*mib, 20*mib, 0)},
			threshold: 0.5, maxBytes: 1 << 30,
			selected: []blob.ID{"p1"}, dead: 12 * mib,
		},
		{
			name:      "a mixed pack still holding deleted entries: its live contents move at once",
			packs:     []packLive{pack("p1", 15*mib, 4*mib, 11*mib)},
			threshold: 0.5, maxBytes: 1 << 30,
			selected: []blob.ID{"p1"}, dead: 11 * mib,
		},
		{
			name: "short packs: live contents consolidated once two of a prefix hold live data",
			packs: []packLive{
				pack("p1", 2*mib, mib, mib/2), pack("p2", 3*mib, 3*mib, 0),
				pack("q1", mib, mib, 0), // a lone short pack of its prefix
				pack("p3", 20*mib, 19*mib, 0),
			},
			threshold: 0.5, maxBytes: 1 << 30,
			short: []blob.ID{"p1", "p2"}, dead: 2 * mib,
		},
		{
			name:      "a short pack of deleted entries only does not count as a second",
			packs:     []packLive{pack("p1", 2*mib, 2*mib, 0), pack("p2", mib, 0, mib)},
			threshold: 0.5, maxBytes: 1 << 30,
			dead: mib,
		},
		{
			name:      "short packs are not bounded",
			packs:     []packLive{pack("p1", 11*mib, 11*mib, 0), pack("p2", 11*mib, 11*mib, 0), pack("p3", 20*mib, 2*mib, 10*mib)},
			threshold: 0.5, maxBytes: mib,
			short: []blob.ID{"p1", "p2"}, selected: []blob.ID{"p3"}, dead: 18 * mib,
		},
		{
			name:      "packs without live data are kopia's to delete",
			packs:     []packLive{pack("p1", 12*mib, 0, 12*mib), pack("p2", 3*mib, 0, 0)},
			threshold: 0.5, maxBytes: 1 << 30,
			dead: 15 * mib,
		},
		{
			name:      "small packs below the threshold by padding only",
			packs:     []packLive{pack("q1", 4400, 481, 0)},
			threshold: 0.5, maxBytes: 1 << 30,
			dead: 4400 - 481,
		},
		{
			name: "worst first, bounded by live bytes",
			packs: []packLive{
				pack("p1", 20*mib, 8*mib, 4*mib),  // 0.4
				pack("p2", 20*mib, 2*mib, 10*mib), // 0.1
				pack("p3", 20*mib, 5*mib, 7*mib),  // 0.25
				pack("p4", 20*mib, 9*mib, 3*mib),  // 0.45
			},
			threshold: 0.5, maxBytes: 10 * mib,
			selected: []blob.ID{"p2", "p3"}, pending: 2, dead: 56 * mib,
		},
		{
			name:      "the first pack is taken even when larger than the bound",
			packs:     []packLive{pack("p1", 20*mib, 6*mib, 6*mib), pack("p2", 20*mib, 8*mib, 4*mib)},
			threshold: 0.5, maxBytes: mib,
			selected: []blob.ID{"p1"}, pending: 1, dead: 26 * mib,
		},
		{
			name:      "threshold 1 takes any pack with enough dead space",
			packs:     []packLive{pack("p1", 20*mib, 19*mib, 0), pack("p2", 20*mib, 20*mib-1000, 0)},
			threshold: 1, maxBytes: 1 << 30,
			selected: []blob.ID{"p1"}, dead: mib + 1000,
		},
		{
			name:      "equal ratios: more dead bytes first, then by ID",
			packs:     []packLive{pack("pb", 15*mib, 3*mib, 10*mib), pack("pa", 15*mib, 3*mib, 10*mib), pack("pc", 20*mib, 4*mib, 8*mib)},
			threshold: 0.5, maxBytes: 1 << 30,
			selected: []blob.ID{"pc", "pa", "pb"}, dead: 40 * mib,
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan := planCompaction(tt.packs, tt.threshold, tt.maxBytes, shortPackLimit(20*mib))

			ids := func(ps []packLive) []blob.ID {
				var out []blob.ID
				for _, p := range ps {
					out = append(out, p.id)
				}

				return out
			}

			if got := ids(plan.selected); !slices.Equal(got, tt.selected) {
				t.Fatalf("selected %v, want %v", got, tt.selected)
			}

			if got := ids(plan.short); !slices.Equal(got, tt.short) {
				t.Fatalf("short %v, want %v", got, tt.short)
			}

			if n := len(plan.below) - len(plan.selected); n != tt.pending {
				t.Errorf("pending %d packs, want %d", n, tt.pending)
			}

			if plan.dead != tt.dead {
				t.Errorf("dead bytes %d, want %d", plan.dead, tt.dead)
			}
		})
	}
}

func TestCompactionDue(t *testing.T) {
	t0 := time.Date(2026, 3, 5, 0, 0, 0, 0, time.UTC)

	rewrite := func(at time.Time, rewritten uint64) maintenance.RunInfo {
		extra, err := maintenancestats.BuildExtra(&maintenancestats.RewriteContentsStats{ToRewriteContentCount: rewritten, RewrittenContentCount: rewritten})
		if err != nil {
			t.Fatal(err)
		}

		return maintenance.RunInfo{Start: at, End: at.Add(time.Minute), Success: true, Extra: []maintenancestats.Extra{extra}}
	}
	run := func(at time.Time, ok bool) maintenance.RunInfo {
		return maintenance.RunInfo{Start: at, End: at.Add(time.Minute), Success: ok}
	}

	tests := []struct {
		name string
		runs map[maintenance.TaskType][]maintenance.RunInfo
		due  bool
	}{
		{name: "no rewrite ever", due: true},
		{
			name: "a deletion followed the last rewrite",
			runs: map[maintenance.TaskType][]maintenance.RunInfo{
				maintenance.TaskRewriteContentsFull:     {rewrite(t0.Add(-24*time.Hour), 5)},
				maintenance.TaskDeleteOrphanedBlobsFull: {run(t0, true)},
			},
			due: true,
		},
		{
			name: "the last rewrite waits for its deletion",
			runs: map[maintenance.TaskType][]maintenance.RunInfo{
				maintenance.TaskRewriteContentsFull:     {rewrite(t0, 5)},
				maintenance.TaskDeleteOrphanedBlobsFull: {run(t0.Add(-24*time.Hour), true)},
			},
		},
		{
			name: "a failed deletion does not count",
			runs: map[maintenance.TaskType][]maintenance.RunInfo{
				maintenance.TaskRewriteContentsFull:     {rewrite(t0, 5)},
				maintenance.TaskDeleteOrphanedBlobsFull: {run(t0.Add(-24*time.Hour), true), run(t0.Add(time.Hour), false)},
			},
		},
		{
			name: "a quick rewrite counts too",
			runs: map[maintenance.TaskType][]maintenance.RunInfo{
				maintenance.TaskRewriteContentsQuick:     {rewrite(t0, 5)},
				maintenance.TaskDeleteOrphanedBlobsQuick: {run(t0.Add(-time.Hour), true)},
			},
		},
		{
			name: "a rewrite that rewrote nothing orphaned nothing",
			runs: map[maintenance.TaskType][]maintenance.RunInfo{
				maintenance.TaskRewriteContentsFull:     {rewrite(t0.Add(-48*time.Hour), 5), rewrite(t0, 0)},
				maintenance.TaskDeleteOrphanedBlobsFull: {run(t0.Add(-24*time.Hour), true)},
			},
			due: true,
		},
		{
			name: "a rewrite without statistics is assumed to have rewritten",
			runs: map[maintenance.TaskType][]maintenance.RunInfo{
				maintenance.TaskRewriteContentsFull:     {run(t0, true)},
				maintenance.TaskDeleteOrphanedBlobsFull: {run(t0.Add(-24*time.Hour), true)},
			},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &maintenance.Schedule{Runs: tt.runs}
			if got := compactionDue(s); got != tt.due {
				b, _ := json.Marshal(tt.runs)
				t.Fatalf("compactionDue = %v, want %v (runs %s)", got, tt.due, b)
			}
		})
	}
}

// fullRewriteDue must say exactly when kopia's own full rewrite would run:
// then the step records a rewrite in its place.
func TestFullRewriteDueMirrorsKopia(t *testing.T) {
	t0 := time.Date(2026, 3, 5, 0, 0, 0, 0, time.UTC)
	run := func(at time.Time, ok bool) maintenance.RunInfo {
		return maintenance.RunInfo{Start: at, End: at.Add(time.Minute), Success: ok}
	}

	tests := []struct {
		name   string
		runs   map[maintenance.TaskType][]maintenance.RunInfo
		safety maintenance.SafetyParameters
		due    bool
	}{
		{name: "no rewrite ever", safety: maintenance.SafetyFull, due: true},
		{
			name:   "a deletion followed the last full rewrite",
			safety: maintenance.SafetyFull, due: true,
			runs: map[maintenance.TaskType][]maintenance.RunInfo{
				maintenance.TaskRewriteContentsFull:     {run(t0.Add(-24*time.Hour), true)},
				maintenance.TaskDeleteOrphanedBlobsFull: {run(t0, true)},
			},
		},
		{
			name:   "the last full rewrite waits for its deletion, even when it rewrote nothing",
			safety: maintenance.SafetyFull,
			runs: map[maintenance.TaskType][]maintenance.RunInfo{
				maintenance.TaskRewriteContentsFull:     {run(t0, true)},
				maintenance.TaskDeleteOrphanedBlobsFull: {run(t0.Add(-24*time.Hour), true)},
			},
		},
		{
			name:   "a quick deletion counts",
			safety: maintenance.SafetyFull, due: true,
			runs: map[maintenance.TaskType][]maintenance.RunInfo{
				maintenance.TaskRewriteContentsFull:      {run(t0.Add(-24*time.Hour), true)},
				maintenance.TaskDeleteOrphanedBlobsQuick: {run(t0, true)},
			},
		},
		{
			name:   "a quick rewrite does not",
			safety: maintenance.SafetyFull, due: true,
			runs: map[maintenance.TaskType][]maintenance.RunInfo{
				maintenance.TaskRewriteContentsFull:     {run(t0.Add(-48*time.Hour), true)},
				maintenance.TaskRewriteContentsQuick:    {run(t0, true)},
				maintenance.TaskDeleteOrphanedBlobsFull: {run(t0.Add(-24*time.Hour), true)},
			},
		},
		{
			name:   "a failed rewrite does not",
			safety: maintenance.SafetyFull, due: true,
			runs: map[maintenance.TaskType][]maintenance.RunInfo{
				maintenance.TaskRewriteContentsFull:     {run(t0.Add(-48*time.Hour), true), run(t0, false)},
				maintenance.TaskDeleteOrphanedBlobsFull: {run(t0.Add(-24*time.Hour), true)},
			},
		},
		{
			name:   "safety=none never waits",
			safety: maintenance.SafetyNone, due: true,
			runs: map[maintenance.TaskType][]maintenance.RunInfo{
				maintenance.TaskRewriteContentsFull:     {run(t0, true)},
				maintenance.TaskDeleteOrphanedBlobsFull: {run(t0.Add(-24*time.Hour), true)},
			},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fullRewriteDue(&maintenance.Schedule{Runs: tt.runs}, tt.safety); got != tt.due {
				t.Fatalf("fullRewriteDue = %v, want %v", got, tt.due)
			}
		})
	}
}

func TestCompactionResultExplain(t *testing.T) {
	tests := []struct {
		r    *CompactionResult
		want string
	}{
		{nil, "not run yet (after the first full cycle)"},
		{
			&CompactionResult{Threshold: 0.5, Skipped: CompactionNothingToDo, DeadBytes: 20000},
			"nothing to do: no pack below live ratio 0.5; 19.5 KiB dead in all packs",
		},
		{
			&CompactionResult{Threshold: 0.5, ShortPacks: 3, RewrittenBytes: 1 << 20, DeadBytes: 2 << 20},
			"rewrote 1.0 MiB of live data out of 3 short packs; 2.0 MiB dead in all packs",
		},
		{
			&CompactionResult{Threshold: 0.5, SelectedPacks: 1, ShortPacks: 1, RewrittenBytes: 5 << 20, DeadBytes: 12 << 20},
			"rewrote 5.0 MiB of live data out of 1 pack below live ratio 0.5 and 1 short pack; 12.0 MiB dead in all packs",
		},
		{
			&CompactionResult{Threshold: 0.5, SelectedPacks: 1, RewrittenBytes: 4 << 20, DeadBytes: 12 << 20},
			"rewrote 4.0 MiB of live data out of 1 pack below live ratio 0.5; 12.0 MiB dead in all packs",
		},
		{
			&CompactionResult{Threshold: 0.3, MaxBytes: 2 << 30, SelectedPacks: 200, RewrittenBytes: 2 << 30, RetainedBytes: 1 << 20, PendingPacks: 50, PendingBytes: 600 << 20, DeadBytes: 9 << 30},
			"rewrote 2.0 GiB of live data out of 200 packs below live ratio 0.3 (1.0 MiB too young to rewrite yet); 9.0 GiB dead in all packs; 50 packs (600.0 MiB of live data) wait for the next cycles: maxBytesPerCycle is 2.0 GiB",
		},
		{
			&CompactionResult{Threshold: 0.5, Skipped: CompactionRewritePending, BelowThreshold: 2, DeadBytes: 1 << 30},
			"waiting: the packs the last rewrite emptied must be deleted first (kopia's rewrite/delete alternation); 2 packs below live ratio 0.5; 1.0 GiB dead in all packs",
		},
		{
			&CompactionResult{Threshold: 0.5, Skipped: CompactionDisabled},
			"off",
		},
	}

	for _, tc := range tests {
		if got := tc.r.Explain(); got != tc.want {
			t.Errorf("Explain() =\n %q\nwant\n %q", got, tc.want)
		}
	}
}
