package repository

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/content"
	"github.com/kopia/kopia/repo/maintenance"
	"github.com/kopia/kopia/repo/maintenancestats"
	"go.uber.org/zap"
)

// Compaction configures the compact-live step of full cycles, which frees
// what kopia's own maintenance never does: deleted data in packs that also
// hold live data (kopia #76, "rewrite contents in packs with holes").
//
// Kopia's full rewrite picks packs that are short by their total indexed
// size, deleted entries included, holds back a lone short pack, and copies
// deleted entries along with live ones, with fresh timestamps. A pack that
// a rewrite filled with live and deleted contents is therefore never
// rewritten again, and in a repository that keeps getting small backups
// the copied deleted entries are never old enough to drop. The step is the
// full cycle's rewrite in place of kopia's: it moves only live contents,
// of the short packs kopia would consolidate and of packs whose live ratio
// (the packed length of live contents over the pack's stored length) is
// below the threshold, with kopia's own RewriteContents, recorded as
// kopia's full rewrite, so that kopia's rewrite/delete alternation and its
// margins decide when the emptied packs are deleted. The step never
// deletes.
//
// The zero value is the default: on, threshold 0.5, 2 GiB per cycle.
type Compaction struct {
	// Disabled turns the step off.
	Disabled bool
	// LiveRatioThreshold selects packs whose live ratio is below it, in
	// (0, 1]; zero means DefaultLiveRatioThreshold.
	LiveRatioThreshold float64
	// MaxBytesPerCycle bounds the live bytes one cycle rewrites; zero means
	// DefaultCompactionMaxBytes. Packs are taken worst first; a pack is the
	// unit of work, so a single pack larger than the bound is still taken
	// when it comes first (one pack is at most kopia's maximum pack size).
	MaxBytesPerCycle int64
}

// Compaction defaults.
const (
	DefaultLiveRatioThreshold = 0.5
	DefaultCompactionMaxBytes = 2 << 30
)

// compactionMinDeadBytes is the least dead space that makes a pack worth
// compacting. Kopia pads every pack, so a pack of a few small contents
// always has a low live ratio; without this floor such packs would be
// rewritten every cycle for nothing (and each rewrite moves kopia's own
// rewrite/delete alternation).
const compactionMinDeadBytes = 64 << 10

// TaskCompactLive names the compact-live step in logs and reports. Kopia's
// run history records it as full-rewrite-contents.
const TaskCompactLive = "compact-live"

func (c Compaction) threshold() float64 {
	if c.LiveRatioThreshold <= 0 {
		return DefaultLiveRatioThreshold
	}

	return c.LiveRatioThreshold
}

func (c Compaction) maxBytes() int64 {
	if c.MaxBytesPerCycle <= 0 {
		return DefaultCompactionMaxBytes
	}

	return c.MaxBytesPerCycle
}

// Compaction skip reasons (CompactionResult.Skipped).
const (
	CompactionDisabled = "disabled"
	// CompactionRewritePending: the last rewrite is newer than the last
	// deletion of orphaned packs. Kopia alternates the two so that packs a
	// rewrite orphaned are deleted (after MinRewriteToOrphanDeletionDelay,
	// when every client has refreshed its index) before a new rewrite.
	CompactionRewritePending = "rewrite-pending"
	CompactionNothingToDo    = "nothing-below-threshold"
)

