package kube

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// The daemon's ServiceAccount (deploy/base/serviceaccount.yaml) and the
// namespace deploy/base/role.yaml and rolebinding.yaml name.
const (
	daemonSA      = "kopia-maintd"
	veleroNS      = "velero"
	otherVeleroNS = "openshift-adp"
	rbacRoleFile  = "deploy/base/role.yaml"
	rbacBindFile  = "deploy/base/rolebinding.yaml"
	nsReaderFile  = "deploy/base/namespace-reader.yaml"
	leaseRoleFile = "deploy/base/lease-role.yaml"
	leaseBindFile = "deploy/base/lease-rolebinding.yaml"
)

var (
	podsGVR        = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	namespacesGVR  = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	secretsGVR     = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}
	configMapsGVR  = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
	jobsGVR        = schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}
	deploymentsGVR = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	daemonSetsGVR  = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}
	leasesGVR      = schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}
)

// veleroResources are the custom resources the gate reads, with the kinds
// test/testdata/crds defines.
var veleroResources = []struct {
	apiVersion, kind, resource string
}{
	{"velero.io/v1", "Backup", "backups"},
	{"velero.io/v1", "Restore", "restores"},
	{"velero.io/v1", "Schedule", "schedules"},
	{"velero.io/v1", "PodVolumeBackup", "podvolumebackups"},
	{"velero.io/v1", "PodVolumeRestore", "podvolumerestores"},
	{"velero.io/v1", "DeleteBackupRequest", "deletebackuprequests"},
	{"velero.io/v1", "BackupRepository", "backuprepositories"},
	{"velero.io/v1", "BackupStorageLocation", "backupstoragelocations"},
	{"velero.io/v2alpha1", "DataUpload", "datauploads"},
	{"velero.io/v2alpha1", "DataDownload", "datadownloads"},
}

func veleroGVR(apiVersion, resource string) schema.GroupVersionResource {
	gv, _ := schema.ParseGroupVersion(apiVersion)
	return gv.WithResource(resource)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// startKube starts the API server and logs how long that took (about 3 s
// on an idle machine; not checked, as a loaded CI machine is slower).
func startKube(t *testing.T) *harness.Kube {
	t.Helper()
	start := time.Now()
	k := harness.StartKube(t)
	t.Logf("StartKube took %v", time.Since(start).Round(time.Millisecond))
	return k
}

// dynamicFromKubeconfig loads a kubeconfig file the way a client (the
// daemon) would and returns a dynamic client and the context's namespace.
func dynamicFromKubeconfig(t *testing.T, path string) (dynamic.Interface, string) {
	t.Helper()
	loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: path}, &clientcmd.ConfigOverrides{})
	cfg, err := loader.ClientConfig()
	if err != nil {
		t.Fatalf("load kubeconfig %s: %v", path, err)
	}
	ns, _, err := loader.Namespace()
	if err != nil {
		t.Fatalf("namespace of kubeconfig %s: %v", path, err)
	}
	// client-go's default (5 requests a second) would make the test wait.
	cfg.QPS, cfg.Burst = 100, 200
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return dyn, ns
}

