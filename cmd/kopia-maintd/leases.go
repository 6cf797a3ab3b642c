package main

import (
	"fmt"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kopia-maintd/kopia-maintd/config"
	"github.com/kopia-maintd/kopia-maintd/lease"
	"github.com/kopia-maintd/kopia-maintd/maintain"
	"github.com/kopia-maintd/kopia-maintd/metrics"
	"github.com/kopia-maintd/kopia-maintd/repository"
)

// leases holds the process' lease manager and the runner of work inside
// leases (see maintain.Leases).
type leases struct {
	lm *lease.Manager
	*maintain.Leases
}

// spreadSteps is the spread wait of scheduled runs in lease.spreadStep
// units (see lease.Spread): the step times the replica's offset for the
// repository plus the load of the other repositories it is maintaining or
// started in the last 12 steps, at most 12 steps. The default step, a
// second, is far beyond what one list and one write of a lease take, so
// between two replicas the smaller wait wins.
const spreadSteps = 12

// newLeases builds the lease manager the configuration asks for. met is
// nil in one-shot commands.
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
		// One lease record per repository, written by compare-and-swap
		// (S3 conditional writes, exclusive file creation). The lease
		// blobs of the list-based protocol are what older daemons write
		// (respected until stale) and the fallback for a storage that
		// cannot write conditionally, with lease.repository.settle.
		backend = lease.NewRecord(
			func(name string) lease.Record { return mgr.LeaseRecord(name) },
			func(name string) lease.Store { return maintain.BlobLeaseStore{Blobs: mgr, Name: name} },
			lc.Repository.Settle, nil)
	}

	var rec lease.Recorder
	if met != nil {
		rec = maintain.LeaseRecorder{Events: met}
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

	l := &maintain.Leases{
		Acquirer: lm, Fenced: mgr.FencedOperations, Log: log,
		Spread: lease.NewSpread(lc.HolderIdentity, lc.SpreadStep, spreadSteps*lc.SpreadStep),
	}
	if met != nil {
		// A nil *metrics.Metrics in the interface would not read as nil.
		l.Metrics = met
	}

	return &leases{lm: lm, Leases: l}, nil
}

func kubeRESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		return rest.InClusterConfig()
	}

	return clientcmd.BuildConfigFromFlags("", kubeconfig)
}
