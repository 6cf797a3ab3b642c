package maintain

import (
	"errors"
	"sync"

	"github.com/kopia-maintd/kopia-maintd/metrics"
	"github.com/kopia-maintd/kopia-maintd/repository"
)

// TaskMetrics receives a run's live events (metrics.Metrics).
type TaskMetrics interface {
	TaskStarted(repository, task string)
	TaskFinished(repository string, t metrics.Task)
	Progress(repository string, p metrics.Progress)
}

// RunObserver is the repository.Observer of one maintenance run: it turns
// the run's live events into metrics.
type RunObserver struct {
	Metrics    TaskMetrics
	Repository string
}

var _ repository.Observer = (*RunObserver)(nil)

// TaskStarted records the kopia task the run is starting.
func (o *RunObserver) TaskStarted(task string) {
	o.Metrics.TaskStarted(o.Repository, task)
}

// TaskFinished records a finished kopia task with what it deleted.
func (o *RunObserver) TaskFinished(t repository.TaskResult) {
	o.Metrics.TaskFinished(o.Repository, metrics.Task{
		Name: t.Task, Start: t.Start, End: t.End, Success: t.Success,
		BlobsDeleted: t.BlobsDeleted, BytesDeleted: t.BytesDeleted, ContentsGC: t.ContentsGC,
	})
}

// Progress records the run's work so far.
func (o *RunObserver) Progress(p repository.Progress) {
	o.Metrics.Progress(o.Repository, metrics.Progress{
		Task: p.Task, BlobsDeleted: p.BlobsDeleted, BytesDeleted: p.BytesDeleted, ContentsScanned: p.ContentsScanned,
	})
}

// Owners remembers, per repository, whether this daemon was the owner at
// the end of its last run, to tell an ownership taken away by someone else.
// The zero value is ready to use.
type Owners struct {
	mu     sync.Mutex
	isSelf map[string]bool
}

// Observe records a run's owners, before (at the run's start, before any
// takeover) and after, and reports whether ownership went from this daemon
// to someone else since the previous run. A run that took ownership back
// still tells the loss: before is what someone else left. The first
// observation of a repository never counts as a loss: nothing is known of
// before.
func (o *Owners) Observe(repository string, before, after bool) (lost bool) {
	o.mu.Lock()
	defer o.mu.Unlock()

	if o.isSelf == nil {
		o.isSelf = map[string]bool{}
	}

	was, known := o.isSelf[repository]
	o.isSelf[repository] = after

	return known && was && !before
}

// VeleroOwner is the maintenance owner Velero writes: it opens every
// repository as default@default (pkg/repository/udmrepo/kopialib, the
// default user and host of Velero's repository service) and sets that
// owner again when it re-initialises a repository.
const VeleroOwner = "default@default"

// Ownership change reasons ObserveReport adds to the takeover reasons.
const (
	// LostExternal: another identity took ownership from this daemon.
	LostExternal = "external"
	// LostVeleroReset: the owner was set back to Velero's default@default
	// while this daemon owned the repository.
	LostVeleroReset = "velero-reset"
)

// Loss is an ownership this daemon lost between two runs.
type Loss struct {
	// To is the owner the run found.
	To string
	// Reason is LostExternal or LostVeleroReset.
	Reason string
}

// ReportMetrics receives what a finished run reports (metrics.Metrics).
type ReportMetrics interface {
	Owner(repository, owner string, isSelf bool)
	OwnershipChanged(repository, reason string)
	Health(repository string, h metrics.Health)
	Reclaim(repository string, r metrics.Reclaim)
}

// ObserveReport exports what a finished run reports beyond its tasks (the
// observer has counted those as they finished): the owner and any change of
// it (LostVeleroReset or LostExternal when someone else took it from this
// daemon since its last run, the takeover reason when this run took it),
// the repository's health, and the reclaim explanation. report is nil when
// the run stopped before maintenance (e.g. not the owner); err is the run's
// error. A loss is returned for the caller to log; the ownership policy has
// already handled it (a takeover in this run, or a skipped run).
func ObserveReport(met ReportMetrics, own *Owners, self, name string, report *repository.Report, err error) (lost *Loss) {
	owner, before, known := "", "", false

	var notOwner *repository.NotOwnerError

	switch {
	case report != nil:
		owner, before, known = report.Owner, report.PreviousOwner, true
	case errors.As(err, &notOwner):
		owner, before, known = notOwner.Owner, notOwner.Owner, true
	}

	if known {
		met.Owner(name, owner, owner == self)

		if own.Observe(name, before == self, owner == self) {
			lost = &Loss{To: before, Reason: LostExternal}
			if before == VeleroOwner {
				lost.Reason = LostVeleroReset
			}

			met.OwnershipChanged(name, lost.Reason)
		}
	}

	if report == nil {
		return lost
	}

	if report.TookOver && report.TakeoverReason != "" {
		met.OwnershipChanged(name, report.TakeoverReason)
	}

	if h := report.Health; h != nil {
		met.Health(name, metrics.Health{IndexBlobs: h.IndexBlobs, SessionMarkers: h.SessionMarkers, SizeBytes: h.SizeBytes})
	}

	if r := report.Reclaim; r != nil {
		met.Reclaim(name, metrics.Reclaim{UnreferencedBytes: r.UnreferencedBytes, RetainedBytes: r.RetainedBytes, EligibleAt: r.EligibleAt})
	}

	observeCompaction(met, name, report)

	return lost
}
