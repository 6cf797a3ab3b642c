package maintain

import (
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/kopia-maintd/kopia-maintd/metrics"
	"github.com/kopia-maintd/kopia-maintd/repository"
)

func TestOwnersObserve(t *testing.T) {
	var o Owners

	for i, step := range []struct {
		repo   string
		isSelf bool
		lost   bool
	}{
		{"r", false, false}, // first sight: nothing known before
		{"r", true, false},  // we took it
		{"s", false, false}, // another repository is independent
		{"r", false, true},  // someone took it from us
		{"r", false, false}, // still theirs: reported once
		{"r", true, false},
		{"r", true, false},
	} {
		if got := o.Observe(step.repo, step.isSelf); got != step.lost {
			t.Fatalf("step %d (%s self=%v): lost = %v, want %v", i, step.repo, step.isSelf, got, step.lost)
		}
	}
}

// reportMetrics records ObserveReport's calls.
type reportMetrics struct{ calls []string }

func (m *reportMetrics) Owner(repo, owner string, isSelf bool) {
	m.calls = append(m.calls, fmt.Sprintf("owner %s %s %v", repo, owner, isSelf))
}

func (m *reportMetrics) OwnershipChanged(repo, reason string) {
	m.calls = append(m.calls, "changed "+repo+" "+reason)
}

func (m *reportMetrics) Health(repo string, h metrics.Health) {
	m.calls = append(m.calls, fmt.Sprintf("health %s %d", repo, h.IndexBlobs))
}

func (m *reportMetrics) Reclaim(repo string, r metrics.Reclaim) {
	m.calls = append(m.calls, fmt.Sprintf("reclaim %s %d", repo, r.UnreferencedBytes))
}

// TestObserveReportTellsOwnerChanges: a run that took ownership reports
// its reason; a later run that finds another owner (a NotOwnerError, no
// report) reports the owner and an external change.
func TestObserveReportTellsOwnerChanges(t *testing.T) {
	var (
		own Owners
		met reportMetrics
	)

	self := "maintd@host"

	ObserveReport(&met, &own, self, "r", &repository.Report{
		Owner: self, TookOver: true, TakeoverReason: repository.ReasonManual,
		Health: &repository.Health{IndexBlobs: 4}, Reclaim: &repository.Reclaim{UnreferencedBytes: 100},
	}, nil)
	ObserveReport(&met, &own, self, "r", nil, &repository.NotOwnerError{Repository: "r", Owner: "default@default"})
	ObserveReport(&met, &own, self, "r", nil, errors.New("bucket unreachable"))

	want := []string{
		"owner r maintd@host true",
		"changed r " + repository.ReasonManual,
		"health r 4",
		"reclaim r 100",
		"owner r default@default false",
		"changed r external",
	}
	if !reflect.DeepEqual(met.calls, want) {
		t.Fatalf("calls:\n%v\nwant:\n%v", met.calls, want)
	}
}
