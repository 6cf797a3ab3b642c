package main

import (
	"context"
	"fmt"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/kopia-maintd/kopia-maintd/config"
	"github.com/kopia-maintd/kopia-maintd/lease"
	"github.com/kopia-maintd/kopia-maintd/maintain"
	"github.com/kopia-maintd/kopia-maintd/metrics"
	"github.com/kopia-maintd/kopia-maintd/repository"
	"github.com/kopia-maintd/kopia-maintd/safety"
)

// exitRefused is run-once's and gate's exit code when the safety=none gate
// refuses (or stops a cycle): distinct from a failure, so a script can tell
// "not now" from "broken".
const exitRefused = 3

// unsafeRunner wires the safety=none flow (maintain.Unsafe) to the
// configuration: it builds each repository's gate.
type unsafeRunner struct {
	*maintain.Unsafe
	mgr *repository.Manager
	// kube is built once from kubernetes.kubeconfig (a change needs a
	// restart); kubeErr says why it could not be built, and then every
	// request is refused.
	kube    *safety.KubernetesChecks
	kubeErr error
	// auditDir holds the local audit files.
	auditDir string
}

// newUnsafeRunner builds the runner; met is nil in one-shot commands.
func newUnsafeRunner(cfg *config.Config, mgr *repository.Manager, met *metrics.Metrics, log *zap.Logger) *unsafeRunner {
	u := &unsafeRunner{
		Unsafe:   &maintain.Unsafe{Runner: mgr, Audit: safety.NewAuditLog(filepath.Join(cfg.StateDirectory, "audit")), Log: log},
		mgr:      mgr,
		auditDir: filepath.Join(cfg.StateDirectory, "audit"),
	}
	if met != nil {
		u.Metrics = met
	}

	kc, err := safety.NewKubernetesChecksFromConfig(cfg.Kubernetes.Kubeconfig, safety.KubernetesOptions{Namespaces: cfg.SafetyNone.VeleroNamespaces})
	if err != nil {
		u.kubeErr = fmt.Errorf("no Kubernetes API to prove Velero is not running: %w", err)
	} else {
		u.kube = kc
	}

	return u
}

// gate builds the gate of one repository under the current configuration;
// held is the repository's lease when the caller holds it.
func (u *unsafeRunner) gate(cfg *config.Config, r config.Repository, held *lease.Held) *safety.Gate {
	sn := cfg.SafetyNone

	var kube safety.Checker

	if u.kubeErr != nil {
		err := u.kubeErr
		kube = safety.CheckerFunc(func(context.Context) ([]safety.Check, error) { return nil, err })
	} else {
		kc := *u.kube
		kc.Namespaces, kc.IgnorePods, kc.ScheduleMargin = sn.VeleroNamespaces, sn.IgnorePods, sn.ScheduleMargin
		kube = &kc
	}

	return &safety.Gate{
		RepositoryName: r.Name,
		Allow:          r.SafetyNoneAllowed,
		Kubernetes:     kube,
		Repository:     maintain.RepositoryChecker(u.mgr, held, r.Name, sn.QuietPeriod),
	}
}

// request is the safety=none request of a full cycle of r inside held.
// Its audit record is also kept in the repository, written inside the
// lease like every other write.
func (u *unsafeRunner) request(cfg *config.Config, r config.Repository, held *lease.Held, requestedBy string, req repository.RunRequest) maintain.UnsafeRequest {
	return maintain.UnsafeRequest{
		Gate: u.gate(cfg, r, held), QuietPeriod: cfg.SafetyNone.QuietPeriod, WatchInterval: cfg.SafetyNone.WatchInterval,
		RequestedBy: requestedBy, Run: req,
		Audit: safety.NewAuditLog(u.auditDir).WithStore(leasedAuditStore{mgr: u.mgr, held: held}),
	}
}

// leasedAuditStore keeps audit records in the repository under a lease.
type leasedAuditStore struct {
	mgr  *repository.Manager
	held *lease.Held
}

func (s leasedAuditStore) AppendAuditRecord(ctx context.Context, name string, record []byte) error {
	ctx, done, err := s.mgr.Leased(ctx, s.held, name)
	if err != nil {
		return err
	}
	defer done()

	return s.mgr.AppendAuditRecord(ctx, name, record)
}

func (s leasedAuditStore) AuditRecords(ctx context.Context, name string, n int) ([][]byte, error) {
	return s.mgr.AuditRecords(ctx, name, n)
}
