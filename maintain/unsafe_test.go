package maintain

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kopia-maintd/kopia-maintd/lease"
	"github.com/kopia-maintd/kopia-maintd/repository"
	"github.com/kopia-maintd/kopia-maintd/safety"
)

// fakeRunner stands in for repository.Manager.Run: it refuses like Run
// without a valid lease or admission, then runs the synchronous re-checks
// a SafetyNone cycle runs before its destructive phase.
type fakeRunner struct {
	mu   sync.Mutex
	reqs []repository.RunRequest
}

func (r *fakeRunner) Run(ctx context.Context, held *lease.Held, name string, req repository.RunRequest) (*repository.Report, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req)
	r.mu.Unlock()

	if err := held.Check(); err != nil || held.Name() != name {
		return nil, errors.New("no valid lease")
	}

	u := req.Unsafe
	if u == nil || !u.Admission.Valid() || u.Admission.Decision().Repository != name {
		return nil, repository.ErrNotAdmitted
	}

	if err := u.Guard(ctx, nil); err != nil {
		return nil, &repository.GuardError{Repository: name, Cause: err}
	}

	if err := u.Kubernetes(ctx); err != nil {
		return &repository.Report{Repository: name}, &repository.GuardError{Repository: name, Started: true, Cause: err}
	}

	return &repository.Report{Repository: name, Tasks: []repository.TaskResult{{Task: "snapshot-gc", Success: true}}}, ctx.Err()
}

// auditLog records audit entries.
type auditLog struct {
	mu      sync.Mutex
	entries []safety.AuditEntry
}

func (a *auditLog) Append(e safety.AuditEntry) error {
	a.mu.Lock()
	defer a.mu.Unlock()

	a.entries = append(a.entries, e)

	return nil
}

func (a *auditLog) Path(string) string { return "audit/r.jsonl" }

func (a *auditLog) only(t *testing.T) safety.AuditEntry {
	t.Helper()

	a.mu.Lock()
	defer a.mu.Unlock()

	if len(a.entries) != 1 {
		t.Fatalf("audit entries = %+v, want one", a.entries)
	}

	return a.entries[0]
}

// gateMetrics records the safety=none metrics.
type gateMetrics struct {
	mu      sync.Mutex
	results []string
}

func (m *gateMetrics) GateCheck(string, string) {}

func (m *gateMetrics) UnsafeRun(repo, result string) {
	m.mu.Lock()
	defer m.mu.Unlock()

	m.results = append(m.results, repo+" "+result)
}

// kubeChecks passes until refuseFrom calls have been made (0: never
// refuses).
type kubeChecks struct {
	calls      atomic.Int32
	refuseFrom int32
}

func (k *kubeChecks) Check(context.Context) ([]safety.Check, error) {
	if n := k.calls.Add(1); k.refuseFrom > 0 && n >= k.refuseFrom {
		return []safety.Check{{Name: "backups", Namespace: "velero", Verdict: safety.Refuse, Reason: "a Backup is in progress", Evidence: []string{"Backup velero/nightly phase InProgress"}}}, nil
	}

	return []safety.Check{{Name: "backups", Namespace: "velero", Verdict: safety.Pass, Reason: "no Backup in progress"}}, nil
}

type unsafeFixture struct {
	u      *Unsafe
	runner *fakeRunner
	audit  *auditLog
	met    *gateMetrics
	clk    *testclock.FakeClock
	held   *lease.Held
}

func newUnsafeFixture(t *testing.T) *unsafeFixture {
	t.Helper()

	lm, _ := newLeaseManager(t)

	held, err := lm.Acquire(context.Background(), "r")
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { _ = held.Release(context.Background()) })

	f := &unsafeFixture{runner: &fakeRunner{}, audit: &auditLog{}, met: &gateMetrics{}, clk: testclock.NewFakeClock(t0), held: held}
	f.u = &Unsafe{Runner: f.runner, Metrics: f.met, Audit: f.audit, Log: zaptest.NewLogger(t), Clock: f.clk}

	return f
}

func (f *unsafeFixture) request(kube safety.Checker, repo []repository.Activity) UnsafeRequest {
	return UnsafeRequest{
		Gate: &safety.Gate{
			RepositoryName: "r", Allow: true, Kubernetes: kube,
			Repository: safety.CheckerFunc(func(context.Context) ([]safety.Check, error) {
				return []safety.Check{ActivityCheck(repo, 30*time.Minute)}, nil
			}),
			Clock: f.clk,
		},
		QuietPeriod: 30 * time.Minute, WatchInterval: time.Hour, RequestedBy: "test",
	}
}

