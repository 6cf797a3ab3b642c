// Package metrics exports kopia-maintd's state as Prometheus metrics and
// serves them, with the health probes and the reload endpoint, through
// prometheus/exporter-toolkit.
//
// Metrics keeps one state record per repository, fed by the scheduler (the
// Recorder methods RunStarted, RunFinished and NextRun), by the maintenance
// runs (TaskStarted, Progress, TaskFinished, Health, Reclaim, Owner,
// OwnershipChanged), by the safety=none gate (GateCheck, UnsafeRun), by the
// leases (LeaseHeld, LeaseAcquired, LeaseLost, LeaseSkipped) and by the
// daemon (SetRepositories, ConfigReloaded). A
// prometheus.Collector turns that state into samples at scrape time, so a
// repository dropped by SetRepositories leaves no series behind and the live
// progress series exist only while a run is in flight. There are no globals
// and no promauto: everything is registered on a private registry.
//
// Every metric is prefixed kopia_maintenance_; the names, labels and meaning
// are listed in CONTRACT.md. Label values come from small fixed sets (cycle,
// result, task and class names) or from the configuration (repository
// names) and never carry error text.
//
// Counters (runs_total, task_runs_total, blobs_deleted_total, ...) count for
// as long as the process lives. A repository's failures do not reset them;
// a process restart does, and a repository removed from the configuration
// and added back starts again from zero. That is what Prometheus' rate() and
// increase() expect.
package metrics

import (
	"maps"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const namespace = "kopia_maintenance"

// The label values of the fixed sets.
var (
	// cycleNames are the cycles whose series exist from the start.
	cycleNames = []string{"quick", "full"}
	// runResults are the results of runs_total, all exported from the start
	// so that increase() sees the first failure.
	runResults = []string{"success", "failure", "skipped", "cancelled"}
	// sizeClasses are the values of repository_size_bytes' class label.
	sizeClasses = []string{"p", "q", "index", "other"}
	// unsafeResults are the results of unsafe_runs_total, all exported
	// from the start so that increase() sees the first one.
	unsafeResults = []string{"success", "failure", "refused", "cancelled"}
	// gateResults are the results of gate_checks_total (the gate's
	// verdicts); a check's first count brings all of them at 0.
	gateResults = []string{"pass", "refuse", "absent"}
	// leaseLossReasons are the reasons of lease_losses_total, all exported
	// from the start so that increase() sees the first loss.
	leaseLossReasons = []string{"expired", "renew-failed", "taken"}
)

// durationBuckets are run_duration_seconds' upper bounds, 1 s to 8 h: quick
// cycles take seconds, full cycles of large repositories take hours.
var durationBuckets = []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800}

// BuildInfo describes the running binary.
type BuildInfo struct {
	Version      string
	KopiaVersion string
}

// Progress is the progress of the run in flight, as reported while it runs.
// The counts are totals of the run so far, not increments.
type Progress struct {
	// Task is the kopia task running now; "" leaves the current task as it is.
	Task string
	// BlobsDeleted, BytesDeleted and ContentsScanned count the run's work so far.
	BlobsDeleted, BytesDeleted, ContentsScanned int64
}

// Task is one finished kopia maintenance task.
type Task struct {
	// Name is kopia's task name, e.g. snapshot-gc, full-delete-blobs.
	Name string
	// Start and End bound the task's run.
	Start, End time.Time
	// Success is false when the task failed.
	Success bool
	// BlobsDeleted and BytesDeleted are the pack, log and index blobs the
	// task deleted from storage and their size.
	BlobsDeleted, BytesDeleted int64
	// ContentsGC is the number of contents marked deleted by snapshot GC.
	ContentsGC int64
}

// Health describes a repository's storage, from the blob listing taken after
// a run.
type Health struct {
	// IndexBlobs counts epoch (xn, xs, xr, ...) and legacy (n) index blobs.
	IndexBlobs int64
	// SessionMarkers counts session marker (s) blobs.
	SessionMarkers int64
	// SizeBytes is the stored size by blob class: p, q, index, other. Sizes
	// of any other key are added to "other".
	SizeBytes map[string]int64
}

