package safety

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/dynamic"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// veleroResources are the resources a cluster with Velero's CRDs serves.
var veleroResources = map[schema.GroupVersion][]string{
	veleroV1: {"backups", "restores", "podvolumebackups", "podvolumerestores", "deletebackuprequests",
		"backuprepositories", "schedules", "backupstoragelocations"},
	veleroV2alpha1: {"datauploads", "datadownloads"},
}

var listKinds = map[schema.GroupVersionResource]string{
	veleroV1.WithResource("backups"):                "BackupList",
	veleroV1.WithResource("restores"):               "RestoreList",
	veleroV1.WithResource("podvolumebackups"):       "PodVolumeBackupList",
	veleroV1.WithResource("podvolumerestores"):      "PodVolumeRestoreList",
	veleroV1.WithResource("deletebackuprequests"):   "DeleteBackupRequestList",
	veleroV1.WithResource("backuprepositories"):     "BackupRepositoryList",
	veleroV1.WithResource("schedules"):              "ScheduleList",
	veleroV1.WithResource("backupstoragelocations"): "BackupStorageLocationList",
	veleroV2alpha1.WithResource("datauploads"):      "DataUploadList",
	veleroV2alpha1.WithResource("datadownloads"):    "DataDownloadList",
}

type fakeCluster struct {
	checks *KubernetesChecks
	kube   *kubefake.Clientset
	dyn    *dynamicfake.FakeDynamicClient
	disc   *fakediscovery.FakeDiscovery
}

// newFakeCluster returns checks of namespace velero over fake clients holding
// objs (typed objects go to the clientset, unstructured ones to the dynamic
// client); every Velero CRD is installed. The namespaces velero and
// openshift-adp exist, and velero holds a Velero installation: the
// BackupStorageLocation velero/default (removed by noInstallation).
func newFakeCluster(t *testing.T, objs ...runtime.Object) *fakeCluster {
	t.Helper()

	typed := []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "velero"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "openshift-adp"}},
	}
	custom := []runtime.Object{velero(veleroV1, "BackupStorageLocation", "default", "Available", nil)}

	for _, o := range objs {
		if _, ok := o.(*unstructured.Unstructured); ok {
			custom = append(custom, o)
		} else {
			typed = append(typed, o)
		}
	}

	kube := kubefake.NewClientset(typed...)
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), listKinds, custom...)
	disc := kube.Discovery().(*fakediscovery.FakeDiscovery)

	for gv, names := range veleroResources {
		l := &metav1.APIResourceList{GroupVersion: gv.String()}
		for _, n := range names {
			l.APIResources = append(l.APIResources, metav1.APIResource{Name: n, Namespaced: true})
		}

		disc.Resources = append(disc.Resources, l)
	}

	return &fakeCluster{
		checks: &KubernetesChecks{
			KubernetesOptions: KubernetesOptions{
				Namespaces:     []string{"velero"},
				ScheduleMargin: 2 * time.Hour,
				Timeout:        time.Second,
				Now:            func() time.Time { return testNow },
			},
			Client:    kube,
			Dynamic:   dyn,
			Discovery: disc,
		},
		kube: kube,
		dyn:  dyn,
		disc: disc,
	}
}

// noInstallation deletes the BackupStorageLocation that newFakeCluster
// makes as the velero namespace's evidence of an installation.
func (f *fakeCluster) noInstallation(t *testing.T) {
	t.Helper()

	err := f.dyn.Resource(backupStorageLocationsGVR).Namespace("velero").Delete(context.Background(), "default", metav1.DeleteOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// uninstall removes resource from discovery (its CRD is not installed).
func (f *fakeCluster) uninstall(gvr schema.GroupVersionResource) {
	for _, l := range f.disc.Resources {
		if l.GroupVersion == gvr.GroupVersion().String() {
			l.APIResources = slices.DeleteFunc(l.APIResources, func(r metav1.APIResource) bool { return r.Name == gvr.Resource })
		}
	}
}

func (f *fakeCluster) run(t *testing.T) []Check {
	t.Helper()

	checks, err := f.checks.Check(context.Background())
	if err != nil {
		t.Fatalf("Check: %v", err)
	}

	return checks
}

func meta(name string, created time.Time) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: "velero", Name: name, CreationTimestamp: metav1.NewTime(created)}
}

func pod(name string, phase corev1.PodPhase, labels map[string]string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: meta(name, testNow.Add(-3*time.Minute)), Status: corev1.PodStatus{Phase: phase}}
	p.Labels = labels

	return p
}