// CompactionResult is what the compact-live step of one full cycle found
// and did.
type CompactionResult struct {
	Threshold float64 `json:"threshold"`
	MaxBytes  int64   `json:"maxBytes"`
	// Skipped says why nothing was rewritten (empty when the step ran).
	Skipped string `json:"skipped,omitempty"`
	// Packs is how many pack blobs were measured; BelowThreshold how many
	// hold live data below the threshold, with their live and dead bytes.
	Packs          int   `json:"packs"`
	BelowThreshold int   `json:"belowThreshold"`
	BelowLiveBytes int64 `json:"belowLiveBytes"`
	BelowDeadBytes int64 `json:"belowDeadBytes"`
	// ShortPacks and ShortBytes are the short packs whose live contents
	// the step consolidates in place of kopia's full rewrite, and their
	// live bytes.
	ShortPacks int   `json:"shortPacks"`
	ShortBytes int64 `json:"shortBytes"`
	// DeadBytes is the stored size of all packs minus their live contents:
	// bytes not referenced by live contents (deleted contents, packs no
	// index entry refers to, per-pack overhead).
	DeadBytes int64 `json:"deadBytes"`
	// SelectedPacks and SelectedBytes are the packs and live bytes chosen
	// for this cycle (bounded by MaxBytes); PendingPacks and PendingBytes
	// those below the threshold left for the next cycles by the bound.
	SelectedPacks int   `json:"selectedPacks"`
	SelectedBytes int64 `json:"selectedBytes"`
	PendingPacks  int   `json:"pendingPacks"`
	PendingBytes  int64 `json:"pendingBytes"`
	// RewrittenBytes is what kopia's RewriteContents rewrote; RetainedBytes
	// what it left because the contents are younger than RewriteMinAge.
	RewrittenBytes int64     `json:"rewrittenBytes"`
	RetainedBytes  int64     `json:"retainedBytes"`
	Start          time.Time `json:"start"`
	End            time.Time `json:"end"`
}

// packLive is one pack blob's stored length and the packed length of its
// live and of its deleted index entries.
type packLive struct {
	id      blob.ID
	length  int64
	live    int64
	deleted int64
}

func (p packLive) ratio() float64 {
	if p.length <= 0 {
		return 1
	}

	return float64(p.live) / float64(p.length)
}

// compactionPlan is the choice of packs for one cycle.
type compactionPlan struct {
	// short holds the short packs whose live contents the cycle
	// consolidates in place of kopia's own full rewrite.
	short []packLive
	// below holds the sparse candidates, worst first; selected is the
	// prefix of it this cycle rewrites.
	below    []packLive
	selected []packLive
	dead     int64
}

// planCompaction picks the packs whose live contents one cycle rewrites.
//
// Short packs, as kopia's full rewrite picks them: a total indexed size
// (deleted entries included) below shortLimit, 60 % of the maximum pack
// size, and per prefix only once two of them hold live data (kopia holds a
// lone short pack back, since rewriting it would only make another). Kopia
// would rewrite their deleted entries too, with fresh timestamps, which
// postpones their drop from the index to two snapshot GCs after the copy;
// as kopia rewrites short packs every other full cycle, a deleted entry in a
// short pack is then never dropped and its data never freed. The step moves
// the live contents only: the deleted entries stay where they are, kopia
// drops them two snapshot GCs after their marking as it does in any other
// pack, and the emptied pack goes with the next deletion of orphaned packs.
// They are not bounded, as kopia's own rewrite is not, and compactLive
// takes them on the days kopia's rewrite would run only.
//
// Sparse packs: live data at a ratio below threshold and at least
// compactionMinDeadBytes of dead space, lowest ratio first (then most dead
// bytes, then by ID, so the order is stable), as many as fit in maxBytes of
// live data. Packs without live data are kopia's: it deletes them once no
// index entry refers to them.
func planCompaction(packs []packLive, threshold float64, maxBytes, shortLimit int64) compactionPlan {
	var plan compactionPlan

	shortByPrefix := map[byte][]packLive{}

	for _, p := range packs {
		plan.dead += max(p.length-p.live, 0)

		if p.live == 0 {
			continue
		}

		if p.live+p.deleted < shortLimit && p.id != "" {
			shortByPrefix[p.id[0]] = append(shortByPrefix[p.id[0]], p)
			continue
		}

		if p.ratio() < threshold && p.length-p.live >= compactionMinDeadBytes {
			plan.below = append(plan.below, p)
		}
	}

	for _, short := range shortByPrefix {
		if len(short) >= 2 {
			plan.short = append(plan.short, short...)
			continue
		}

		// A lone short pack is still compacted when it is sparse.
		if p := short[0]; p.ratio() < threshold && p.length-p.live >= compactionMinDeadBytes {
			plan.below = append(plan.below, p)
		}
	}

	slices.SortFunc(plan.short, func(a, b packLive) int { return cmp.Compare(a.id, b.id) })
	slices.SortFunc(plan.below, func(a, b packLive) int {
		if c := cmp.Compare(a.ratio(), b.ratio()); c != 0 {
			return c
		}

		if c := cmp.Compare(b.length-b.live, a.length-a.live); c != 0 {
			return c
		}

		return cmp.Compare(a.id, b.id)
	})

	var total int64

	for i, p := range plan.below {
		if i > 0 && total+p.live > maxBytes {
			break
		}

		total += p.live
		plan.selected = plan.below[:i+1]
	}

	return plan
}