// Reclaim explains the storage that maintenance found unreferenced.
type Reclaim struct {
	// UnreferencedBytes were found unreferenced by the last full cycle.
	UnreferencedBytes int64
	// RetainedBytes are unreferenced but still stored, held by SafetyFull's
	// margins.
	RetainedBytes int64
	// EligibleAt is the earliest time the retained bytes may be deleted;
	// zero when none are retained.
	EligibleAt time.Time
	// CompactionBytes is dead space in packs shared with live data that the
	// compact-live step will free; with it, EligibleAt also covers the
	// predicted deletion of the packs compaction empties.
	CompactionBytes int64
}

// Compaction is what a full cycle's compact-live step measured and did.
type Compaction struct {
	// Enabled is false when the step is off for the repository.
	Enabled bool
	// RewrittenBytes is what this cycle's step rewrote.
	RewrittenBytes int64
	// PacksBelowThreshold counts packs with live data below the live-ratio
	// threshold and enough dead space to compact.
	PacksBelowThreshold int64
	// DeadBytes is the stored size of all packs minus their live contents.
	DeadBytes int64
}

// Metrics holds the daemon's metric state and the registry that exports it.
// Its methods are safe for concurrent use.
type Metrics struct {
	registry *prometheus.Registry
	// runtime holds only the Go runtime and process collectors, which the
	// text exposition adds after the daemon's own families.
	runtime   *prometheus.Registry
	collector *collector
	info      BuildInfo

	mu sync.Mutex
	// repos holds the state of every repository that is exported.
	repos map[string]*repoState
	// configured is nil until SetRepositories is called; from then on,
	// events for repositories outside it are dropped, so a run that
	// finishes after its repository was removed cannot bring back its series.
	configured map[string]bool
	// reloadOK is the result of the last ConfigReloaded.
	reloadOK bool
	// reloadSuccess is when the configuration was last loaded successfully.
	reloadSuccess time.Time
	// gateChecks counts the gate's verdicts by check and result. It has no
	// repository dimension and outlives SetRepositories.
	gateChecks map[string]map[string]float64
	// notMaintained holds the reason of every discovered repository that
	// is not maintained, by name.
	notMaintained map[string]string
}

type repoState struct {
	cycles map[string]*cycleState
	// run is non-nil while a run of the repository is in flight. The
	// scheduler never runs two cycles of one repository at once.
	run   *runState
	tasks map[string]*taskState

	blobsDeleted, bytesDeleted, contentsGC float64

	health  *Health
	reclaim *Reclaim
	owner   *ownerState

	// compaction is the last compact-live measurement (nil before the
	// first full cycle); compactionRewritten counts its rewritten bytes.
	compaction          *Compaction
	compactionRewritten float64

	ownershipChanges map[string]float64
	// unsafeRuns counts safety=none runs by result.
	unsafeRuns map[string]float64

	// leaseHeld is true while this process holds the repository's lease.
	leaseHeld bool
	// leaseAcquisitions and leaseSkips count acquired leases and runs
	// skipped because another process held the lease.
	leaseAcquisitions, leaseSkips float64
	// leaseLosses counts leases lost while held, by reason.
	leaseLosses map[string]float64
}

type cycleState struct {
	runs map[string]float64
	// buckets[i] counts durations <= durationBuckets[i] and above the bound
	// before it; durations above the last bound only count in count.
	buckets []uint64
	count   uint64
	sum     float64

	inProgress                   bool
	lastSuccess, lastRun, nextAt time.Time
}

type runState struct {
	task     string
	progress Progress
}

type taskState struct {
	duration    float64
	lastSuccess time.Time
	runs        map[string]float64
}

type ownerState struct {
	owner  string
	isSelf bool
}

