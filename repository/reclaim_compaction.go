package repository

import (
	"cmp"
	"fmt"
	"slices"
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
// first coming cycle (index into the predicted cycles) at which its
// unreferenced contents are out of the index.
type compactionCandidate struct {
	id      blob.ID
	length  int64
	live    int64
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

// compactionCandidates lists the mixed packs the step will compact once
// their unreferenced entries are gone: live ratio (referenced contents
// over stored length) below threshold and enough dead space. The live
// bytes here exclude unreferenced contents not yet marked, which the
// step's own measure still counts as live until snapshot GC marks them.
func compactionCandidates(packs map[blob.ID]*packState, cycles []cycleOutcome, threshold float64, shortLimit int64, safety maintenance.SafetyParameters) []compactionCandidate {
	var out []compactionCandidate

	for id, p := range packs {
		if p.live == 0 || p.length <= 0 || p.length-p.live < compactionMinDeadBytes || float64(p.live)/float64(p.length) >= threshold {
			continue
		}

		ready := dropCycle(p, cycles, safety)
		if p.unref >= shortLimit && p.pendingMark.IsZero() {
			// Marked entries kopia will not count as a short pack: the
			// step need not wait for their drop (planCompaction).
			ready = 0
		}

		out = append(out, compactionCandidate{id: id, length: p.length, live: p.live, readyAt: ready})
	}

	// The step's order: worst live ratio first, then most dead bytes.
	slices.SortFunc(out, func(a, b compactionCandidate) int {
		ra, rb := float64(a.live)/float64(a.length), float64(b.live)/float64(b.length)
		if c := cmp.Compare(ra, rb); c != 0 {
			return c
		}

		if c := cmp.Compare(b.length-b.live, a.length-a.live); c != 0 {
			return c
		}

		return cmp.Compare(a.id, b.id)
	})

	return out
}

// simulateWithCompaction replays the coming full cycles as simulate does,
// with the compact-live step after kopia's tasks of each cycle: when due
// (the newest rewrite that rewrote something was followed by a deletion),
// it rewrites the ready candidates, worst first, up to maxBytes of live
// data, which counts as a full rewrite for kopia's next decisions. It
// returns the cycle outcomes and, per candidate, when the pack it empties
// is deleted (zero: not within the cycles).
//
// Kopia's own full rewrites in the coming cycles are assumed to rewrite
// nothing (no short packs): a rewrite that does rewrite would hold the step
// back by one more cycle.
func simulateWithCompaction(m cycleModel, times []time.Time, lastActive time.Time, cands []compactionCandidate, maxBytes int64) ([]cycleOutcome, []time.Time) {
	m.gcRuns = append([]gcRun(nil), m.gcRuns...)

	out := make([]cycleOutcome, 0, len(times))
	done := make([]int, len(cands)) // cycle index+1 of the compaction
	gone := make([]time.Time, len(cands))

	for i, t := range times {
		o := m.step(t)
		out = append(out, o)

		if o.deletePacks {
			for c := range cands {
				if done[c] > 0 && done[c]-1 < i && gone[c].IsZero() {
					gone[c] = t
				}
			}
		}

		if !lastActive.IsZero() && m.lastDelete.Before(lastActive) {
			continue
		}

		var (
			total int64
			took  bool
		)

		for c, cand := range cands {
			if done[c] > 0 || cand.readyAt < 0 || cand.readyAt > i {
				continue
			}

			if took && total+cand.live > maxBytes {
				break
			}

			done[c] = i + 1
			total += cand.live
			took = true
		}

		if took {
			// The step's rewrite ends after kopia's tasks of the cycle.
			at := t.Add(time.Second)
			m.lastFullRewrite, m.lastRewrite, lastActive = at, at, at
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
