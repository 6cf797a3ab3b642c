package metrics

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// ownNames are the metrics of the collector (not the Go and process ones).
var ownNames = []string{
	"kopia_maintenance_runs_total", "kopia_maintenance_run_duration_seconds",
	"kopia_maintenance_last_success_timestamp_seconds", "kopia_maintenance_last_run_timestamp_seconds",
	"kopia_maintenance_next_run_timestamp_seconds", "kopia_maintenance_in_progress",
	"kopia_maintenance_current_task", "kopia_maintenance_task_progress_blobs_deleted",
	"kopia_maintenance_task_progress_bytes_deleted", "kopia_maintenance_task_progress_contents_scanned",
	"kopia_maintenance_task_duration_seconds", "kopia_maintenance_task_last_success_timestamp_seconds",
	"kopia_maintenance_task_runs_total", "kopia_maintenance_blobs_deleted_total",
	"kopia_maintenance_bytes_deleted_total", "kopia_maintenance_contents_gc_total",
	"kopia_maintenance_unreferenced_bytes", "kopia_maintenance_retained_bytes",
	"kopia_maintenance_reclaim_eligible_timestamp_seconds", "kopia_maintenance_index_blobs",
	"kopia_maintenance_session_markers", "kopia_maintenance_repository_size_bytes",
	"kopia_maintenance_owner_info", "kopia_maintenance_ownership_changes_total",
	"kopia_maintenance_unsafe_runs_total", "kopia_maintenance_gate_checks_total",
	"kopia_maintenance_build_info", "kopia_maintenance_config_last_reload_successful",
	"kopia_maintenance_config_last_reload_success_timestamp_seconds", "kopia_maintenance_repositories",
}

var t0 = time.Unix(1_700_000_000, 0).UTC()

func compare(t *testing.T, m *Metrics, want string) {
	t.Helper()

	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), ownNames...); err != nil {
		t.Fatal(err)
	}
}

const header = `
# HELP kopia_maintenance_build_info Build information of kopia-maintd; the value is always 1.
# TYPE kopia_maintenance_build_info gauge
kopia_maintenance_build_info{goversion="%s",kopia="v0.22.3",version="v1.2.3"} 1
# HELP kopia_maintenance_config_last_reload_successful 1 when the last load of the configuration file succeeded.
# TYPE kopia_maintenance_config_last_reload_successful gauge
kopia_maintenance_config_last_reload_successful %d
`

// emptyRepo is the exposition of a configured repository nothing happened to.
func emptyRepo(name string) string {
	var b strings.Builder

	for _, c := range []string{"full", "quick"} {
		for _, r := range []string{"cancelled", "failure", "skipped", "success"} {
			fmt.Fprintf(&b, "kopia_maintenance_runs_total{cycle=%q,repository=%q,result=%q} 0\n", c, name, r)
		}
	}

	return b.String()
}

func emptyHistogram(name, cycle string) string {
	var b strings.Builder
	for _, le := range []string{"1", "5", "15", "30", "60", "120", "300", "600", "1200", "1800", "3600", "7200", "14400", "28800", "+Inf"} {
		fmt.Fprintf(&b, "kopia_maintenance_run_duration_seconds_bucket{cycle=%q,repository=%q,le=%q} 0\n", cycle, name, le)
	}

	fmt.Fprintf(&b, "kopia_maintenance_run_duration_seconds_sum{cycle=%q,repository=%q} 0\n", cycle, name)
	fmt.Fprintf(&b, "kopia_maintenance_run_duration_seconds_count{cycle=%q,repository=%q} 0\n", cycle, name)

	return b.String()
}

