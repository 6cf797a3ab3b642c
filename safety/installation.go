package safety

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CheckVeleroInstallation is the check that a configured namespace holds a
// Velero installation at all.
const CheckVeleroInstallation = "velero-installation"

// backupStorageLocationsGVR is the resource of Velero's
// BackupStorageLocations: an installation has one as soon as it can back up
// anything, and keeps it while the server is scaled to zero.
var backupStorageLocationsGVR = veleroV1.WithResource("backupstoragelocations")

// NoInstallationReason is the reason of the velero-installation check when
// namespace ns holds no sign of Velero.
func NoInstallationReason(ns string) string {
	return "no Velero installation found in namespace " + ns
}

// checkInstallation requires positive evidence that ns holds a Velero
// installation: the velero Deployment (at any replica count) or one of
// Velero's BackupStorageLocations. Every other check passes on an empty
// namespace, and listing a namespace that does not exist returns an empty
// list, so without this check a gate pointed at the wrong namespace (velero
// on an OADP cluster, where Velero runs in openshift-adp) would pass while
// Velero works next door.
func (k *KubernetesChecks) checkInstallation(ctx context.Context, ns string, deploy *appsv1.Deployment, depErr error,
	avail availability, now time.Time,
) Check {
	refuse := func(reason string) Check {
		return Check{Name: CheckVeleroInstallation, Namespace: ns, Verdict: Refuse, Reason: reason}
	}

	cctx, cancel := k.callCtx(ctx)
	_, err := k.Client.CoreV1().Namespaces().Get(cctx, ns, metav1.GetOptions{})

	cancel()

	switch {
	case isNotFound(err):
		return refuse(NoInstallationReason(ns) + ": the namespace does not exist")
	case err != nil:
		return refuseErr(CheckVeleroInstallation, ns, "get namespace "+ns, err)
	case depErr != nil:
		return refuseErr(CheckVeleroInstallation, ns, "get deployment velero", depErr)
	case deploy != nil:
		return Check{Name: CheckVeleroInstallation, Namespace: ns, Verdict: Pass, Reason: "velero Deployment found",
			Evidence: []string{describeDeployment(deploy, now)}}
	}

	if c, ok := avail.absentOrErr(CheckVeleroInstallation, ns, backupStorageLocationsGVR); ok {
		if c.Verdict == Refuse {
			return c
		}

		// The CRD is not installed: no BackupStorageLocation can exist.
		return refuse(NoInstallationReason(ns))
	}

	cctx, cancel = k.callCtx(ctx)
	list, err := k.Dynamic.Resource(backupStorageLocationsGVR).Namespace(ns).List(cctx, metav1.ListOptions{Limit: 1})

	cancel()

	switch {
	case isNotFound(err):
		return refuse(NoInstallationReason(ns))
	case err != nil:
		return refuseErr(CheckVeleroInstallation, ns, "list backupstoragelocations", err)
	case len(list.Items) == 0:
		return refuse(NoInstallationReason(ns))
	}

	b := &list.Items[0]

	return Check{Name: CheckVeleroInstallation, Namespace: ns, Verdict: Pass, Reason: "velero BackupStorageLocation found",
		Evidence: []string{fmt.Sprintf("BackupStorageLocation %s/%s %s", b.GetNamespace(), b.GetName(),
			age(now, b.GetCreationTimestamp().Time))}}
}
