package repository

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/kopia/kopia/repo/blob"
)

// Health is what cheap blob listings tell about a repository.
type Health struct {
	// IndexBlobs counts epoch (xn, xs, xr) and legacy (n) index blobs: the
	// number kopia loads on open, and the leading indicator of "Found too
	// many index blobs" and of out-of-memory maintenance.
	IndexBlobs int64 `json:"indexBlobs"`
	// SessionMarkers counts s* blobs: write sessions not flushed yet, by
	// clients writing now or by clients that died mid-write.
	SessionMarkers int64 `json:"sessionMarkers"`
	// SizeBytes sums blob sizes by class: p (data packs), q (metadata
	// packs), index, other.
	SizeBytes map[string]int64 `json:"sizeBytes"`
	// PacksListedAt is when the p prefix was last listed; listing every data
	// pack is the expensive part, done after full cycles only.
	PacksListedAt time.Time `json:"packsListedAt,omitzero"`
}

// Size classes of Health.SizeBytes.
const (
	ClassDataPacks     = "p"
	ClassMetadataPacks = "q"
	ClassIndex         = "index"
	ClassOther         = "other"
)

// indexPrefixes are the blob prefixes of index blobs kopia loads. Epoch
// markers (xe) and deletion watermarks (xw) are tiny and not counted.
var indexPrefixes = []blob.ID{"xn", "xs", "xr", "n"}

// classOf returns the size class of a blob.
func classOf(id blob.ID) string {
	s := string(id)

	switch {
	case strings.HasPrefix(s, "p"):
		return ClassDataPacks
	case strings.HasPrefix(s, "q"):
		return ClassMetadataPacks
	case strings.HasPrefix(s, "x"), strings.HasPrefix(s, "n"):
		return ClassIndex
	default:
		return ClassOther
	}
}

// collectHealth lists the repository's blobs. With listPacks false it keeps
// the p class of prev, so hourly quick cycles do not list every data pack.
func collectHealth(ctx context.Context, st blob.Reader, listPacks bool, prev *Health, now time.Time) (*Health, error) {
	h := &Health{SizeBytes: map[string]int64{ClassDataPacks: 0, ClassMetadataPacks: 0, ClassIndex: 0, ClassOther: 0}}

	var prefixes []blob.ID

	if listPacks {
		prefixes = []blob.ID{""}
		h.PacksListedAt = now
	} else {
		// Every first character except p: blob IDs are lowercase hex,
		// letters, '_' (logs) and "kopia." names.
		for _, c := range "0123456789abcdefghijklmnoqrstuvwxyz_" {
			prefixes = append(prefixes, blob.ID(c))
		}

		if prev != nil {
			h.SizeBytes[ClassDataPacks] = prev.SizeBytes[ClassDataPacks]
			h.PacksListedAt = prev.PacksListedAt
		}
	}

	for _, prefix := range prefixes {
		err := st.ListBlobs(ctx, prefix, func(bm blob.Metadata) error {
			h.SizeBytes[classOf(bm.BlobID)] += bm.Length

			id := string(bm.BlobID)

			switch {
			case strings.HasPrefix(id, "s"):
				h.SessionMarkers++
			default:
				for _, p := range indexPrefixes {
					if strings.HasPrefix(id, string(p)) {
						h.IndexBlobs++
						break
					}
				}
			}

			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list blobs %q: %w", prefix, err)
		}
	}

	return h, nil
}
