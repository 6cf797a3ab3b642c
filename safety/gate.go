package safety

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Verdict is the outcome of one check.
type Verdict string

// Verdicts.
const (
	// Pass: the check found nothing running or writing.
	Pass Verdict = "pass"
	// Refuse: the check found a writer, or could not be carried out (the
	// gate fails closed: an API error, a timeout or a missing permission
	// refuses).
	Refuse Verdict = "refuse"
	// Absent: the kind the check looks at does not exist in the cluster
	// (its CRD is not installed); it cannot hold a writer.
	Absent Verdict = "absent"
)

// Check is one check's verdict with the evidence behind it.
type Check struct {
	// Name identifies the check, from a small fixed set (metric label):
	// velero-installation, velero-server, node-agent, data-path-pods, maintenance-jobs, backups,
	// restores, podvolumebackups, podvolumerestores, datauploads,
	// datadownloads, deletebackuprequests, backuprepositories, schedules,
	// repository-activity, config, and kubernetes or repository-activity
	// for a checker group that is missing, fails as a whole or reports no
	// check.
	Name string `json:"name"`
	// Namespace is the Velero namespace checked ("" for the repository).
	Namespace string  `json:"namespace,omitempty"`
	Verdict   Verdict `json:"verdict"`
	// Reason says in one line why the check refused or passed.
	Reason string `json:"reason"`
	// Evidence names what was seen: "Backup velero/nightly-1 phase
	// InProgress", "blob s0a1b2... age 3m10s session velero@node-1".
	Evidence []string `json:"evidence,omitempty"`
}

// Decision is the gate's answer for one repository at one moment.
type Decision struct {
	Repository string    `json:"repository"`
	Allowed    bool      `json:"allowed"`
	At         time.Time `json:"at"`
	Checks     []Check   `json:"checks"`
}

// Refusals returns the checks that refused.
func (d Decision) Refusals() []Check {
	var out []Check

	for _, c := range d.Checks {
		if c.Verdict == Refuse {
			out = append(out, c)
		}
	}

	return out
}

// Checker runs a group of checks. A returned error means the group could not
// be checked; the gate turns it into a refusal.
type Checker interface {
	Check(ctx context.Context) ([]Check, error)
}

// CheckerFunc adapts a function to Checker.
type CheckerFunc func(ctx context.Context) ([]Check, error)

// Check calls f.
func (f CheckerFunc) Check(ctx context.Context) ([]Check, error) { return f(ctx) }

// Check names of the gate's own checks, and of a checker group that failed
// as a whole.
const (
	CheckConfig             = "config"
	CheckKubernetes         = "kubernetes"
	CheckRepositoryActivity = "repository-activity"
)

// Gate decides whether a safety=none cycle may run on one repository. The
// zero value refuses.
//
// Both checker groups are required: a gate without Kubernetes checks, or
// without repository checks, or whose checker returns no check at all,
// refuses with a check named after the missing group. There is no way to
// pass without Kubernetes checks: the configuration always names at least
// one Velero namespace (safetyNone.veleroNamespaces, default [velero]) and
// has no setting that says "no Velero to look for", so a gate that skipped
// the Kubernetes checks could only do so by accident. Without a cluster (a
// plain filesystem repository) scheduled cycles keep running with
// SafetyFull, which the gate does not guard; safety=none is refused.
//
// Contract for a safety=none run:
//  1. Admit runs every check and returns the Admission the run needs.
//  2. WatchKubernetes runs for the whole run and cancels it on a refusal.
//  3. RecheckKubernetes runs synchronously right before kopia's first
//     deleting task, and the task starts only when it returns nil. The
//     watcher's passes are asynchronous: its first pass may still be in
//     flight, or may have passed minutes ago, when the deleting task is
//     reached, so no watcher pass ever stands in for this re-check.
//
// Check, CheckKubernetes, CheckRepository, RecheckKubernetes and
// WatchKubernetes may run concurrently on one Gate (the runner re-checks
// while its watcher runs): they only read the Gate's fields, and the
// checkers they call must be safe for concurrent use (KubernetesChecks is:
// it keeps no state between calls). The fields must not change while any
// of them runs.
type Gate struct {
	// Kubernetes checks for Velero activity; required (nil refuses).
	Kubernetes Checker
	// Repository checks the repository for foreign writes; required (nil
	// refuses).
	Repository Checker
	// Allow is safetyNone.allow (global and per repository, combined).
	Allow bool
	// RepositoryName names the repository in the Decision.
	RepositoryName string
	// Now stamps decisions; nil means Clock.Now.
	Now func() time.Time
	// Clock drives WatchKubernetes; nil means the real clock.
	Clock clock.WithTicker
}

func (g *Gate) clock() clock.WithTicker {
	if g.Clock != nil {
		return g.Clock
	}

	return clock.RealClock{}
}

func (g *Gate) now() time.Time {
	if g.Now != nil {
		return g.Now()
	}

	return g.clock().Now()
}

// Check runs every check and decides. When Allow is false it refuses with a
// config check, and still runs the others so that the decision shows what
// they saw. Both checker groups run concurrently; a group that fails as a
// whole, is missing or returns no check becomes one refusing check named
// after it.
func (g *Gate) Check(ctx context.Context) Decision {
	d, _ := g.check(ctx)

	return d
}

// groupCounts counts the checks each required group contributed to a
// decision, for Admission.
type groupCounts struct {
	kubernetes, repository int
}

