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
// its last run, to tell an ownership taken away by someone else. The zero
// value is ready to use.
type Owners struct {
	mu     sync.Mutex
	isSelf map[string]bool
}

// Observe records the owner seen by a run and reports whether ownership
// went from this daemon to someone else since the previous run. The first
// observation of a repository never counts as a loss: nothing is known of
// before.
func (o *Owners) Observe(repository string, isSelf bool) (lost bool) {
	o.mu.Lock()
	defer o.mu.Unlock()

	if o.isSelf == nil {
		o.isSelf = map[string]bool{}
	}

	was, known := o.isSelf[repository]
	o.isSelf[repository] = isSelf

	return known && was && !isSelf
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
// it (reason "external" when someone else took it from this daemon, the
// takeover reason when this run took it), the repository's health, and the
// reclaim explanation. report is nil when the run stopped before maintenance
// (e.g. not the owner); err is the run's error.
func ObserveReport(met ReportMetrics, own *Owners, self, name string, report *repository.Report, err error) {
	owner, known := "", false

	var notOwner *repository.NotOwnerError

	switch {
	case report != nil:
		owner, known = report.Owner, true
	case errors.As(err, &notOwner):
		owner, known = notOwner.Owner, true
	}

	if known {
		met.Owner(name, owner, owner == self)

		if own.Observe(name, owner == self) {
			met.OwnershipChanged(name, "external")
		}
	}

	if report == nil {
		return
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
}
