package main

import (
	"errors"
	"sync"

	"github.com/kopia-maintd/kopia-maintd/metrics"
	"github.com/kopia-maintd/kopia-maintd/repository"
)

// runObserver is the repository.Observer of one maintenance run: it turns
// the run's live events into metrics.
type runObserver struct {
	met        *metrics.Metrics
	repository string
}

var _ repository.Observer = (*runObserver)(nil)

// TaskStarted records the kopia task the run is starting.
func (o *runObserver) TaskStarted(task string) {
	o.met.TaskStarted(o.repository, task)
}

// TaskFinished records a finished kopia task with what it deleted.
func (o *runObserver) TaskFinished(t repository.TaskResult) {
	o.met.TaskFinished(o.repository, metrics.Task{
		Name: t.Task, Start: t.Start, End: t.End, Success: t.Success,
		BlobsDeleted: t.BlobsDeleted, BytesDeleted: t.BytesDeleted, ContentsGC: t.ContentsGC,
	})
}

// Progress records the run's work so far.
func (o *runObserver) Progress(p repository.Progress) {
	o.met.Progress(o.repository, metrics.Progress{
		Task: p.Task, BlobsDeleted: p.BlobsDeleted, BytesDeleted: p.BytesDeleted, ContentsScanned: p.ContentsScanned,
	})
}

// owners remembers, per repository, whether this daemon was the owner at
// its last run, to tell an ownership taken away by someone else.
type owners struct {
	mu     sync.Mutex
	isSelf map[string]bool
}

// observe records the owner seen by a run and reports whether ownership
// went from this daemon to someone else since the previous run.
func (o *owners) observe(repository string, isSelf bool) (lost bool) {
	o.mu.Lock()
	defer o.mu.Unlock()

	if o.isSelf == nil {
		o.isSelf = map[string]bool{}
	}

	was, known := o.isSelf[repository]
	o.isSelf[repository] = isSelf

	return known && was && !isSelf
}

// observeReport exports what a finished run reports beyond its tasks (the
// observer has counted those as they finished): the owner and any change of
// it, the repository's health, and the reclaim explanation. report is nil
// when the run stopped before maintenance (e.g. not the owner); err is the
// run's error.
func observeReport(met *metrics.Metrics, own *owners, self, name string, report *repository.Report, err error) {
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

		if own.observe(name, owner == self) {
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
}
