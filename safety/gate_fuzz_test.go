package safety

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

// fuzzVerdicts are the verdicts a fuzzed checker returns: the three valid
// ones and some a buggy checker might.
var fuzzVerdicts = []Verdict{Pass, Absent, Refuse, "", "PASS", "passed", "allow"}

func fuzzChecks(group string, b []byte) []Check {
	if len(b) > 64 {
		b = b[:64]
	}

	out := make([]Check, 0, len(b))
	for i, x := range b {
		out = append(out, Check{Name: fmt.Sprintf("%s-%d", group, i), Verdict: fuzzVerdicts[int(x)%len(fuzzVerdicts)], Reason: "fuzzed"})
	}

	return out
}

// FuzzGateDecision: whatever the checkers return, the gate admits a run
// exactly when safetyNone.allow is set, both groups ran without error and
// reported at least one check, and every check passed or was absent; every
// other outcome is a refusal that names at least one refusing check, and
// the decision holds only valid verdicts.
func FuzzGateDecision(f *testing.F) {
	f.Add(true, []byte{0, 1}, false, []byte{0}, false)
	f.Add(true, []byte{}, false, []byte{0}, false)
	f.Add(true, []byte{0, 2}, false, []byte{0}, false)
	f.Add(true, []byte{3}, false, []byte{0}, false)
	f.Add(false, []byte{0}, false, []byte{0}, false)
	f.Add(true, []byte{0}, true, []byte{0}, false)
	f.Add(true, []byte{0}, false, []byte{1}, true)

	f.Fuzz(func(t *testing.T, allow bool, kube []byte, kubeErr bool, repo []byte, repoErr bool) {
		checker := func(group string, b []byte, fail bool) Checker {
			return CheckerFunc(func(context.Context) ([]Check, error) {
				checks := fuzzChecks(group, b)
				if fail {
					return checks, errors.New(group + " unreachable")
				}

				return checks, nil
			})
		}

		g := &Gate{
			Allow: allow, RepositoryName: "r",
			Kubernetes: checker("kube", kube, kubeErr),
			Repository: checker("repo", repo, repoErr),
		}

		want := allow && !kubeErr && !repoErr && len(kube) > 0 && len(repo) > 0
		for _, c := range append(fuzzChecks("kube", kube), fuzzChecks("repo", repo)...) {
			want = want && (c.Verdict == Pass || c.Verdict == Absent)
		}

		a, d, err := g.Admit(context.Background())

		if d.Allowed != want || a.Valid() != want || (err == nil) != want {
			t.Fatalf("allow=%v kube=%v/%v repo=%v/%v: allowed %v, admission valid %v, err %v; want admitted %v",
				allow, kube, kubeErr, repo, repoErr, d.Allowed, a.Valid(), err, want)
		}

		for _, c := range d.Checks {
			if c.Verdict != Pass && c.Verdict != Absent && c.Verdict != Refuse {
				t.Fatalf("decision holds verdict %q", c.Verdict)
			}
		}

		if !want {
			var refused *RefusedError
			if !errors.As(err, &refused) || len(d.Refusals()) == 0 || refused.Error() == "" {
				t.Fatalf("refusal without a refusing check: err %v, refusals %v", err, d.Refusals())
			}
		}

		// The re-checks agree with the Kubernetes group on its own.
		kd, kerr := g.RecheckKubernetes(context.Background())
		kwant := !kubeErr && len(kube) > 0
		for _, c := range fuzzChecks("kube", kube) {
			kwant = kwant && (c.Verdict == Pass || c.Verdict == Absent)
		}

		if kd.Allowed != kwant || (kerr == nil) != kwant {
			t.Fatalf("RecheckKubernetes(kube=%v/%v) allowed %v err %v; want %v", kube, kubeErr, kd.Allowed, kerr, kwant)
		}
	})
}
