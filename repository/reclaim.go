package repository

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/content"
	"github.com/kopia/kopia/repo/maintenance"
)

// Reclaim explains the unreferenced data still in storage: how much there
// is, why kopia keeps it, and when it will go.
//
// Under SafetyFull kopia frees the data of a deleted snapshot in steps, each
// guarded by a margin against clients that are writing at the same time:
//  1. a full cycle's snapshot GC marks unreferenced contents deleted, but
//     only those at least MinContentAgeSubjectToGC (24h) old;
//  2. a later full cycle drops the marked entries from the index once two
//     snapshot GCs at least MarginBetweenSnapshotGC (4h) apart have run since
//     the marking (less DropContentFromIndexExtraMargin, 1h);
//  3. a full cycle that deletes orphaned packs removes packs no index entry
//     refers to, if they are PackDeleteMinAge (24h) old. kopia alternates
//     cycles that rewrite short packs with cycles that delete packs (a
//     deletion waits MinRewriteToOrphanDeletionDelay, 1h, after a rewrite),
//     so with daily full cycles packs are deleted every other day.
//
// The prediction replays those rules over the daemon's coming full cycles.
// It assumes packs holding only unreferenced data are not rewritten (true
// for full packs; a short pack may be rewritten and then take longer).
type Reclaim struct {
	// UnreferencedBytes is what the last snapshot GC found unreferenced:
	// contents it marked deleted plus contents too young to mark.
	UnreferencedBytes int64 `json:"unreferencedBytes"`
	// RetainedBytes is the size of the packs that hold only unreferenced
	// data (or no indexed data at all) and are still in storage: what
	// deletion will free once the safety margins allow it.
	RetainedBytes int64 `json:"retainedBytes"`
	// RecentBytes, MarkedBytes and OrphanBytes split RetainedBytes by step:
	// packs waiting for their contents to be old enough to mark, for the
	// marks to be dropped from the index, and for the pack deletion.
	RecentBytes int64 `json:"recentBytes"`
	MarkedBytes int64 `json:"markedBytes"`
	OrphanBytes int64 `json:"orphanBytes"`
	// SharedBytes is unreferenced content in packs that also hold live
	// contents: deleting packs never frees it.
	SharedBytes int64 `json:"sharedBytes"`
	// EligibleAt is the earliest coming full cycle predicted to delete some
	// of the retained packs, and EligibleCycle its ordinal (1 = the next full
	// cycle). AllEligibleAt is when all of them are predicted gone.
	EligibleAt    time.Time `json:"eligibleAt,omitzero"`
	EligibleCycle int       `json:"eligibleCycle,omitempty"`
	AllEligibleAt time.Time `json:"allEligibleAt,omitzero"`
	ComputedAt    time.Time `json:"computedAt"`
	// Compaction is what the compact-live step will free of SharedBytes
	// (nil when no mixed pack qualifies). Its deletions count for
	// EligibleAt and EligibleCycle too.
	Compaction *CompactionOutlook `json:"compaction,omitempty"`

	// predicted holds each retained pack's predicted deletion (zero: none
	// within the horizon), for tests that hold kopia to the prediction.
	predicted map[blob.ID]packPrediction
}

// packPrediction is one retained pack and when it is predicted to go.
type packPrediction struct {
	length int64
	at     time.Time
}

// gcRun is a snapshot GC run of the history, or a predicted one.
type gcRun struct{ start, end time.Time }

// cycleModel replays kopia's full-cycle decisions (repo/maintenance,
// maintenance_run.go) over predicted full cycles.
type cycleModel struct {
	safety          maintenance.SafetyParameters
	gcRuns          []gcRun // successful snapshot GCs, any order
	lastFullRewrite time.Time
	lastRewrite     time.Time // full or quick
	lastDelete      time.Time // full or quick pack deletion
}

// simulate replays the full cycles at times, in order.
func (m cycleModel) simulate(times []time.Time) []cycleOutcome {
	m.gcRuns = append([]gcRun(nil), m.gcRuns...)

	out := make([]cycleOutcome, 0, len(times))
	for _, t := range times {
		out = append(out, m.step(t))
	}

	return out
}

