package velero

import (
	"context"
	"crypto/sha3"
	"encoding/hex"
	"fmt"
	"slices"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// RepositoryNameLabel is the label of Velero's maintenance Jobs
// (pkg/repository/maintenance/maintenance.go, RepositoryNameLabel); its
// value is RepositoryLabelValue of the BackupRepository's name.
const RepositoryNameLabel = "velero.io/repo-name"

// maxLabelValueLen is Kubernetes' DNS-1035 label limit, which Velero checks
// label values against.
const maxLabelValueLen = 63

// RepositoryLabelValue is Velero's ReturnNameOrHash (pkg/label/label.go):
// the BackupRepository's name when it has at most 63 characters, otherwise
// the hex SHA3-224 of the name (56 characters).
func RepositoryLabelValue(backupRepository string) string {
	if len(backupRepository) <= maxLabelValueLen {
		return backupRepository
	}

	sum := sha3.Sum224([]byte(backupRepository))

	return hex.EncodeToString(sum[:])
}

// jobsPageSize is the page size of the Job list.
const jobsPageSize = 100

// ActiveMaintenanceJobs returns the names, sorted, of Velero's maintenance
// Jobs for s that have not finished: Jobs in s.Namespace labelled
// velero.io/repo-name=RepositoryLabelValue(s.BackupRepository) with
// status.active > 0, or without a Complete or Failed condition whose status
// is True (a Job just created has neither).
//
// Such a Job can still write maintenance after the daemon has taken
// ownership of the repository. Velero's Job (maintenance.go, buildJob: one
// pod, BackoffLimit 0) runs "velero repo-maintenance", which opens the
// repository as default@default and calls
// snapshotmaintenance.Run(ctx, rep, ModeAuto, force=false, SafetyFull)
// (pkg/repository/udmrepo/kopialib/lib_repo.go, runMaintenance). kopia
// checks the maintenance owner once, when the run starts
// (repo/maintenance/maintenance_run.go, RunExclusive: !force &&
// !isOwnedByByThisUser => NotOwnedError), and never again: a Job past that
// check runs to completion and writes (index compaction, content rewrites,
// blob deletion) whatever the owner has become. A Job not yet past it fails
// with "maintenance must be run by designated user". So the caller defers
// a cycle while this returns any Job.
func (d *Discovery) ActiveMaintenanceJobs(ctx context.Context, s Source) ([]string, error) {
	selector := labels.SelectorFromSet(labels.Set{RepositoryNameLabel: RepositoryLabelValue(s.BackupRepository)}).String()

	var (
		active []string
		cont   string
	)

	for {
		cctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
		list, err := d.opts.Client.BatchV1().Jobs(s.Namespace).List(cctx, metav1.ListOptions{
			LabelSelector: selector, Limit: jobsPageSize, Continue: cont,
		})

		cancel()

		if err != nil {
			return nil, fmt.Errorf("list maintenance jobs of BackupRepository %s/%s: %w", s.Namespace, s.BackupRepository, err)
		}

		for i := range list.Items {
			if jobActive(&list.Items[i]) {
				active = append(active, list.Items[i].Name)
			}
		}

		if cont = list.Continue; cont == "" {
			break
		}
	}

	slices.Sort(active)

	return active, nil
}

// jobActive reports whether j may still have a pod running. A terminal
// condition is set only once the Job's pods are gone (since Kubernetes 1.31
// a failing Job first gets FailureTarget and gets Failed after its pods
// terminated), but active > 0 counts regardless.
func jobActive(j *batchv1.Job) bool {
	if j.Status.Active > 0 {
		return true
	}

	for _, c := range j.Status.Conditions {
		if (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue {
			return false
		}
	}

	return true
}