const (
	helpRuns = `# HELP kopia_maintenance_runs_total Maintenance runs by repository, cycle and result (success, failure, skipped, cancelled).
# TYPE kopia_maintenance_runs_total counter
`
	helpDuration = `# HELP kopia_maintenance_run_duration_seconds Duration of maintenance runs that were not skipped.
# TYPE kopia_maintenance_run_duration_seconds histogram
`
	helpInProgress = `# HELP kopia_maintenance_in_progress 1 while a run of the cycle is in flight.
# TYPE kopia_maintenance_in_progress gauge
`
	helpRepositories = `# HELP kopia_maintenance_repositories Configured repositories.
# TYPE kopia_maintenance_repositories gauge
`
	helpDeleted = `# HELP kopia_maintenance_blobs_deleted_total Pack, log and index blobs deleted by maintenance.
# TYPE kopia_maintenance_blobs_deleted_total counter
`
	helpBytes = `# HELP kopia_maintenance_bytes_deleted_total Bytes of the blobs deleted by maintenance.
# TYPE kopia_maintenance_bytes_deleted_total counter
`
	helpContents = `# HELP kopia_maintenance_contents_gc_total Contents marked deleted by snapshot garbage collection.
# TYPE kopia_maintenance_contents_gc_total counter
`
	helpUnsafeRuns = `# HELP kopia_maintenance_unsafe_runs_total Maintenance runs with safety=none, and refused requests for one, by result (success, failure, refused, cancelled).
# TYPE kopia_maintenance_unsafe_runs_total counter
`
	helpGateChecks = `# HELP kopia_maintenance_gate_checks_total Verdicts of the safety=none gate's checks by check and result (pass, refuse, absent), across all repositories.
# TYPE kopia_maintenance_gate_checks_total counter
`
)

// emptyUnsafe is unsafe_runs_total of a repository without safety=none runs.
func emptyUnsafe(name string) string {
	var b strings.Builder

	for _, r := range []string{"cancelled", "failure", "refused", "success"} {
		fmt.Fprintf(&b, "kopia_maintenance_unsafe_runs_total{repository=%q,result=%q} 0\n", name, r)
	}

	return b.String()
}