// cycleOutcome is what one full cycle at a given time does.
type cycleOutcome struct {
	at          time.Time
	dropBefore  time.Time // marks older than this are dropped (zero: none)
	deletePacks bool
}

// step applies one full cycle at t, kopia's own, and returns what it did.
func (m *cycleModel) step(t time.Time) cycleOutcome {
	return m.cycle(t, m.fullRewriteDue())
}

// fullRewriteDue is kopia's shouldFullRewriteContents: a rewrite waits until
// packs orphaned by the previous rewrite have been deleted.
func (m *cycleModel) fullRewriteDue() bool {
	return m.lastFullRewrite.IsZero() || m.safety.MinRewriteToOrphanDeletionDelay == 0 || !m.lastDelete.Before(m.lastFullRewrite)
}

// cycle applies one full cycle at t in which a full rewrite is recorded
// when rewrite is set, and returns what it did.
func (m *cycleModel) cycle(t time.Time, rewrite bool) cycleOutcome {
	m.gcRuns = append(m.gcRuns, gcRun{start: t, end: t})

	if rewrite {
		m.lastFullRewrite = t
		m.lastRewrite = t
	}

	out := cycleOutcome{at: t, dropBefore: safeDropTime(m.gcRuns, m.safety)}

	// shouldDeleteOrphanedPacks: other clients may still read packs orphaned
	// by a rewrite for a while, so deletion waits after any rewrite.
	if m.lastRewrite.IsZero() || !t.Before(m.lastRewrite.Add(m.safety.MinRewriteToOrphanDeletionDelay)) {
		out.deletePacks = true
		m.lastDelete = t
	}

	return out
}

// safeDropTime mirrors kopia's findSafeDropTime: marks made before the
// start of an earlier GC are safe to drop once a later GC started more than
// MarginBetweenSnapshotGC after that GC ended, because the later GC would
// have undeleted any content a racing snapshot made live again.
func safeDropTime(runs []gcRun, safety maintenance.SafetyParameters) time.Time {
	if !safety.RequireTwoGCCycles {
		if len(runs) == 0 {
			return time.Time{}
		}

		return newestGC(runs).start
	}

	if len(runs) <= 1 {
		return time.Time{}
	}

	sorted := append([]gcRun(nil), runs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].start.After(sorted[j].start) })

	for _, r := range sorted[1:] {
		if sorted[0].start.Sub(r.end) > safety.MarginBetweenSnapshotGC {
			return r.start.Add(-safety.DropContentFromIndexExtraMargin)
		}
	}

	return time.Time{}
}

func newestGC(runs []gcRun) gcRun {
	best := runs[0]
	for _, r := range runs[1:] {
		if r.start.After(best.start) {
			best = r
		}
	}

	return best
}

// packState is what the index says about one pack.
type packState struct {
	length   int64
	written  time.Time
	live     int64 // packed bytes of referenced contents
	unref    int64 // packed bytes of unreferenced contents (marked or recent)
	marked   int64 // of unref, the contents marked deleted in the index
	lastMark time.Time
	// pendingMark is the newest modification time of a recent unreferenced
	// content: it will be marked by the first full cycle at least
	// MinContentAgeSubjectToGC later.
	pendingMark time.Time
	indexed     bool
}

// predictDeletion returns when the simulated full cycles will delete the
// pack, and the cycle's ordinal, or zero when none of them will.
func predictDeletion(p *packState, cycles []cycleOutcome, safety maintenance.SafetyParameters) (time.Time, int) {
	mark := p.lastMark
	needMark := !p.pendingMark.IsZero()
	dropped := !p.indexed

	for i, out := range cycles {
		t := out.at

		if needMark && t.Sub(p.pendingMark) >= safety.MinContentAgeSubjectToGC {
			// snapshot GC runs first in the cycle; its mark is newer than
			// any drop horizon of this same cycle.
			if t.After(mark) {
				mark = t
			}

			needMark = false
		}

		if !dropped && !needMark && !out.dropBefore.IsZero() && mark.Before(out.dropBefore) {
			dropped = true
		}

		// Packs are deleted after the drop of the same cycle, when older
		// than PackDeleteMinAge at the cycle's start.
		if dropped && out.deletePacks && t.Add(time.Second).Sub(p.written) >= safety.PackDeleteMinAge {
			return t, i + 1
		}
	}

	return time.Time{}, 0
}

