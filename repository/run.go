package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/maintenance"
	"github.com/kopia/kopia/repo/maintenancestats"
	"github.com/kopia/kopia/snapshot/snapshotgc"
	"go.uber.org/zap"

	"github.com/kopia-maintd/kopia-maintd/lease"
	// Imported under another name: safety is this package's name for
	// the SafetyFull parameters.
	safetygate "github.com/kopia-maintd/kopia-maintd/safety"
)

// Cycle is a kind of maintenance cycle.
type Cycle string

// Maintenance cycles.
const (
	Quick Cycle = "quick"
	Full  Cycle = "full"
)

// RunRequest asks for one maintenance cycle.
type RunRequest struct {
	Cycle Cycle
	// NextQuick and NextFull are when the daemon will run each cycle next.
	// They are written into kopia's own schedule so `kopia maintenance info`
	// agrees with the daemon. Zero leaves kopia's value alone.
	NextQuick, NextFull time.Time
	// QuickInterval and FullInterval are the nominal cycle intervals written
	// into the repository's maintenance params. Zero leaves kopia's value.
	QuickInterval, FullInterval time.Duration
	// Observer, when set, follows the run's tasks and progress live.
	Observer Observer
	// Unsafe, when set, makes this full cycle run with kopia's SafetyNone
	// parameters. The caller must have passed the safety=none gate.
	Unsafe *UnsafeRun
	// Covered, when set, is asked, before anything is written, with the end
	// of the last successful run of this cycle recorded in the repository
	// (a full cycle counts for quick; zero for never). Returning true skips
	// the run with a *DoneError: another process did the work meanwhile.
	Covered func(lastSuccess time.Time) bool
}

// DoneError reports a run skipped because the repository's history shows
// the cycle succeeded after the run became due (see RunRequest.Covered).
type DoneError struct {
	Repository string
	Cycle      Cycle
	// LastSuccess is when that successful run ended.
	LastSuccess time.Time
}

func (e *DoneError) Error() string {
	return fmt.Sprintf("repository %q: %s cycle already done by another process (succeeded at %s)",
		e.Repository, e.Cycle, e.LastSuccess.UTC().Format(time.RFC3339))
}

// Skipped makes the scheduler count the run as skipped.
func (e *DoneError) Skipped() bool { return true }

// UnsafeRun is what a SafetyNone cycle needs: the proof that the gate
// passed for this repository, and the checks that keep proving, from the
// repository and from Kubernetes, that nobody else writes.
type UnsafeRun struct {
	// Admission is what the passed gate returned (safety.Gate.Admit). Run
	// refuses a SafetyNone cycle without a valid one for its repository.
	Admission safetygate.Admission
	// QuietPeriod is how long other sessions must not have written.
	QuietPeriod time.Duration
	// Guard is called with the repository's activity evidence right before
	// the cycle, right before snapshot GC (the first destructive step), at
	// the first blob delete and after every kopia task. An error refuses
	// the cycle before it starts, or cancels it at once.
	Guard func(ctx context.Context, activity []Activity) error
	// Kubernetes re-runs the Kubernetes checks synchronously; it is called
	// right before snapshot GC and at the first blob delete, with Guard.
	// An error cancels the cycle. Required: a caller without Kubernetes
	// checks passes a function that returns nil.
	Kubernetes func(ctx context.Context) error
}

// check refuses an UnsafeRun that cannot be run on the named repository.
func (u *UnsafeRun) check(name string, cycle Cycle) error {
	switch {
	case cycle != Full:
		return fmt.Errorf("repository %q: a safety=none run must be a full cycle", name)
	case !u.Admission.Valid():
		return fmt.Errorf("repository %q: %w: the safety=none gate has not passed", name, ErrNotAdmitted)
	case u.Admission.Decision().Repository != name:
		return fmt.Errorf("repository %q: %w: the gate passed for repository %q", name, ErrNotAdmitted, u.Admission.Decision().Repository)
	case u.Guard == nil || u.Kubernetes == nil:
		return fmt.Errorf("repository %q: a safety=none run needs its repository and Kubernetes re-checks", name)
	}

	return nil
}