// New returns Metrics with a private registry holding its collector, the Go
// runtime collector and the process collector.
func New(info BuildInfo) *Metrics {
	m := &Metrics{
		registry:   prometheus.NewRegistry(),
		runtime:    prometheus.NewRegistry(),
		info:       info,
		repos:      map[string]*repoState{},
		gateChecks: map[string]map[string]float64{},
	}

	m.collector = &collector{m: m, d: newDescs(info)}
	goc, proc := collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})

	m.registry.MustRegister(m.collector, goc, proc)
	m.runtime.MustRegister(goc, proc)

	return m
}

// Registry returns the private registry to serve.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// repo returns the state of repository, creating it, or nil when the
// repository is not configured. m.mu must be held.
func (m *Metrics) repo(repository string) *repoState {
	if st, ok := m.repos[repository]; ok {
		return st
	}

	if m.configured != nil && !m.configured[repository] {
		return nil
	}

	st := &repoState{
		cycles:           map[string]*cycleState{},
		tasks:            map[string]*taskState{},
		ownershipChanges: map[string]float64{},
		unsafeRuns:       map[string]float64{},
		leaseLosses:      make(map[string]float64, len(leaseLossReasons)),
	}
	for _, c := range cycleNames {
		st.cycle(c)
	}

	for _, r := range unsafeResults {
		st.unsafeRuns[r] = 0
	}

	for _, r := range leaseLossReasons {
		st.leaseLosses[r] = 0
	}

	m.repos[repository] = st

	return st
}

func (st *repoState) cycle(cycle string) *cycleState {
	if c, ok := st.cycles[cycle]; ok {
		return c
	}

	c := &cycleState{runs: map[string]float64{}, buckets: make([]uint64, len(durationBuckets))}
	for _, r := range runResults {
		c.runs[r] = 0
	}

	st.cycles[cycle] = c

	return c
}

func (st *repoState) task(name string) *taskState {
	if t, ok := st.tasks[name]; ok {
		return t
	}

	t := &taskState{runs: map[string]float64{}}
	st.tasks[name] = t

	return t
}

func (c *cycleState) observe(seconds float64) {
	c.count++
	c.sum += seconds

	for i, b := range durationBuckets {
		if seconds <= b {
			c.buckets[i]++
			break
		}
	}
}

// SetRepositories sets the configured repositories, at start and after
// every reload. The state of every other repository is dropped, so their
// series disappear from the next scrape, and later events about them are
// ignored. A repository that is added gets runs_total and unsafe_runs_total
// (zero for every result), in_progress, run_duration_seconds, the deletion
// counters and the lease series (lease_held 0, the lease counters 0, every
// reason of lease_losses_total) at once.
func (m *Metrics) SetRepositories(names []string) {
	m.mu.Lock()
	defer m.mu.Unlock()

	m.configured = make(map[string]bool, len(names))
	for _, n := range names {
		m.configured[n] = true
	}

	maps.DeleteFunc(m.repos, func(name string, _ *repoState) bool { return !m.configured[name] })

	for _, n := range names {
		m.repo(n)
	}
}

// SetNotMaintained replaces the set of repositories Velero discovery found
// but that are not maintained, with the reason of each (a class, not the
// text: read-only, unsupported, location-not-found, invalid, name-clash).
// They are exported apart from the configured repositories: they have no
// runs.
func (m *Metrics) SetNotMaintained(reasons map[string]string) {
	m.mu.Lock()
	defer m.mu.Unlock()

	m.notMaintained = maps.Clone(reasons)
}

// ConfigReloaded records the outcome of loading the configuration (the
// initial load counts as one). at is the time of a successful load.
func (m *Metrics) ConfigReloaded(ok bool, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()

	m.reloadOK = ok
	if ok {
		m.reloadSuccess = at
	}
}