// TestDeployRBAC binds the daemon's ServiceAccount with the Role and
// RoleBinding files of deploy/base as they are, and the ClusterRole of
// namespace-reader.yaml, and checks with a token of that ServiceAccount that
// it can read everything the gate reads in velero, get the namespace velero
// itself, and nothing else: no Secrets, no writes, nothing in other
// namespaces, no other namespace.
func TestDeployRBAC(t *testing.T) {
	t.Parallel()
	k := startKube(t)
	k.InstallCRDs(t)

	role := k.ApplyFile(t, rbacRoleFile)
	binding := k.ApplyFile(t, rbacBindFile)
	if len(role) != 1 || role[0].GetKind() != "Role" || role[0].GetNamespace() != veleroNS {
		t.Fatalf("%s: want one Role in %s, got %v", rbacRoleFile, veleroNS, role)
	}
	if len(binding) != 1 || binding[0].GetKind() != "RoleBinding" || binding[0].GetNamespace() != veleroNS {
		t.Fatalf("%s: want one RoleBinding in %s, got %v", rbacBindFile, veleroNS, binding)
	}
	subjects, _, _ := unstructured.NestedSlice(binding[0].Object, "subjects")
	if len(subjects) != 1 {
		t.Fatalf("RoleBinding subjects = %v, want the daemon's ServiceAccount", subjects)
	}
	subject := subjects[0].(map[string]any)
	if subject["kind"] != "ServiceAccount" || subject["name"] != daemonSA || subject["namespace"] != veleroNS {
		t.Fatalf("RoleBinding subject = %v, want ServiceAccount %s/%s", subject, veleroNS, daemonSA)
	}
	nsReader := k.ApplyFile(t, nsReaderFile)
	if len(nsReader) != 2 || nsReader[0].GetKind() != "ClusterRole" || nsReader[1].GetKind() != "ClusterRoleBinding" {
		t.Fatalf("%s: want a ClusterRole and a ClusterRoleBinding, got %v", nsReaderFile, nsReader)
	}

	// Something to find in each namespace: the gate's reads must see objects,
	// not only be allowed to list.
	k.EnsureNamespace(t, otherVeleroNS)
	for _, ns := range []string{veleroNS, otherVeleroNS} {
		k.Apply(t, []byte(`
apiVersion: velero.io/v1
kind: Backup
metadata:
  name: daily
  namespace: `+ns+`
spec: {}
`), []byte(`
apiVersion: v1
kind: Pod
metadata:
  name: velero-abc
  namespace: `+ns+`
  labels: {component: velero, deploy: velero}
spec:
  containers: [{name: velero, image: velero/velero}]
`))
	}

	dyn, ns := dynamicFromKubeconfig(t, k.ServiceAccountKubeconfig(t, veleroNS, daemonSA))
	if ns != veleroNS {
		t.Errorf("kubeconfig namespace = %q, want %q", ns, veleroNS)
	}

	allowed := []schema.GroupVersionResource{podsGVR, jobsGVR, deploymentsGVR, daemonSetsGVR}
	for _, r := range veleroResources {
		allowed = append(allowed, veleroGVR(r.apiVersion, r.resource))
	}
	for _, gvr := range allowed {
		list, err := dyn.Resource(gvr).Namespace(veleroNS).List(ctx(t), metav1.ListOptions{})
		if err != nil {
			t.Errorf("list %s in %s: %v", gvr.Resource, veleroNS, err)
			continue
		}
		// watch too: the gate uses informers.
		w, err := dyn.Resource(gvr).Namespace(veleroNS).Watch(ctx(t), metav1.ListOptions{ResourceVersion: list.GetResourceVersion()})
		if err != nil {
			t.Errorf("watch %s in %s: %v", gvr.Resource, veleroNS, err)
			continue
		}
		w.Stop()
	}
	if b, err := dyn.Resource(veleroGVR("velero.io/v1", "backups")).Namespace(veleroNS).Get(ctx(t), "daily", metav1.GetOptions{}); err != nil {
		t.Errorf("get backup %s/daily: %v", veleroNS, err)
	} else if b.GetName() != "daily" {
		t.Errorf("get backup: got %s", b.GetName())
	}
	if pods, err := dyn.Resource(podsGVR).Namespace(veleroNS).List(ctx(t), metav1.ListOptions{LabelSelector: "component=velero"}); err != nil || len(pods.Items) != 1 {
		t.Errorf("list velero pods in %s: %v, %v", veleroNS, err, pods)
	}
	// The gate gets the namespace itself, to tell a missing one.
	if n, err := dyn.Resource(namespacesGVR).Get(ctx(t), veleroNS, metav1.GetOptions{}); err != nil || n.GetName() != veleroNS {
		t.Errorf("get namespace %s: %v", veleroNS, err)
	}

	forbidden := []struct {
		what string
		do   func() error
	}{
		{"list secrets in velero", func() error {
			_, err := dyn.Resource(secretsGVR).Namespace(veleroNS).List(ctx(t), metav1.ListOptions{})
			return err
		}},
		{"get secret velero-repo-credentials", func() error {
			_, err := dyn.Resource(secretsGVR).Namespace(veleroNS).Get(ctx(t), "velero-repo-credentials", metav1.GetOptions{})
			return err
		}},
		{"list configmaps in velero", func() error {
			_, err := dyn.Resource(configMapsGVR).Namespace(veleroNS).List(ctx(t), metav1.ListOptions{})
			return err
		}},
		{"list backups in " + otherVeleroNS, func() error {
			_, err := dyn.Resource(veleroGVR("velero.io/v1", "backups")).Namespace(otherVeleroNS).List(ctx(t), metav1.ListOptions{})
			return err
		}},
		{"list pods in " + otherVeleroNS, func() error {
			_, err := dyn.Resource(podsGVR).Namespace(otherVeleroNS).List(ctx(t), metav1.ListOptions{})
			return err
		}},
		{"get namespace " + otherVeleroNS, func() error {
			_, err := dyn.Resource(namespacesGVR).Get(ctx(t), otherVeleroNS, metav1.GetOptions{})
			return err
		}},
		{"list namespaces", func() error {
			_, err := dyn.Resource(namespacesGVR).List(ctx(t), metav1.ListOptions{})
			return err
		}},
		{"update namespace velero", func() error {
			_, err := dyn.Resource(namespacesGVR).Patch(ctx(t), veleroNS, "application/merge-patch+json", []byte(`{"metadata":{"labels":{"x":"y"}}}`), metav1.PatchOptions{})
			return err
		}},
		{"list backups in all namespaces", func() error {
			_, err := dyn.Resource(veleroGVR("velero.io/v1", "backups")).List(ctx(t), metav1.ListOptions{})
			return err
		}},
		{"delete backup velero/daily", func() error {
			return dyn.Resource(veleroGVR("velero.io/v1", "backups")).Namespace(veleroNS).Delete(ctx(t), "daily", metav1.DeleteOptions{})
		}},
		{"patch backuprepository spec", func() error {
			_, err := dyn.Resource(veleroGVR("velero.io/v1", "backuprepositories")).Namespace(veleroNS).Patch(ctx(t), "any", "application/merge-patch+json", []byte(`{"spec":{"maintenanceFrequency":"720h"}}`), metav1.PatchOptions{})
			return err
		}},
		{"scale deployment velero", func() error {
			_, err := dyn.Resource(deploymentsGVR).Namespace(veleroNS).Patch(ctx(t), "velero", "application/merge-patch+json", []byte(`{"spec":{"replicas":0}}`), metav1.PatchOptions{})
			return err
		}},
		{"create lease in velero (the velero-reader Role grants no leases)", func() error {
			_, err := dyn.Resource(leasesGVR).Namespace(veleroNS).Create(ctx(t), &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
				"metadata": map[string]any{"name": "kopia-maintd"},
			}}, metav1.CreateOptions{})
			return err
		}},
	}
	for _, f := range forbidden {
		if err := f.do(); !apierrors.IsForbidden(err) {
			t.Errorf("%s: err = %v, want Forbidden", f.what, err)
		}
	}

	// Discovery is allowed to every authenticated user: the gate's
	// RESTMapper works with the daemon's token.
	saMapper := harness.NewRESTMapper(t, k.ServiceAccountConfig(t, veleroNS, daemonSA))
	for _, r := range veleroResources {
		gv, _ := schema.ParseGroupVersion(r.apiVersion)
		m, err := saMapper.RESTMapping(gv.WithKind(r.kind).GroupKind(), gv.Version)
		if err != nil {
			t.Errorf("discover %s %s with the daemon's token: %v", r.apiVersion, r.kind, err)
		} else if m.Resource.Resource != r.resource {
			t.Errorf("%s %s maps to %s, want %s", r.apiVersion, r.kind, m.Resource.Resource, r.resource)
		}
	}
}