// velero returns a Velero custom resource.
func velero(gv schema.GroupVersion, kind, name, phase string, fields map[string]any) *unstructured.Unstructured {
	o := &unstructured.Unstructured{Object: map[string]any{}}
	o.SetAPIVersion(gv.String())
	o.SetKind(kind)
	o.SetNamespace("velero")
	o.SetName(name)
	o.SetCreationTimestamp(metav1.NewTime(testNow.Add(-10 * time.Minute)))

	if phase != "" {
		_ = unstructured.SetNestedField(o.Object, phase, "status", "phase")
	}

	for path, v := range fields {
		_ = unstructured.SetNestedField(o.Object, v, strings.Split(path, ".")...)
	}

	return o
}

func byName(checks []Check, name string) Check {
	for _, c := range checks {
		if c.Name == name {
			return c
		}
	}

	return Check{Name: name, Verdict: "missing"}
}

// expectOnly asserts that the named check has the verdict and evidence
// containing want, and every other check passes or is absent.
func expectOnly(t *testing.T, checks []Check, name string, verdict Verdict, want string) {
	t.Helper()

	for _, c := range checks {
		if c.Name == name {
			if c.Verdict != verdict {
				t.Errorf("%s: verdict %s (%s %v), want %s", name, c.Verdict, c.Reason, c.Evidence, verdict)
			}

			text := c.Reason + "\n" + strings.Join(c.Evidence, "\n")
			if !strings.Contains(text, want) {
				t.Errorf("%s: reason and evidence %q do not contain %q", name, text, want)
			}

			continue
		}

		if c.Verdict != Pass && c.Verdict != Absent {
			t.Errorf("%s: verdict %s (%s %v), want pass", c.Name, c.Verdict, c.Reason, c.Evidence)
		}
	}

	if byName(checks, name).Verdict == "missing" {
		t.Errorf("no check %s in %v", name, checks)
	}
}

