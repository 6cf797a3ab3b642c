package maintain

import (
	"github.com/kopia-maintd/kopia-maintd/metrics"
	"github.com/kopia-maintd/kopia-maintd/repository"
)

// CompactionMetrics receives what a full cycle's compact-live step did
// (metrics.Metrics). ObserveReport feeds it when its ReportMetrics has it.
type CompactionMetrics interface {
	Compaction(repository string, c metrics.Compaction)
}

// observeCompaction exports a full cycle's compact-live step and, when the
// reclaim explanation counts data compaction will free, the explanation
// again with it (so reclaim_eligible_timestamp_seconds covers that data).
func observeCompaction(met ReportMetrics, name string, report *repository.Report) {
	if c := report.Compaction; c != nil {
		if cm, ok := met.(CompactionMetrics); ok {
			// Off, the step measures nothing (the collector then exports
			// compaction_enabled only).
			cm.Compaction(name, metrics.Compaction{
				Enabled:             c.Skipped != repository.CompactionDisabled,
				RewrittenBytes:      c.RewrittenBytes,
				PacksBelowThreshold: int64(c.BelowThreshold),
				DeadBytes:           c.DeadBytes,
			})
		}
	}

	if r := report.Reclaim; r != nil && r.Compaction != nil && r.Compaction.Enabled {
		met.Reclaim(name, metrics.Reclaim{
			UnreferencedBytes: r.UnreferencedBytes, RetainedBytes: r.RetainedBytes, EligibleAt: r.EligibleAt,
			CompactionBytes: r.Compaction.Bytes,
		})
	}
}