// TestCollectorExposition feeds a whole full cycle with its tasks and checks
// the exact exposition before, during and after it.
func TestCollectorExposition(t *testing.T) {
	m := New(BuildInfo{Version: "v1.2.3", KopiaVersion: "v0.22.3"})

	m.SetRepositories([]string{"a"})

	compare(t, m, fmt.Sprintf(header, runtime.Version(), 0)+
		helpRepositories+"kopia_maintenance_repositories 1\n"+
		helpRuns+emptyRepo("a")+
		helpDuration+emptyHistogram("a", "full")+emptyHistogram("a", "quick")+
		helpInProgress+`kopia_maintenance_in_progress{cycle="full",repository="a"} 0
kopia_maintenance_in_progress{cycle="quick",repository="a"} 0
`+helpDeleted+`kopia_maintenance_blobs_deleted_total{repository="a"} 0
`+helpBytes+`kopia_maintenance_bytes_deleted_total{repository="a"} 0
`+helpContents+`kopia_maintenance_contents_gc_total{repository="a"} 0
`+helpUnsafeRuns+emptyUnsafe("a"))

	m.ConfigReloaded(true, t0)
	m.NextRun("a", "full", t0)
	m.RunStarted("a", "full", t0)
	m.TaskStarted("a", "snapshot-gc")
	m.Progress("a", Progress{ContentsScanned: 50})
	m.TaskFinished("a", Task{Name: "snapshot-gc", Start: t0, End: t0.Add(2 * time.Second), Success: true, ContentsGC: 7})
	m.Progress("a", Progress{Task: "full-delete-blobs", BlobsDeleted: 2, BytesDeleted: 100, ContentsScanned: 50})

	live := `
# HELP kopia_maintenance_current_task The kopia task the run in flight is running now (value 1); no series between tasks and between runs.
# TYPE kopia_maintenance_current_task gauge
kopia_maintenance_current_task{repository="a",task="full-delete-blobs"} 1
# HELP kopia_maintenance_task_progress_blobs_deleted Blobs deleted so far by the run in flight.
# TYPE kopia_maintenance_task_progress_blobs_deleted gauge
kopia_maintenance_task_progress_blobs_deleted{repository="a"} 2
# HELP kopia_maintenance_task_progress_bytes_deleted Bytes deleted so far by the run in flight.
# TYPE kopia_maintenance_task_progress_bytes_deleted gauge
kopia_maintenance_task_progress_bytes_deleted{repository="a"} 100
# HELP kopia_maintenance_task_progress_contents_scanned Contents scanned so far by the run in flight.
# TYPE kopia_maintenance_task_progress_contents_scanned gauge
kopia_maintenance_task_progress_contents_scanned{repository="a"} 50
# HELP kopia_maintenance_in_progress 1 while a run of the cycle is in flight.
# TYPE kopia_maintenance_in_progress gauge
kopia_maintenance_in_progress{cycle="full",repository="a"} 1
kopia_maintenance_in_progress{cycle="quick",repository="a"} 0
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(live),
		"kopia_maintenance_current_task", "kopia_maintenance_task_progress_blobs_deleted",
		"kopia_maintenance_task_progress_bytes_deleted", "kopia_maintenance_task_progress_contents_scanned",
		"kopia_maintenance_in_progress"); err != nil {
		t.Fatal(err)
	}

	m.TaskFinished("a", Task{Name: "full-delete-blobs", Start: t0.Add(2 * time.Second), End: t0.Add(5 * time.Second), Success: true, BlobsDeleted: 3, BytesDeleted: 3000})
	m.TaskFinished("a", Task{Name: "cleanup-logs", Start: t0.Add(5 * time.Second), End: t0.Add(6 * time.Second), Success: false, BlobsDeleted: 1, BytesDeleted: 10})
	m.Health("a", Health{IndexBlobs: 12, SessionMarkers: 1, SizeBytes: map[string]int64{"p": 1000, "q": 200, "index": 30, "other": 4, "kopia.repository": 1}})
	m.Reclaim("a", Reclaim{UnreferencedBytes: 5000, RetainedBytes: 4000, EligibleAt: t0.Add(24 * time.Hour)})
	m.Owner("a", "maintd@e2e", true)
	m.OwnershipChanged("a", "stale")
	m.RunFinished("a", "full", "failure", t0, t0.Add(10*time.Second))
	m.NextRun("a", "full", t0.Add(time.Minute))
	m.NextRun("a", "quick", t0.Add(time.Hour))

	histFull := strings.NewReplacer(
		`le="15"} 0`, `le="15"} 1`, `le="30"} 0`, `le="30"} 1`, `le="60"} 0`, `le="60"} 1`,
		`le="120"} 0`, `le="120"} 1`, `le="300"} 0`, `le="300"} 1`, `le="600"} 0`, `le="600"} 1`,
		`le="1200"} 0`, `le="1200"} 1`, `le="1800"} 0`, `le="1800"} 1`, `le="3600"} 0`, `le="3600"} 1`,
		`le="7200"} 0`, `le="7200"} 1`, `le="14400"} 0`, `le="14400"} 1`, `le="28800"} 0`, `le="28800"} 1`,
		`le="+Inf"} 0`, `le="+Inf"} 1`, `_sum{cycle="full",repository="a"} 0`, `_sum{cycle="full",repository="a"} 10`,
		`_count{cycle="full",repository="a"} 0`, `_count{cycle="full",repository="a"} 1`,
	).Replace(emptyHistogram("a", "full"))

	compare(t, m, fmt.Sprintf(header, runtime.Version(), 1)+`
# HELP kopia_maintenance_config_last_reload_success_timestamp_seconds Unix time of the last successful load of the configuration file.
# TYPE kopia_maintenance_config_last_reload_success_timestamp_seconds gauge
kopia_maintenance_config_last_reload_success_timestamp_seconds 1.7e+09
`+helpRepositories+"kopia_maintenance_repositories 1\n"+
		helpRuns+strings.Replace(emptyRepo("a"), `cycle="full",repository="a",result="failure"} 0`, `cycle="full",repository="a",result="failure"} 1`, 1)+
		helpDuration+histFull+emptyHistogram("a", "quick")+
		helpInProgress+`kopia_maintenance_in_progress{cycle="full",repository="a"} 0