// TestDeployLeaseRBAC applies deploy/base's Lease Role and RoleBinding as
// they are (namespace-less: into default, as `kubectl apply -k deploy/base`
// would) and checks with the daemon's token that it can create, get and
// update Leases there, as the lease package does, and nothing else.
func TestDeployLeaseRBAC(t *testing.T) {
	t.Parallel()
	k := startKube(t)
	const ns = "default"
	role := k.ApplyFile(t, leaseRoleFile)
	binding := k.ApplyFile(t, leaseBindFile)
	if len(role) != 1 || role[0].GetKind() != "Role" || role[0].GetNamespace() != ns {
		t.Fatalf("%s: want one Role in %s, got %v", leaseRoleFile, ns, role)
	}
	if len(binding) != 1 || binding[0].GetKind() != "RoleBinding" || binding[0].GetNamespace() != ns {
		t.Fatalf("%s: want one RoleBinding in %s, got %v", leaseBindFile, ns, binding)
	}
	dyn, _ := dynamicFromKubeconfig(t, k.ServiceAccountKubeconfig(t, ns, daemonSA))
	leases := dyn.Resource(leasesGVR).Namespace(ns)
	lease := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
		"metadata": map[string]any{"name": "kopia-maintd-main"},
		"spec":     map[string]any{"holderIdentity": "a", "leaseDurationSeconds": int64(60)},
	}}
	created, err := leases.Create(ctx(t), lease, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create lease: %v", err)
	}
	got, err := leases.Get(ctx(t), "kopia-maintd-main", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get lease: %v", err)
	}
	_ = unstructured.SetNestedField(got.Object, "b", "spec", "holderIdentity")
	if _, err := leases.Update(ctx(t), got, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update lease: %v", err)
	}
	// The resourceVersion check the lease package relies on.
	if _, err := leases.Update(ctx(t), created, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		t.Errorf("update with an old resourceVersion: err = %v, want Conflict", err)
	}

	forbidden := []struct {
		what string
		do   func() error
	}{
		{"list leases", func() error {
			_, err := leases.List(ctx(t), metav1.ListOptions{})
			return err
		}},
		{"watch leases", func() error {
			_, err := leases.Watch(ctx(t), metav1.ListOptions{})
			return err
		}},
		{"delete lease", func() error {
			return leases.Delete(ctx(t), "kopia-maintd-main", metav1.DeleteOptions{})
		}},
		{"patch lease", func() error {
			_, err := leases.Patch(ctx(t), "kopia-maintd-main", "application/merge-patch+json", []byte(`{"spec":{"holderIdentity":"c"}}`), metav1.PatchOptions{})
			return err
		}},
		{"get lease in velero", func() error {
			_, err := dyn.Resource(leasesGVR).Namespace(veleroNS).Get(ctx(t), "kopia-maintd-main", metav1.GetOptions{})
			return err
		}},
		{"list configmaps in default", func() error {
			_, err := dyn.Resource(configMapsGVR).Namespace(ns).List(ctx(t), metav1.ListOptions{})
			return err
		}},
	}
	for _, f := range forbidden {
		if err := f.do(); !apierrors.IsForbidden(err) {
			t.Errorf("%s: err = %v, want Forbidden", f.what, err)
		}
	}
}

