package safety

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
)

// Check names of the Velero custom resource signals.
const (
	CheckBackups              = "backups"
	CheckRestores             = "restores"
	CheckPodVolumeBackups     = "podvolumebackups"
	CheckPodVolumeRestores    = "podvolumerestores"
	CheckDataUploads          = "datauploads"
	CheckDataDownloads        = "datadownloads"
	CheckDeleteBackupRequests = "deletebackuprequests"
	CheckBackupRepositories   = "backuprepositories"
	CheckSchedules            = "schedules"
)

// reasonCRDNotInstalled is the reason of an Absent check.
const reasonCRDNotInstalled = "CRD not installed"

// Velero's API group versions.
var (
	veleroV1       = schema.GroupVersion{Group: "velero.io", Version: "v1"}
	veleroV2alpha1 = schema.GroupVersion{Group: "velero.io", Version: "v2alpha1"}
)

// schedulesGVR is the resource of Velero Schedules.
var schedulesGVR = veleroV1.WithResource("schedules")

// phaseSignal is a Velero kind whose status.phase tells whether it is in
// flight.
type phaseSignal struct {
	name string // check name = resource
	kind string // for evidence
	gvr  schema.GroupVersionResource
	// active phases refuse; the empty phase counts as New.
	active []string
	// done phases pass. A phase in neither list (a Velero release newer
	// than this code, or a typo) refuses: the gate fails closed.
	done []string
}

// phaseSignals are the Velero kinds checked by phase, in check order.
// Phases from Velero v1.14 to v1.18 and main (REFERENCE.md); Uploading and
// UploadingPartialFailure of older Backups are not listed and so refuse.
var phaseSignals = []phaseSignal{
	{
		name: CheckBackups, kind: "Backup", gvr: veleroV1.WithResource("backups"),
		active: []string{"New", "Queued", "ReadyToStart", "InProgress", "WaitingForPluginOperations",
			"WaitingForPluginOperationsPartiallyFailed", "Finalizing", "FinalizingPartiallyFailed", "Deleting"},
		done: []string{"Completed", "PartiallyFailed", "Failed", "FailedValidation"},
	},
	{
		name: CheckRestores, kind: "Restore", gvr: veleroV1.WithResource("restores"),
		active: []string{"New", "InProgress", "WaitingForPluginOperations",
			"WaitingForPluginOperationsPartiallyFailed", "Finalizing", "FinalizingPartiallyFailed"},
		done: []string{"Completed", "PartiallyFailed", "Failed", "FailedValidation"},
	},
	{
		name: CheckPodVolumeBackups, kind: "PodVolumeBackup", gvr: veleroV1.WithResource("podvolumebackups"),
		active: dataPathActive, done: dataPathDone,
	},
	{
		name: CheckPodVolumeRestores, kind: "PodVolumeRestore", gvr: veleroV1.WithResource("podvolumerestores"),
		active: dataPathActive, done: dataPathDone,
	},
	{
		name: CheckDataUploads, kind: "DataUpload", gvr: veleroV2alpha1.WithResource("datauploads"),
		active: dataPathActive, done: dataPathDone,
	},
	{
		name: CheckDataDownloads, kind: "DataDownload", gvr: veleroV2alpha1.WithResource("datadownloads"),
		active: dataPathActive, done: dataPathDone,
	},
	{
		name: CheckDeleteBackupRequests, kind: "DeleteBackupRequest", gvr: veleroV1.WithResource("deletebackuprequests"),
		active: []string{"New", "InProgress"}, done: []string{"Processed"},
	},
	{
		name: CheckBackupRepositories, kind: "BackupRepository", gvr: veleroV1.WithResource("backuprepositories"),
		active: []string{"New", "NotReady"}, done: []string{"Ready"},
	},
}

var (
	dataPathActive = []string{"New", "Accepted", "Prepared", "InProgress", "Canceling"}
	dataPathDone   = []string{"Completed", "Failed", "Canceled"}
)

