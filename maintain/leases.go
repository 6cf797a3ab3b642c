package maintain

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	"k8s.io/utils/clock"

	"github.com/kopia-maintd/kopia-maintd/lease"
	"github.com/kopia-maintd/kopia-maintd/repository"
	"github.com/kopia-maintd/kopia-maintd/scheduler"
)

// ErrLeaseLost is what a run returns when its lease could no longer be
// proven while it ran.
var ErrLeaseLost = errors.New("lease lost")

// Acquirer takes a repository's lease (lease.Manager).
type Acquirer interface {
	Acquire(ctx context.Context, name string) (*lease.Held, error)
}

// LeaseMetrics receives what Leases exports; nil means none.
type LeaseMetrics interface {
	LeaseSkipped(name string)
	LeaseHeld(name string, held bool)
}

// Spread orders the scheduled runs of several replicas (lease.Spread).
type Spread interface {
	Turn(ctx context.Context, name string, now time.Time) error
	Started(name string, now time.Time) (end func(work, now time.Time, worked bool))
	Mine(name string, t time.Time) bool
}

// Leases runs work inside a repository's lease: every maintenance run,
// scheduled or one-shot, and every ownership change.
type Leases struct {
	Acquirer Acquirer
	// Metrics may be nil (one-shot commands).
	Metrics LeaseMetrics
	// Fenced returns how many writes the repository's fences refused, for
	// the log line of a lost lease; nil omits it.
	Fenced func(name string) int64
	// Spread makes scheduled runs favour the least busy replica; nil runs
	// them at once.
	Spread Spread
	Log    *zap.Logger
	// Clock; nil means the real clock.
	Clock clock.PassiveClock
}

func (l *Leases) now() time.Time {
	if l.Clock == nil {
		return time.Now()
	}

	return l.Clock.Now()
}

// With runs fn inside the repository's lease and hands fn the lease, which
// every write API of the repository package requires. A lease another
// process holds skips the run (logged at Warn with the holder, the
// *lease.HeldError returned); a lease lost during the run cancels fn's
// context at once and With returns an error wrapping ErrLeaseLost and
// context.Canceled.
func (l *Leases) With(ctx context.Context, name string, fn func(ctx context.Context, held *lease.Held) error) error {
	held, err := l.Acquirer.Acquire(ctx, name)
	if err != nil {
		var he *lease.HeldError
		if errors.As(err, &he) {
			if l.Metrics != nil {
				l.Metrics.LeaseSkipped(name)
			}

			l.Log.Warn("maintenance run skipped: another process holds the repository's lease",
				zap.String("repository", name), zap.String("holder", he.Holder), zap.Duration("renewed_ago", he.Age))

			return err
		}

		return fmt.Errorf("repository %q: acquire lease: %w", name, err)
	}

	defer func() {
		// Releasing must work after ctx ended (shutdown), briefly.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()

		if err := held.Release(rctx); err != nil {
			l.Log.Warn("release lease", zap.String("repository", name), zap.Error(err))
		}

		if l.Metrics != nil {
			l.Metrics.LeaseHeld(name, false)
		}
	}()

	err = fn(held.Context(), held)

	if ctx.Err() == nil && held.Context().Err() != nil {
		cause := context.Cause(held.Context())

		var fenced int64
		if l.Fenced != nil {
			fenced = l.Fenced(name)
		}

		l.Log.Error("maintenance run stopped: the lease can no longer be proven",
			zap.String("repository", name), zap.NamedError("cause", cause), zap.Int64("fenced_operations", fenced))

		return fmt.Errorf("repository %q: %w: %v: %w", name, ErrLeaseLost, cause, context.Canceled)
	}

	return err
}

// Scheduled runs a scheduled job inside its repository's lease, after the
// spread wait. fn gets the run's context, the lease and the Covered
// function of its RunRequest: true when the repository's history shows the
// cycle succeeded, in a run that was not this process', after the job
// became due.
func (l *Leases) Scheduled(ctx context.Context, job scheduler.Job, fn func(ctx context.Context, held *lease.Held, covered func(time.Time) bool) error) error {
	name := job.Repository

	if l.Spread == nil {
		return l.With(ctx, name, func(ctx context.Context, held *lease.Held) error {
			return fn(ctx, held, func(last time.Time) bool { return covered(job.Due, last, false) })
		})
	}

	if err := l.Spread.Turn(ctx, name, l.now()); err != nil {
		return err
	}

	// The run counts for the other runs' turns from here, while its lease
	// is being acquired too; it is forgotten if it does no work.
	end := l.Spread.Started(name, l.now())

	var (
		work   time.Time
		worked bool
	)

	defer func() { end(work, l.now(), worked) }()

	return l.With(ctx, name, func(ctx context.Context, held *lease.Held) error {
		work = l.now()

		err := fn(ctx, held, func(last time.Time) bool { return covered(job.Due, last, l.Spread.Mine(name, last)) })

		var done *repository.DoneError
		worked = !errors.As(err, &done)

		return err
	})
}

