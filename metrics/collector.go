package metrics

import (
	"maps"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// descs holds the descriptor of every metric the collector exports.
type descs struct {
	runs, duration, lastSuccess, lastRun, nextRun, inProgress *family

	currentTask, progressBlobs, progressBytes, progressContents *family

	taskDuration, taskLastSuccess, taskRuns *family

	blobsDeleted, bytesDeleted, contentsGC *family

	unreferenced, retained, eligible *family

	indexBlobs, sessionMarkers, size *family

	ownerInfo, ownershipChanges *family

	unsafeRuns, gateChecks *family

	leaseHeld, leaseAcquisitions, leaseLosses, leaseSkips *family

	buildInfo, reloadOK, reloadTimestamp, repositories *family

	notMaintained                                                      *family
	compactionRewritten, compactionBelow, deadBytes, compactionEnabled *family
}

func newDescs(info BuildInfo) *descs {
	d := func(name, help string, labels ...string) *family {
		return newFamily(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}

	repoCycle := []string{"repository", "cycle"}

	return &descs{
		runs:        d("runs_total", "Maintenance runs by repository, cycle and result (success, failure, skipped, cancelled).", "repository", "cycle", "result"),
		duration:    d("run_duration_seconds", "Duration of maintenance runs that were not skipped.", repoCycle...),
		lastSuccess: d("last_success_timestamp_seconds", "Unix time the last successful run of the cycle finished.", repoCycle...),
		lastRun:     d("last_run_timestamp_seconds", "Unix time the last run of the cycle finished, whatever its result.", repoCycle...),
		nextRun:     d("next_run_timestamp_seconds", "Unix time the next run of the cycle is due.", repoCycle...),
		inProgress:  d("in_progress", "1 while a run of the cycle is in flight.", repoCycle...),

		currentTask:      d("current_task", "The kopia task the run in flight is running now (value 1); no series between tasks and between runs.", "repository", "task"),
		progressBlobs:    d("task_progress_blobs_deleted", "Blobs deleted so far by the run in flight.", "repository"),
		progressBytes:    d("task_progress_bytes_deleted", "Bytes deleted so far by the run in flight.", "repository"),
		progressContents: d("task_progress_contents_scanned", "Contents scanned so far by the run in flight.", "repository"),

		taskDuration:    d("task_duration_seconds", "Duration of the last run of the kopia maintenance task.", "repository", "task"),
		taskLastSuccess: d("task_last_success_timestamp_seconds", "Unix time the last successful run of the kopia maintenance task finished.", "repository", "task"),
		taskRuns:        d("task_runs_total", "Runs of the kopia maintenance task by result (success, failure).", "repository", "task", "result"),

		blobsDeleted: d("blobs_deleted_total", "Pack, log and index blobs deleted by maintenance.", "repository"),
		bytesDeleted: d("bytes_deleted_total", "Bytes of the blobs deleted by maintenance.", "repository"),
		contentsGC:   d("contents_gc_total", "Contents marked deleted by snapshot garbage collection.", "repository"),

		unreferenced: d("unreferenced_bytes", "Bytes found unreferenced by the last full cycle's snapshot garbage collection.", "repository"),
		retained:     d("retained_bytes", "Unreferenced bytes still in storage, held by SafetyFull's safety margins.", "repository"),
		eligible:     d("reclaim_eligible_timestamp_seconds", "Earliest Unix time the retained bytes may be deleted.", "repository"),

		indexBlobs:     d("index_blobs", "Index blobs in storage (epoch and legacy); many of them make maintenance slow and memory hungry.", "repository"),
		sessionMarkers: d("session_markers", "Session marker blobs in storage.", "repository"),
		size:           d("repository_size_bytes", "Stored bytes by blob class (p, q, index, other).", "repository", "class"),

		ownerInfo:        d("owner_info", "The repository's maintenance owner (\"\" when unowned) and whether it is this daemon; the value is always 1.", "repository", "owner", "is_self"),
		ownershipChanges: d("ownership_changes_total", "Changes of the maintenance owner by reason (unowned, stale, always, manual, handback, external, velero-reset).", "repository", "reason"),

		unsafeRuns: d("unsafe_runs_total", "Maintenance runs with safety=none, and refused requests for one, by result (success, failure, refused, cancelled).", "repository", "result"),
		gateChecks: d("gate_checks_total", "Verdicts of the safety=none gate's checks by check and result (pass, refuse, absent), across all repositories.", "check", "result"),

		leaseHeld:         d("lease_held", "1 while this process holds the repository's lease.", "repository"),
		leaseAcquisitions: d("lease_acquisitions_total", "Leases on the repository acquired by this process.", "repository"),
		leaseLosses:       d("lease_losses_total", "Leases on the repository lost while held, by reason (expired, renew-failed, taken).", "repository", "reason"),
		leaseSkips:        d("lease_skips_total", "Maintenance runs skipped because another process holds the repository's lease.", "repository"),

		compactionRewritten: d("compaction_rewritten_bytes_total", "Live bytes the compact-live step rewrote out of short packs and packs mostly holding dead data.", "repository"),
		compactionBelow:     d("compaction_packs_below_threshold", "Packs whose live data fills less than the compaction live-ratio threshold, at the last full cycle.", "repository"),
		deadBytes:           d("dead_bytes", "Bytes in packs not referenced by live contents (deleted contents, orphaned packs, pack overhead), at the last full cycle.", "repository"),
		compactionEnabled:   d("compaction_enabled", "1 when the compact-live step is on for the repository, as seen by the last full cycle.", "repository"),

		buildInfo: newFamily(prometheus.BuildFQName(namespace, "", "build_info"),
			"Build information of kopia-maintd; the value is always 1.", nil,
			prometheus.Labels{"version": info.Version, "goversion": runtime.Version(), "kopia": info.KopiaVersion}),
		reloadOK:        d("config_last_reload_successful", "1 when the last load of the configuration file succeeded."),
		reloadTimestamp: d("config_last_reload_success_timestamp_seconds", "Unix time of the last successful load of the configuration file."),
		repositories:    d("repositories", "Configured repositories."),

		notMaintained: d("discovered_not_maintained", "Repositories found by Velero discovery that are not maintained, by reason (read-only, unsupported, location-not-found, invalid, name-clash); the value is always 1.", "repository", "reason"),
	}
}

// collector builds the samples of a Metrics at scrape time.
type collector struct {
	m *Metrics
	d *descs
}

// Describe sends every descriptor.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, f := range c.d.all() {
		ch <- f.desc
	}
}