// TestUnsafeGateRefusalRunsNothing: a refusing gate runs no cycle and
// leaves an audit record saying why.
func TestUnsafeGateRefusalRunsNothing(t *testing.T) {
	f := newUnsafeFixture(t)
	acts := []repository.Activity{{Kind: repository.ActivityRecentWrite, Blob: "p0123-s1", Age: 3 * time.Minute, Session: "s1"}}

	rep, err := f.u.Run(context.Background(), f.held, f.request(&kubeChecks{}, acts))

	var refusal *GateRefusal
	if !errors.As(err, &refusal) || rep != nil {
		t.Fatalf("Run = %v, %v, want a GateRefusal", rep, err)
	}

	if len(f.runner.reqs) != 0 {
		t.Fatalf("the cycle ran %d times", len(f.runner.reqs))
	}

	e := f.audit.only(t)
	if e.Result != safety.ResultRefused || !e.Start.IsZero() || !strings.Contains(e.Error, "1 sign(s) of another writer") {
		t.Fatalf("audit entry %+v", e)
	}

	if f.met.results[0] != "r refused" {
		t.Fatalf("unsafe_runs = %v", f.met.results)
	}
}

// TestUnsafeAdmittedCycleCarriesTheAdmission: a passed gate hands the
// cycle its admission for this repository, and the audit record spans the
// run by the injected clock.
func TestUnsafeAdmittedCycleCarriesTheAdmission(t *testing.T) {
	f := newUnsafeFixture(t)

	rep, err := f.u.Run(context.Background(), f.held, f.request(&kubeChecks{}, nil))
	if err != nil || rep == nil {
		t.Fatalf("Run = %v, %v", rep, err)
	}

	req := f.runner.reqs[0]
	if req.Cycle != repository.Full || !req.Unsafe.Admission.Valid() || req.Unsafe.Admission.Decision().Repository != "r" {
		t.Fatalf("request %+v, want a full cycle admitted for r", req)
	}

	e := f.audit.only(t)
	if e.Result != safety.ResultSuccess || !e.Start.Equal(t0) || !e.End.Equal(t0) || !e.Decision.Allowed {
		t.Fatalf("audit entry %+v", e)
	}
}

// TestUnsafeKubernetesRecheckCancels: the gate passed (the first
// Kubernetes check), then Velero starts: the synchronous re-check before
// the destructive phase (or the watcher, whichever asks first) refuses, and
// the cycle is cancelled with the evidence in the audit record.
func TestUnsafeKubernetesRecheckCancels(t *testing.T) {
	f := newUnsafeFixture(t)
	kube := &kubeChecks{refuseFrom: 2}

	_, err := f.u.Run(context.Background(), f.held, f.request(kube, nil))

	var c *GateCancellation
	if !errors.As(err, &c) || !strings.HasPrefix(c.Reason, "Kubernetes: backups (velero): a Backup is in progress") {
		t.Fatalf("err = %v, want a cancellation by Kubernetes", err)
	}

	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v does not count as cancelled", err)
	}

	e := f.audit.only(t)
	if e.Result != safety.ResultCancelled || !strings.Contains(e.CancelReason, "Backup velero/nightly phase InProgress") || e.Decision.Allowed {
		t.Fatalf("audit entry %+v, want the refusing decision", e)
	}
}

// TestUnsafeWithoutTheLeaseFails: the flow hands its lease on; the runner's
// refusal of a released lease is a failure in the audit record.
func TestUnsafeWithoutTheLeaseFails(t *testing.T) {
	f := newUnsafeFixture(t)
	if err := f.held.Release(context.Background()); err != nil {
		t.Fatal(err)
	}

	_, err := f.u.Run(context.Background(), f.held, f.request(&kubeChecks{}, nil))
	if err == nil {
		t.Fatal("a cycle without a valid lease succeeded")
	}

	if e := f.audit.only(t); e.Result != safety.ResultFailure {
		t.Fatalf("audit entry %+v, want a failure", e)
	}
}