func TestKubernetesChecksSignals(t *testing.T) {
	running := corev1.PodRunning

	tests := []struct {
		name  string
		objs  []runtime.Object
		check string
		want  string
	}{
		{"velero deployment desired", []runtime.Object{&appsv1.Deployment{ObjectMeta: meta("velero", testNow.Add(-48*time.Hour)), Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](1)}}},
			CheckVeleroServer, "Deployment velero/velero replicas desired 1 available 0 ready 0 age 48h0m0s"},
		{"velero deployment scaled down but pod available", []runtime.Object{&appsv1.Deployment{ObjectMeta: meta("velero", testNow), Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](0)}, Status: appsv1.DeploymentStatus{AvailableReplicas: 1}}},
			CheckVeleroServer, "available 1"},
		{"velero pod component label", []runtime.Object{pod("velero-abc", running, map[string]string{"component": "velero"})},
			CheckVeleroServer, "Pod velero/velero-abc phase Running age 3m0s"},
		{"velero pod deploy label pending", []runtime.Object{pod("velero-def", corev1.PodPending, map[string]string{"deploy": "velero"})},
			CheckVeleroServer, "Pod velero/velero-def phase Pending"},
		{"node-agent daemonset scheduled", []runtime.Object{&appsv1.DaemonSet{ObjectMeta: meta("node-agent", testNow), Status: appsv1.DaemonSetStatus{CurrentNumberScheduled: 2, DesiredNumberScheduled: 2}}},
			CheckNodeAgent, "DaemonSet velero/node-agent scheduled 2 desired 2"},
		{"node-agent-windows daemonset desired", []runtime.Object{&appsv1.DaemonSet{ObjectMeta: meta("node-agent-windows", testNow), Status: appsv1.DaemonSetStatus{DesiredNumberScheduled: 1}}},
			CheckNodeAgent, "DaemonSet velero/node-agent-windows"},
		{"node-agent pod", []runtime.Object{pod("node-agent-x1", running, map[string]string{"name": "node-agent"})},
			CheckNodeAgent, "Pod velero/node-agent-x1 phase Running"},
		{"data upload pod", []runtime.Object{pod("du-1", running, map[string]string{"velero.io/data-upload": "du-1"})},
			CheckDataPathPods, "Pod velero/du-1 phase Running age 3m0s label velero.io/data-upload"},
		{"data download pod", []runtime.Object{pod("dd-1", corev1.PodPending, map[string]string{"velero.io/data-download": "dd-1"})},
			CheckDataPathPods, "label velero.io/data-download"},
		{"pod volume backup pod", []runtime.Object{pod("pvb-1", running, map[string]string{"velero.io/pod-volume-backup": "x"})},
			CheckDataPathPods, "label velero.io/pod-volume-backup"},
		{"pod volume restore pod unknown phase", []runtime.Object{pod("pvr-1", corev1.PodUnknown, map[string]string{"velero.io/pod-volume-restore": "x"})},
			CheckDataPathPods, "phase Unknown"},
		{"maintenance job active", []runtime.Object{&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "velero", Name: "repo-maintain-1", Labels: map[string]string{"velero.io/repo-name": "default-kopia"}, CreationTimestamp: metav1.NewTime(testNow.Add(-time.Minute))}, Status: batchv1.JobStatus{Active: 1}}},
			CheckMaintenanceJobs, "Job velero/repo-maintain-1 repository default-kopia active 1 age 1m0s"},
		{"maintenance job not started", []runtime.Object{&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "velero", Name: "repo-maintain-2", Labels: map[string]string{"velero.io/repo-name": "r"}}}},
			CheckMaintenanceJobs, "Job velero/repo-maintain-2"},
		{"backup in progress", []runtime.Object{velero(veleroV1, "Backup", "nightly-1", "InProgress", nil)},
			CheckBackups, "Backup velero/nightly-1 phase InProgress age 10m0s"},
		{"backup empty phase is new", []runtime.Object{velero(veleroV1, "Backup", "b", "", nil)},
			CheckBackups, "phase New (empty)"},
		{"backup deleting", []runtime.Object{velero(veleroV1, "Backup", "b", "Deleting", nil)},
			CheckBackups, "phase Deleting"},
		{"backup waiting for plugin operations partially failed", []runtime.Object{velero(veleroV1, "Backup", "b", "WaitingForPluginOperationsPartiallyFailed", nil)},
			CheckBackups, "phase WaitingForPluginOperationsPartiallyFailed"},
		{"backup unknown phase fails closed", []runtime.Object{velero(veleroV1, "Backup", "b", "Uploading", nil)},
			CheckBackups, "phase Uploading (unknown phase, fail closed)"},
		{"restore finalizing", []runtime.Object{velero(veleroV1, "Restore", "r", "Finalizing", nil)},
			CheckRestores, "Restore velero/r phase Finalizing"},
		{"pod volume backup accepted", []runtime.Object{velero(veleroV1, "PodVolumeBackup", "pvb", "Accepted", nil)},
			CheckPodVolumeBackups, "PodVolumeBackup velero/pvb phase Accepted"},
		{"pod volume restore new", []runtime.Object{velero(veleroV1, "PodVolumeRestore", "pvr", "", nil)},
			CheckPodVolumeRestores, "PodVolumeRestore velero/pvr phase New"},
		{"data upload prepared", []runtime.Object{velero(veleroV2alpha1, "DataUpload", "du", "Prepared", nil)},
			CheckDataUploads, "DataUpload velero/du phase Prepared"},
		{"data download canceling", []runtime.Object{velero(veleroV2alpha1, "DataDownload", "dd", "Canceling", nil)},
			CheckDataDownloads, "DataDownload velero/dd phase Canceling"},
		{"delete backup request in progress", []runtime.Object{velero(veleroV1, "DeleteBackupRequest", "del", "InProgress", nil)},
			CheckDeleteBackupRequests, "DeleteBackupRequest velero/del phase InProgress"},
		{"backup repository not ready", []runtime.Object{velero(veleroV1, "BackupRepository", "repo", "NotReady", nil)},
			CheckBackupRepositories, "BackupRepository velero/repo phase NotReady"},
		{"schedule due soon", []runtime.Object{velero(veleroV1, "Schedule", "daily", "Enabled", map[string]any{"spec.schedule": "30 12 * * *"})},
			CheckSchedules, `Schedule velero/daily spec "30 12 * * *" next 2026-03-01T12:30:00Z (in 30m0s)`},
		{"schedule spec does not parse", []runtime.Object{velero(veleroV1, "Schedule", "bad", "FailedValidation", map[string]any{"spec.schedule": "every day"})},
			CheckSchedules, `Schedule velero/bad spec "every day" does not parse (fail closed)`},
		{"schedule missed within margin", []runtime.Object{velero(veleroV1, "Schedule", "missed", "Enabled", map[string]any{
			"spec.schedule": "0 11 * * *", "status.lastBackup": "2026-02-28T11:00:05Z"})},
			CheckSchedules, "next 2026-03-01T11:00:00Z (due 1h0m0s ago, no backup since)"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeCluster(t, tt.objs...)
			expectOnly(t, f.run(t), tt.check, Refuse, tt.want)
		})
	}
}