// modelFromSchedule builds the cycle model from the run history.
func modelFromSchedule(s *maintenance.Schedule, safety maintenance.SafetyParameters) cycleModel {
	m := cycleModel{safety: safety}

	for _, r := range s.Runs[maintenance.TaskSnapshotGarbageCollection] {
		if r.Success {
			m.gcRuns = append(m.gcRuns, gcRun{start: r.Start, end: r.End})
		}
	}

	m.lastFullRewrite = newestSuccess(s.Runs[maintenance.TaskRewriteContentsFull]).End
	m.lastRewrite = maxTime(m.lastFullRewrite, newestSuccess(s.Runs[maintenance.TaskRewriteContentsQuick]).End)
	m.lastDelete = maxTime(newestSuccess(s.Runs[maintenance.TaskDeleteOrphanedBlobsFull]).End, newestSuccess(s.Runs[maintenance.TaskDeleteOrphanedBlobsQuick]).End)

	return m
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}

	return b
}

// futureFullCycles lists the coming full cycles: next, then every interval.
func futureFullCycles(next time.Time, interval time.Duration, n int) []time.Time {
	if next.IsZero() || interval <= 0 {
		return nil
	}

	out := make([]time.Time, n)
	for i := range out {
		out[i] = next.Add(time.Duration(i) * interval)
	}

	return out
}

// reclaimHorizon is how many coming full cycles the prediction looks at:
// enough for the slowest SafetyFull path (mark, two GCs, alternation).
const reclaimHorizon = 14