// covered is the rule of RunRequest.Covered for a scheduled job due at due:
// the repository records a success of the cycle after the job became due,
// by a run that was not this process' own (mine).
func covered(due, last time.Time, mine bool) bool {
	return !due.IsZero() && last.After(due) && !mine
}

// LeaseStatus is a repository's lease as `status` shows it.
type LeaseStatus struct {
	// State is free, held (renewed within the lease duration), stale (its
	// holder stopped renewing: the next run takes it over) or unknown.
	State  string `json:"state"`
	Holder string `json:"holder,omitempty"`
	// Renewed is the holder's last renewal by the backend's record: the
	// storage's timestamp of the lease blob, or the Lease's renewTime.
	Renewed time.Time `json:"renewed,omitzero"`
	Error   string    `json:"error,omitempty"`
}

// Lease states of LeaseStatus.
const (
	LeaseFree    = "free"
	LeaseHeld    = "held"
	LeaseStale   = "stale"
	LeaseUnknown = "unknown"
)

// LeaseStatusOf judges a lease from the holdings its backend records: free
// without any; otherwise the newest renewal decides, stale once it is a
// full lease duration old (other holders may take it over from then on, as
// lease.Backend.TryAcquire does), held before.
func LeaseStatusOf(hs []lease.Holding, duration time.Duration, now time.Time) LeaseStatus {
	if len(hs) == 0 {
		return LeaseStatus{State: LeaseFree}
	}

	newest := hs[0]
	for _, h := range hs[1:] {
		if h.Renewed.After(newest.Renewed) {
			newest = h
		}
	}

	st := LeaseStatus{State: LeaseHeld, Holder: newest.Holder, Renewed: newest.Renewed}
	if now.Sub(newest.Renewed) >= duration {
		st.State = LeaseStale
	}

	return st
}

// Inspector reads a lease's holdings (lease.Manager).
type Inspector interface {
	Inspect(ctx context.Context, name string) ([]lease.Holding, error)
	Duration() time.Duration
}

// InspectLease reads who holds the named repository's lease. A backend
// that cannot be read gives state unknown with the error.
func InspectLease(ctx context.Context, in Inspector, name string, now time.Time) LeaseStatus {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()

	hs, err := in.Inspect(ctx, name)
	if err != nil {
		return LeaseStatus{State: LeaseUnknown, Error: err.Error()}
	}

	return LeaseStatusOf(hs, in.Duration(), now)
}

// LeaseBlobs keeps leases in the repository's own storage
// (repository.Manager's lease blobs).
type LeaseBlobs interface {
	LeaseBlobs(ctx context.Context, name string) ([]repository.LeaseBlob, error)
	PutLeaseBlob(ctx context.Context, name, holder string) (repository.LeaseBlob, error)
	DeleteLeaseBlob(ctx context.Context, name, holder string) error
}

// BlobLeaseStore is the lease.Store of one repository's lease blobs.
type BlobLeaseStore struct {
	Blobs LeaseBlobs
	Name  string
}

// List returns the lease blobs' holders.
func (s BlobLeaseStore) List(ctx context.Context) ([]lease.Entry, error) {
	bs, err := s.Blobs.LeaseBlobs(ctx, s.Name)
	if err != nil {
		return nil, err
	}

	out := make([]lease.Entry, len(bs))
	for i, b := range bs {
		out[i] = lease.Entry{Holder: b.Holder, Written: b.Written}
	}

	return out, nil
}

// Put writes holder's lease blob.
func (s BlobLeaseStore) Put(ctx context.Context, holder string) (lease.Entry, error) {
	b, err := s.Blobs.PutLeaseBlob(ctx, s.Name, holder)
	if err != nil {
		return lease.Entry{}, err
	}

	return lease.Entry{Holder: b.Holder, Written: b.Written}, nil
}

// Delete removes holder's lease blob.
func (s BlobLeaseStore) Delete(ctx context.Context, holder string) error {
	return s.Blobs.DeleteLeaseBlob(ctx, s.Name, holder)
}

// LeaseEvents receives lease events for metrics (metrics.Metrics).
type LeaseEvents interface {
	LeaseHeld(name string, held bool)
	LeaseAcquired(name string)
	LeaseLost(name, reason string)
}

// LeaseRecorder adapts LeaseEvents to lease.Recorder.
type LeaseRecorder struct{ Events LeaseEvents }

// Held reports whether the lease is held.
func (r LeaseRecorder) Held(name string, held bool) { r.Events.LeaseHeld(name, held) }

// Acquired counts an acquisition.
func (r LeaseRecorder) Acquired(name string) { r.Events.LeaseAcquired(name) }

// Lost counts a lost lease.
func (r LeaseRecorder) Lost(name, reason string) { r.Events.LeaseLost(name, reason) }
