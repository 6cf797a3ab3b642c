package safety_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kopia-maintd/kopia-maintd/safety"
	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

const (
	veleroNS = "velero"
	oadpNS   = "openshift-adp"
	daemonSA = "kopia-maintd"
)

var (
	podsGVR        = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	jobsGVR        = schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}
	deploymentsGVR = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	daemonSetsGVR  = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}
	bslGVR         = schema.GroupVersionResource{Group: "velero.io", Version: "v1", Resource: "backupstoragelocations"}
)

// veleroKinds are the custom resources with their check names.
var veleroKinds = []struct {
	gvr  schema.GroupVersionResource
	kind string
}{
	{schema.GroupVersionResource{Group: "velero.io", Version: "v1", Resource: "backups"}, "Backup"},
	{schema.GroupVersionResource{Group: "velero.io", Version: "v1", Resource: "restores"}, "Restore"},
	{schema.GroupVersionResource{Group: "velero.io", Version: "v1", Resource: "podvolumebackups"}, "PodVolumeBackup"},
	{schema.GroupVersionResource{Group: "velero.io", Version: "v1", Resource: "podvolumerestores"}, "PodVolumeRestore"},
	{schema.GroupVersionResource{Group: "velero.io", Version: "v2alpha1", Resource: "datauploads"}, "DataUpload"},
	{schema.GroupVersionResource{Group: "velero.io", Version: "v2alpha1", Resource: "datadownloads"}, "DataDownload"},
	{schema.GroupVersionResource{Group: "velero.io", Version: "v1", Resource: "deletebackuprequests"}, "DeleteBackupRequest"},
	{schema.GroupVersionResource{Group: "velero.io", Version: "v1", Resource: "backuprepositories"}, "BackupRepository"},
	{schema.GroupVersionResource{Group: "velero.io", Version: "v1", Resource: "schedules"}, "Schedule"},
}

// status is a status to set on an object after it is applied.
type status struct {
	gvr    schema.GroupVersionResource
	ns     string
	name   string
	status map[string]any
}

func podYAML(ns, name, labels string) string {
	return fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {%s}}
spec:
  containers: [{name: c, image: velero/velero}]
`, name, ns, labels)
}

func veleroYAML(apiVersion, kind, name, phase, spec string) string {
	st := "{}"
	if phase != "" {
		st = "{phase: " + phase + "}"
	}

	if spec == "" {
		spec = "{}"
	}

	return fmt.Sprintf(`
apiVersion: %s
kind: %s
metadata: {name: %s, namespace: velero}
spec: %s
status: %s
`, apiVersion, kind, name, spec, st)
}

func jobYAML(name string) string {
	return fmt.Sprintf(`
apiVersion: batch/v1
kind: Job
metadata: {name: %s, namespace: velero, labels: {velero.io/repo-name: default-kopia-abcd}}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: velero/velero}]
`, name)
}

func deploymentYAML(ns string, replicas int) string {
	return fmt.Sprintf(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: velero, namespace: %s}
spec:
  replicas: %d
  selector: {matchLabels: {deploy: velero}}
  template:
    metadata: {labels: {deploy: velero, component: velero}}
    spec: {containers: [{name: velero, image: velero/velero}]}
`, ns, replicas)
}

func bslYAML(ns string) string {
	return fmt.Sprintf(`
apiVersion: velero.io/v1
kind: BackupStorageLocation
metadata: {name: default, namespace: %s}
spec: {provider: aws, objectStorage: {bucket: velero}}
`, ns)
}

// installed gives both namespaces a Velero installation (a
// BackupStorageLocation) and nothing else.
func installed(t *testing.T, k *harness.Kube) {
	t.Helper()
	reset(t, k)
	k.Apply(t, []byte(bslYAML(veleroNS)), []byte(bslYAML(oadpNS)))
}