// RunStarted records that a run of cycle began on repository: in_progress
// turns 1 and the live progress series appear. It implements the
// scheduler's Recorder.
func (m *Metrics) RunStarted(repository, cycle string, _ time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()

	st := m.repo(repository)
	if st == nil {
		return
	}

	st.cycle(cycle).inProgress = true
	st.run = &runState{}
}

// RunFinished records a run's result (success, failure, skipped or
// cancelled): the live progress series disappear, runs_total counts it and,
// unless it was skipped, its duration and finish time are recorded. It
// implements the scheduler's Recorder.
func (m *Metrics) RunFinished(repository, cycle, result string, started, finished time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()

	st := m.repo(repository)
	if st == nil {
		return
	}

	c := st.cycle(cycle)
	c.inProgress = false
	st.run = nil
	c.runs[result]++

	if result == "skipped" {
		return
	}

	c.observe(finished.Sub(started).Seconds())
	c.lastRun = finished

	if result == "success" {
		c.lastSuccess = finished
	}
}

// NextRun records when a cycle is due next. It implements the scheduler's
// Recorder.
func (m *Metrics) NextRun(repository, cycle string, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()

	if st := m.repo(repository); st != nil {
		st.cycle(cycle).nextAt = at
	}
}

// TaskStarted records the kopia task the run in flight is running now. It
// is ignored when no run of the repository is in flight.
func (m *Metrics) TaskStarted(repository, task string) {
	m.mu.Lock()
	defer m.mu.Unlock()

	if st := m.repo(repository); st != nil && st.run != nil {
		st.run.task = task
	}
}

// Progress records the progress of the run in flight; p holds the run's
// totals so far. It is ignored when no run of the repository is in flight.
func (m *Metrics) Progress(repository string, p Progress) {
	m.mu.Lock()
	defer m.mu.Unlock()

	st := m.repo(repository)
	if st == nil || st.run == nil {
		return
	}

	if p.Task != "" {
		st.run.task = p.Task
	}

	st.run.progress = p
}

// TaskFinished records a finished kopia task: its duration, its result, its
// last success and what it deleted, which is added to the deletion counters
// whether or not the task succeeded. When it is the current task of the run
// in flight, current_task has no series until the next task starts.
func (m *Metrics) TaskFinished(repository string, t Task) {
	if t.Name == "" {
		return
	}

	m.mu.Lock()
	defer m.mu.Unlock()

	st := m.repo(repository)
	if st == nil {
		return
	}

	ts := st.task(t.Name)
	ts.duration = t.End.Sub(t.Start).Seconds()

	if t.Success {
		ts.lastSuccess = t.End
		ts.runs["success"]++
	} else {
		ts.runs["failure"]++
	}

	st.blobsDeleted += float64(max(t.BlobsDeleted, 0))
	st.bytesDeleted += float64(max(t.BytesDeleted, 0))
	st.contentsGC += float64(max(t.ContentsGC, 0))

	if st.run != nil && st.run.task == t.Name {
		st.run.task = ""
	}
}

// Health records the repository's storage health from the latest listing.
func (m *Metrics) Health(repository string, h Health) {
	m.mu.Lock()
	defer m.mu.Unlock()

	if st := m.repo(repository); st != nil {
		h.SizeBytes = maps.Clone(h.SizeBytes)
		st.health = &h
	}
}

// Reclaim records the latest reclamation explanation of the repository.
func (m *Metrics) Reclaim(repository string, r Reclaim) {
	m.mu.Lock()
	defer m.mu.Unlock()

	if st := m.repo(repository); st != nil {
		st.reclaim = &r
	}
}

// Compaction records a full cycle's compact-live step: the bytes it
// rewrote are added to compaction_rewritten_bytes_total, the measurement
// replaces the gauges.
func (m *Metrics) Compaction(repository string, c Compaction) {
	m.mu.Lock()
	defer m.mu.Unlock()

	if st := m.repo(repository); st != nil {
		st.compactionRewritten += float64(max(c.RewrittenBytes, 0))
		st.compaction = &c
	}
}

