package repository

import (
	"context"
	"fmt"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/content"
)

// soakPackBreakdown splits the pack bytes of rep at now by what holds them.
type soakPackBreakdown struct {
	packs, mixedPacks, deadPacks, orphanPacks int

	live          int64 // packed length of live index entries
	mixedDead     int64 // stored bytes of mixed packs not covered by live entries
	mixedAbove    int64 // of mixedDead, in packs at or above the threshold
	mixedDeleted  int64 // deleted entries in mixed packs
	deadPackBytes int64 // packs with deleted entries only
	orphanBytes   int64 // packs with no index entry
	deletedByAge  [4]int64
	overhead      int64 // stored bytes of indexed packs beyond their entries
	// heldBeyond is what packs without live entries store beyond their
	// deleted entries: copies superseded by a later write, and framing.
	heldBeyond int64
}

// protected is what SafetyFull's margins still hold beyond the deleted
// data itself: the packs without live entries (every one of them waits for
// a margin: the drop of its deleted entries or its deletion delay) beyond
// their deleted entries, and a pack's framing (kopia's 4 KiB padding and
// the copy of its index) for every other pack, 8 KiB each at most.
func (b soakPackBreakdown) protected() int64 {
	return b.heldBeyond + b.orphanBytes + int64(b.mixedPacks)*8<<10
}

func (b soakPackBreakdown) String() string {
	return fmt.Sprintf("packs %d (mixed %d, deleted-only %d, orphan %d); live entries %d; mixed dead %d (in packs >= threshold %d, deleted entries %d); deleted-only packs %d; orphan packs %d; deleted entries by age <1d %d, 1-2d %d, 2-5d %d, >5d %d; pack overhead %d",
		b.packs, b.mixedPacks, b.deadPacks, b.orphanPacks, b.live, b.mixedDead, b.mixedAbove, b.mixedDeleted, b.deadPackBytes, b.orphanBytes,
		b.deletedByAge[0], b.deletedByAge[1], b.deletedByAge[2], b.deletedByAge[3], b.overhead)
}

func soakBreakdown(ctx context.Context, r repo.Repository, now time.Time, threshold float64) (soakPackBreakdown, error) {
	var b soakPackBreakdown

	dr := r.(repo.DirectRepository)

	packs, err := measurePacks(ctx, dr)
	if err != nil {
		return b, err
	}

	byID := map[blob.ID]packLive{}
	for _, p := range packs {
		byID[p.id] = p
		b.packs++

		switch {
		case p.live > 0:
			b.mixedPacks++
			b.mixedDead += p.length - p.live
			b.mixedDeleted += p.deleted
			if p.ratio() >= threshold {
				b.mixedAbove += p.length - p.live
			}
			b.live += p.live
		}

		if p.live+p.deleted > 0 {
			b.overhead += p.length - p.live - p.deleted
		}

		switch {
		case p.live > 0:
		case p.deleted > 0:
			b.deadPacks++
			b.deadPackBytes += p.length
			b.heldBeyond += p.length - p.deleted
		default:
			b.orphanPacks++
			b.orphanBytes += p.length
		}
	}

	err = dr.ContentReader().IterateContents(ctx, content.IterateOptions{IncludeDeleted: true}, func(ci content.Info) error {
		if !ci.Deleted {
			return nil
		}

		if _, ok := byID[ci.PackBlobID]; !ok {
			return nil
		}

		age := now.Sub(ci.Timestamp())
		i := 3

		switch {
		case age < 24*time.Hour:
			i = 0
		case age < 48*time.Hour:
			i = 1
		case age < 120*time.Hour:
			i = 2
		}

		b.deletedByAge[i] += int64(ci.PackedLength)

		return nil
	})

	return b, err
}
