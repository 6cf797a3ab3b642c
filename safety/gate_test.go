package safety

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func checks(cs ...Check) Checker {
	return CheckerFunc(func(context.Context) ([]Check, error) { return cs, nil })
}

func failing(err error) Checker {
	return CheckerFunc(func(context.Context) ([]Check, error) { return nil, err })
}

func names(d Decision) string {
	var out []string
	for _, c := range d.Checks {
		out = append(out, c.Name+"="+string(c.Verdict))
	}

	return strings.Join(out, " ")
}

func TestGateCheck(t *testing.T) {
	pass := Check{Name: CheckBackups, Namespace: "velero", Verdict: Pass, Reason: "no Backup in flight"}
	absent := Check{Name: CheckDataUploads, Namespace: "velero", Verdict: Absent, Reason: reasonCRDNotInstalled}
	refuse := Check{Name: CheckVeleroServer, Namespace: "velero", Verdict: Refuse, Reason: "velero server running (1)"}
	quiet := Check{Name: CheckRepositoryActivity, Verdict: Pass, Reason: "quiet for 30m"}

	tests := []struct {
		name    string
		gate    Gate
		allowed bool
		want    string
	}{
		{"all pass", Gate{Allow: true, Kubernetes: checks(pass, absent), Repository: checks(quiet)}, true,
			"backups=pass datauploads=absent repository-activity=pass"},
		{"not allowed still runs the checks", Gate{Kubernetes: checks(pass), Repository: checks(quiet)}, false,
			"config=refuse backups=pass repository-activity=pass"},
		{"kubernetes refuses", Gate{Allow: true, Kubernetes: checks(pass, refuse), Repository: checks(quiet)}, false,
			"backups=pass velero-server=refuse repository-activity=pass"},
		{"kubernetes checker error", Gate{Allow: true, Kubernetes: failing(errors.New("no velero namespaces configured")), Repository: checks(quiet)}, false,
			"kubernetes=refuse repository-activity=pass"},
		{"repository checker error", Gate{Allow: true, Kubernetes: checks(pass), Repository: failing(errors.New("list blobs: timeout"))}, false,
			"backups=pass repository-activity=refuse"},
		{"invalid verdict refuses", Gate{Allow: true, Kubernetes: checks(Check{Name: CheckBackups, Verdict: "maybe"}), Repository: checks(quiet)}, false,
			"backups=refuse repository-activity=pass"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.gate.RepositoryName = "local"
			tt.gate.Now = func() time.Time { return testNow }

			d := tt.gate.Check(context.Background())
			if d.Allowed != tt.allowed || names(d) != tt.want || d.Repository != "local" || !d.At.Equal(testNow) {
				t.Errorf("decision %+v (%s), want allowed %v, %s", d, names(d), tt.allowed, tt.want)
			}

			if got := len(d.Refusals()) == 0; got != tt.allowed {
				t.Errorf("refusals %v disagree with allowed %v", d.Refusals(), d.Allowed)
			}
		})
	}

	t.Run("error text is the reason", func(t *testing.T) {
		g := Gate{Allow: true, Kubernetes: failing(errors.New("kubernetes clients not configured")), Repository: checks(quiet)}
		if r := g.Check(context.Background()).Refusals(); len(r) != 1 || r[0].Reason != "kubernetes clients not configured" {
			t.Errorf("refusals %+v", r)
		}
	})

	t.Run("config reason", func(t *testing.T) {
		d := (&Gate{}).Check(context.Background())
		if d.Allowed || len(d.Checks) != 3 || d.Checks[0].Reason != "safetyNone.allow is false" {
			t.Errorf("zero gate: %+v", d)
		}
	})
}

