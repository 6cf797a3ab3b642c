package maintain

import (
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/metrics"
	"github.com/kopia-maintd/kopia-maintd/repository"
)

// compactionMetrics records the compaction and reclaim calls.
type compactionMetrics struct {
	reportMetrics
	compaction []metrics.Compaction
	reclaims   []metrics.Reclaim
}

func (m *compactionMetrics) Compaction(_ string, c metrics.Compaction) {
	m.compaction = append(m.compaction, c)
}

func (m *compactionMetrics) Reclaim(repo string, r metrics.Reclaim) {
	m.reportMetrics.Reclaim(repo, r)
	m.reclaims = append(m.reclaims, r)
}

func TestObserveReportExportsCompaction(t *testing.T) {
	at := time.Date(2026, 3, 9, 0, 0, 0, 0, time.UTC)
	report := &repository.Report{
		Owner: "me@here",
		Compaction: &repository.CompactionResult{
			BelowThreshold: 2, DeadBytes: 12 << 20, RewrittenBytes: 4 << 20,
		},
		Reclaim: &repository.Reclaim{
			UnreferencedBytes: 12 << 20, EligibleAt: at,
			Compaction: &repository.CompactionOutlook{Enabled: true, Packs: 1, Bytes: 12 << 20},
		},
	}

	var met compactionMetrics

	ObserveReport(&met, &Owners{}, "me@here", "r", report, nil)

	want := metrics.Compaction{Enabled: true, RewrittenBytes: 4 << 20, PacksBelowThreshold: 2, DeadBytes: 12 << 20}
	if len(met.compaction) != 1 || met.compaction[0] != want {
		t.Fatalf("compaction calls %+v, want [%+v]", met.compaction, want)
	}

	last := met.reclaims[len(met.reclaims)-1]
	if last.CompactionBytes != 12<<20 || !last.EligibleAt.Equal(at) {
		t.Fatalf("last reclaim %+v, want the compaction bytes and the eligible time", last)
	}

	// Disabled: the measurement is exported with enabled 0, and the
	// reclaim explanation is not repeated.
	report.Compaction.Skipped = repository.CompactionDisabled
	report.Reclaim.Compaction.Enabled = false
	met = compactionMetrics{}

	ObserveReport(&met, &Owners{}, "me@here", "r", report, nil)

	if len(met.compaction) != 1 || met.compaction[0].Enabled || len(met.reclaims) != 1 || met.reclaims[0].CompactionBytes != 0 {
		t.Fatalf("disabled: compaction %+v, reclaims %+v", met.compaction, met.reclaims)
	}
}
