package repository

import (
	"fmt"
	"math"
	"time"

	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/maintenance"
)

// CompactionOutlook is the part of the reclaim explanation that the
// compact-live step frees: dead space in packs that also hold live data,
// which deleting packs alone never frees.
type CompactionOutlook struct {
	// Enabled is false when the step is off: then Bytes is what it would
	// free.
	Enabled bool `json:"enabled"`
	// Packs and Bytes are the mixed packs below the live-ratio threshold
	// and their dead space (stored length minus live contents), counting
	// those whose unreferenced contents kopia has yet to mark and drop.
	Packs int   `json:"packs"`
	Bytes int64 `json:"bytes"`
	// RewriteBytes is the live data the coming cycles will rewrite to free
	// them.
	RewriteBytes int64 `json:"rewriteBytes"`
	// PendingPacks and PendingBytes are the candidates (packs and live
	// bytes) that the last cycle left for later cycles because of
	// maxBytesPerCycle.
	PendingPacks int   `json:"pendingPacks"`
	PendingBytes int64 `json:"pendingBytes"`
	// EligibleAt is the earliest coming full cycle predicted to delete a
	// pack emptied by compaction, AllEligibleAt the one that deletes the
	// last (zero when some fall outside the horizon).
	EligibleAt    time.Time `json:"eligibleAt,omitzero"`
	AllEligibleAt time.Time `json:"allEligibleAt,omitzero"`
}

// compactionCandidate is a mixed pack the step will compact, with the
// first coming cycle (index into the predicted cycles) at which its marked
// entries are out of the index: the step may move its live contents at
// once, but the emptied pack goes only when no index entry refers to it.
type compactionCandidate struct {
	id      blob.ID
	length  int64
	written time.Time
	// live is what the step rewrites: the referenced contents and the
	// unreferenced ones snapshot GC has not marked yet, which the index
	// still shows as live.
	live int64
	// short: a short pack the step consolidates whatever the bound.
	short   bool
	readyAt int // -1: never within the horizon
}

// dropCycle returns the index of the first coming cycle after which the
// pack holds no unreferenced index entries: the marking of recent
// unreferenced contents and the drop of the marks follow kopia's rules as
// predictDeletion replays them. 0 when it holds none now; -1 when it will
// not happen within the cycles.
func dropCycle(p *packState, cycles []cycleOutcome, safety maintenance.SafetyParameters) int {
	if p.unref == 0 {
		return 0
	}

	mark := p.lastMark
	needMark := !p.pendingMark.IsZero()

	for i, out := range cycles {
		if needMark && out.at.Sub(p.pendingMark) >= safety.MinContentAgeSubjectToGC {
			if out.at.After(mark) {
				mark = out.at
			}

			needMark = false
		}

		if !needMark && !out.dropBefore.IsZero() && mark.Before(out.dropBefore) {
			return i
		}
	}

	return -1
}

// compactionCandidates lists the mixed packs the step will compact, as
// planCompaction chooses them from the step's own view of the index
// (unmarked unreferenced contents count as live there): the sparse packs,
// worst first, then the short packs it consolidates that hold dead space.
// The outlook's dead bytes are what deleting them frees.
func compactionCandidates(packs map[blob.ID]*packState, cycles []cycleOutcome, threshold float64, shortLimit int64, safety maintenance.SafetyParameters) []compactionCandidate {
	view := make([]packLive, 0, len(packs))

	for id, p := range packs {
		view = append(view, packLive{id: id, length: p.length, live: p.live + p.unref - p.marked, deleted: p.marked})
	}

	plan := planCompaction(view, threshold, math.MaxInt64, shortLimit)

	var out []compactionCandidate

	add := func(pl packLive, short bool) {
		p := packs[pl.id]

		// Once the step moved the live contents, only the marked entries
		// keep the pack in the index.
		left := *p
		left.unref, left.pendingMark = p.marked, time.Time{}

		out = append(out, compactionCandidate{id: pl.id, length: pl.length, written: p.written, live: pl.live, short: short, readyAt: dropCycle(&left, cycles, safety)})
	}

	for _, pl := range plan.below {
		add(pl, false)
	}

	for _, pl := range plan.short {
		if pl.length-pl.live >= compactionMinDeadBytes {
			add(pl, true)
		}
	}

	return out
}