// TestGateRequiresBothGroups: a gate proves nothing it did not check. A
// missing checker group, or one that reports no check, refuses; so does a
// gate without any checker.
func TestGateRequiresBothGroups(t *testing.T) {
	pass := Check{Name: CheckBackups, Namespace: "velero", Verdict: Pass, Reason: "no Backup in flight"}
	quiet := Check{Name: CheckRepositoryActivity, Verdict: Pass, Reason: "quiet for 30m"}
	none := CheckerFunc(func(context.Context) ([]Check, error) { return nil, nil })

	tests := []struct {
		name string
		gate Gate
		want []Check
	}{
		{"no checkers", Gate{Allow: true}, []Check{
			{Name: CheckKubernetes, Verdict: Refuse, Reason: "no kubernetes checks configured"},
			{Name: CheckRepositoryActivity, Verdict: Refuse, Reason: "no repository-activity checks configured"},
		}},
		{"no kubernetes checker (no cluster)", Gate{Allow: true, Repository: checks(quiet)}, []Check{
			{Name: CheckKubernetes, Verdict: Refuse, Reason: "no kubernetes checks configured"}, quiet,
		}},
		{"no repository checker", Gate{Allow: true, Kubernetes: checks(pass)}, []Check{
			pass, {Name: CheckRepositoryActivity, Verdict: Refuse, Reason: "no repository-activity checks configured"},
		}},
		{"kubernetes checker reports nothing", Gate{Allow: true, Kubernetes: none, Repository: checks(quiet)}, []Check{
			{Name: CheckKubernetes, Verdict: Refuse, Reason: "kubernetes checks returned no check"}, quiet,
		}},
		{"repository checker reports nothing", Gate{Allow: true, Kubernetes: checks(pass), Repository: none}, []Check{
			pass, {Name: CheckRepositoryActivity, Verdict: Refuse, Reason: "repository-activity checks returned no check"},
		}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.gate.Check(context.Background())
			if d.Allowed || !slices.EqualFunc(d.Checks, tt.want, func(a, b Check) bool {
				return a.Name == b.Name && a.Verdict == b.Verdict && a.Reason == b.Reason
			}) {
				t.Errorf("decision %+v, want refused with %+v", d, tt.want)
			}

			if a, _, err := tt.gate.Admit(context.Background()); err == nil || a.Valid() {
				t.Errorf("Admit: %v, valid %v", err, a.Valid())
			}
		})
	}

	t.Run("a decision without checks refuses", func(t *testing.T) {
		if decide(Decision{}).Allowed {
			t.Error("empty decision allowed")
		}
	})
}

func TestGateAdmit(t *testing.T) {
	g := Gate{RepositoryName: "local", Allow: true, Kubernetes: checks(Check{Name: CheckBackups, Namespace: "velero", Verdict: Refuse, Reason: "Backups in flight (1)"}),
		Repository: checks(Check{Name: CheckRepositoryActivity, Verdict: Pass})}

	a, d, err := g.Admit(context.Background())

	var refused *RefusedError
	if !errors.As(err, &refused) || a.Valid() || d.Allowed {
		t.Fatalf("Admit: %v %+v", err, a)
	}

	if want := `safety=none refused for repository "local": velero/backups: Backups in flight (1)`; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}

	g.Kubernetes = checks(Check{Name: CheckBackups, Verdict: Pass})

	a, _, err = g.Admit(context.Background())
	if err != nil || !a.Valid() || !a.Decision().Allowed {
		t.Fatalf("Admit: %v %+v", err, a)
	}

	if (Admission{}).Valid() {
		t.Error("zero Admission is valid")
	}

	// An Admission is only as good as the checks behind it: one that lacks
	// a group, or holds a refusal, is not valid even with Allowed set.
	allowed := Decision{Allowed: true, Checks: []Check{{Name: CheckBackups, Verdict: Pass}, {Name: CheckRepositoryActivity, Verdict: Pass}}}
	for name, a := range map[string]Admission{
		"no kubernetes check": {decision: allowed, counts: groupCounts{repository: 1}},
		"no repository check": {decision: allowed, counts: groupCounts{kubernetes: 1}},
		"not allowed":         {decision: Decision{Checks: allowed.Checks}, counts: groupCounts{kubernetes: 1, repository: 1}},
		"a refusal inside": {decision: Decision{Allowed: true, Checks: []Check{{Name: CheckBackups, Verdict: Refuse}, {Name: CheckRepositoryActivity, Verdict: Pass}}},
			counts: groupCounts{kubernetes: 1, repository: 1}},
	} {
		if a.Valid() {
			t.Errorf("%s: Admission valid", name)
		}
	}
}