// shortPackLimit is the total indexed size under which kopia's full rewrite
// treats a pack as short (repo/maintenance content_rewrite.go).
func shortPackLimit(maxPackSize int) int64 { return int64(maxPackSize) * 60 / 100 }

// compactionDue reports whether a rewrite may start now: not while packs
// orphaned by the last rewrite (full or quick, kopia's or ours) wait for the
// deletion that follows it. This is the alternation kopia's
// shouldFullRewriteContents keeps, so that rewrites do not starve the
// deletion of the packs they orphan; deletion itself waits
// MinRewriteToOrphanDeletionDelay after the newest rewrite, ours included,
// so clients with an older index can still read the orphaned packs.
//
// One refinement: a rewrite whose statistics say it rewrote nothing
// orphaned nothing, and does not hold the step back. Kopia records its full
// rewrite in every other full cycle even when it finds no short pack; were
// those counted, the step could only follow cycles that deleted packs, and
// a pack whose deleted entries kopia dropped in a rewrite cycle would wait
// two more days.
func compactionDue(s *maintenance.Schedule) bool {
	lastRewrite := lastActiveRewrite(s)
	lastDelete := maxTime(newestSuccess(s.Runs[maintenance.TaskDeleteOrphanedBlobsFull]).End, newestSuccess(s.Runs[maintenance.TaskDeleteOrphanedBlobsQuick]).End)

	return lastRewrite.IsZero() || !lastDelete.Before(lastRewrite)
}

// fullRewriteDue mirrors kopia's shouldFullRewriteContents: kopia's full
// cycle rewrites short packs unless the newest full rewrite is newer than
// the newest deletion of orphaned packs. When it is due, the step records a
// rewrite even if it moves nothing, so that kopia's own, which would copy
// deleted entries, does not run in the cycle.
func fullRewriteDue(s *maintenance.Schedule, params maintenance.SafetyParameters) bool {
	m := modelFromSchedule(s, params)

	return m.fullRewriteDue()
}

// rewroteSomething reports whether a rewrite run's statistics show any
// rewritten content. Without readable statistics it assumes so.
func rewroteSomething(r maintenance.RunInfo) bool {
	for _, e := range r.Extra {
		sum, err := maintenancestats.BuildFromExtra(e)
		if err != nil {
			continue
		}

		if st, ok := sum.(*maintenancestats.RewriteContentsStats); ok {
			return st.RewrittenContentCount > 0 || st.ToRewriteContentCount > 0
		}
	}

	return true
}