// TestKubernetesChecksRealAPI runs the Kubernetes checks against a real
// kube-apiserver with the daemon's identity, bound by exactly the RBAC of
// deploy/base (copied to openshift-adp for the second namespace).
func TestKubernetesChecksRealAPI(t *testing.T) {
	k := harness.StartKube(t)

	k.EnsureNamespace(t, veleroNS)
	k.EnsureNamespace(t, oadpNS)

	role := k.ApplyFile(t, "deploy/base/role.yaml")
	binding := k.ApplyFile(t, "deploy/base/rolebinding.yaml")

	// The same Role and RoleBinding in openshift-adp, subject unchanged, and
	// openshift-adp added to the namespace reader's resourceNames, as
	// deploy/base/role.yaml and namespace-reader.yaml say for a second
	// Velero namespace.
	k.Apply(t, inNamespace(t, role[0], oadpNS), inNamespace(t, binding[0], oadpNS))
	namespaceReader(t, k, veleroNS, oadpNS)

	checks, err := safety.NewKubernetesChecksFromConfig(k.ServiceAccountKubeconfig(t, veleroNS, daemonSA), safety.KubernetesOptions{
		Namespaces:     []string{veleroNS, oadpNS},
		IgnorePods:     []string{"kopia-maintd-0"},
		ScheduleMargin: 2 * time.Hour,
		Timeout:        5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}

	gate := &safety.Gate{Kubernetes: checks, Allow: true, RepositoryName: "test"}

	t.Run("CRDs absent pass as absent", func(t *testing.T) {
		// Without the CRDs, the velero Deployment (scaled to zero) is the
		// evidence of an installation.
		k.Apply(t, []byte(deploymentYAML(veleroNS, 0)), []byte(deploymentYAML(oadpNS, 0)))

		d := gate.CheckKubernetes(ctx(t))
		if !d.Allowed || len(d.Checks) != 28 {
			t.Fatalf("decision %s", show(d))
		}

		for _, c := range d.Checks {
			crd := slices.ContainsFunc(veleroKinds, func(v struct {
				gvr  schema.GroupVersionResource
				kind string
			}) bool {
				return v.gvr.Resource == c.Name
			})
			if crd && (c.Verdict != safety.Absent || c.Reason != "CRD not installed") {
				t.Errorf("%s/%s: %s %q, want absent", c.Namespace, c.Name, c.Verdict, c.Reason)
			}

			if !crd && c.Verdict != safety.Pass {
				t.Errorf("%s/%s: %s %q, want pass", c.Namespace, c.Name, c.Verdict, c.Reason)
			}
		}
	})

	k.InstallCRDs(t)

	now := time.Now().UTC()
	// A daily schedule about twelve hours away: outside any margin.
	farSchedule := fmt.Sprintf("CRON_TZ=UTC 0 %d * * *", (now.Hour()+12)%24)
	jobStart := now.Add(-time.Minute).Format(time.RFC3339)

	tests := []struct {
		name     string
		yaml     []string
		statuses []status
		check    string // "" = all clear
		ns       string
		want     string
	}{
		{name: "all clear, finished work everywhere", yaml: []string{
			deploymentYAML(veleroNS, 0),
			podYAML(veleroNS, "velero-old", "component: velero"),
			podYAML(veleroNS, "kopia-maintd-0", "component: velero"), // ignored: our own pod
			podYAML(veleroNS, "unrelated", "app: other"),
			veleroYAML("velero.io/v1", "Backup", "done", "Completed", ""),
			veleroYAML("velero.io/v1", "Restore", "done", "PartiallyFailed", ""),
			veleroYAML("velero.io/v1", "PodVolumeBackup", "done", "Completed", ""),
			veleroYAML("velero.io/v1", "PodVolumeRestore", "done", "Failed", ""),
			veleroYAML("velero.io/v2alpha1", "DataUpload", "done", "Canceled", ""),
			veleroYAML("velero.io/v2alpha1", "DataDownload", "done", "Completed", ""),
			veleroYAML("velero.io/v1", "DeleteBackupRequest", "done", "Processed", ""),
			veleroYAML("velero.io/v1", "BackupRepository", "ready", "Ready", ""),
			veleroYAML("velero.io/v1", "Schedule", "paused", "Enabled", `{schedule: "*/5 * * * *", paused: true}`),
			veleroYAML("velero.io/v1", "Schedule", "later", "Enabled", fmt.Sprintf(`{schedule: %q}`, farSchedule)),
			jobYAML("repo-maintain-done"),
		}, statuses: []status{
			{podsGVR, veleroNS, "velero-old", map[string]any{"phase": "Succeeded"}},
			{podsGVR, veleroNS, "kopia-maintd-0", map[string]any{"phase": "Running"}},
			{podsGVR, veleroNS, "unrelated", map[string]any{"phase": "Running"}},
			{jobsGVR, veleroNS, "repo-maintain-done", map[string]any{
				"startTime": jobStart, "completionTime": now.Format(time.RFC3339), "succeeded": 1,
				"conditions": []any{
					map[string]any{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now.Format(time.RFC3339)},
					map[string]any{"type": "Complete", "status": "True", "lastTransitionTime": now.Format(time.RFC3339)},
				},
			}},
		}},
		{name: "velero deployment with replicas", yaml: []string{`
apiVersion: apps/v1
kind: Deployment
metadata: {name: velero, namespace: velero}
spec:
  replicas: 1
  selector: {matchLabels: {deploy: velero}}
  template:
    metadata: {labels: {deploy: velero}}
    spec: {containers: [{name: velero, image: velero/velero}]}
`}, check: "velero-server", ns: veleroNS, want: "Deployment velero/velero replicas desired 1"},
		{name: "velero deployment scaled to zero, pod still available", yaml: []string{`
apiVersion: apps/v1
kind: Deployment
metadata: {name: velero, namespace: velero}
spec:
  replicas: 0
  selector: {matchLabels: {deploy: velero}}
  template:
    metadata: {labels: {deploy: velero}}
    spec: {containers: [{name: velero, image: velero/velero}]}
`}, statuses: []status{{deploymentsGVR, veleroNS, "velero", map[string]any{"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}}},
			check: "velero-server", ns: veleroNS, want: "replicas desired 0 available 1 ready 1"},
		{name: "velero pod running", yaml: []string{podYAML(veleroNS, "velero-7d9f", "component: velero")},
			statuses: []status{{podsGVR, veleroNS, "velero-7d9f", map[string]any{"phase": "Running"}}},
			check:    "velero-server", ns: veleroNS, want: "Pod velero/velero-7d9f phase Running"},
		{name: "velero pod pending (deploy label)", yaml: []string{podYAML(veleroNS, "velero-pending", "deploy: velero")},
			check: "velero-server", ns: veleroNS, want: "Pod velero/velero-pending phase Pending"},
		{name: "velero pod in openshift-adp", yaml: []string{podYAML(oadpNS, "velero-oadp", "component: velero")},
			statuses: []status{{podsGVR, oadpNS, "velero-oadp", map[string]any{"phase": "Running"}}},
			check:    "velero-server", ns: oadpNS, want: "Pod openshift-adp/velero-oadp phase Running"},
		{name: "node-agent daemonset scheduled", yaml: []string{`
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent, namespace: velero}
spec:
  selector: {matchLabels: {name: node-agent}}
  template:
    metadata: {labels: {name: node-agent}}
    spec: {containers: [{name: node-agent, image: velero/velero}]}
`}, statuses: []status{{daemonSetsGVR, veleroNS, "node-agent", map[string]any{
			"currentNumberScheduled": 2, "desiredNumberScheduled": 2, "numberMisscheduled": 0, "numberReady": 0}}},
			check: "node-agent", ns: veleroNS, want: "DaemonSet velero/node-agent scheduled 2 desired 2"},
		{name: "node-agent-windows daemonset desired", yaml: []string{`
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent-windows, namespace: velero}
spec:
  selector: {matchLabels: {name: node-agent-windows}}
  template:
    metadata: {labels: {name: node-agent-windows}}
    spec: {containers: [{name: node-agent, image: velero/velero}]}
`}, statuses: []status{{daemonSetsGVR, veleroNS, "node-agent-windows", map[string]any{
			"currentNumberScheduled": 0, "desiredNumberScheduled": 1, "numberMisscheduled": 0, "numberReady": 0}}},
			check: "node-agent", ns: veleroNS, want: "DaemonSet velero/node-agent-windows scheduled 0 desired 1"},
		{name: "node-agent pod", yaml: []string{podYAML(veleroNS, "node-agent-x2v", "name: node-agent")},
			statuses: []status{{podsGVR, veleroNS, "node-agent-x2v", map[string]any{"phase": "Running"}}},
			check:    "node-agent", ns: veleroNS, want: "Pod velero/node-agent-x2v phase Running"},
		{name: "data upload pod", yaml: []string{podYAML(veleroNS, "du-abc", "velero.io/data-upload: du-abc")},
			check: "data-path-pods", ns: veleroNS, want: "Pod velero/du-abc phase Pending"},
		{name: "data download pod", yaml: []string{podYAML(veleroNS, "dd-abc", "velero.io/data-download: dd-abc")},
			check: "data-path-pods", ns: veleroNS, want: "label velero.io/data-download"},
		{name: "pod volume backup pod", yaml: []string{podYAML(veleroNS, "pvb-abc", "velero.io/pod-volume-backup: pvb-abc")},
			statuses: []status{{podsGVR, veleroNS, "pvb-abc", map[string]any{"phase": "Running"}}},
			check:    "data-path-pods", ns: veleroNS, want: "Pod velero/pvb-abc phase Running"},
		{name: "pod volume restore pod", yaml: []string{podYAML(veleroNS, "pvr-abc", "velero.io/pod-volume-restore: pvr-abc")},
			check: "data-path-pods", ns: veleroNS, want: "label velero.io/pod-volume-restore"},
		{name: "maintenance job active", yaml: []string{jobYAML("repo-maintain-1")},
			statuses: []status{{jobsGVR, veleroNS, "repo-maintain-1", map[string]any{"active": 1, "startTime": jobStart}}},
			check:    "maintenance-jobs", ns: veleroNS, want: "Job velero/repo-maintain-1 repository default-kopia-abcd active 1"},
		{name: "maintenance job not started yet", yaml: []string{jobYAML("repo-maintain-2")},
			check: "maintenance-jobs", ns: veleroNS, want: "Job velero/repo-maintain-2 repository default-kopia-abcd active 0"},
		{name: "backup in progress", yaml: []string{veleroYAML("velero.io/v1", "Backup", "nightly-1", "InProgress", "")},
			check: "backups", ns: veleroNS, want: "Backup velero/nightly-1 phase InProgress"},
		{name: "backup without phase is new", yaml: []string{veleroYAML("velero.io/v1", "Backup", "fresh", "", "")},
			check: "backups", ns: veleroNS, want: "Backup velero/fresh phase New (empty)"},
		{name: "backup deleting", yaml: []string{veleroYAML("velero.io/v1", "Backup", "old", "Deleting", "")},
			check: "backups", ns: veleroNS, want: "Backup velero/old phase Deleting"},
		{name: "restore waiting for plugin operations", yaml: []string{veleroYAML("velero.io/v1", "Restore", "r1", "WaitingForPluginOperations", "")},
			check: "restores", ns: veleroNS, want: "Restore velero/r1 phase WaitingForPluginOperations"},
		{name: "pod volume backup in progress", yaml: []string{veleroYAML("velero.io/v1", "PodVolumeBackup", "pvb1", "InProgress", "")},
			check: "podvolumebackups", ns: veleroNS, want: "PodVolumeBackup velero/pvb1 phase InProgress"},
		{name: "pod volume restore accepted", yaml: []string{veleroYAML("velero.io/v1", "PodVolumeRestore", "pvr1", "Accepted", "")},
			check: "podvolumerestores", ns: veleroNS, want: "PodVolumeRestore velero/pvr1 phase Accepted"},
		{name: "data upload prepared", yaml: []string{veleroYAML("velero.io/v2alpha1", "DataUpload", "du1", "Prepared", "")},
			check: "datauploads", ns: veleroNS, want: "DataUpload velero/du1 phase Prepared"},
		{name: "data download canceling", yaml: []string{veleroYAML("velero.io/v2alpha1", "DataDownload", "dd1", "Canceling", "")},
			check: "datadownloads", ns: veleroNS, want: "DataDownload velero/dd1 phase Canceling"},
		{name: "delete backup request new", yaml: []string{veleroYAML("velero.io/v1", "DeleteBackupRequest", "del1", "New", "")},
			check: "deletebackuprequests", ns: veleroNS, want: "DeleteBackupRequest velero/del1 phase New"},
		{name: "backup repository not ready", yaml: []string{veleroYAML("velero.io/v1", "BackupRepository", "default-kopia-abcd", "NotReady", "")},
			check: "backuprepositories", ns: veleroNS, want: "BackupRepository velero/default-kopia-abcd phase NotReady"},
		{name: "schedule due within the margin", yaml: []string{veleroYAML("velero.io/v1", "Schedule", "every-5m", "Enabled", `{schedule: "*/5 * * * *"}`)},
			check: "schedules", ns: veleroNS, want: `Schedule velero/every-5m spec "*/5 * * * *" next `},
		{name: "schedule that does not parse", yaml: []string{veleroYAML("velero.io/v1", "Schedule", "broken", "FailedValidation", `{schedule: "at noon"}`)},
			check: "schedules", ns: veleroNS, want: "does not parse (fail closed)"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			installed(t, k)

			for _, y := range tt.yaml {
				k.Apply(t, []byte(y))
			}

			for _, s := range tt.statuses {
				k.SetStatus(t, s.gvr, s.ns, s.name, s.status)
			}

			d := gate.CheckKubernetes(ctx(t))
			expect(t, d, tt.check, tt.ns, tt.want)
		})
	}

	// gateFor checks only the given namespaces, with the daemon's identity
	// and a repository that is quiet.
	gateFor := func(c *safety.KubernetesChecks, namespaces ...string) *safety.Gate {
		one := *c
		one.Namespaces = namespaces

		return &safety.Gate{Kubernetes: &one, Allow: true, RepositoryName: "test",
			Repository: safety.CheckerFunc(func(context.Context) ([]safety.Check, error) {
				return []safety.Check{{Name: safety.CheckRepositoryActivity, Verdict: safety.Pass, Reason: "quiet"}}, nil
			})}
	}

	t.Run("OADP namespace configured, Velero busy in velero", func(t *testing.T) {
		reset(t, k)
		k.Apply(t, []byte(deploymentYAML(veleroNS, 1)), []byte(bslYAML(veleroNS)),
			[]byte(podYAML(veleroNS, "velero-7d9f", "component: velero")),
			[]byte(veleroYAML("velero.io/v1", "Backup", "nightly-1", "InProgress", "")))
		k.SetStatus(t, podsGVR, veleroNS, "velero-7d9f", map[string]any{"phase": "Running"})

		_, d, err := gateFor(checks, oadpNS).Admit(ctx(t))

		r := d.Refusals()
		if err == nil || d.Allowed || len(r) != 1 || r[0].Name != safety.CheckVeleroInstallation || r[0].Namespace != oadpNS ||
			r[0].Reason != "no Velero installation found in namespace openshift-adp" {
			t.Fatalf("Admit: %v; decision %s", err, show(d))
		}

		if want := `safety=none refused for repository "test": openshift-adp/velero-installation: no Velero installation found in namespace openshift-adp`; err.Error() != want {
			t.Errorf("error %q, want %q", err, want)
		}
	})

	t.Run("velero Deployment at zero replicas and nothing running passes", func(t *testing.T) {
		reset(t, k)
		k.Apply(t, []byte(deploymentYAML(veleroNS, 0)))

		a, d, err := gateFor(checks, veleroNS).Admit(ctx(t))
		if err != nil || !a.Valid() {
			t.Fatalf("Admit: %v; decision %s", err, show(d))
		}

		if c := d.Checks[0]; c.Name != safety.CheckVeleroInstallation || c.Verdict != safety.Pass || c.Reason != "velero Deployment found" ||
			len(c.Evidence) != 1 || !strings.HasPrefix(c.Evidence[0], "Deployment velero/velero replicas desired 0 available 0 ready 0 age ") {
			t.Errorf("installation check %+v", c)
		}
	})

	t.Run("a BackupStorageLocation alone is an installation", func(t *testing.T) {
		reset(t, k)
		k.Apply(t, []byte(bslYAML(veleroNS)))

		a, d, err := gateFor(checks, veleroNS).Admit(ctx(t))
		if err != nil || !a.Valid() {
			t.Fatalf("Admit: %v; decision %s", err, show(d))
		}

		if c := d.Checks[0]; c.Name != safety.CheckVeleroInstallation || c.Verdict != safety.Pass || c.Reason != "velero BackupStorageLocation found" ||
			len(c.Evidence) != 1 || !strings.HasPrefix(c.Evidence[0], "BackupStorageLocation velero/default age ") {
			t.Errorf("installation check %+v", c)
		}
	})

	t.Run("an empty namespace is no installation", func(t *testing.T) {
		reset(t, k)

		d := gateFor(checks, veleroNS).Check(ctx(t))
		if r := d.Refusals(); d.Allowed || len(r) != 1 || r[0].Reason != "no Velero installation found in namespace velero" {
			t.Errorf("decision %s", show(d))
		}
	})

	t.Run("a namespace that does not exist", func(t *testing.T) {
		reset(t, k)

		// With rights on every namespace (the admin), the server answers
		// NotFound for the namespace and empty lists inside it.
		admin, err := safety.NewKubernetesChecksFromConfig(k.AdminKubeconfig(t), safety.KubernetesOptions{Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}

		d := gateFor(admin, "velero-missing").Check(ctx(t))
		if r := d.Refusals(); d.Allowed || len(r) != 1 || r[0].Name != safety.CheckVeleroInstallation ||
			r[0].Reason != "no Velero installation found in namespace velero-missing: the namespace does not exist" {
			t.Errorf("admin: decision %s", show(d))
		}

		// The daemon's identity has no grant there: every read is forbidden.
		d = gateFor(checks, "velero-missing").Check(ctx(t))
		if c := d.Checks[0]; d.Allowed || c.Name != safety.CheckVeleroInstallation || c.Verdict != safety.Refuse ||
			!strings.Contains(c.Reason, `get namespace velero-missing: namespaces "velero-missing" is forbidden`) {
			t.Errorf("daemon: decision %s", show(d))
		}
	})

	t.Run("role without list on backups", func(t *testing.T) {
		installed(t, k)

		// deploy/base's Role with one verb less: backups may be got and
		// watched, not listed.
		narrowed := role[0].DeepCopy()
		rules, _, _ := unstructured.NestedSlice(narrowed.Object, "rules")

		for _, r := range rules {
			rm := r.(map[string]any)
			if groups, _ := rm["apiGroups"].([]any); slices.Contains(groups, any("velero.io")) {
				rm["resources"] = slices.DeleteFunc(rm["resources"].([]any), func(v any) bool { return v == "backups" })
			}
		}

		rules = append(rules, map[string]any{"apiGroups": []any{"velero.io"}, "resources": []any{"backups"}, "verbs": []any{"get", "watch"}})
		if err := unstructured.SetNestedSlice(narrowed.Object, rules, "rules"); err != nil {
			t.Fatal(err)
		}

		k.Apply(t, inNamespace(t, narrowed, veleroNS))

		// RBAC changes reach the authorizer through an informer: wait.
		d := eventually(t, gate, func(d safety.Decision) bool { return !d.Allowed })
		expect(t, d, "backups", veleroNS, "list backups: backups.velero.io is forbidden")

		k.Apply(t, inNamespace(t, role[0], veleroNS))
		eventually(t, gate, func(d safety.Decision) bool { return d.Allowed })
	})

	t.Run("API server stopped", func(t *testing.T) {
		installed(t, k)
		k.Stop(t)

		d := gate.CheckKubernetes(ctx(t))
		if d.Allowed || len(d.Checks) != 28 {
			t.Errorf("decision %s", show(d))
		}

		for _, c := range d.Checks {
			if c.Verdict != safety.Refuse || !strings.Contains(c.Reason, "connection refused") {
				t.Errorf("%s/%s: %s %q, want a refusal naming the connection", c.Namespace, c.Name, c.Verdict, c.Reason)
			}
		}

		k.Start(t)
		eventually(t, gate, func(d safety.Decision) bool { return d.Allowed })
	})
}

// namespaceReader applies deploy/base/namespace-reader.yaml with its
// ClusterRole's resourceNames set to namespaces.
func namespaceReader(t *testing.T, k *harness.Kube, namespaces ...string) {
	t.Helper()

	for _, o := range k.ApplyFile(t, "deploy/base/namespace-reader.yaml") {
		if o.GetKind() != "ClusterRole" {
			continue
		}

		rules, _, _ := unstructured.NestedSlice(o.Object, "rules")

		names := make([]any, 0, len(namespaces))
		for _, ns := range namespaces {
			names = append(names, ns)
		}

		rules[0].(map[string]any)["resourceNames"] = names
		if err := unstructured.SetNestedSlice(o.Object, rules, "rules"); err != nil {
			t.Fatal(err)
		}

		k.Apply(t, inNamespace(t, o, ""))
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)

	return c
}

// expect asserts that only check in ns refuses, with evidence containing
// want; or, when check is "", that everything passes.
func expect(t *testing.T, d safety.Decision, check, ns, want string) {
	t.Helper()

	if len(d.Checks) != 28 {
		t.Fatalf("%d checks, want 14 in each of 2 namespaces: %s", len(d.Checks), show(d))
	}

	if d.Allowed != (check == "") {
		t.Errorf("allowed %v: %s", d.Allowed, show(d))
	}

	found := false

	for _, c := range d.Checks {
		if c.Name == check && c.Namespace == ns {
			found = true

			text := c.Reason + "\n" + strings.Join(c.Evidence, "\n")
			if c.Verdict != safety.Refuse || !strings.Contains(text, want) {
				t.Errorf("%s/%s: %s %q, want refuse with %q", ns, check, c.Verdict, text, want)
			}

			continue
		}

		if c.Verdict != safety.Pass {
			t.Errorf("%s/%s: %s %q %v, want pass", c.Namespace, c.Name, c.Verdict, c.Reason, c.Evidence)
		}
	}

	if check != "" && !found {
		t.Errorf("no check %s/%s: %s", ns, check, show(d))
	}
}

// eventually re-checks until ok holds (RBAC and a restarted API server take
// a moment to settle) and returns that decision.
func eventually(t *testing.T, gate *safety.Gate, ok func(safety.Decision) bool) safety.Decision {
	t.Helper()

	deadline := time.Now().Add(30 * time.Second)

	for {
		d := gate.CheckKubernetes(ctx(t))
		if ok(d) {
			return d
		}

		if time.Now().After(deadline) {
			t.Fatalf("decision did not settle: %s", show(d))
		}

		time.Sleep(100 * time.Millisecond)
	}
}

func show(d safety.Decision) string {
	b, _ := json.MarshalIndent(d, "", "  ")

	return string(b)
}

// inNamespace returns obj as a JSON document for namespace ns, without the
// server's bookkeeping fields.
func inNamespace(t *testing.T, obj *unstructured.Unstructured, ns string) []byte {
	t.Helper()

	o := obj.DeepCopy()
	o.SetNamespace(ns)
	o.SetResourceVersion("")
	o.SetUID("")
	o.SetCreationTimestamp(metav1.Time{})
	o.SetManagedFields(nil)
	o.SetGeneration(0)

	b, err := json.Marshal(o.Object)
	if err != nil {
		t.Fatal(err)
	}

	return b
}

// reset deletes every object the checks read in both namespaces.
func reset(t *testing.T, k *harness.Kube) {
	t.Helper()

	gvrs := []schema.GroupVersionResource{podsGVR, jobsGVR, deploymentsGVR, daemonSetsGVR, bslGVR}
	for _, v := range veleroKinds {
		gvrs = append(gvrs, v.gvr)
	}

	dyn := k.Dynamic(t)
	background := metav1.DeletePropagationBackground
	zero := int64(0)

	for _, ns := range []string{veleroNS, oadpNS} {
		for _, gvr := range gvrs {
			err := dyn.Resource(gvr).Namespace(ns).DeleteCollection(ctx(t),
				metav1.DeleteOptions{PropagationPolicy: &background, GracePeriodSeconds: &zero}, metav1.ListOptions{})
			if err != nil && !strings.Contains(err.Error(), "could not find the requested resource") {
				t.Fatalf("delete %s in %s: %v", gvr.Resource, ns, err)
			}
		}
	}
}