func TestOutcome(t *testing.T) {
	now := t0
	entry := safety.AuditEntry{Repository: "r", Start: t0, End: t0.Add(time.Minute)}

	for _, tc := range []struct {
		name       string
		cause, err error
		wantResult string
		wantErr    string
	}{
		{"success", nil, nil, safety.ResultSuccess, ""},
		{"failure", nil, errors.New("disk full"), safety.ResultFailure, "disk full"},
		{
			"refused before the cycle", nil,
			&repository.GuardError{Repository: "r", Cause: errors.New("pack of session s1")},
			safety.ResultRefused, `repository "r": safety=none cycle refused by the gate: repository-activity: pack of session s1`,
		},
		{
			"cancelled by the repository guard", nil,
			&repository.GuardError{Repository: "r", Started: true, Cause: errors.New("pack of session s1")},
			safety.ResultCancelled, `repository "r": safety=none cycle cancelled by the gate: repository: pack of session s1`,
		},
		{
			"cancelled by the watcher", &kubeRefusal{decision: safety.Decision{Checks: []safety.Check{{Name: "pods", Verdict: safety.Refuse, Reason: "velero Running"}}}},
			context.Canceled,
			safety.ResultCancelled, `repository "r": safety=none cycle cancelled by the gate: Kubernetes: pods: velero Running`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := outcome(entry, "r", tc.cause, tc.err, now)
			if e.Result != tc.wantResult {
				t.Fatalf("result = %s, want %s", e.Result, tc.wantResult)
			}

			if got := errString(err); got != tc.wantErr || e.Error != tc.wantErr {
				t.Fatalf("error = %q (audit %q), want %q", got, e.Error, tc.wantErr)
			}

			if tc.wantResult == safety.ResultRefused && (!e.Start.IsZero() || !e.End.IsZero()) {
				t.Fatalf("a refused request has a run span: %+v", e)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}

	return err.Error()
}

func TestActivityCheck(t *testing.T) {
	if c := ActivityCheck(nil, 30*time.Minute); c.Verdict != safety.Pass || c.Reason != "no session marker and no write by another session in the last 30m0s" {
		t.Fatalf("no activity: %+v", c)
	}

	var acts []repository.Activity
	for range 12 {
		acts = append(acts, repository.Activity{Kind: repository.ActivityRecentWrite, Blob: "p1-s1", Age: time.Minute, Session: "s1"})
	}

	c := ActivityCheck(acts, 30*time.Minute)
	if c.Verdict != safety.Refuse || c.Reason != "12 sign(s) of another writer in the repository" || len(c.Evidence) != 11 || c.Evidence[10] != "... and 2 more" {
		t.Fatalf("12 signs: %+v", c)
	}
}

func TestSummary(t *testing.T) {
	d := safety.Decision{Checks: []safety.Check{
		{Name: "pods", Namespace: "velero", Verdict: safety.Refuse, Reason: "velero Running", Evidence: []string{"pod velero/velero-1", "pod velero/velero-2"}},
		{Name: "config", Verdict: safety.Pass, Reason: "allowed"},
		{Name: "config", Verdict: safety.Refuse, Reason: "safetyNone.allow is false"},
	}}

	if got, want := Summary(d), "pods (velero): velero Running: pod velero/velero-1; config: safetyNone.allow is false"; got != want {
		t.Fatalf("Summary = %q, want %q", got, want)
	}
}

// TestActivityCheckDeadEvidence: dead evidence alone passes and is named;
// one live sign beside it refuses, naming only the live one.
func TestActivityCheckDeadEvidence(t *testing.T) {
	dead := repository.Activity{Kind: repository.ActivitySessionMarker, Blob: "s01-s1", Age: time.Hour, Session: "s1", Dead: "a session of this daemon written before the current lease"}
	live := repository.Activity{Kind: repository.ActivitySessionMarker, Blob: "s02-s2", Age: time.Minute, Session: "s2", Writer: "velero@node-1"}

	c := ActivityCheck([]repository.Activity{dead}, time.Minute)
	if c.Verdict != safety.Pass || !strings.Contains(c.Reason, "1 marker(s) of this daemon's own dead session(s) ignored") || len(c.Evidence) != 1 || !strings.Contains(c.Evidence[0], "not a writer") {
		t.Fatalf("dead evidence only: %+v", c)
	}

	c = ActivityCheck([]repository.Activity{dead, live}, time.Minute)
	if c.Verdict != safety.Refuse || !strings.Contains(c.Reason, "1 sign(s)") || len(c.Evidence) != 1 || !strings.Contains(c.Evidence[0], "velero@node-1") {
		t.Fatalf("dead and live evidence: %+v", c)
	}
}
