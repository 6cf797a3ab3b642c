package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kopia-maintd/kopia-maintd/config"
	"github.com/kopia-maintd/kopia-maintd/lease"
	"github.com/kopia-maintd/kopia-maintd/metrics"
	"github.com/kopia-maintd/kopia-maintd/repository"
	"github.com/kopia-maintd/kopia-maintd/scheduler"
)

// leases holds the process' lease manager: every maintenance run, scheduled
// or one-shot, happens inside a lease on its repository, and the storage
// kopia writes through is fenced by the lease's deadline.
type leases struct {
	lm  *lease.Manager
	mgr *repository.Manager
	met *metrics.Metrics // nil in one-shot commands
	log *zap.Logger
	// spread makes scheduled runs favour the least busy replica.
	spread *lease.Spread
}

// The spread wait of scheduled runs (see lease.Spread): a second times the
// replica's offset for the repository plus the load of the other
// repositories it is maintaining or started in the last 12s, at most 12s. A
// second is far beyond what one list and one write of a lease take, so
// between two replicas the smaller wait wins.
const (
	spreadStep = time.Second
	spreadMax  = 12 * time.Second
)

// newLeases builds the lease manager the configuration asks for.
func newLeases(cfg *config.Config, mgr *repository.Manager, met *metrics.Metrics, log *zap.Logger) (*leases, error) {
	lc := cfg.Lease

	var backend lease.Backend

	switch lc.Kind {
	case config.LeaseKindKubernetes:
		rc, err := kubeRESTConfig(cfg.Kubernetes.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("lease kind kubernetes: %w", err)
		}

		cs, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("lease kind kubernetes: %w", err)
		}

		backend = lease.NewKubernetes(cs.CoordinationV1(), lc.Kubernetes.Namespace, lc.Kubernetes.NamePrefix, nil)
	default:
		// Storage offers no compare-and-swap: two acquirers both write,
		// wait this long for the storage to show both, and the later
		// yields. S3 and filesystems read their own writes, so a short
		// settle suffices: a twentieth of the duration, at most a second.
		settle := min(lc.Duration/20, time.Second)
		backend = lease.NewBlob(func(name string) lease.Store { return blobLeaseStore{mgr: mgr, name: name} }, settle, nil)
	}

	var rec lease.Recorder
	if met != nil {
		rec = leaseRecorder{met}
	}

	lm, err := lease.New(lease.Options{
		Backend:       backend,
		Holder:        lc.HolderIdentity,
		Duration:      lc.Duration,
		RenewInterval: lc.RenewInterval,
		Logger:        log,
		Recorder:      rec,
	})
	if err != nil {
		return nil, err
	}

	return &leases{lm: lm, mgr: mgr, met: met, log: log, spread: lease.NewSpread(lc.HolderIdentity, spreadStep, spreadMax)}, nil
}

func kubeRESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		return rest.InClusterConfig()
	}

	return clientcmd.BuildConfigFromFlags("", kubeconfig)
}

// errLeaseLost is the cause a run's context carries when its lease could no
// longer be proven.
var errLeaseLost = errors.New("lease lost")

// with runs fn inside the repository's lease. A lease another process holds
// skips the run (logged at Warn with the holder); a lease lost during the
// run cancels fn's context at once and fences the storage.
func (l *leases) with(ctx context.Context, name string, fn func(ctx context.Context, held *lease.Held) error) error {
	held, err := l.lm.Acquire(ctx, name)
	if err != nil {
		var he *lease.HeldError
		if errors.As(err, &he) {
			if l.met != nil {
				l.met.LeaseSkipped(name)
			}

			l.log.Warn("maintenance run skipped: another process holds the repository's lease",
				zap.String("repository", name), zap.String("holder", he.Holder), zap.Duration("renewed_ago", he.Age))

			return err
		}

		return fmt.Errorf("repository %q: acquire lease: %w", name, err)
	}

	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()

		if err := held.Release(rctx); err != nil {
			l.log.Warn("release lease", zap.String("repository", name), zap.Error(err))
		}

		if l.met != nil {
			l.met.LeaseHeld(name, false)
		}
	}()

	err = fn(held.Context(), held)

	if ctx.Err() == nil && held.Context().Err() != nil {
		cause := context.Cause(held.Context())
		l.log.Error("maintenance run stopped: the lease can no longer be proven",
			zap.String("repository", name), zap.NamedError("cause", cause), zap.Int64("fenced_operations", l.mgr.FencedOperations(name)))

		return fmt.Errorf("repository %q: %w: %v: %w", name, errLeaseLost, cause, context.Canceled)
	}

	return err
}

// scheduled runs a scheduled job inside its repository's lease, after the
// spread wait. fn gets the run's context and the Covered function of its
// RunRequest: true when the repository's history shows the cycle succeeded,
// in a run that was not this process', after the job became due.
func (l *leases) scheduled(ctx context.Context, job scheduler.Job, fn func(ctx context.Context, held *lease.Held, covered func(time.Time) bool) error) error {
	name := job.Repository

	if err := l.spread.Turn(ctx, name, time.Now()); err != nil {
		return err
	}

	// The run counts for the other runs' turns from here, while its lease
	// is being acquired too; it is forgotten if it does no work.
	end := l.spread.Started(name, time.Now())

	var (
		work   time.Time
		worked bool
	)

	defer func() { end(work, time.Now(), worked) }()

	return l.with(ctx, name, func(ctx context.Context, held *lease.Held) error {
		work = time.Now()
		covered := func(last time.Time) bool {
			return !job.Due.IsZero() && last.After(job.Due) && !l.spread.Mine(name, last)
		}

		err := fn(ctx, held, covered)

		var done *repository.DoneError
		worked = !errors.As(err, &done)

		return err
	})
}

// blobLeaseStore keeps a repository's leases in its own storage.
type blobLeaseStore struct {
	mgr  *repository.Manager
	name string
}

func (s blobLeaseStore) List(ctx context.Context) ([]lease.Entry, error) {
	bs, err := s.mgr.LeaseBlobs(ctx, s.name)
	if err != nil {
		return nil, err
	}

	out := make([]lease.Entry, len(bs))
	for i, b := range bs {
		out[i] = lease.Entry{Holder: b.Holder, Written: b.Written}
	}

	return out, nil
}

func (s blobLeaseStore) Put(ctx context.Context, holder string) (lease.Entry, error) {
	b, err := s.mgr.PutLeaseBlob(ctx, s.name, holder)
	if err != nil {
		return lease.Entry{}, err
	}

	return lease.Entry{Holder: b.Holder, Written: b.Written}, nil
}

func (s blobLeaseStore) Delete(ctx context.Context, holder string) error {
	return s.mgr.DeleteLeaseBlob(ctx, s.name, holder)
}

// leaseRecorder exports lease events.
type leaseRecorder struct{ met *metrics.Metrics }

func (r leaseRecorder) Held(name string, held bool) { r.met.LeaseHeld(name, held) }
func (r leaseRecorder) Acquired(name string)        { r.met.LeaseAcquired(name) }
func (r leaseRecorder) Lost(name, reason string)    { r.met.LeaseLost(name, reason) }
