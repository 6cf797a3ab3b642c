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
		repo          string
		before, after bool
		lost          bool
	}{
		{"r", false, false, false}, // first sight: nothing known before
		{"r", false, true, false},  // we took it
		{"s", false, false, false}, // another repository is independent
		{"r", false, false, true},  // someone took it from us
		{"r", false, false, false}, // still theirs: reported once
		{"r", false, true, false},  // we took it back from them
		{"r", true, true, false},
		{"r", false, true, true}, // taken from us and back again within one run
		{"r", true, true, false},
	} {
		if got := o.Observe(step.repo, step.before, step.after); got != step.lost {
			t.Fatalf("step %d (%s before=%v after=%v): lost = %v, want %v", i, step.repo, step.before, step.after, got, step.lost)
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
	ObserveReport(&met, &own, self, "r", nil, &repository.NotOwnerError{Repository: "r", Owner: "other@cluster-b"})
	ObserveReport(&met, &own, self, "r", nil, errors.New("bucket unreachable"))

	want := []string{
		"owner r maintd@host true",
		"changed r " + repository.ReasonManual,
		"health r 4",
		"reclaim r 100",
		"owner r other@cluster-b false",
		"changed r external",
	}
	if !reflect.DeepEqual(met.calls, want) {
		t.Fatalf("calls:\n%v\nwant:\n%v", met.calls, want)
	}
}

// TestObserveReportTellsVeleroReset: Velero setting the owner back to
// default@default while the daemon owns the repository is a loss of its
// own reason, told whether the ownership policy skips the next run or takes
// the repository back in it; a takeover from default@default the daemon
// never owned is not.
func TestObserveReportTellsVeleroReset(t *testing.T) {
	self := "maintd@host"

	for _, tc := range []struct {
		name  string
		first *repository.Report
		next  *repository.Report
		err   error
		want  []string
		lost  *Loss
	}{{
		name:  "policy takes it back",
		first: &repository.Report{Owner: self, PreviousOwner: VeleroOwner, TookOver: true, TakeoverReason: repository.ReasonAlways},
		next:  &repository.Report{Owner: self, PreviousOwner: VeleroOwner, TookOver: true, TakeoverReason: repository.ReasonAlways},
		want: []string{
			"owner r maintd@host true", "changed r " + repository.ReasonAlways,
			"owner r maintd@host true", "changed r velero-reset", "changed r " + repository.ReasonAlways,
		},
		lost: &Loss{To: VeleroOwner, Reason: LostVeleroReset},
	}, {
		name:  "policy skips the run",
		first: &repository.Report{Owner: self, PreviousOwner: self},
		err:   &repository.NotOwnerError{Repository: "r", Owner: VeleroOwner},
		want:  []string{"owner r maintd@host true", "owner r default@default false", "changed r velero-reset"},
		lost:  &Loss{To: VeleroOwner, Reason: LostVeleroReset},
	}, {
		name:  "still ours",
		first: &repository.Report{Owner: self, PreviousOwner: VeleroOwner, TookOver: true, TakeoverReason: repository.ReasonUnowned},
		next:  &repository.Report{Owner: self, PreviousOwner: self},
		want:  []string{"owner r maintd@host true", "changed r " + repository.ReasonUnowned, "owner r maintd@host true"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				own Owners
				met reportMetrics
			)

			if lost := ObserveReport(&met, &own, self, "r", tc.first, nil); lost != nil {
				t.Fatalf("first run: lost %+v", lost)
			}

			lost := ObserveReport(&met, &own, self, "r", tc.next, tc.err)
			if !reflect.DeepEqual(lost, tc.lost) {
				t.Errorf("lost = %+v, want %+v", lost, tc.lost)
			}

			if !reflect.DeepEqual(met.calls, tc.want) {
				t.Errorf("calls:\n%v\nwant:\n%v", met.calls, tc.want)
			}
		})
	}
}
