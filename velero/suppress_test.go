package velero

import (
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
)

func TestRestoreTarget(t *testing.T) {
	tests := []struct {
		name       string
		original   string
		current    string
		hasCurrent bool
		phase      string
		want       any
		warn       bool
	}{
		{name: "a recorded value goes back", original: "1h0m0s", current: SuppressedFrequency, hasCurrent: true, phase: "Ready", want: "1h0m0s"},
		{name: "a recorded value goes back in phase New", original: "168h", current: SuppressedFrequency, hasCurrent: true, phase: "New", want: "168h"},
		{name: "changed since suppression: kept", original: "1h0m0s", current: "2h", hasCurrent: true, phase: "Ready", want: "2h"},
		{name: "unset, phase New: removed, Velero defaults it", original: "", current: SuppressedFrequency, hasCurrent: true, phase: "New", want: nil},
		{name: "unset, no phase: removed", original: "", current: SuppressedFrequency, hasCurrent: true, phase: "", want: nil},
		{name: "zero, phase New: put back", original: "0s", current: SuppressedFrequency, hasCurrent: true, phase: "New", want: "0s"},
		{name: "unset, Ready: the default", original: "", current: SuppressedFrequency, hasCurrent: true, phase: "Ready", want: "1h0m0s", warn: true},
		{name: "zero, NotReady: the default", original: "0s", current: SuppressedFrequency, hasCurrent: true, phase: "NotReady", want: "1h0m0s", warn: true},
		{name: "negative, Ready: the default", original: "-1h", current: SuppressedFrequency, hasCurrent: true, phase: "Ready", want: "1h0m0s", warn: true},
		{name: "invalid: the default even in New", original: "weekly", current: SuppressedFrequency, hasCurrent: true, phase: "New", want: "1h0m0s", warn: true},
		{name: "field removed since: the recorded value", original: "3h", hasCurrent: false, phase: "Ready", want: "3h"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := restoreTarget(tt.original, tt.current, tt.hasCurrent, tt.phase, time.Hour)
			if got.frequency != tt.want || (got.warn != "") != tt.warn {
				t.Errorf("restoreTarget = %#v, want frequency %#v, warn %v", got, tt.want, tt.warn)
			}
		})
	}
}

func TestSuppressedFrequencyParses(t *testing.T) {
	d, err := time.ParseDuration(SuppressedFrequency)
	if err != nil || d < 5*365*24*time.Hour {
		t.Errorf("SuppressedFrequency %q = %v, %v; want a duration of years", SuppressedFrequency, d, err)
	}
}

func TestJobActive(t *testing.T) {
	cond := func(typ batchv1.JobConditionType, status corev1.ConditionStatus) batchv1.JobCondition {
		return batchv1.JobCondition{Type: typ, Status: status}
	}

	tests := []struct {
		name   string
		status batchv1.JobStatus
		want   bool
	}{
		{"just created", batchv1.JobStatus{}, true},
		{"running", batchv1.JobStatus{Active: 1}, true},
		{"complete", batchv1.JobStatus{Succeeded: 1, Conditions: []batchv1.JobCondition{cond(batchv1.JobSuccessCriteriaMet, corev1.ConditionTrue), cond(batchv1.JobComplete, corev1.ConditionTrue)}}, false},
		{"failed", batchv1.JobStatus{Failed: 1, Conditions: []batchv1.JobCondition{cond(batchv1.JobFailed, corev1.ConditionTrue)}}, false},
		{"failure target, pod still terminating", batchv1.JobStatus{Active: 1, Conditions: []batchv1.JobCondition{cond(batchv1.JobFailureTarget, corev1.ConditionTrue)}}, true},
		{"failure target, no pod counted yet", batchv1.JobStatus{Conditions: []batchv1.JobCondition{cond(batchv1.JobFailureTarget, corev1.ConditionTrue)}}, true},
		{"complete condition False", batchv1.JobStatus{Conditions: []batchv1.JobCondition{cond(batchv1.JobComplete, corev1.ConditionFalse)}}, true},
		{"terminal condition but a pod active", batchv1.JobStatus{Active: 1, Conditions: []batchv1.JobCondition{cond(batchv1.JobComplete, corev1.ConditionTrue)}}, true},
		{"suspended", batchv1.JobStatus{Conditions: []batchv1.JobCondition{cond(batchv1.JobSuspended, corev1.ConditionTrue)}}, true},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := jobActive(&batchv1.Job{Status: tt.status}); got != tt.want {
				t.Errorf("jobActive = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRepositoryLabelValue(t *testing.T) {
	short := "app-default-kopia-x1b2c"
	if got := RepositoryLabelValue(short); got != short {
		t.Errorf("RepositoryLabelValue(%q) = %q, want the name", short, got)
	}

	// Velero's ReturnNameOrHash: hex(sha3-224(name)) for a name over 63
	// (the value from Python's hashlib.sha3_224).
	long := "a-very-long-volume-namespace-name-for-testing-a-long-storage-location-kopia-abcde"
	if got, want := RepositoryLabelValue(long), "0b5417d814fb0dacc0a9ff1ded51262d3930bd3ec9323e9bfe94c4aa"; got != want {
		t.Errorf("RepositoryLabelValue(long) = %q, want %q", got, want)
	}
}