// computeReclaim inspects the index and the pack listing after a full cycle.
// recent holds the unreferenced contents snapshot GC found too young to mark
// (from the content log), gcStats the cycle's snapshot GC summary.
//
// comp is the repository's compaction setting and last the result of the
// cycle's compact-live step (nil when it did not run).
func computeReclaim(ctx context.Context, dr repo.DirectRepository, sched *maintenance.Schedule, recent map[string]recentContent, unreferenced int64, nextFull time.Time, fullInterval time.Duration, now time.Time, comp Compaction, last *CompactionResult) (*Reclaim, error) {
	packs := map[blob.ID]*packState{}

	for _, prefix := range content.PackBlobIDPrefixes {
		err := dr.BlobReader().ListBlobs(ctx, prefix, func(bm blob.Metadata) error {
			packs[bm.BlobID] = &packState{length: bm.Length, written: bm.Timestamp}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list packs: %w", err)
		}
	}

	err := dr.ContentReader().IterateContents(ctx, content.IterateOptions{IncludeDeleted: true}, func(ci content.Info) error {
		p := packs[ci.PackBlobID]
		if p == nil {
			return nil
		}

		p.indexed = true
		size := int64(ci.PackedLength)

		switch rc, isRecent := recent[recentKey(loggedContentID(ci.ContentID.String()), size, ci.Timestamp())]; {
		case ci.Deleted:
			p.unref += size
			p.marked += size
			if ts := ci.Timestamp(); ts.After(p.lastMark) {
				p.lastMark = ts
			}
		case isRecent:
			p.unref += size
			if rc.modified.After(p.pendingMark) {
				p.pendingMark = rc.modified
			}
		default:
			p.live += size
		}

		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("iterate index: %w", err)
	}

	r := &Reclaim{UnreferencedBytes: unreferenced, ComputedAt: now, predicted: map[blob.ID]packPrediction{}}
	model := modelFromSchedule(sched, safety)
	times := futureFullCycles(nextFull, fullInterval, reclaimHorizon)
	cycles := model.simulate(times)
	allPredicted := true

	// With compaction the coming cycles alternate differently (its rewrites
	// count as kopia's), so the retained packs are predicted on the same
	// replay.
	mp, err := dr.ContentReader().ContentFormat().GetMutableParameters(ctx)
	if err != nil {
		return nil, fmt.Errorf("read pack size: %w", err)
	}

	if cands := compactionCandidates(packs, cycles, comp.threshold(), shortPackLimit(mp.MaxPackSize), safety); len(cands) > 0 {
		var gone []time.Time
		if !comp.Disabled {
			cycles, gone = simulateWithCompaction(model, times, lastActiveRewrite(sched), cands, comp.maxBytes())
		}

		r.Compaction = compactionOutlook(comp, cands, gone, last)
	}

	for id, p := range packs {
		switch {
		case p.live > 0:
			r.SharedBytes += p.unref
			continue
		case !p.indexed:
			r.OrphanBytes += p.length
		case !p.pendingMark.IsZero():
			r.RecentBytes += p.length
		case p.unref > 0:
			r.MarkedBytes += p.length
		default:
			continue
		}

		r.RetainedBytes += p.length

		at, cycle := predictDeletion(p, cycles, safety)
		r.predicted[id] = packPrediction{length: p.length, at: at}

		if at.IsZero() {
			allPredicted = false
			continue
		}

		if r.EligibleAt.IsZero() || at.Before(r.EligibleAt) {
			r.EligibleAt, r.EligibleCycle = at, cycle
		}

		if at.After(r.AllEligibleAt) {
			r.AllEligibleAt = at
		}
	}

	if !allPredicted {
		r.AllEligibleAt = time.Time{}
	}

	if c := r.Compaction; c != nil && !c.EligibleAt.IsZero() && (r.EligibleAt.IsZero() || c.EligibleAt.Before(r.EligibleAt)) {
		r.EligibleAt = c.EligibleAt
		r.EligibleCycle = slices.IndexFunc(times, c.EligibleAt.Equal) + 1
	}

	return r, nil
}

// Explain says in plain words what is waiting to be reclaimed, e.g.
// "3.2 GiB unreferenced; 2.1 GiB held by safety margins until 2026-11-23
// 04:10 UTC (second full cycle)".
func (r *Reclaim) Explain() string {
	if r == nil {
		return "not computed yet (after the first full cycle)"
	}

	var b strings.Builder

	fmt.Fprintf(&b, "%s unreferenced", HumanBytes(r.UnreferencedBytes))

	switch {
	case r.RetainedBytes == 0:
		b.WriteString("; nothing held by safety margins")
	case r.EligibleAt.IsZero():
		fmt.Fprintf(&b, "; %s held by safety margins, deletion not predicted within the next %d full cycles", HumanBytes(r.RetainedBytes), reclaimHorizon)
	default:
		fmt.Fprintf(&b, "; %s held by safety margins until %s (%s)", HumanBytes(r.RetainedBytes), r.EligibleAt.UTC().Format("2006-01-02 15:04 MST"), ordinalCycle(r.EligibleCycle))

		if !r.AllEligibleAt.IsZero() && r.AllEligibleAt.After(r.EligibleAt) {
			fmt.Fprintf(&b, ", all of it by %s", r.AllEligibleAt.UTC().Format("2006-01-02 15:04 MST"))
		}
	}

	switch c := r.Compaction; {
	case c != nil && c.Enabled:
		b.WriteString("; ")
		b.WriteString(c.explain())
	case c != nil:
		fmt.Fprintf(&b, "; %s is dead space in %s shared with live data, which only compaction frees (compaction is off)", HumanBytes(c.Bytes), countPacks(c.Packs))
	case r.SharedBytes > 0:
		fmt.Fprintf(&b, "; %s shares packs with live data and is not freed by deleting packs", HumanBytes(r.SharedBytes))
	}

	return b.String()
}

func ordinalCycle(n int) string {
	words := []string{"", "next full cycle", "second full cycle", "third full cycle", "fourth full cycle", "fifth full cycle"}
	if n > 0 && n < len(words) {
		return words[n]
	}

	return fmt.Sprintf("full cycle %d from now", n)
}

// HumanBytes formats a byte count with binary units.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}

	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}

	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