kopia_maintenance_in_progress{cycle="quick",repository="a"} 0
# HELP kopia_maintenance_last_run_timestamp_seconds Unix time the last run of the cycle finished, whatever its result.
# TYPE kopia_maintenance_last_run_timestamp_seconds gauge
kopia_maintenance_last_run_timestamp_seconds{cycle="full",repository="a"} 1.70000001e+09
# HELP kopia_maintenance_next_run_timestamp_seconds Unix time the next run of the cycle is due.
# TYPE kopia_maintenance_next_run_timestamp_seconds gauge
kopia_maintenance_next_run_timestamp_seconds{cycle="full",repository="a"} 1.70000006e+09
kopia_maintenance_next_run_timestamp_seconds{cycle="quick",repository="a"} 1.7000036e+09
# HELP kopia_maintenance_task_duration_seconds Duration of the last run of the kopia maintenance task.
# TYPE kopia_maintenance_task_duration_seconds gauge
kopia_maintenance_task_duration_seconds{repository="a",task="cleanup-logs"} 1
kopia_maintenance_task_duration_seconds{repository="a",task="full-delete-blobs"} 3
kopia_maintenance_task_duration_seconds{repository="a",task="snapshot-gc"} 2
# HELP kopia_maintenance_task_last_success_timestamp_seconds Unix time the last successful run of the kopia maintenance task finished.
# TYPE kopia_maintenance_task_last_success_timestamp_seconds gauge
kopia_maintenance_task_last_success_timestamp_seconds{repository="a",task="full-delete-blobs"} 1.700000005e+09
kopia_maintenance_task_last_success_timestamp_seconds{repository="a",task="snapshot-gc"} 1.700000002e+09
# HELP kopia_maintenance_task_runs_total Runs of the kopia maintenance task by result (success, failure).
# TYPE kopia_maintenance_task_runs_total counter
kopia_maintenance_task_runs_total{repository="a",result="failure",task="cleanup-logs"} 1
kopia_maintenance_task_runs_total{repository="a",result="success",task="full-delete-blobs"} 1
kopia_maintenance_task_runs_total{repository="a",result="success",task="snapshot-gc"} 1
`+helpDeleted+`kopia_maintenance_blobs_deleted_total{repository="a"} 4
`+helpBytes+`kopia_maintenance_bytes_deleted_total{repository="a"} 3010
`+helpContents+`kopia_maintenance_contents_gc_total{repository="a"} 7
# HELP kopia_maintenance_unreferenced_bytes Bytes found unreferenced by the last full cycle's snapshot garbage collection.
# TYPE kopia_maintenance_unreferenced_bytes gauge
kopia_maintenance_unreferenced_bytes{repository="a"} 5000
# HELP kopia_maintenance_retained_bytes Unreferenced bytes still in storage, held by SafetyFull's safety margins.
# TYPE kopia_maintenance_retained_bytes gauge
kopia_maintenance_retained_bytes{repository="a"} 4000
# HELP kopia_maintenance_reclaim_eligible_timestamp_seconds Earliest Unix time the retained bytes may be deleted.
# TYPE kopia_maintenance_reclaim_eligible_timestamp_seconds gauge
kopia_maintenance_reclaim_eligible_timestamp_seconds{repository="a"} 1.7000864e+09
# HELP kopia_maintenance_index_blobs Index blobs in storage (epoch and legacy); many of them make maintenance slow and memory hungry.
# TYPE kopia_maintenance_index_blobs gauge
kopia_maintenance_index_blobs{repository="a"} 12
# HELP kopia_maintenance_session_markers Session marker blobs in storage.
# TYPE kopia_maintenance_session_markers gauge
kopia_maintenance_session_markers{repository="a"} 1
# HELP kopia_maintenance_repository_size_bytes Stored bytes by blob class (p, q, index, other).
# TYPE kopia_maintenance_repository_size_bytes gauge
kopia_maintenance_repository_size_bytes{class="index",repository="a"} 30
kopia_maintenance_repository_size_bytes{class="other",repository="a"} 5
kopia_maintenance_repository_size_bytes{class="p",repository="a"} 1000
kopia_maintenance_repository_size_bytes{class="q",repository="a"} 200
# HELP kopia_maintenance_owner_info The repository's maintenance owner ("" when unowned) and whether it is this daemon; the value is always 1.
# TYPE kopia_maintenance_owner_info gauge
kopia_maintenance_owner_info{is_self="true",owner="maintd@e2e",repository="a"} 1
# HELP kopia_maintenance_ownership_changes_total Changes of the maintenance owner by reason (unowned, stale, always, manual, handback, external, velero-reset).
# TYPE kopia_maintenance_ownership_changes_total counter
kopia_maintenance_ownership_changes_total{reason="stale",repository="a"} 1
`+helpUnsafeRuns+emptyUnsafe("a"))
}

// TestLiveSeriesOnlyWhileInFlight checks that the progress series appear
// with RunStarted, follow the tasks, and vanish with RunFinished, and that
// progress reported outside a run is dropped.
func TestLiveSeriesOnlyWhileInFlight(t *testing.T) {
	m := New(BuildInfo{})
	live := []string{
		"kopia_maintenance_current_task", "kopia_maintenance_task_progress_blobs_deleted",
		"kopia_maintenance_task_progress_bytes_deleted", "kopia_maintenance_task_progress_contents_scanned",
	}
	count := func() int {
		t.Helper()

		n, err := testutil.GatherAndCount(m.Registry(), live...)
		if err != nil {
			t.Fatal(err)
		}

		return n
	}

	m.TaskStarted("a", "snapshot-gc")
	m.Progress("a", Progress{Task: "snapshot-gc", BlobsDeleted: 1})

	if n := count(); n != 0 {
		t.Fatalf("progress outside a run made %d series", n)
	}

	m.RunStarted("a", "quick", t0)

	if n := count(); n != 3 {
		t.Fatalf("run started, no task yet: %d live series, want the 3 progress gauges", n)
	}

	m.TaskStarted("a", "cleanup-logs")

	if n := count(); n != 4 {
		t.Fatalf("task running: %d live series, want 4", n)
	}

	m.TaskStarted("a", "advance-epoch")

	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(`
