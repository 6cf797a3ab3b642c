package maintain

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"k8s.io/utils/clock"

	"github.com/kopia-maintd/kopia-maintd/lease"
	"github.com/kopia-maintd/kopia-maintd/repository"
	"github.com/kopia-maintd/kopia-maintd/safety"
)

// Runner runs one maintenance cycle inside a lease (repository.Manager).
type Runner interface {
	Run(ctx context.Context, held *lease.Held, name string, req repository.RunRequest) (*repository.Report, error)
}

// ActivityReader reads a repository's evidence of other writers
// (repository.Manager).
type ActivityReader interface {
	Activity(ctx context.Context, held *lease.Held, name string, quietPeriod time.Duration) ([]repository.Activity, error)
}

// GateMetrics receives what the safety=none flow exports; nil means none.
type GateMetrics interface {
	GateCheck(check, verdict string)
	UnsafeRun(repository, result string)
}

// Auditor keeps the audit record of safety=none requests (safety.AuditLog).
type Auditor interface {
	Append(e safety.AuditEntry) error
	Path(repository string) string
}

// ActivityCheck turns the repository's evidence of other writers into the
// gate's check: it passes only without any evidence but what is known dead
// (the markers of this daemon's killed runs, which it names), and names at
// most ten signs.
func ActivityCheck(acts []repository.Activity, quiet time.Duration) safety.Check {
	c := safety.Check{
		Name: safety.CheckRepositoryActivity, Verdict: safety.Pass,
		Reason: fmt.Sprintf("no session marker and no write by another session in the last %s", quiet),
	}

	var live, dead []repository.Activity

	for _, a := range acts {
		if a.Dead != "" {
			dead = append(dead, a)
		} else {
			live = append(live, a)
		}
	}

	if len(live) == 0 {
		if len(dead) > 0 {
			c.Reason = fmt.Sprintf("no live session marker and no write by another session in the last %s; %d marker(s) of this daemon's own dead session(s) ignored", quiet, len(dead))
			c.Evidence = evidence(dead)
		}

		return c
	}

	c.Verdict = safety.Refuse
	c.Reason = fmt.Sprintf("%d sign(s) of another writer in the repository", len(live))
	c.Evidence = evidence(live)

	return c
}

// evidence describes at most ten signs.
func evidence(acts []repository.Activity) []string {
	var out []string

	for i, a := range acts {
		if i == 10 {
			out = append(out, fmt.Sprintf("... and %d more", len(acts)-i))
			break
		}

		out = append(out, a.String())
	}

	return out
}

// RepositoryChecker is the gate's repository check group: the named
// repository's activity over the quiet period. held is the repository's
// lease when the caller holds it (nil for a dry run of the gate).
func RepositoryChecker(r ActivityReader, held *lease.Held, name string, quiet time.Duration) safety.Checker {
	return safety.CheckerFunc(func(ctx context.Context) ([]safety.Check, error) {
		acts, err := r.Activity(ctx, held, name, quiet)
		if err != nil {
			return nil, err
		}

		return []safety.Check{ActivityCheck(acts, quiet)}, nil
	})
}

