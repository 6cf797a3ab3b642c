package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/kopia-maintd/kopia-maintd/config"
	"github.com/kopia-maintd/kopia-maintd/lease"
	"github.com/kopia-maintd/kopia-maintd/metrics"
	"github.com/kopia-maintd/kopia-maintd/repository"
	"github.com/kopia-maintd/kopia-maintd/safety"
)

// exitRefused is run-once's and gate's exit code when the safety=none gate
// refuses (or stops a cycle): distinct from a failure, so a script can tell
// "not now" from "broken".
const exitRefused = 3

// unsafeRunner runs gated safety=none full cycles. The gate decides; the
// cycle runs under a guard that re-checks the repository after every kopia
// task while a watcher re-runs the Kubernetes checks every watchInterval;
// any refusal cancels the cycle at once. Every request leaves an audit
// record, a log line and metrics.
type unsafeRunner struct {
	mgr   *repository.Manager
	met   *metrics.Metrics // nil in one-shot commands
	audit *safety.AuditLog
	log   *zap.Logger
	// kube is built once from kubernetes.kubeconfig (a change needs a
	// restart); kubeErr says why it could not be built, and then every
	// request is refused.
	kube    *safety.KubernetesChecks
	kubeErr error
}

func newUnsafeRunner(cfg *config.Config, mgr *repository.Manager, met *metrics.Metrics, log *zap.Logger) *unsafeRunner {
	u := &unsafeRunner{mgr: mgr, met: met, log: log, audit: safety.NewAuditLog(filepath.Join(cfg.StateDirectory, "audit"))}

	kc, err := safety.NewKubernetesChecksFromConfig(cfg.Kubernetes.Kubeconfig, safety.KubernetesOptions{Namespaces: cfg.SafetyNone.VeleroNamespaces})
	if err != nil {
		u.kubeErr = fmt.Errorf("no Kubernetes API to prove Velero is not running: %w", err)
	} else {
		u.kube = kc
	}

	return u
}

// gate builds the gate of one repository under the current configuration.
func (u *unsafeRunner) gate(cfg *config.Config, r config.Repository) *safety.Gate {
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
		Repository: safety.CheckerFunc(func(ctx context.Context) ([]safety.Check, error) {
			acts, err := u.mgr.Activity(ctx, r.Name, sn.QuietPeriod)
			if err != nil {
				return nil, err
			}

			return []safety.Check{activityCheck(acts, sn.QuietPeriod)}, nil
		}),
	}
}

// activityCheck turns the repository's evidence into the gate's check.
func activityCheck(acts []repository.Activity, quiet time.Duration) safety.Check {
	c := safety.Check{
		Name: safety.CheckRepositoryActivity, Verdict: safety.Pass,
		Reason: fmt.Sprintf("no session marker and no write by another session in the last %s", quiet),
	}

	if len(acts) == 0 {
		return c
	}

	c.Verdict = safety.Refuse
	c.Reason = fmt.Sprintf("%d sign(s) of another writer in the repository", len(acts))

	for i, a := range acts {
		if i == 10 {
			c.Evidence = append(c.Evidence, fmt.Sprintf("... and %d more", len(acts)-i))
			break
		}

		c.Evidence = append(c.Evidence, a.String())
	}

	return c
}

// record counts a decision's checks.
func (u *unsafeRunner) record(d safety.Decision) {
	if u.met == nil {
		return
	}

	for _, c := range d.Checks {
		u.met.GateCheck(c.Name, string(c.Verdict))
	}
}

// summary says in one line why a decision refused.
func summary(d safety.Decision) string {
	var parts []string

	for _, c := range d.Refusals() {
		s := c.Name
		if c.Namespace != "" {
			s += " (" + c.Namespace + ")"
		}

		s += ": " + c.Reason
		if len(c.Evidence) > 0 {
			s += ": " + c.Evidence[0]
		}

		parts = append(parts, s)
	}

	return strings.Join(parts, "; ")
}

// gateRefusal is a safety=none request the gate refused before the cycle
// started. The scheduler counts it as a skipped run.
type gateRefusal struct {
	repository string
	decision   safety.Decision
}

func (e *gateRefusal) Error() string {
	return fmt.Sprintf("repository %q: safety=none cycle refused by the gate: %s", e.repository, summary(e.decision))
}

// Skipped makes the scheduler count a refusal as a skipped run.
func (e *gateRefusal) Skipped() bool { return true }

// gateCancellation is a safety=none cycle the gate stopped while it ran.
type gateCancellation struct {
	repository string
	reason     string
}

func (e *gateCancellation) Error() string {
	return fmt.Sprintf("repository %q: safety=none cycle cancelled by the gate: %s", e.repository, e.reason)
}

// Unwrap makes the scheduler count the cycle as cancelled.
func (e *gateCancellation) Unwrap() error { return context.Canceled }

// watchRefusal is the cause the Kubernetes watcher cancels a cycle with.
type watchRefusal struct{ decision safety.Decision }

