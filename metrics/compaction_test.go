package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

var compactionNames = []string{
	"kopia_maintenance_compaction_rewritten_bytes_total", "kopia_maintenance_compaction_packs_below_threshold",
	"kopia_maintenance_dead_bytes", "kopia_maintenance_compaction_enabled",
	"kopia_maintenance_reclaim_eligible_timestamp_seconds",
}

const compactionHelp = `
# HELP kopia_maintenance_compaction_rewritten_bytes_total Live bytes the compact-live step rewrote out of short packs and packs mostly holding dead data.
# TYPE kopia_maintenance_compaction_rewritten_bytes_total counter
`

func TestCompactionMetrics(t *testing.T) {
	m := New(BuildInfo{Version: "v1.2.3", KopiaVersion: "v0.23.1"})
	m.SetRepositories([]string{"a", "b"})

	// Before any full cycle: the counter at 0, no gauges.
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(compactionHelp+`
kopia_maintenance_compaction_rewritten_bytes_total{repository="a"} 0
kopia_maintenance_compaction_rewritten_bytes_total{repository="b"} 0
`), compactionNames...); err != nil {
		t.Fatal(err)
	}

	m.Compaction("a", Compaction{Enabled: true, RewrittenBytes: 4 << 20, PacksBelowThreshold: 1, DeadBytes: 12 << 20})
	m.Compaction("a", Compaction{Enabled: true, RewrittenBytes: 1 << 20, PacksBelowThreshold: 0, DeadBytes: 20000})
	m.Compaction("b", Compaction{Enabled: false, PacksBelowThreshold: 3, DeadBytes: 5 << 30})
	// Data only compaction frees: the eligible time has a value although
	// nothing is retained by the margins.
	m.Reclaim("a", Reclaim{UnreferencedBytes: 12 << 20, EligibleAt: t0, CompactionBytes: 12 << 20})
	// Neither retained nor compaction's: no eligible time.
	m.Reclaim("b", Reclaim{UnreferencedBytes: 1, EligibleAt: t0})

	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(compactionHelp+`
kopia_maintenance_compaction_rewritten_bytes_total{repository="a"} 5.24288e+06
kopia_maintenance_compaction_rewritten_bytes_total{repository="b"} 0
# HELP kopia_maintenance_compaction_packs_below_threshold Packs whose live data fills less than the compaction live-ratio threshold, at the last full cycle.
# TYPE kopia_maintenance_compaction_packs_below_threshold gauge
kopia_maintenance_compaction_packs_below_threshold{repository="a"} 0
# HELP kopia_maintenance_dead_bytes Bytes in packs not referenced by live contents (deleted contents, orphaned packs, pack overhead), at the last full cycle.
# TYPE kopia_maintenance_dead_bytes gauge
kopia_maintenance_dead_bytes{repository="a"} 20000
# HELP kopia_maintenance_compaction_enabled 1 when the compact-live step is on for the repository, as seen by the last full cycle.
# TYPE kopia_maintenance_compaction_enabled gauge
kopia_maintenance_compaction_enabled{repository="a"} 1
kopia_maintenance_compaction_enabled{repository="b"} 0
# HELP kopia_maintenance_reclaim_eligible_timestamp_seconds Earliest Unix time the retained bytes may be deleted.
# TYPE kopia_maintenance_reclaim_eligible_timestamp_seconds gauge
kopia_maintenance_reclaim_eligible_timestamp_seconds{repository="a"} 1.7e+09
`), compactionNames...); err != nil {
		t.Fatal(err)
	}

	// A removed repository leaves no compaction series.
	m.SetRepositories([]string{"b"})

	if n := testutil.CollectAndCount(m.Registry(), "kopia_maintenance_compaction_rewritten_bytes_total"); n != 1 {
		t.Fatalf("%d rewritten-bytes series after removing a, want 1", n)
	}
}