// ErrNotAdmitted reports a safety=none run requested without the admission
// of a passed gate for its repository.
var ErrNotAdmitted = errors.New("safety=none run not admitted")

// GuardError reports a SafetyNone cycle that its guard refused before it
// started (Started false) or cancelled while it ran.
type GuardError struct {
	Repository string
	Started    bool
	Cause      error
}

func (e *GuardError) Error() string {
	if e.Started {
		return fmt.Sprintf("repository %q: safety=none cycle cancelled: %v", e.Repository, e.Cause)
	}

	return fmt.Sprintf("repository %q: safety=none cycle refused: %v", e.Repository, e.Cause)
}

func (e *GuardError) Unwrap() error { return e.Cause }

// TaskResult is one kopia maintenance task as recorded in the repository's
// run history.
type TaskResult struct {
	Task    string    `json:"task"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	Success bool      `json:"success"`
	Error   string    `json:"error,omitempty"`
	// Summary is kopia's maintenancestats summary of the task's statistics.
	Summary string `json:"summary,omitempty"`
	// Stats holds the statistics by kind, as kopia encodes them.
	Stats map[string]map[string]any `json:"stats,omitempty"`
	// BlobsDeleted and BytesDeleted are the storage deletes the task
	// reported (packs, logs, superseded indexes, epoch markers).
	BlobsDeleted int64 `json:"blobsDeleted,omitempty"`
	BytesDeleted int64 `json:"bytesDeleted,omitempty"`
	// ContentsGC is how many contents snapshot GC marked deleted, and
	// UnreferencedBytes what it found unreferenced (marked or too young).
	ContentsGC        int64 `json:"contentsGC,omitempty"`
	UnreferencedBytes int64 `json:"unreferencedBytes,omitempty"`
}

// Duration is how long the task took.
func (t TaskResult) Duration() time.Duration { return t.End.Sub(t.Start) }

// Report is the outcome of one Run.
type Report struct {
	Repository string    `json:"repository"`
	Cycle      Cycle     `json:"cycle"`
	Start      time.Time `json:"start"`
	End        time.Time `json:"end"`
	Owner      string    `json:"owner"`
	TookOver   bool      `json:"tookOver"`
	// PreviousOwner is the owner before the run; TakeoverReason says why
	// the run took ownership (empty when it did not).
	PreviousOwner  string       `json:"previousOwner"`
	TakeoverReason string       `json:"takeoverReason,omitempty"`
	Tasks          []TaskResult `json:"tasks"`
	// Health is read from blob listings after the run.
	Health *Health `json:"health,omitempty"`
	// Reclaim is computed after successful full cycles (nil otherwise).
	Reclaim *Reclaim `json:"reclaim,omitempty"`
	// Compaction is what the compact-live step of a full cycle measured
	// and did (nil for quick cycles and when kopia's tasks failed). Kopia's
	// run history, and so Tasks, lists its rewrite as full-rewrite-contents.
	Compaction *CompactionResult `json:"compaction,omitempty"`
}

// safety is the safety level of every scheduled run: kopia's SafetyFull
// margins make maintenance safe while other clients write snapshots. Only a
// gated UnsafeRun uses SafetyNone.
var safety = maintenance.SafetyFull

// Run performs one maintenance cycle with SafetyFull, applying the
// ownership policy first. A skipped run returns an error with a
// `Skipped() bool` method (*NotOwnerError, *LockedError). The report is
// returned with whatever tasks ran, also on failure.
//
// held must be a valid lease on the repository: without one Run refuses
// with ErrNoLease before opening anything. Every storage write of the run
// (the repository's creation included) checks the lease first, and every
// storage call ends when the lease ends, whatever context kopia passes.
func (m *Manager) Run(ctx context.Context, held *lease.Held, name string, req RunRequest) (*Report, error) {
	var mode maintenance.Mode

	switch req.Cycle {
	case Quick:
		mode = maintenance.ModeQuick
	case Full:
		mode = maintenance.ModeFull
	default:
		return nil, fmt.Errorf("unknown maintenance cycle %q", req.Cycle)
	}

	params := safety

	fence, err := m.leaseFence(name, held)
	if err != nil {
		return nil, err
	}

	if req.Unsafe != nil {
		if err := req.Unsafe.check(name, req.Cycle); err != nil {
			return nil, err
		}

		params = maintenance.SafetyNone
		fence.deletes = &deleteGate{}
	}

	// The whole run, not only its storage calls, ends with the lease.
	ctx, stopBound := held.Bound(withFence(ctx, fence))
	defer stopBound()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	tracker := newRunTracker(req.Observer, req.Cycle)
	slot := m.tracker(name)

	if slot != nil {
		slot.Store(tracker)
		defer slot.Store(nil)
	}

	s, err := m.openWith(ctx, name, tracker, true)
	if err != nil {
		return nil, err
	}
	defer s.Close()

	tracker.ctx = s.ctx
	tracker.log = s.log
	tracker.rep.Store(&s.rep)

	started := m.opts.Now()
	pid := os.Getpid()
	tracker.publish = func(p Progress) {
		m.publishLive(name, LiveRun{PID: pid, Cycle: req.Cycle, Started: started, Updated: time.Now(), Progress: p})
	}

	defer m.clearLive(name)

	report := &Report{Repository: name, Cycle: req.Cycle, Start: m.opts.Now()}

	p, err := s.params()
	if err != nil {
		return nil, err
	}

	sched, err := s.schedule()
	if err != nil {
		return nil, err
	}

	if req.Covered != nil && req.Unsafe == nil {
		quick, full := lastCycleSuccess(sched.Runs)
		last := quick
		if req.Cycle == Full {
			last = full
		}

		if req.Covered(last) {
			return nil, &DoneError{Repository: name, Cycle: req.Cycle, LastSuccess: last}
		}
	}

	tracker.baseline(sched)
	report.PreviousOwner = p.Owner

	reason, err := m.ensureOwnership(s, p, sched)
	if err != nil {
		return nil, err
	}

	report.TookOver = reason != ""
	report.TakeoverReason = reason
	report.Owner = p.Owner

	// A takeover already wrote the owner (ensureOwnership).
	if syncIntervals(p, req) {
		if err := setParams(s.ctx, s.rep, p, "kopia-maintd: maintenance params"); err != nil {
			return nil, fmt.Errorf("repository %q: write maintenance params: %w", name, err)
		}
	}

	s.log.Debug("starting kopia maintenance", zap.String("cycle", string(req.Cycle)), zap.String("owner", p.Owner))

	ran := false
	runErr := repo.DirectWriteSession(s.ctx, s.rep, repo.WriteSessionOptions{Purpose: "kopia-maintd: " + string(req.Cycle) + " maintenance"},
		func(ctx context.Context, dw repo.DirectRepositoryWriter) error {
			dw.LogManager().Enable()

			// recheck re-runs both the repository's and Kubernetes'
			// checks synchronously; nil outside safety=none runs.
			var recheck func(ctx context.Context) error

			if u := req.Unsafe; u != nil {
				// The last word before the cycle: nothing may be writing,
				// not even a session of our own, unless a process killed
				// under an earlier lease left its marker.
				acts, err := m.activity(ctx, dw, name, u.QuietPeriod, ownMarkers{deadBefore: held.Acquired()})
				if err == nil {
					err = u.Guard(ctx, acts)
				}

				if err != nil {
					return &GuardError{Repository: name, Cause: err}
				}

				recheck = func(ctx context.Context) error {
					acts, err := m.activity(ctx, dw, name, u.QuietPeriod, ownMarkers{all: true})
					if err != nil {
						return fmt.Errorf("look for other writers: %w", err)
					}

					if err := u.Guard(ctx, acts); err != nil {
						return err
					}

					return u.Kubernetes(ctx)
				}

				tracker.betweenTasks = func() {
					acts, err := m.activity(ctx, dw, name, u.QuietPeriod, ownMarkers{all: true})
					if err == nil {
						err = u.Guard(ctx, acts)
					}

					if err != nil {
						cancel(&GuardError{Repository: name, Started: true, Cause: err})
					}
				}

				// A re-check that cannot read what kopia recorded cannot
				// prove anything: stop (fail closed).
				tracker.unreadable = func(err error) {
					cancel(&GuardError{Repository: name, Started: true, Cause: fmt.Errorf("re-check after a task: read maintenance schedule: %w", err)})
				}

				// The second line: whatever path kopia takes to its first
				// blob delete, that delete waits for a passed re-check.
				fence.deletes.setCheck(func(ctx context.Context) error {
					if err := recheck(ctx); err != nil {
						cancel(&GuardError{Repository: name, Started: true, Cause: err})
						return err
					}

					return nil
				})
			}

			err := maintenance.RunExclusive(ctx, dw, mode, false, func(ctx context.Context, rp maintenance.RunParameters) error {
				ran = true

				if n := m.opts.ListParallelism; n > 0 && rp.Params != nil {
					// rp.Params is this run's copy: the stored params stay as they are.
					rp.Params.ListParallelism = n
				}

				// With SafetyNone, snapshot GC's marking is already
				// destructive: the evidence of the gate and of the checks
				// before the cycle may be minutes old by now (a Velero pod
				// starting between the watcher's passes), so re-check both
				// synchronously right here.
				if recheck != nil {
					if err := recheck(ctx); err != nil {
						return &GuardError{Repository: name, Started: true, Cause: err}
					}
				}

				// The same steps as kopia's snapshotmaintenance.Run: snapshot
				// GC marks unreferenced contents before a full cycle.
				if rp.Mode == maintenance.ModeFull {
					if err := snapshotgc.Run(ctx, dw, true, params, rp.MaintenanceStartTime); err != nil {
						return fmt.Errorf("snapshot gc: %w", err)
					}

					// The cycle's rewrite, in place of kopia's own (which
					// would copy deleted entries): live contents of short
					// and of sparse packs. Kopia's tasks that follow drop
					// deleted entries and delete orphaned packs.
					res, err := compactLive(ctx, dw, s.spec.Compaction, params, s.log)
					report.Compaction = res

					if err != nil {
						return fmt.Errorf("%s: %w", TaskCompactLive, err)
					}
				}

				return maintenance.Run(ctx, rp, params)
			})

			if ran {
				// RunExclusive moved kopia's schedule to now+interval before
				// running; put the daemon's cron times there instead, also
				// after a failed run, so kopia's view stays truthful.
				if serr := writeNextTimes(ctx, dw, req); serr != nil && err == nil {
					err = serr
				}
			}

			if ran && err == nil {
				m.inspect(ctx, s, dw, req, tracker, report)
			}

			return err
		})

	report.End = m.opts.Now()

	// The next start's lookup of this repository then needs no open.
	if sched, terr := m.scheduleRemembered(s.ctx, s); terr == nil {
		report.Tasks = tasksSince(sched, report.Start)
	} else if runErr == nil {
		runErr = terr
	}

	tracker.logRemaining(report.Tasks)

	if ran {
		m.saveInspection(name, report)
	}

	if runErr == nil && !ran {
		return report, &LockedError{Repository: name}
	}

	var guardErr *GuardError
	if errors.As(context.Cause(ctx), &guardErr) {
		return report, guardErr
	}

	if errors.As(runErr, &guardErr) {
		return report, guardErr
	}

	if runErr != nil {
		var notOwned maintenance.NotOwnedError
		if errors.As(runErr, &notOwned) {
			// Someone changed the owner between our check and kopia's.
			return report, &NotOwnerError{Repository: name, Owner: notOwned.Owner, Reason: "ownership changed during the run"}
		}

		return report, fmt.Errorf("repository %q: %s maintenance: %w", name, req.Cycle, runErr)
	}

	return report, nil
}

// inspect reads the repository's health after a successful run and, after
// a full cycle, explains what is still waiting to be reclaimed. Failures are
// logged: they never fail the maintenance run.
func (m *Manager) inspect(ctx context.Context, s *session, dw repo.DirectRepositoryWriter, req RunRequest, tracker *runTracker, report *Report) {
	full := req.Cycle == Full

	h, err := collectHealth(ctx, dw.BlobReader(), full, m.lastHealth(s.spec.Name), m.opts.Now())
	if err != nil {
		s.log.Warn("read repository health", zap.Error(err))
	} else {
		report.Health = h
		m.setLastHealth(s.spec.Name, h)
	}

	if !full {
		return
	}

	sched, err := maintenance.GetSchedule(ctx, dw)
	if err != nil {
		s.log.Warn("explain reclaim", zap.Error(err))
		return
	}

	var unreferenced int64

	if gc := newestSuccess(sched.Runs[maintenance.TaskSnapshotGarbageCollection]); !gc.End.IsZero() {
		unreferenced = taskResult(maintenance.TaskSnapshotGarbageCollection, gc).UnreferencedBytes
	}

	r, err := computeReclaim(ctx, dw, sched, tracker.recentContents(), unreferenced, req.NextFull, req.FullInterval, m.opts.Now(), s.spec.Compaction, report.Compaction)
	if err != nil {
		s.log.Warn("explain reclaim", zap.Error(err))
		return
	}

	report.Reclaim = r
}

// syncIntervals writes the daemon's cycle intervals into params and reports
// whether anything changed.
func syncIntervals(p *maintenance.Params, req RunRequest) bool {
	changed := false

	if req.QuickInterval > 0 && (p.QuickCycle.Interval != req.QuickInterval || !p.QuickCycle.Enabled) {
		p.QuickCycle = maintenance.CycleParams{Enabled: true, Interval: req.QuickInterval}
		changed = true
	}

	if req.FullInterval > 0 && (p.FullCycle.Interval != req.FullInterval || !p.FullCycle.Enabled) {
		p.FullCycle = maintenance.CycleParams{Enabled: true, Interval: req.FullInterval}
		changed = true
	}

	return changed
}

func writeNextTimes(ctx context.Context, dw repo.DirectRepositoryWriter, req RunRequest) error {
	if req.NextQuick.IsZero() && req.NextFull.IsZero() {
		return nil
	}

	s, err := maintenance.GetSchedule(ctx, dw)
	if err != nil {
		return fmt.Errorf("read maintenance schedule: %w", err)
	}

	if !req.NextQuick.IsZero() {
		s.NextQuickMaintenanceTime = req.NextQuick
	}

	if !req.NextFull.IsZero() {
		s.NextFullMaintenanceTime = req.NextFull
	}

	if err := maintenance.SetSchedule(ctx, dw, s); err != nil {
		return fmt.Errorf("write maintenance schedule: %w", err)
	}

	return nil
}

// tasksSince returns the tasks recorded in the run history that started at
// or after since, oldest first.
func tasksSince(sched *maintenance.Schedule, since time.Time) []TaskResult {
	var out []TaskResult

	for task, runs := range sched.Runs {
		for _, r := range runs {
			if r.Start.Before(since) {
				continue
			}

			out = append(out, taskResult(string(task), r))
		}
	}

	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })

	return out
}

func taskResult(task string, r maintenance.RunInfo) TaskResult {
	t := TaskResult{Task: task, Start: r.Start, End: r.End, Success: r.Success, Error: r.Error}

	var summaries []string

	for _, e := range r.Extra {
		if sum, err := maintenancestats.BuildFromExtra(e); err == nil {
			summaries = append(summaries, sum.Summary())
			t.addCounts(sum)
		}

		if t.Stats == nil {
			t.Stats = map[string]map[string]any{}
		}

		var fields map[string]any
		if err := json.Unmarshal(e.Data, &fields); err == nil {
			t.Stats[e.Kind] = fields
		}
	}

	t.Summary = strings.Join(summaries, "; ")

	return t
}

// addCounts takes the numbers the metrics need from typed statistics.
func (t *TaskResult) addCounts(stats maintenancestats.Summarizer) {
	switch st := stats.(type) {
	case *maintenancestats.SnapshotGCStats:
		t.ContentsGC += int64(st.DeletedContentCount)
		t.UnreferencedBytes += int64(st.UnreferencedContentSize + st.UnreferencedRecentContentSize)
	case *maintenancestats.DeleteUnreferencedPacksStats:
		t.BlobsDeleted += int64(st.DeletedPackCount)
		t.BytesDeleted += int64(st.DeletedTotalSize)
	case *maintenancestats.CleanupLogsStats:
		t.BlobsDeleted += int64(st.DeletedBlobCount)
		t.BytesDeleted += int64(st.DeletedBlobSize)
	case *maintenancestats.CleanupSupersededIndexesStats:
		t.BlobsDeleted += int64(st.DeletedBlobCount)
		t.BytesDeleted += int64(st.DeletedTotalSize)
	case *maintenancestats.CleanupMarkersStats:
		t.BlobsDeleted += int64(st.DeletedEpochMarkerBlobCount + st.DeletedWatermarkBlobCount)
	}
}

func logTask(log *zap.Logger, t TaskResult) {
	fields := []zap.Field{
		zap.String("task", t.Task),
		zap.Bool("success", t.Success),
		zap.Float64("duration_seconds", t.Duration().Seconds()),
	}

	if t.Summary != "" {
		fields = append(fields, zap.String("stats", t.Summary))
	}

	if t.Success {
		log.Info("maintenance task finished", fields...)
		return
	}

	log.Warn("maintenance task failed", append(fields, zap.String("error", t.Error))...)
}

// LastSuccess returns when the last quick and full cycle completed
// successfully, read from the repository's run history. A full cycle counts
// when a snapshot-gc succeeded and the cycle's last task (cleanup-logs) then
// succeeded too; a quick cycle's work is also done by a full cycle.
//
// The successes read are remembered with the schedule blob's length and time
// (lastsuccess.go); while the blob is unchanged, a lookup answers from that
// record without opening the repository.
func (m *Manager) LastSuccess(ctx context.Context, name string) (quick, full time.Time, err error) {
	if spec, serr := m.spec(name); serr == nil {
		if quick, full, ok := m.cachedLastSuccess(ctx, spec); ok {
			return quick, full, nil
		}
	}

	s, err := m.open(ctx, name)
	if err != nil {
		notYet := errors.Is(err, ErrNoRepository) || errors.Is(err, os.ErrNotExist)
		if spec, serr := m.spec(name); serr == nil && spec.Create && notYet {
			// Not created yet: the first run creates it, inside its lease.
			return time.Time{}, time.Time{}, nil
		}

		return time.Time{}, time.Time{}, err
	}
	defer s.Close()

	sched, err := m.scheduleRemembered(s.ctx, s)
	if err != nil {
		return time.Time{}, time.Time{}, err
	}

	quick, full = lastCycleSuccess(sched.Runs)

	return quick, full, nil
}

func lastCycleSuccess(runs map[maintenance.TaskType][]maintenance.RunInfo) (quick, full time.Time) {
	gc := newestSuccess(runs[maintenance.TaskSnapshotGarbageCollection])
	if !gc.End.IsZero() {
		for _, r := range runs[maintenance.TaskCleanupLogs] {
			if r.Success && !r.Start.Before(gc.Start) && r.End.After(full) {
				full = r.End
			}
		}
	}

	quick = full

	// Quick cycles end with advance-epoch (epoch index format, the default)
	// or cleanup-logs (legacy index format, after index-compaction).
	for _, t := range []maintenance.TaskType{maintenance.TaskEpochAdvance, maintenance.TaskIndexCompaction} {
		if r := newestSuccess(runs[t]); r.End.After(quick) {
			quick = r.End
		}
	}

	return quick, full
}

func newestSuccess(runs []maintenance.RunInfo) maintenance.RunInfo {
	var best maintenance.RunInfo

	for _, r := range runs {
		if r.Success && r.End.After(best.End) {
			best = r
		}
	}

	return best
}