func (e *watchRefusal) Error() string { return summary(e.decision) }

// run handles one safety=none request for a full cycle of r.
func (u *unsafeRunner) run(ctx context.Context, held *lease.Held, cfg *config.Config, r config.Repository, requestedBy string, req repository.RunRequest) (*repository.Report, error) {
	log := u.log.With(zap.String("repository", r.Name), zap.String("requested_by", requestedBy))
	entry := safety.AuditEntry{Repository: r.Name, RequestedBy: requestedBy, Requested: time.Now()}

	g := u.gate(cfg, r)
	adm, d, _ := g.Admit(ctx)
	u.record(d)

	entry.Decision = d

	if !adm.Valid() {
		err := &gateRefusal{repository: r.Name, decision: d}
		entry.Result, entry.Error = safety.ResultRefused, err.Error()
		u.finish(log, entry, nil)

		return nil, err
	}

	quiet := cfg.SafetyNone.QuietPeriod

	req.Cycle = repository.Full
	req.Unsafe = &repository.UnsafeRun{
		Admission:   adm,
		QuietPeriod: quiet,
		Guard: func(_ context.Context, acts []repository.Activity) error {
			c := activityCheck(acts, quiet)
			if u.met != nil {
				u.met.GateCheck(c.Name, string(c.Verdict))
			}

			if c.Verdict == safety.Refuse {
				return fmt.Errorf("%s: %s", c.Reason, strings.Join(c.Evidence, "; "))
			}

			return nil
		},
		Kubernetes: func(ctx context.Context) error {
			d := g.CheckKubernetes(ctx)
			u.record(d)

			if !d.Allowed {
				return &watchRefusal{decision: d}
			}

			return nil
		},
	}

	runCtx, cancel := context.WithCancelCause(ctx)

	var wg sync.WaitGroup

	wg.Go(func() {
		g.WatchKubernetes(runCtx, cfg.SafetyNone.WatchInterval, func(d safety.Decision) {
			u.record(d)
			cancel(&watchRefusal{decision: d})
		})
	})

	log.Info("safety=none full cycle starting", zap.String("gate", "passed"), zap.Int("checks", len(d.Checks)))

	entry.Start = time.Now()
	report, err := u.mgr.Run(runCtx, held, r.Name, req)
	entry.End = time.Now()

	cause := context.Cause(runCtx)
	cancel(nil)
	wg.Wait()

	var (
		watched *watchRefusal
		guarded *repository.GuardError
	)

	switch {
	case errors.As(cause, &watched):
		entry.Result, entry.CancelReason = safety.ResultCancelled, watched.Error()
		entry.Decision = watched.decision
		err = &gateCancellation{repository: r.Name, reason: "Kubernetes: " + watched.Error()}
	case errors.As(err, &guarded) && guarded.Started:
		entry.Result, entry.CancelReason = safety.ResultCancelled, guarded.Cause.Error()
		err = &gateCancellation{repository: r.Name, reason: "repository: " + guarded.Cause.Error()}
	case errors.As(err, &guarded):
		// The repository check right before the cycle refused.
		entry.Result = safety.ResultRefused
		entry.Start, entry.End = time.Time{}, time.Time{}
		err = &gateRefusal{repository: r.Name, decision: safety.Decision{
			Repository: r.Name, At: time.Now(),
			Checks: []safety.Check{{Name: safety.CheckRepositoryActivity, Verdict: safety.Refuse, Reason: guarded.Cause.Error()}},
		}}
	case err != nil:
		entry.Result = safety.ResultFailure
	default:
		entry.Result = safety.ResultSuccess
	}

	if err != nil {
		entry.Error = err.Error()
	}

	u.finish(log, entry, report)

	return report, err
}

// finish writes the audit record, the metrics and the log line of a
// request's outcome.
func (u *unsafeRunner) finish(log *zap.Logger, e safety.AuditEntry, report *repository.Report) {
	if err := u.audit.Append(e); err != nil {
		log.Error("write safety=none audit record", zap.Error(err), zap.String("file", u.audit.Path(e.Repository)))
	}

	if u.met != nil {
		u.met.UnsafeRun(e.Repository, e.Result)
	}

	fields := []zap.Field{zap.String("result", e.Result), zap.String("audit_log", u.audit.Path(e.Repository))}

	switch e.Result {
	case safety.ResultRefused:
		log.Warn("safety=none full cycle refused by the gate", append(fields, zap.String("reasons", summary(e.Decision)))...)
	case safety.ResultCancelled:
		log.Error("safety=none full cycle cancelled: another writer appeared", append(fields, zap.String("evidence", e.CancelReason))...)
	case safety.ResultFailure:
		log.Error("safety=none full cycle failed", append(fields, zap.String("error", e.Error))...)
	default:
		fields = append(fields, zap.Duration("duration", e.End.Sub(e.Start)))
		if report != nil {
			fields = append(fields, zap.Int("tasks", len(report.Tasks)))
		}

		log.Info("safety=none full cycle finished", fields...)
	}
}