// TestVeleroCRDs checks the CRDs: every kind the gate reads is served under
// Velero's resource name, namespaced, and keeps the fields the gate reads,
// set through SetStatus as Velero's controllers would.
func TestVeleroCRDs(t *testing.T) {
	t.Parallel()
	k := startKube(t)
	start := time.Now()
	k.InstallCRDs(t)
	t.Logf("InstallCRDs took %v", time.Since(start).Round(time.Millisecond))
	dyn := k.Dynamic(t)

	for _, r := range veleroResources {
		if got := k.GVR(t, r.apiVersion, r.kind); got != veleroGVR(r.apiVersion, r.resource) {
			t.Errorf("%s %s is served as %v, want resource %s", r.apiVersion, r.kind, got, r.resource)
		}
		objs := k.Apply(t, []byte("apiVersion: "+r.apiVersion+"\nkind: "+r.kind+"\nmetadata:\n  name: x\n  namespace: velero\nspec:\n  anything: [kept]\n"))
		if objs[0].GetNamespace() != "velero" {
			t.Errorf("%s created in %q, want velero", r.kind, objs[0].GetNamespace())
		}
		got := k.SetStatus(t, veleroGVR(r.apiVersion, r.resource), "velero", "x", map[string]any{"phase": "New", "extra": "kept"})
		if phase, _, _ := unstructured.NestedString(got.Object, "status", "phase"); phase != "New" {
			t.Errorf("%s status.phase = %q after SetStatus, want New", r.kind, phase)
		}
		if v, _, _ := unstructured.NestedString(got.Object, "status", "extra"); v != "kept" {
			t.Errorf("%s status.extra = %q, want kept (unknown status fields are preserved)", r.kind, v)
		}
		if v, _, _ := unstructured.NestedStringSlice(got.Object, "spec", "anything"); len(v) != 1 {
			t.Errorf("%s spec.anything = %v, want kept", r.kind, v)
		}
	}

	// The fields the gate reads are typed as Velero types them.
	schedules := veleroGVR("velero.io/v1", "schedules")
	k.Apply(t, []byte(`
apiVersion: velero.io/v1
kind: Schedule
metadata: {name: nightly, namespace: velero}
spec: {schedule: "0 1 * * *", paused: false, template: {includedNamespaces: ["*"]}}
`))
	s := k.SetStatus(t, schedules, "velero", "nightly", map[string]any{"phase": "Enabled", "lastBackup": "2026-01-02T01:00:00Z"})
	if v, _, _ := unstructured.NestedString(s.Object, "status", "lastBackup"); v != "2026-01-02T01:00:00Z" {
		t.Errorf("schedule status.lastBackup = %q", v)
	}
	_, err := dyn.Resource(schedules).Namespace("velero").Patch(ctx(t), "nightly", "application/merge-patch+json", []byte(`{"spec":{"paused":"yes"}}`), metav1.PatchOptions{})
	if !apierrors.IsInvalid(err) {
		t.Errorf("spec.paused \"yes\": err = %v, want Invalid (a boolean, as in Velero)", err)
	}
	_, err = dyn.Resource(veleroGVR("velero.io/v1", "backups")).Namespace("velero").Patch(ctx(t), "x", "application/merge-patch+json", []byte(`{"status":{"phase":"Running"}}`), metav1.PatchOptions{})
	if !apierrors.IsInvalid(err) {
		t.Errorf("backup phase Running: err = %v, want Invalid (not one of Velero's phases)", err)
	}
	repos := veleroGVR("velero.io/v1", "backuprepositories")
	r := k.SetStatus(t, repos, "velero", "x", map[string]any{"phase": "NotReady", "lastMaintenanceTime": "2026-01-02T03:04:05Z"})
	if v, _, _ := unstructured.NestedString(r.Object, "status", "phase"); v != "NotReady" {
		t.Errorf("backuprepository status.phase = %q, want NotReady", v)
	}
}