func (g *Gate) check(ctx context.Context) (Decision, groupCounts) {
	d := Decision{Repository: g.RepositoryName, At: g.now()}

	if !g.Allow {
		d.Checks = append(d.Checks, Check{Name: CheckConfig, Verdict: Refuse, Reason: "safetyNone.allow is false"})
	}

	var kube, repo []Check

	var wg sync.WaitGroup

	wg.Go(func() { kube = runGroup(ctx, CheckKubernetes, g.Kubernetes) })
	wg.Go(func() { repo = runGroup(ctx, CheckRepositoryActivity, g.Repository) })
	wg.Wait()

	d.Checks = append(d.Checks, kube...)
	d.Checks = append(d.Checks, repo...)

	return decide(d), groupCounts{kubernetes: len(kube), repository: len(repo)}
}

// CheckKubernetes runs only the Kubernetes checks (the watcher's re-check).
func (g *Gate) CheckKubernetes(ctx context.Context) Decision {
	d := Decision{Repository: g.RepositoryName, At: g.now()}
	d.Checks = runGroup(ctx, CheckKubernetes, g.Kubernetes)

	return decide(d)
}

// RecheckKubernetes runs the Kubernetes checks synchronously, for the
// re-check right before kopia's first deleting task (see Gate), and returns
// a *RefusedError with the decision when they refuse. It is safe to call
// while WatchKubernetes runs.
func (g *Gate) RecheckKubernetes(ctx context.Context) (Decision, error) {
	d := g.CheckKubernetes(ctx)
	if !d.Allowed {
		return d, &RefusedError{Decision: d}
	}

	return d, nil
}

// CheckRepository runs only the repository checks (the re-check between
// kopia's tasks).
func (g *Gate) CheckRepository(ctx context.Context) Decision {
	d := Decision{Repository: g.RepositoryName, At: g.now()}
	d.Checks = runGroup(ctx, CheckRepositoryActivity, g.Repository)

	return decide(d)
}

// runGroup runs one required checker group. A nil checker, a checker error
// and a checker that returns no check each yield a refusing check named
// after the group: a group proves nothing unless it reports what it saw.
func runGroup(ctx context.Context, group string, c Checker) []Check {
	if c == nil {
		return []Check{{Name: group, Verdict: Refuse, Reason: "no " + group + " checks configured"}}
	}

	checks, err := c.Check(ctx)
	if err != nil {
		return append(checks, Check{Name: group, Verdict: Refuse, Reason: err.Error()})
	}

	if len(checks) == 0 {
		return []Check{{Name: group, Verdict: Refuse, Reason: group + " checks returned no check"}}
	}

	return checks
}

// decide sets Allowed: there is at least one check, and every check passed
// or was absent. A check with any other verdict (a checker bug) is turned
// into a refusal: the gate fails closed.
func decide(d Decision) Decision {
	d.Allowed = len(d.Checks) > 0

	for i := range d.Checks {
		c := &d.Checks[i]

		switch c.Verdict {
		case Pass, Absent:
		case Refuse:
			d.Allowed = false
		default:
			c.Reason = fmt.Sprintf("invalid verdict %q: %s", c.Verdict, c.Reason)
			c.Verdict = Refuse
			d.Allowed = false
		}
	}

	return d
}

// WatchKubernetes re-runs the Kubernetes checks now and then every interval
// until ctx ends. On the first decision that refuses it calls onRefuse once
// with that decision and returns. A check cut short because ctx ended (the
// run finished) is not reported. Without Kubernetes checks the first
// decision refuses (see runGroup), so onRefuse is called at once. Its passes
// run asynchronously to the run it watches: they never replace
// RecheckKubernetes before a deleting task (see Gate).
func (g *Gate) WatchKubernetes(ctx context.Context, interval time.Duration, onRefuse func(Decision)) {
	t := g.clock().NewTicker(interval)
	defer t.Stop()

	for {
		d := g.CheckKubernetes(ctx)
		if ctx.Err() != nil {
			return
		}

		if !d.Allowed {
			onRefuse(d)

			return
		}

		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// RefusedError is returned by Admit when the gate refuses; it carries the
// decision with the evidence. Callers map it to "refused" (exit code 3), as
// distinct from a failure.
type RefusedError struct {
	Decision Decision
}

func (e *RefusedError) Error() string {
	var parts []string

	for _, c := range e.Decision.Refusals() {
		name := c.Name
		if c.Namespace != "" {
			name = c.Namespace + "/" + name
		}

		parts = append(parts, name+": "+c.Reason)
	}

	return fmt.Sprintf("safety=none refused for repository %q: %s", e.Decision.Repository, strings.Join(parts, "; "))
}

// Admission proves that the gate passed: its fields are unexported, so only
// Admit makes one that is valid, and a function that takes an Admission
// cannot be reached without passing the gate. The zero Admission is
// invalid.
type Admission struct {
	decision Decision
	counts   groupCounts
}

// Decision returns the decision that admitted the run.
func (a Admission) Decision() Decision { return a.decision }

// Valid reports whether a came from a passing gate: its decision allowed
// the run, and both required groups (Kubernetes and repository) contributed
// at least one check, none of which refused. The zero Admission is not
// valid.
func (a Admission) Valid() bool {
	if !a.decision.Allowed || a.counts.kubernetes == 0 || a.counts.repository == 0 || len(a.decision.Checks) == 0 {
		return false
	}

	for _, c := range a.decision.Checks {
		if c.Verdict != Pass && c.Verdict != Absent {
			return false
		}
	}

	return true
}

// Admit runs Check and returns an Admission when it allows the run, or a
// *RefusedError with the decision.
func (g *Gate) Admit(ctx context.Context) (Admission, Decision, error) {
	d, counts := g.check(ctx)

	a := Admission{decision: d, counts: counts}
	if !a.Valid() {
		return Admission{}, d, &RefusedError{Decision: d}
	}

	return a, d, nil
}