// availability records, per Velero resource, whether discovery found it;
// a discovery failure is kept per group version and refuses its kinds.
type availability struct {
	served map[schema.GroupVersionResource]bool
	errs   map[schema.GroupVersion]error
}

// discover asks the API server which Velero resources it serves.
func (k *KubernetesChecks) discover(ctx context.Context) availability {
	a := availability{served: map[schema.GroupVersionResource]bool{}, errs: map[schema.GroupVersion]error{}}
	disc := discovery.ToServerResourcesInterfaceWithContext(k.Discovery)

	for _, gv := range []schema.GroupVersion{veleroV1, veleroV2alpha1} {
		cctx, cancel := k.callCtx(ctx)
		list, err := disc.ServerResourcesForGroupVersionWithContext(cctx, gv.String())

		cancel()

		switch {
		case isNotFound(err):
			// The group version is not served: none of its CRDs is installed.
		case err != nil:
			a.errs[gv] = err
		default:
			for _, r := range list.APIResources {
				a.served[gv.WithResource(r.Name)] = true
			}
		}
	}

	return a
}

// absentOrErr returns the check to report instead of listing gvr, if any.
func (a availability) absentOrErr(name, ns string, gvr schema.GroupVersionResource) (Check, bool) {
	if err := a.errs[gvr.GroupVersion()]; err != nil {
		return refuseErr(name, ns, "discover "+gvr.GroupVersion().String(), err), true
	}

	if !a.served[gvr] {
		return Check{Name: name, Namespace: ns, Verdict: Absent, Reason: reasonCRDNotInstalled}, true
	}

	return Check{}, false
}

// listAll lists every object of gvr in ns, page by page. notInstalled is true
// when the server answers NotFound for the resource itself (a CRD removed
// since discovery).
func (k *KubernetesChecks) listAll(ctx context.Context, ns string, gvr schema.GroupVersionResource) (items []unstructured.Unstructured, notInstalled bool, err error) {
	var cont string

	for {
		cctx, cancel := k.callCtx(ctx)
		list, err := k.Dynamic.Resource(gvr).Namespace(ns).List(cctx, metav1.ListOptions{Limit: listPageSize, Continue: cont})

		cancel()

		if isNotFound(err) {
			return nil, true, nil
		}

		if err != nil {
			return nil, false, err
		}

		items = append(items, list.Items...)

		cont = list.GetContinue()
		if cont == "" {
			return items, false, nil
		}
	}
}

// checkPhases refuses while any object of the signal's kind is in an active
// (or unknown) phase.
func (k *KubernetesChecks) checkPhases(ctx context.Context, ns string, s phaseSignal, avail availability, now time.Time) Check {
	if c, ok := avail.absentOrErr(s.name, ns, s.gvr); ok {
		return c
	}

	items, notInstalled, err := k.listAll(ctx, ns, s.gvr)
	if err != nil {
		return refuseErr(s.name, ns, "list "+s.gvr.Resource, err)
	}

	if notInstalled {
		return Check{Name: s.name, Namespace: ns, Verdict: Absent, Reason: reasonCRDNotInstalled}
	}

	var found []string

	for i := range items {
		o := &items[i]

		phase, _, _ := unstructured.NestedString(o.Object, "status", "phase")
		shown := phase

		if phase == "" {
			phase, shown = "New", "New (empty)"
		}

		switch {
		case slices.Contains(s.active, phase):
		case slices.Contains(s.done, phase):
			continue
		default:
			shown = phase + " (unknown phase, fail closed)"
		}

		found = append(found, fmt.Sprintf("%s %s/%s phase %s %s", s.kind, o.GetNamespace(), o.GetName(), shown,
			age(now, o.GetCreationTimestamp().Time)))
	}

	sort.Strings(found)

	return verdictFrom(s.name, ns, found,
		s.kind+"s in flight", "no "+s.kind+" in flight")
}