// simulateWithCompaction replays the coming full cycles as simulate does,
// with the compact-live step in each of them before kopia's tasks: when due
// (kopia's full rewrite is, or the newest rewrite that rewrote something was
// followed by a deletion) it rewrites the short candidates (when kopia's
// rewrite is due) and the sparse ones, worst first, up to maxBytes of live data, and records a full rewrite
// whenever kopia's was due or it moved something. It returns the cycle
// outcomes and, per candidate, when the pack it empties is deleted (zero:
// not within the cycles): at a cycle that deletes orphaned packs, at or
// after the compaction and the drop of the pack's marked entries.
//
// Short packs that are not candidates (no dead space) are assumed to stay
// as they are: consolidating them would not change the alternation.
func simulateWithCompaction(m cycleModel, times []time.Time, lastActive time.Time, cands []compactionCandidate, maxBytes int64) ([]cycleOutcome, []time.Time) {
	m.gcRuns = append([]gcRun(nil), m.gcRuns...)

	out := make([]cycleOutcome, 0, len(times))
	done := make([]int, len(cands)) // cycle index+1 of the compaction
	gone := make([]time.Time, len(cands))

	for i, t := range times {
		kopiaDue := m.fullRewriteDue()

		var took bool

		if kopiaDue || lastActive.IsZero() || !m.lastDelete.Before(lastActive) {
			var (
				total  int64
				sparse int
				full   bool
			)

			// planCompaction's choice: every short candidate; the sparse
			// ones in order while they fit, the first always.
			for c, cand := range cands {
				if done[c] > 0 || (cand.short && !kopiaDue) {
					continue
				}

				if !cand.short {
					if full || (sparse > 0 && total+cand.live > maxBytes) {
						full = true
						continue
					}

					total += cand.live
					sparse++
				}

				done[c] = i + 1
				took = true
			}
		}

		if took {
			lastActive = t
		}

		o := m.cycle(t, kopiaDue || took)
		out = append(out, o)

		if !o.deletePacks {
			continue
		}

		for c, cand := range cands {
			if done[c] == 0 || !gone[c].IsZero() || cand.readyAt < 0 || cand.readyAt > i {
				continue
			}

			if t.Add(time.Second).Sub(cand.written) >= m.safety.PackDeleteMinAge {
				gone[c] = t
			}
		}
	}

	return out, gone
}

// lastActiveRewrite is the end of the newest successful rewrite (full or
// quick) that rewrote something, as compactionDue sees it.
func lastActiveRewrite(s *maintenance.Schedule) time.Time {
	var last time.Time

	for _, task := range []maintenance.TaskType{maintenance.TaskRewriteContentsFull, maintenance.TaskRewriteContentsQuick} {
		for _, r := range s.Runs[task] {
			if r.Success && r.End.After(last) && rewroteSomething(r) {
				last = r.End
			}
		}
	}

	return last
}

// compactionOutlook sums the candidates and their predicted deletions.
func compactionOutlook(comp Compaction, cands []compactionCandidate, gone []time.Time, last *CompactionResult) *CompactionOutlook {
	o := &CompactionOutlook{Enabled: !comp.Disabled, Packs: len(cands)}
	all := len(gone) == len(cands)

	for i, c := range cands {
		o.Bytes += c.length - c.live
		o.RewriteBytes += c.live

		if i >= len(gone) || gone[i].IsZero() {
			all = false
			continue
		}

		if o.EligibleAt.IsZero() || gone[i].Before(o.EligibleAt) {
			o.EligibleAt = gone[i]
		}

		if gone[i].After(o.AllEligibleAt) {
			o.AllEligibleAt = gone[i]
		}
	}

	if !all {
		o.AllEligibleAt = time.Time{}
	}

	// Only a step that ran was cut by the bound; a skipped one left all.
	if last != nil && last.Skipped == "" {
		o.PendingPacks, o.PendingBytes = last.PendingPacks, last.PendingBytes
	}

	return o
}

// explain says what compaction will free and when, e.g. "12.4 MiB dead in
// 1 pack shared with live data, freed by compaction (rewriting 3.9 MiB) by
// 2026-03-09 00:00 UTC".
func (c *CompactionOutlook) explain() string {
	s := fmt.Sprintf("%s dead in %s shared with live data, freed by compaction (rewriting %s)", HumanBytes(c.Bytes), countPacks(c.Packs), HumanBytes(c.RewriteBytes))

	switch {
	case !c.AllEligibleAt.IsZero():
		s += " by " + c.AllEligibleAt.UTC().Format("2006-01-02 15:04 MST")
	case !c.EligibleAt.IsZero():
		s += ", from " + c.EligibleAt.UTC().Format("2006-01-02 15:04 MST") + " on"
	default:
		s += fmt.Sprintf(", not predicted within the next %d full cycles", reclaimHorizon)
	}

	if c.PendingBytes > 0 {
		s += fmt.Sprintf("; the per-cycle bound (maxBytesPerCycle) left %s of live data in %s for the next cycles", HumanBytes(c.PendingBytes), countPacks(c.PendingPacks))
	}

	return s
}

func countPacks(n int) string {
	if n == 1 {
		return "1 pack"
	}

	return fmt.Sprintf("%d packs", n)
}