func TestGateWatchKubernetes(t *testing.T) {
	clk := clocktesting.NewFakeClock(testNow)

	var calls atomic.Int32

	ran := make(chan struct{})
	kube := CheckerFunc(func(context.Context) ([]Check, error) {
		n := calls.Add(1)
		defer func() { ran <- struct{}{} }()

		if n < 3 {
			return []Check{{Name: CheckBackups, Namespace: "velero", Verdict: Pass}}, nil
		}

		return []Check{{Name: CheckBackups, Namespace: "velero", Verdict: Refuse, Reason: "Backups in flight (1)"}}, nil
	})

	g := &Gate{RepositoryName: "local", Allow: true, Kubernetes: kube, Clock: clk,
		Repository: failing(errors.New("the watcher must not run the repository checks"))}

	refused := make(chan Decision, 2)
	done := make(chan struct{})

	go func() {
		defer close(done)
		g.WatchKubernetes(context.Background(), 5*time.Second, func(d Decision) { refused <- d })
	}()

	<-ran // the first check runs at once

	for i := 0; i < 2; i++ {
		waitForTicker(t, clk)

		select {
		case d := <-refused:
			t.Fatalf("refused before the interval: %+v", d)
		default:
		}

		clk.Step(5 * time.Second)
		<-ran
	}

	<-done

	d := <-refused
	if d.Allowed || len(d.Refusals()) != 1 || d.Refusals()[0].Name != CheckBackups || !d.At.Equal(testNow.Add(10*time.Second)) {
		t.Errorf("decision %+v", d)
	}

	if len(refused) != 0 || calls.Load() != 3 {
		t.Errorf("onRefuse called again or checks ran %d times", calls.Load())
	}
}

func TestGateWatchKubernetesCancel(t *testing.T) {
	clk := clocktesting.NewFakeClock(testNow)
	ctx, cancel := context.WithCancel(context.Background())

	ran := make(chan struct{}, 1)
	g := &Gate{Allow: true, Clock: clk, Kubernetes: CheckerFunc(func(ctx context.Context) ([]Check, error) {
		ran <- struct{}{}

		return []Check{{Name: CheckBackups, Verdict: Pass}}, nil
	})}

	done := make(chan struct{})

	go func() {
		defer close(done)
		g.WatchKubernetes(ctx, time.Second, func(d Decision) { t.Errorf("onRefuse after cancel: %+v", d) })
	}()

	<-ran
	waitForTicker(t, clk)
	cancel()
	<-done

	// A check cut short by the run ending is not a refusal.
	g.Kubernetes = CheckerFunc(func(ctx context.Context) ([]Check, error) { return nil, ctx.Err() })
	g.WatchKubernetes(ctx, time.Second, func(d Decision) { t.Errorf("onRefuse after cancel: %+v", d) })

	// Without Kubernetes checks nothing proves Velero stays away: the
	// watcher refuses at once.
	var got []Decision

	(&Gate{}).WatchKubernetes(context.Background(), time.Second, func(d Decision) { got = append(got, d) })

	if len(got) != 1 || got[0].Allowed || len(got[0].Refusals()) != 1 || got[0].Refusals()[0].Name != CheckKubernetes {
		t.Errorf("watcher without Kubernetes checks: %+v, want one refusal", got)
	}
}

// waitForTicker asserts that the watcher holds its ticker. It makes the
// ticker before its first check, and the fake ticker keeps one tick for a
// watcher that is still checking, so no waiting is needed once a check ran.
func waitForTicker(t *testing.T, clk *clocktesting.FakeClock) {
	t.Helper()

	if !clk.HasWaiters() {
		t.Fatal("watcher has no ticker")
	}
}