# HELP kopia_maintenance_current_task The kopia task the run in flight is running now (value 1); no series between tasks and between runs.
# TYPE kopia_maintenance_current_task gauge
kopia_maintenance_current_task{repository="a",task="advance-epoch"} 1
`), "kopia_maintenance_current_task"); err != nil {
		t.Fatalf("current_task is not one-hot: %v", err)
	}

	m.TaskFinished("a", Task{Name: "advance-epoch", Start: t0, End: t0, Success: true})

	if n := count(); n != 3 {
		t.Fatalf("between tasks: %d live series, want 3", n)
	}

	m.RunFinished("a", "quick", "cancelled", t0, t0.Add(time.Second))

	if n := count(); n != 0 {
		t.Fatalf("after RunFinished: %d live series remain", n)
	}
}

// TestSetRepositoriesDropsSeries removes a repository with series of every
// kind and checks that none remain, also after late events about it.
func TestSetRepositoriesDropsSeries(t *testing.T) {
	m := New(BuildInfo{})
	m.SetRepositories([]string{"a", "b"})

	for _, r := range []string{"a", "b"} {
		m.RunStarted(r, "full", t0)
		m.TaskStarted(r, "snapshot-gc")
		m.TaskFinished(r, Task{Name: "snapshot-gc", Start: t0, End: t0, Success: true, ContentsGC: 1})
		m.Health(r, Health{IndexBlobs: 1, SizeBytes: map[string]int64{"p": 1}})
		m.Reclaim(r, Reclaim{RetainedBytes: 1, EligibleAt: t0})
		m.Owner(r, "x@y", false)
		m.OwnershipChanged(r, "external")
		m.NextRun(r, "quick", t0)
		m.LeaseAcquired(r)
		m.LeaseLost(r, "taken")
		m.LeaseSkipped(r)
	}

	m.RunStarted("b", "quick", t0)
	m.SetRepositories([]string{"a", "c"})

	// b's run in flight finishes after the reload: it must not come back.
	m.RunFinished("b", "quick", "success", t0, t0)
	m.NextRun("b", "quick", t0)
	m.TaskFinished("b", Task{Name: "cleanup-logs", Success: true})
	m.Owner("b", "x@y", false)
	m.LeaseHeld("b", true)
	m.LeaseAcquired("b")
	m.LeaseLost("b", "expired")
	m.LeaseSkipped("b")

	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}

	seen := map[string]bool{}

	for _, mf := range mfs {
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "repository" {
					seen[l.GetValue()] = true
					if l.GetValue() == "b" {
						t.Errorf("removed repository b still has %s", mf.GetName())
					}
				}
			}
		}
	}

	if !seen["a"] || !seen["c"] {
		t.Errorf("repositories with series = %v, want a and c", seen)
	}

	// a kept its counters across the reload.
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(helpContents+`kopia_maintenance_contents_gc_total{repository="a"} 1
kopia_maintenance_contents_gc_total{repository="c"} 0
`+helpRepositories+`kopia_maintenance_repositories 2
`), "kopia_maintenance_contents_gc_total", "kopia_maintenance_repositories"); err != nil {
		t.Fatal(err)
	}
}

// TestSafetyNoneCounters checks the exact exposition of the gate's and the
// unsafe runs' counters: every unsafe result at 0 for each configured
// repository from the start, a check's results at 0 from its first verdict,
// no repository label on gate checks, and what survives SetRepositories.
func TestSafetyNoneCounters(t *testing.T) {
	m := New(BuildInfo{})
	names := []string{"kopia_maintenance_unsafe_runs_total", "kopia_maintenance_gate_checks_total"}
	check := func(want string) {
		t.Helper()

		if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), names...); err != nil {
			t.Fatal(err)
		}
	}

	m.SetRepositories([]string{"a", "b"})
	check(helpUnsafeRuns + emptyUnsafe("a") + emptyUnsafe("b"))

	for _, c := range []struct{ check, result string }{
		{"velero-server", "pass"}, {"backups", "refuse"}, {"datauploads", "absent"},
		{"velero-server", "pass"}, {"repository-activity", "pass"}, {"kubernetes", "refuse"},
		{"", "pass"}, {"config", ""},
	} {
		m.GateCheck(c.check, c.result)
	}

	m.UnsafeRun("a", "refused")
	m.UnsafeRun("a", "success")
	m.UnsafeRun("a", "success")
	m.UnsafeRun("b", "cancelled")
	m.UnsafeRun("gone", "failure") // not configured: dropped

	gates := helpGateChecks + `kopia_maintenance_gate_checks_total{check="backups",result="absent"} 0