func TestKubernetesChecksPass(t *testing.T) {
	f := newFakeCluster(t,
		&appsv1.Deployment{ObjectMeta: meta("velero", testNow), Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](0)}},
		&appsv1.DaemonSet{ObjectMeta: meta("node-agent", testNow)},
		pod("velero-old", corev1.PodSucceeded, map[string]string{"component": "velero"}),
		pod("node-agent-old", corev1.PodFailed, map[string]string{"name": "node-agent"}),
		pod("du-done", corev1.PodSucceeded, map[string]string{"velero.io/data-upload": "x"}),
		pod("unrelated", corev1.PodRunning, map[string]string{"app": "other"}),
		&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "velero", Name: "done", Labels: map[string]string{"velero.io/repo-name": "r"}},
			Status: batchv1.JobStatus{Conditions: []batchv1.JobCondition{{Type: batchv1.JobComplete, Status: corev1.ConditionTrue}}}},
		&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "velero", Name: "failed", Labels: map[string]string{"velero.io/repo-name": "r"}},
			Status: batchv1.JobStatus{Conditions: []batchv1.JobCondition{{Type: batchv1.JobFailed, Status: corev1.ConditionTrue}}}},
		&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "velero", Name: "unlabelled"}, Status: batchv1.JobStatus{Active: 1}},
		velero(veleroV1, "Backup", "b1", "Completed", nil),
		velero(veleroV1, "Backup", "b2", "PartiallyFailed", nil),
		velero(veleroV1, "Restore", "r", "Failed", nil),
		velero(veleroV1, "PodVolumeBackup", "pvb", "Completed", nil),
		velero(veleroV1, "PodVolumeRestore", "pvr", "Canceled", nil),
		velero(veleroV2alpha1, "DataUpload", "du", "Completed", nil),
		velero(veleroV2alpha1, "DataDownload", "dd", "Failed", nil),
		velero(veleroV1, "DeleteBackupRequest", "d", "Processed", nil),
		velero(veleroV1, "BackupRepository", "repo", "Ready", nil),
		velero(veleroV1, "Schedule", "paused", "Enabled", map[string]any{"spec.schedule": "*/5 * * * *", "spec.paused": true}),
		velero(veleroV1, "Schedule", "later", "Enabled", map[string]any{"spec.schedule": "0 4 * * *", "status.lastBackup": "2026-03-01T04:00:03Z"}),
		// A run missed long ago (Velero scaled down for days) does not block.
		velero(veleroV1, "Schedule", "long-missed", "Enabled", map[string]any{"spec.schedule": "0 3 * * *", "status.lastBackup": "2026-02-20T03:00:00Z"}),
		// An object in another namespace is not looked at.
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: "velero", Labels: map[string]string{"component": "velero"}}},
	)

	checks := f.run(t)

	want := []string{CheckVeleroInstallation, CheckVeleroServer, CheckNodeAgent, CheckDataPathPods, CheckMaintenanceJobs, CheckBackups,
		CheckRestores, CheckPodVolumeBackups, CheckPodVolumeRestores, CheckDataUploads, CheckDataDownloads,
		CheckDeleteBackupRequests, CheckBackupRepositories, CheckSchedules}

	var got []string

	for _, c := range checks {
		got = append(got, c.Name)

		if c.Name == CheckVeleroInstallation {
			// The one pass with evidence: what proves Velero is installed.
			if c.Verdict != Pass || c.Reason != "velero Deployment found" ||
				!slices.Equal(c.Evidence, []string{"Deployment velero/velero replicas desired 0 available 0 ready 0 age 0s"}) {
				t.Errorf("%s: %+v, want a pass naming the 0-replica Deployment", c.Name, c)
			}

			continue
		}

		if c.Verdict != Pass || c.Namespace != "velero" || c.Reason == "" || len(c.Evidence) != 0 {
			t.Errorf("%s: %+v, want a pass in velero with a reason and no evidence", c.Name, c)
		}
	}

	if !slices.Equal(got, want) {
		t.Errorf("checks %v, want %v", got, want)
	}
}