// all lists every family, in a fixed order.
func (d *descs) all() []*family {
	return []*family{
		d.runs, d.duration, d.lastSuccess, d.lastRun, d.nextRun, d.inProgress,
		d.currentTask, d.progressBlobs, d.progressBytes, d.progressContents,
		d.taskDuration, d.taskLastSuccess, d.taskRuns,
		d.blobsDeleted, d.bytesDeleted, d.contentsGC,
		d.unreferenced, d.retained, d.eligible,
		d.indexBlobs, d.sessionMarkers, d.size,
		d.ownerInfo, d.ownershipChanges,
		d.unsafeRuns, d.gateChecks,
		d.leaseHeld, d.leaseAcquisitions, d.leaseLosses, d.leaseSkips,
		d.buildInfo, d.reloadOK, d.reloadTimestamp, d.repositories,
		d.notMaintained,
		d.compactionRewritten, d.compactionBelow, d.deadBytes, d.compactionEnabled,
	}
}

// Collect builds the samples under the lock and sends them after releasing
// it, so a slow scrape never holds up the events that feed the state.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	var e constEmitter

	c.emit(&e)

	for _, s := range e.out {
		ch <- s
	}
}

// emit hands every sample of the state to e, under the lock.
func (c *collector) emit(e emitter) {
	m, d := c.m, c.d

	m.mu.Lock()
	defer m.mu.Unlock()

	gauge := func(f *family, v float64, labels ...string) {
		e.sample(f, prometheus.GaugeValue, v, labels...)
	}
	counter := func(f *family, v float64, labels ...string) {
		e.sample(f, prometheus.CounterValue, v, labels...)
	}

	gauge(d.buildInfo, 1)
	gauge(d.reloadOK, boolValue(m.reloadOK))

	if !m.reloadSuccess.IsZero() {
		gauge(d.reloadTimestamp, unix(m.reloadSuccess))
	}

	gauge(d.repositories, float64(len(m.repos)))

	for _, name := range slices.Sorted(maps.Keys(m.notMaintained)) {
		gauge(d.notMaintained, 1, name, m.notMaintained[name])
	}

	for _, check := range sortedKeys(m.gateChecks) {
		for _, result := range sortedKeys(m.gateChecks[check]) {
			counter(d.gateChecks, m.gateChecks[check][result], check, result)
		}
	}

	for _, name := range sortedKeys(m.repos) {
		st := m.repos[name]

		for _, cycle := range sortedKeys(st.cycles) {
			cs := st.cycles[cycle]

			for _, result := range sortedKeys(cs.runs) {
				counter(d.runs, cs.runs[result], name, cycle, result)
			}

			e.histogram(d.duration, cs.count, cs.sum, cs.buckets, name, cycle)
			gauge(d.inProgress, boolValue(cs.inProgress), name, cycle)

			for _, ts := range []struct {
				f  *family
				at time.Time
			}{{d.lastSuccess, cs.lastSuccess}, {d.lastRun, cs.lastRun}, {d.nextRun, cs.nextAt}} {
				// A zero time is "never": no sample rather than 1970.
				if !ts.at.IsZero() {
					gauge(ts.f, unix(ts.at), name, cycle)
				}
			}
		}

		if r := st.run; r != nil {
			if r.task != "" {
				gauge(d.currentTask, 1, name, r.task)
			}

			gauge(d.progressBlobs, float64(r.progress.BlobsDeleted), name)
			gauge(d.progressBytes, float64(r.progress.BytesDeleted), name)
			gauge(d.progressContents, float64(r.progress.ContentsScanned), name)
		}

		for _, task := range sortedKeys(st.tasks) {
			ts := st.tasks[task]
			gauge(d.taskDuration, ts.duration, name, task)

			if !ts.lastSuccess.IsZero() {
				gauge(d.taskLastSuccess, unix(ts.lastSuccess), name, task)
			}

			for _, result := range sortedKeys(ts.runs) {
				counter(d.taskRuns, ts.runs[result], name, task, result)
			}
		}

		counter(d.blobsDeleted, st.blobsDeleted, name)
		counter(d.bytesDeleted, st.bytesDeleted, name)
		counter(d.contentsGC, st.contentsGC, name)

		if r := st.reclaim; r != nil {
			gauge(d.unreferenced, float64(r.UnreferencedBytes), name)
			gauge(d.retained, float64(r.RetainedBytes), name)

			if (r.RetainedBytes > 0 || r.CompactionBytes > 0) && !r.EligibleAt.IsZero() {
				gauge(d.eligible, unix(r.EligibleAt), name)
			}
		}

		if h := st.health; h != nil {
			gauge(d.indexBlobs, float64(h.IndexBlobs), name)
			gauge(d.sessionMarkers, float64(h.SessionMarkers), name)

			for class, v := range sizeByClass(h.SizeBytes) {
				gauge(d.size, float64(v), name, sizeClasses[class])
			}
		}

		if o := st.owner; o != nil {
			gauge(d.ownerInfo, 1, name, o.owner, strconv.FormatBool(o.isSelf))
		}

		for _, reason := range sortedKeys(st.ownershipChanges) {
			counter(d.ownershipChanges, st.ownershipChanges[reason], name, reason)
		}

		for _, result := range sortedKeys(st.unsafeRuns) {
			counter(d.unsafeRuns, st.unsafeRuns[result], name, result)
		}

		gauge(d.leaseHeld, boolValue(st.leaseHeld), name)
		counter(d.leaseAcquisitions, st.leaseAcquisitions, name)

		for _, reason := range sortedKeys(st.leaseLosses) {
			counter(d.leaseLosses, st.leaseLosses[reason], name, reason)
		}

		counter(d.leaseSkips, st.leaseSkips, name)

		counter(d.compactionRewritten, st.compactionRewritten, name)

		if c := st.compaction; c != nil {
			gauge(d.compactionEnabled, boolValue(c.Enabled), name)

			// Off, the step measures nothing.
			if c.Enabled {
				gauge(d.compactionBelow, float64(c.PacksBelowThreshold), name)
				gauge(d.deadBytes, float64(c.DeadBytes), name)
			}
		}
	}
}

// sizeByClass orders sizes as sizeClasses, adding unknown classes to other.
func sizeByClass(sizes map[string]int64) []int64 {
	out := make([]int64, len(sizeClasses))
	other := len(sizeClasses) - 1

	for class, v := range sizes {
		i := slices.Index(sizeClasses, class)
		if i < 0 {
			i = other
		}

		out[i] += v
	}

	return out
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}

	return 0
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}

	slices.Sort(keys)

	return keys
}