// measurePacks lists every pack blob with its stored length and sums the
// packed length of its live (not deleted) index entries. The index is the
// one kopia loaded for the cycle; no pack is read.
func measurePacks(ctx context.Context, dr repo.DirectRepository) ([]packLive, error) {
	byID := map[blob.ID]*packLive{}

	for _, prefix := range content.PackBlobIDPrefixes {
		err := dr.BlobReader().ListBlobs(ctx, prefix, func(bm blob.Metadata) error {
			byID[bm.BlobID] = &packLive{id: bm.BlobID, length: bm.Length}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list packs: %w", err)
		}
	}

	err := dr.ContentReader().IterateContents(ctx, content.IterateOptions{IncludeDeleted: true}, func(ci content.Info) error {
		p := byID[ci.PackBlobID]

		switch {
		case p == nil:
		case ci.Deleted:
			p.deleted += int64(ci.PackedLength)
		default:
			p.live += int64(ci.PackedLength)
		}

		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("iterate index: %w", err)
	}

	out := make([]packLive, 0, len(byID))
	for _, p := range byID {
		out = append(out, *p)
	}

	return out, nil
}

// liveContentsOf returns the live contents of the given packs.
func liveContentsOf(ctx context.Context, dr repo.DirectRepository, packs []packLive) ([]content.ID, error) {
	want := make(map[blob.ID]struct{}, len(packs))
	for _, p := range packs {
		want[p.id] = struct{}{}
	}

	var ids []content.ID

	err := dr.ContentReader().IterateContents(ctx, content.IterateOptions{}, func(ci content.Info) error {
		if _, ok := want[ci.PackBlobID]; ok {
			ids = append(ids, ci.ContentID)
		}

		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("iterate index: %w", err)
	}

	return ids, nil
}

// compactLive is the compact-live step: the full cycle's rewrite, run
// inside kopia's RunExclusive callback after snapshot GC and before kopia's
// own full-cycle tasks, under the cycle's own safety parameters. It rewrites
// the live contents of the planned packs (planCompaction) with kopia's
// RewriteContents, recorded through ReportRun as kopia's full rewrite:
// kopia's own rewrite of the cycle then does not run (it would copy deleted
// entries), and kopia's tasks that follow drop the deleted entries and,
// in a later cycle, delete the emptied packs after their margins, exactly
// as for packs kopia's own rewrite emptied. The step never deletes.
func compactLive(ctx context.Context, dw repo.DirectRepositoryWriter, cfg Compaction, params maintenance.SafetyParameters, log *zap.Logger) (*CompactionResult, error) {
	res := &CompactionResult{Threshold: cfg.threshold(), MaxBytes: cfg.maxBytes(), Start: dw.Time()}
	defer func() { res.End = dw.Time() }()

	// Off means off: not even the measurement, and kopia's own rewrite
	// runs as it would without the daemon.
	if cfg.Disabled {
		res.Skipped = CompactionDisabled
		return res, nil
	}

	packs, err := measurePacks(ctx, dw)
	if err != nil {
		return res, err
	}

	mp, err := dw.ContentReader().ContentFormat().GetMutableParameters(ctx)
	if err != nil {
		return res, fmt.Errorf("read pack size: %w", err)
	}

	sched, err := maintenance.GetSchedule(ctx, dw)
	if err != nil {
		return res, fmt.Errorf("read maintenance schedule: %w", err)
	}

	plan := planCompaction(packs, res.Threshold, res.MaxBytes, shortPackLimit(mp.MaxPackSize))

	// Short packs are consolidated on kopia's rewrite days only, as kopia
	// would: the alternation of rewrites and deletions keeps its phase.
	kopiaDue := fullRewriteDue(sched, params)
	if !kopiaDue {
		plan.short = nil
	}

	res.fill(packs, plan)

	work := len(plan.short) + len(plan.selected)

	switch {
	case !kopiaDue && !compactionDue(sched):
		res.Skipped = CompactionRewritePending
	case work == 0:
		res.Skipped = CompactionNothingToDo
	}

	if res.Skipped != "" {
		res.SelectedPacks, res.SelectedBytes, res.ShortPacks, res.ShortBytes = 0, 0, 0, 0
		res.PendingPacks, res.PendingBytes = len(plan.below), res.BelowLiveBytes

		log.Debug("compact-live skipped", zap.String("reason", res.Skipped), zap.Int("packs_below_threshold", res.BelowThreshold), zap.Int64("dead_bytes", res.DeadBytes))

		if !kopiaDue {
			return res, nil
		}
	}

	var ids []content.ID
	if work > 0 {
		if ids, err = liveContentsOf(ctx, dw, append(slices.Clip(plan.short), plan.selected...)); err != nil {
			return res, err
		}
	}

	err = maintenance.ReportRun(ctx, dw, maintenance.TaskRewriteContentsFull, sched, func() (maintenancestats.Kind, error) {
		stats, err := maintenance.RewriteContents(ctx, dw, &maintenance.RewriteContentsOptions{ContentIDs: ids}, params)
		if stats != nil {
			res.RewrittenBytes = int64(stats.RewrittenContentSize)
			res.RetainedBytes = int64(stats.RetainedContentSize)
		}

		return stats, err
	})
	if err != nil {
		return res, fmt.Errorf("rewrite live contents of %s: %w", countPacks(work), err)
	}

	if work == 0 {
		return res, nil
	}

	log.Info("compact-live rewrote live contents",
		zap.Int("short_packs", res.ShortPacks), zap.Int("sparse_packs", res.SelectedPacks),
		zap.Int64("rewritten_bytes", res.RewrittenBytes), zap.Int64("retained_bytes", res.RetainedBytes),
		zap.Int("pending_packs", res.PendingPacks), zap.Int64("pending_bytes", res.PendingBytes),
		zap.Int64("dead_bytes", res.DeadBytes))

	return res, nil
}

// fill records the measurement and the plan.
func (r *CompactionResult) fill(packs []packLive, plan compactionPlan) {
	r.Packs = len(packs)
	r.DeadBytes = plan.dead
	r.BelowThreshold = len(plan.below)
	r.ShortPacks = len(plan.short)

	for _, p := range plan.short {
		r.ShortBytes += p.live
	}

	for i, p := range plan.below {
		r.BelowLiveBytes += p.live
		r.BelowDeadBytes += p.length - p.live

		if i < len(plan.selected) {
			r.SelectedPacks++
			r.SelectedBytes += p.live
		} else {
			r.PendingPacks++
			r.PendingBytes += p.live
		}
	}
}

// Explain says in plain words what the step did in the last full cycle,
// e.g. "rewrote 3.9 MiB of live data out of 1 pack below live ratio 0.5;
// 12.0 MiB dead in all packs".
func (r *CompactionResult) Explain() string {
	if r == nil {
		return "not run yet (after the first full cycle)"
	}

	var b strings.Builder

	switch r.Skipped {
	case "":
		var from []string
		if r.SelectedPacks > 0 {
			from = append(from, fmt.Sprintf("%s below live ratio %v", countPacks(r.SelectedPacks), r.Threshold))
		}

		if r.ShortPacks > 0 {
			from = append(from, strings.Replace(countPacks(r.ShortPacks), "pack", "short pack", 1))
		}

		fmt.Fprintf(&b, "rewrote %s of live data out of %s", HumanBytes(r.RewrittenBytes), strings.Join(from, " and "))

		if r.RetainedBytes > 0 {
			fmt.Fprintf(&b, " (%s too young to rewrite yet)", HumanBytes(r.RetainedBytes))
		}
	case CompactionDisabled:
		return "off"
	case CompactionRewritePending:
		fmt.Fprintf(&b, "waiting: the packs the last rewrite emptied must be deleted first (kopia's rewrite/delete alternation); %s below live ratio %v", countPacks(r.BelowThreshold), r.Threshold)
	default:
		fmt.Fprintf(&b, "nothing to do: no pack below live ratio %v", r.Threshold)
	}

	fmt.Fprintf(&b, "; %s dead in all packs", HumanBytes(r.DeadBytes))

	if r.Skipped == "" && r.PendingPacks > 0 {
		fmt.Fprintf(&b, "; %s (%s of live data) wait for the next cycles: maxBytesPerCycle is %s", countPacks(r.PendingPacks), HumanBytes(r.PendingBytes), HumanBytes(r.MaxBytes))
	}

	return b.String()
}