func TestKubernetesChecksIgnorePods(t *testing.T) {
	f := newFakeCluster(t,
		pod("kopia-maintd-0", corev1.PodRunning, map[string]string{"component": "velero", "name": "node-agent"}),
		pod("velero-abc", corev1.PodRunning, map[string]string{"deploy": "velero"}),
	)
	f.checks.IgnorePods = []string{"kopia-maintd-0"}

	checks := f.run(t)
	expectOnly(t, checks, CheckVeleroServer, Refuse, "velero-abc")

	if c := byName(checks, CheckVeleroServer); strings.Contains(strings.Join(c.Evidence, " "), "kopia-maintd-0") {
		t.Errorf("ignored pod in evidence: %v", c.Evidence)
	}

	f.checks.IgnorePods = append(f.checks.IgnorePods, "velero-abc")
	for _, c := range f.run(t) {
		if c.Verdict != Pass {
			t.Errorf("%s: %s %v, want pass with both pods ignored", c.Name, c.Reason, c.Evidence)
		}
	}
}

func TestKubernetesChecksEvidenceCapped(t *testing.T) {
	var objs []runtime.Object
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"} {
		objs = append(objs, velero(veleroV1, "Backup", n, "InProgress", nil))
	}

	c := byName(newFakeCluster(t, objs...).run(t), CheckBackups)
	if c.Verdict != Refuse || len(c.Evidence) != maxEvidence+1 || c.Evidence[maxEvidence] != "and 2 more" {
		t.Errorf("backups: %s %q", c.Reason, c.Evidence)
	}

	if !strings.Contains(c.Reason, "(12)") {
		t.Errorf("reason %q does not count 12", c.Reason)
	}
}

func TestKubernetesChecksAbsent(t *testing.T) {
	for _, s := range append(slices.Clone(phaseSignals), phaseSignal{name: CheckSchedules, kind: "Schedule", gvr: schedulesGVR}) {
		t.Run(s.name, func(t *testing.T) {
			// An in-flight object that a real server would not serve: the
			// check must not even look.
			f := newFakeCluster(t, velero(s.gvr.GroupVersion(), s.kind, "x", "InProgress", map[string]any{"spec.schedule": "* * * * *"}))
			f.uninstall(s.gvr)
			expectOnly(t, f.run(t), s.name, Absent, reasonCRDNotInstalled)
		})
	}

	t.Run("group version not served", func(t *testing.T) {
		f := newFakeCluster(t)
		f.disc.Resources = slices.DeleteFunc(f.disc.Resources, func(l *metav1.APIResourceList) bool {
			return l.GroupVersion == veleroV2alpha1.String()
		})

		checks := f.run(t)
		for _, name := range []string{CheckDataUploads, CheckDataDownloads} {
			if c := byName(checks, name); c.Verdict != Absent || c.Reason != reasonCRDNotInstalled {
				t.Errorf("%s: %+v, want absent", name, c)
			}
		}

		if c := byName(checks, CheckBackups); c.Verdict != Pass {
			t.Errorf("backups: %+v, want pass", c)
		}
	})

	t.Run("list not found after discovery", func(t *testing.T) {
		f := newFakeCluster(t)
		f.dyn.PrependReactor("list", "restores", func(clienttesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewNotFound(schema.GroupResource{Group: "velero.io", Resource: "restores"}, "")
		})
		expectOnly(t, f.run(t), CheckRestores, Absent, reasonCRDNotInstalled)
	})
}