kopia_maintenance_gate_checks_total{check="backups",result="pass"} 0
kopia_maintenance_gate_checks_total{check="backups",result="refuse"} 1
kopia_maintenance_gate_checks_total{check="datauploads",result="absent"} 1
kopia_maintenance_gate_checks_total{check="datauploads",result="pass"} 0
kopia_maintenance_gate_checks_total{check="datauploads",result="refuse"} 0
kopia_maintenance_gate_checks_total{check="kubernetes",result="absent"} 0
kopia_maintenance_gate_checks_total{check="kubernetes",result="pass"} 0
kopia_maintenance_gate_checks_total{check="kubernetes",result="refuse"} 1
kopia_maintenance_gate_checks_total{check="repository-activity",result="absent"} 0
kopia_maintenance_gate_checks_total{check="repository-activity",result="pass"} 1
kopia_maintenance_gate_checks_total{check="repository-activity",result="refuse"} 0
kopia_maintenance_gate_checks_total{check="velero-server",result="absent"} 0
kopia_maintenance_gate_checks_total{check="velero-server",result="pass"} 2
kopia_maintenance_gate_checks_total{check="velero-server",result="refuse"} 0
`
	check(gates + helpUnsafeRuns + `kopia_maintenance_unsafe_runs_total{repository="a",result="cancelled"} 0