// Owner records the repository's maintenance owner ("" when unowned) and
// whether it is this daemon's identity.
func (m *Metrics) Owner(repository, owner string, isSelf bool) {
	m.mu.Lock()
	defer m.mu.Unlock()

	if st := m.repo(repository); st != nil {
		st.owner = &ownerState{owner: owner, isSelf: isSelf}
	}
}

// OwnershipChanged counts a change of the repository's maintenance owner.
// reason is one of unowned, stale, always (this daemon took ownership under
// that policy), manual (an operator's owner take), handback (this daemon
// gave it back) and external (another identity took it from us).
func (m *Metrics) OwnershipChanged(repository, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()

	if st := m.repo(repository); st != nil {
		st.ownershipChanges[reason]++
	}
}

// GateCheck counts one verdict of the safety=none gate: check is the
// check's name from the gate's fixed set (velero-server, backups,
// repository-activity, config, kubernetes, ...), result one of pass, refuse
// and absent. The first count of a check brings its other results at 0, so
// that increase() sees the first refusal after a pass. The counter has no
// repository label, to keep it small; it is kept across SetRepositories.
func (m *Metrics) GateCheck(check, result string) {
	if check == "" || result == "" {
		return
	}

	m.mu.Lock()
	defer m.mu.Unlock()

	c, ok := m.gateChecks[check]
	if !ok {
		c = make(map[string]float64, len(gateResults))
		for _, r := range gateResults {
			c[r] = 0
		}

		m.gateChecks[check] = c
	}

	c[result]++
}

// UnsafeRun counts one safety=none run of repository, or a request for one,
// by result: success, failure, refused (by the gate, before the run started)
// or cancelled (by the gate's watcher, or at shutdown). The run is also
// reported to RunStarted and RunFinished as a full cycle; this counter tells
// the unsafe ones apart.
func (m *Metrics) UnsafeRun(repository, result string) {
	if result == "" {
		return
	}

	m.mu.Lock()
	defer m.mu.Unlock()

	if st := m.repo(repository); st != nil {
		st.unsafeRuns[result]++
	}
}

// LeaseHeld records whether this process holds repository's lease now:
// lease_held is 1 while it does. LeaseAcquired and LeaseLost set it as
// well; call LeaseHeld(repository, false) when the lease is released.
func (m *Metrics) LeaseHeld(repository string, held bool) {
	m.mu.Lock()
	defer m.mu.Unlock()

	if st := m.repo(repository); st != nil {
		st.leaseHeld = held
	}
}

// LeaseAcquired counts a lease on repository acquired by this process (a
// renewal is not an acquisition) and sets lease_held to 1.
func (m *Metrics) LeaseAcquired(repository string) {
	m.mu.Lock()
	defer m.mu.Unlock()

	if st := m.repo(repository); st != nil {
		st.leaseAcquisitions++
		st.leaseHeld = true
	}
}

// LeaseLost counts a lease on repository lost while held, by reason:
// expired (the deadline passed before a renewal, e.g. after a pause),
// renew-failed (a renewal failed) or taken (another holder has it now); it
// sets lease_held to 0. A release (clean shutdown, end of a run) is not a
// loss. An empty reason is ignored.
func (m *Metrics) LeaseLost(repository, reason string) {
	if reason == "" {
		return
	}

	m.mu.Lock()
	defer m.mu.Unlock()

	if st := m.repo(repository); st != nil {
		st.leaseLosses[reason]++
		st.leaseHeld = false
	}
}

// LeaseSkipped counts a maintenance run of repository skipped because
// another process holds its lease.
func (m *Metrics) LeaseSkipped(repository string) {
	m.mu.Lock()
	defer m.mu.Unlock()

	if st := m.repo(repository); st != nil {
		st.leaseSkips++
	}
}

func unix(t time.Time) float64 {
	return float64(t.UnixNano()) / 1e9
}