// Summary says in one line why a decision refused.
func Summary(d safety.Decision) string {
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

// GateRefusal is a safety=none request the gate refused before the cycle
// started. The scheduler counts it as a skipped run.
type GateRefusal struct {
	Repository string
	Decision   safety.Decision
}

func (e *GateRefusal) Error() string {
	return fmt.Sprintf("repository %q: safety=none cycle refused by the gate: %s", e.Repository, Summary(e.Decision))
}

// Skipped makes the scheduler count a refusal as a skipped run.
func (e *GateRefusal) Skipped() bool { return true }

// GateCancellation is a safety=none cycle the gate stopped while it ran.
type GateCancellation struct {
	Repository string
	Reason     string
}

func (e *GateCancellation) Error() string {
	return fmt.Sprintf("repository %q: safety=none cycle cancelled by the gate: %s", e.Repository, e.Reason)
}

// Unwrap makes the scheduler count the cycle as cancelled.
func (e *GateCancellation) Unwrap() error { return context.Canceled }

// kubeRefusal is a Kubernetes re-check (the watcher's, or the synchronous
// one before the destructive phase) that refused.
type kubeRefusal struct{ decision safety.Decision }

func (e *kubeRefusal) Error() string { return Summary(e.decision) }

// Unsafe runs gated safety=none full cycles. The gate decides and hands
// over its Admission; the cycle runs under a guard that re-checks the
// repository after every kopia task, both the repository and Kubernetes
// synchronously right before the destructive phase and at the first
// delete, while a watcher re-runs the Kubernetes checks every
// WatchInterval; any refusal cancels the cycle at once. Every request
// leaves an audit record, a log line and metrics.
type Unsafe struct {
	Runner Runner
	// Metrics may be nil (one-shot commands).
	Metrics GateMetrics
	Audit   Auditor
	Log     *zap.Logger
	// Clock stamps the audit record; nil means the real clock.
	Clock clock.PassiveClock
}

// UnsafeRequest is one safety=none request for a full cycle.
type UnsafeRequest struct {
	// Gate decides for the repository it names.
	Gate *safety.Gate
	// QuietPeriod is how long no other session may have written.
	QuietPeriod time.Duration
	// WatchInterval is how often Kubernetes is re-checked during the cycle.
	WatchInterval time.Duration
	// RequestedBy names who asked, for the audit record.
	RequestedBy string
	// Run is the cycle's request; Cycle and Unsafe are set by Run.
	Run repository.RunRequest
	// Audit, when set, keeps this request's audit record instead of
	// Unsafe.Audit (e.g. one that writes into the repository under the
	// request's lease).
	Audit Auditor
}

// audit returns the request's Auditor, or def.
func (r UnsafeRequest) audit(def Auditor) Auditor {
	if r.Audit != nil {
		return r.Audit
	}

	return def
}

func (u *Unsafe) now() time.Time {
	if u.Clock == nil {
		return time.Now()
	}

	return u.Clock.Now()
}

// record counts a decision's checks.
func (u *Unsafe) record(d safety.Decision) {
	if u.Metrics == nil {
		return
	}

	for _, c := range d.Checks {
		u.Metrics.GateCheck(c.Name, string(c.Verdict))
	}
}

// Run handles one safety=none request inside held, the repository's lease.
// A refusal of the gate returns a *GateRefusal; a cycle stopped by a
// re-check or the watcher returns a *GateCancellation.
func (u *Unsafe) Run(ctx context.Context, held *lease.Held, r UnsafeRequest) (*repository.Report, error) {
	name := r.Gate.RepositoryName
	log := u.Log.With(zap.String("repository", name), zap.String("requested_by", r.RequestedBy))
	entry := safety.AuditEntry{Repository: name, RequestedBy: r.RequestedBy, Requested: u.now()}

	adm, d, _ := r.Gate.Admit(ctx)
	u.record(d)

	entry.Decision = d

	if !adm.Valid() {
		err := &GateRefusal{Repository: name, Decision: d}
		entry.Result, entry.Error = safety.ResultRefused, err.Error()
		u.finish(log, r.audit(u.Audit), entry, nil)

		return nil, err
	}

	quiet := r.QuietPeriod
	req := r.Run
	req.Cycle = repository.Full
	req.Unsafe = &repository.UnsafeRun{
		Admission:   adm,
		QuietPeriod: quiet,
		Guard: func(_ context.Context, acts []repository.Activity) error {
			c := ActivityCheck(acts, quiet)
			if u.Metrics != nil {
				u.Metrics.GateCheck(c.Name, string(c.Verdict))
			}

			if c.Verdict == safety.Refuse {
				return fmt.Errorf("%s: %s", c.Reason, strings.Join(c.Evidence, "; "))
			}

			return nil
		},
		Kubernetes: func(ctx context.Context) error {
			d := r.Gate.CheckKubernetes(ctx)
			u.record(d)

			if !d.Allowed {
				return &kubeRefusal{decision: d}
			}

			return nil
		},
	}

	runCtx, cancel := context.WithCancelCause(ctx)

	var wg sync.WaitGroup

	wg.Go(func() {
		r.Gate.WatchKubernetes(runCtx, r.WatchInterval, func(d safety.Decision) {
			u.record(d)
			cancel(&kubeRefusal{decision: d})
		})
	})

	log.Info("safety=none full cycle starting", zap.String("gate", "passed"), zap.Int("checks", len(d.Checks)))

	entry.Start = u.now()
	report, err := u.Runner.Run(runCtx, held, name, req)
	entry.End = u.now()

	cause := context.Cause(runCtx)
	cancel(nil)
	wg.Wait()

	entry, err = outcome(entry, name, cause, err, u.now())
	u.finish(log, r.audit(u.Audit), entry, report)

	return report, err
}

// outcome decides a finished cycle's audit result and the error returned:
// a Kubernetes refusal (the watcher's cause, or a synchronous re-check's
// inside the run) and a repository guard that stopped the started cycle
// are cancellations; a guard that refused before the cycle is a refusal.
func outcome(entry safety.AuditEntry, name string, cause, err error, now time.Time) (safety.AuditEntry, error) {
	var (
		kube    *kubeRefusal
		guarded *repository.GuardError
	)

	switch {
	case errors.As(cause, &kube) || errors.As(err, &kube):
		entry.Result, entry.CancelReason = safety.ResultCancelled, kube.Error()
		entry.Decision = kube.decision
		err = &GateCancellation{Repository: name, Reason: "Kubernetes: " + kube.Error()}
	case errors.As(err, &guarded) && guarded.Started:
		entry.Result, entry.CancelReason = safety.ResultCancelled, guarded.Cause.Error()
		err = &GateCancellation{Repository: name, Reason: "repository: " + guarded.Cause.Error()}
	case errors.As(err, &guarded):
		// The repository check right before the cycle refused.
		entry.Result = safety.ResultRefused
		entry.Start, entry.End = time.Time{}, time.Time{}
		err = &GateRefusal{Repository: name, Decision: safety.Decision{
			Repository: name, At: now,
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

	return entry, err
}

// finish writes the audit record, the metrics and the log line of a
// request's outcome.
func (u *Unsafe) finish(log *zap.Logger, audit Auditor, e safety.AuditEntry, report *repository.Report) {
	if err := audit.Append(e); err != nil {
		log.Error("write safety=none audit record", zap.Error(err), zap.String("file", audit.Path(e.Repository)))
	}

	if u.Metrics != nil {
		u.Metrics.UnsafeRun(e.Repository, e.Result)
	}

	fields := []zap.Field{zap.String("result", e.Result), zap.String("audit_log", audit.Path(e.Repository))}

	switch e.Result {
	case safety.ResultRefused:
		log.Warn("safety=none full cycle refused by the gate", append(fields, zap.String("reasons", Summary(e.Decision)))...)
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