// TestCoreStatus creates what Velero's controllers would (a Pod, a Job, the
// velero Deployment) and sets their status through the status subresource,
// since nothing else runs in the harness's cluster.
func TestCoreStatus(t *testing.T) {
	t.Parallel()
	k := startKube(t)
	disc, err := discovery.NewDiscoveryClientForConfig(k.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	if v, err := disc.ServerVersion(); err != nil || !strings.HasPrefix(v.GitVersion, "v1.") {
		t.Errorf("server version = %v, %v; want v1.x (scripts/install-tools.sh stamps it)", v, err)
	} else {
		t.Logf("kube-apiserver %s", v.GitVersion)
	}
	k.Apply(t, []byte(`
apiVersion: v1
kind: Pod
metadata:
  name: node-agent-x
  namespace: velero
  labels: {name: node-agent}
spec:
  containers: [{name: node-agent, image: velero/velero}]
---
apiVersion: batch/v1
kind: Job
metadata:
  name: repo-maintain-job
  namespace: velero
  labels: {velero.io/repo-name: default-kopia-abc}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: maintain, image: velero/velero}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: velero, namespace: velero}
spec:
  replicas: 1
  selector: {matchLabels: {deploy: velero}}
  template:
    metadata: {labels: {deploy: velero}}
    spec:
      containers: [{name: velero, image: velero/velero}]
`))
	pod := k.SetStatus(t, podsGVR, "velero", "node-agent-x", map[string]any{"phase": "Running"})
	if v, _, _ := unstructured.NestedString(pod.Object, "status", "phase"); v != "Running" {
		t.Errorf("pod phase = %q, want Running", v)
	}
	if v, _, _ := unstructured.NestedString(pod.Object, "status", "qosClass"); v == "" {
		t.Errorf("SetStatus dropped the pod's status.qosClass; it should merge")
	}
	job := k.SetStatus(t, jobsGVR, "velero", "repo-maintain-job", map[string]any{"active": 1, "startTime": "2026-01-02T03:04:05Z"})
	if v, _, _ := unstructured.NestedInt64(job.Object, "status", "active"); v != 1 {
		t.Errorf("job status.active = %d, want 1", v)
	}
	dep := k.SetStatus(t, deploymentsGVR, "velero", "velero", map[string]any{"replicas": 1, "readyReplicas": 1, "availableReplicas": 1})
	if v, _, _ := unstructured.NestedInt64(dep.Object, "status", "readyReplicas"); v != 1 {
		t.Errorf("deployment status.readyReplicas = %d, want 1", v)
	}
	// A status in the object itself is ignored for resources with a status
	// subresource: SetStatus is the way.
	k.Apply(t, []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p2, namespace: velero}\nspec: {containers: [{name: c, image: i}]}\nstatus: {phase: Running}\n"))
	got, err := k.Dynamic(t).Resource(podsGVR).Namespace("velero").Get(ctx(t), "p2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v, _, _ := unstructured.NestedString(got.Object, "status", "phase"); v != "Pending" {
		t.Errorf("pod p2 phase = %q, want Pending (status given on create is dropped)", v)
	}
}

// TestStopStart stops the API server: clients get connection errors, objects
// survive in etcd, and the admin's and a ServiceAccount's kubeconfig work
// again after Start.
func TestStopStart(t *testing.T) {
	t.Parallel()
	k := startKube(t)
	k.Apply(t, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: survives, namespace: velero}\ndata: {a: b}\n"))
	k.ApplyFile(t, rbacRoleFile)
	k.ApplyFile(t, rbacBindFile)
	admin, _ := dynamicFromKubeconfig(t, k.AdminKubeconfig(t))
	sa, _ := dynamicFromKubeconfig(t, k.ServiceAccountKubeconfig(t, veleroNS, daemonSA))

	start := time.Now()
	k.Stop(t)
	t.Logf("Stop took %v", time.Since(start).Round(time.Millisecond))
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := admin.Resource(configMapsGVR).Namespace("velero").Get(c, "survives", metav1.GetOptions{})
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("get while stopped: err = %v, want connection refused", err)
	}

	start = time.Now()
	k.Start(t)
	t.Logf("Start took %v", time.Since(start).Round(time.Millisecond))
	cm, err := admin.Resource(configMapsGVR).Namespace("velero").Get(ctx(t), "survives", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	if v, _, _ := unstructured.NestedString(cm.Object, "data", "a"); v != "b" {
		t.Errorf("configmap data.a = %q after restart, want b", v)
	}
	// The token issued before the restart still authenticates: same signing
	// key, same etcd.
	if _, err := sa.Resource(podsGVR).Namespace(veleroNS).List(ctx(t), metav1.ListOptions{}); err != nil {
		t.Errorf("service account list pods after restart: %v", err)
	}
	k.Stop(t)
	k.Stop(t) // stopping twice is harmless
	k.Start(t)
	if _, err := os.Stat(k.AdminKubeconfig(t)); err != nil {
		t.Fatal(err)
	}
}