func TestKubernetesChecksErrorsRefuse(t *testing.T) {
	forbidden := func(resource string) error {
		return apierrors.NewForbidden(schema.GroupResource{Group: "velero.io", Resource: resource}, "",
			errors.New(`User "system:serviceaccount:kopia:kopia-maintd" cannot list resource`))
	}

	t.Run("forbidden list", func(t *testing.T) {
		f := newFakeCluster(t)
		f.dyn.PrependReactor("list", "backups", func(clienttesting.Action) (bool, runtime.Object, error) {
			return true, nil, forbidden("backups")
		})
		expectOnly(t, f.run(t), CheckBackups, Refuse, "list backups: backups.velero.io is forbidden")
	})

	t.Run("forbidden pods refuse three checks", func(t *testing.T) {
		f := newFakeCluster(t)
		f.kube.PrependReactor("list", "pods", func(clienttesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("no"))
		})

		checks := f.run(t)
		for _, name := range []string{CheckVeleroServer, CheckNodeAgent, CheckDataPathPods} {
			if c := byName(checks, name); c.Verdict != Refuse || !strings.Contains(c.Reason, "list pods: pods is forbidden") {
				t.Errorf("%s: %+v, want refuse", name, c)
			}
		}
	})

	t.Run("forbidden deployment get", func(t *testing.T) {
		f := newFakeCluster(t)
		f.kube.PrependReactor("get", "deployments", func(clienttesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: "deployments"}, "velero", errors.New("no"))
		})
		checks := f.run(t)
		for _, name := range []string{CheckVeleroInstallation, CheckVeleroServer} {
			if c := byName(checks, name); c.Verdict != Refuse || !strings.Contains(c.Reason, "get deployment velero: deployments.apps \"velero\" is forbidden") {
				t.Errorf("%s: %+v, want refuse", name, c)
			}
		}
	})

	t.Run("forbidden daemonset get", func(t *testing.T) {
		f := newFakeCluster(t)
		f.kube.PrependReactor("get", "daemonsets", func(clienttesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: "daemonsets"}, "node-agent", errors.New("no"))
		})
		expectOnly(t, f.run(t), CheckNodeAgent, Refuse, "get daemonset: node-agent")
	})

	t.Run("failing jobs list", func(t *testing.T) {
		f := newFakeCluster(t)
		f.kube.PrependReactor("list", "jobs", func(clienttesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewInternalError(errors.New("etcd leader changed"))
		})
		expectOnly(t, f.run(t), CheckMaintenanceJobs, Refuse, "etcd leader changed")
	})

	t.Run("discovery fails", func(t *testing.T) {
		f := newFakeCluster(t)
		f.disc.PrependReactor("get", "resource", func(clienttesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewServiceUnavailable("apiserver restarting")
		})

		for _, c := range f.run(t) {
			crd := c.Name != CheckVeleroServer && c.Name != CheckNodeAgent && c.Name != CheckDataPathPods && c.Name != CheckMaintenanceJobs
			if crd && (c.Verdict != Refuse || !strings.Contains(c.Reason, "apiserver restarting")) {
				t.Errorf("%s: %+v, want refuse", c.Name, c)
			}
		}
	})

	t.Run("timeout", func(t *testing.T) {
		f := newFakeCluster(t)
		f.checks.Timeout = 20 * time.Millisecond
		f.checks.Dynamic = hangingDynamic{Interface: f.dyn, resource: "schedules"}
		expectOnly(t, f.run(t), CheckSchedules, Refuse, "context deadline exceeded")
	})

	t.Run("not configured", func(t *testing.T) {
		f := newFakeCluster(t)
		f.checks.Namespaces = nil

		if _, err := f.checks.Check(context.Background()); err == nil {
			t.Error("Check without namespaces: no error")
		}
	})
}

func TestKubernetesChecksNamespaces(t *testing.T) {
	p := pod("velero-abc", corev1.PodRunning, map[string]string{"component": "velero"})
	p.Namespace = "openshift-adp"

	bsl := velero(veleroV1, "BackupStorageLocation", "default", "Available", nil)
	bsl.SetNamespace("openshift-adp")

	f := newFakeCluster(t, p, bsl)
	f.checks.Namespaces = []string{"velero", "openshift-adp"}

	checks := f.run(t)
	if len(checks) != 28 {
		t.Fatalf("%d checks, want 14 per namespace", len(checks))
	}

	for _, c := range checks {
		refuse := c.Namespace == "openshift-adp" && c.Name == CheckVeleroServer
		if (c.Verdict == Refuse) != refuse {
			t.Errorf("%s/%s: %s %s %v", c.Namespace, c.Name, c.Verdict, c.Reason, c.Evidence)
		}
	}
}

// hangingDynamic is a dynamic client whose lists of one resource block until
// their context ends, as a real client does against a server that hangs.
type hangingDynamic struct {
	dynamic.Interface
	resource string
}

func (h hangingDynamic) Resource(gvr schema.GroupVersionResource) dynamic.NamespaceableResourceInterface {
	r := h.Interface.Resource(gvr)
	if gvr.Resource != h.resource {
		return r
	}

	return hangingResource{NamespaceableResourceInterface: r}
}

type hangingResource struct {
	dynamic.NamespaceableResourceInterface
}

func (h hangingResource) Namespace(ns string) dynamic.ResourceInterface {
	return hangingList{ResourceInterface: h.NamespaceableResourceInterface.Namespace(ns)}
}

type hangingList struct {
	dynamic.ResourceInterface
}

func (hangingList) List(ctx context.Context, _ metav1.ListOptions) (*unstructured.UnstructuredList, error) {
	<-ctx.Done()

	return nil, ctx.Err()
}