kopia_maintenance_unsafe_runs_total{repository="a",result="failure"} 0
kopia_maintenance_unsafe_runs_total{repository="a",result="refused"} 1
kopia_maintenance_unsafe_runs_total{repository="a",result="success"} 2
kopia_maintenance_unsafe_runs_total{repository="b",result="cancelled"} 1
kopia_maintenance_unsafe_runs_total{repository="b",result="failure"} 0
kopia_maintenance_unsafe_runs_total{repository="b",result="refused"} 0
kopia_maintenance_unsafe_runs_total{repository="b",result="success"} 0
`)

	// A reload drops b's unsafe runs, keeps a's, brings c at 0 and leaves
	// the gate's counters alone.
	m.SetRepositories([]string{"a", "c"})
	check(gates + helpUnsafeRuns + `kopia_maintenance_unsafe_runs_total{repository="a",result="cancelled"} 0
kopia_maintenance_unsafe_runs_total{repository="a",result="failure"} 0
kopia_maintenance_unsafe_runs_total{repository="a",result="refused"} 1
kopia_maintenance_unsafe_runs_total{repository="a",result="success"} 2
` + emptyUnsafe("c"))
}

func TestCollectorLint(t *testing.T) {
	m := New(BuildInfo{Version: "v1", KopiaVersion: "v0.22.3"})
	m.SetRepositories([]string{"a"})
	m.ConfigReloaded(true, t0)
	m.RunStarted("a", "full", t0)
	m.TaskStarted("a", "snapshot-gc")
	m.TaskFinished("a", Task{Name: "snapshot-gc", Start: t0, End: t0, Success: true})
	m.Health("a", Health{SizeBytes: map[string]int64{"p": 1}})
	m.Reclaim("a", Reclaim{RetainedBytes: 1, EligibleAt: t0})
	m.Owner("a", "", false)
	m.OwnershipChanged("a", "unowned")
	m.GateCheck("backups", "refuse")
	m.UnsafeRun("a", "refused")
	m.LeaseAcquired("a")
	m.LeaseLost("a", "renew-failed")
	m.LeaseSkipped("a")

	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}

	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestNotMaintainedSeries: every discovered repository that is not
// maintained has one series with its reason, the set is replaced as a
// whole (a repository now maintained leaves it), and none of them counts
// as a configured repository.
func TestNotMaintainedSeries(t *testing.T) {
	m := New(BuildInfo{Version: "v1.2.3", KopiaVersion: "v0.22.3"})
	m.SetRepositories([]string{"app1-default"})

	names := []string{"kopia_maintenance_discovered_not_maintained", "kopia_maintenance_repositories"}
	head := `# HELP kopia_maintenance_discovered_not_maintained Repositories found by Velero discovery that are not maintained, by reason (read-only, unsupported, location-not-found, invalid, name-clash); the value is always 1.
# TYPE kopia_maintenance_discovered_not_maintained gauge
`
	repos := `# HELP kopia_maintenance_repositories Configured repositories.
# TYPE kopia_maintenance_repositories gauge
kopia_maintenance_repositories 1
`

	m.SetNotMaintained(map[string]string{"app2-azure": "unsupported", "app3-ro": "read-only"})

	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(head+`kopia_maintenance_discovered_not_maintained{reason="unsupported",repository="app2-azure"} 1
kopia_maintenance_discovered_not_maintained{reason="read-only",repository="app3-ro"} 1
`+repos), names...); err != nil {
		t.Fatal(err)
	}

	m.SetNotMaintained(map[string]string{"app3-ro": "read-only"})

	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(head+`kopia_maintenance_discovered_not_maintained{reason="read-only",repository="app3-ro"} 1
`+repos), names...); err != nil {
		t.Fatal(err)
	}

	m.SetNotMaintained(nil)

	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(repos), names...); err != nil {
		t.Fatal(err)
	}
}
