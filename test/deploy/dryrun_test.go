package deploy

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// monitoringCRDDir holds the Prometheus Operator's CRDs that deploy/monitoring
// needs (see the comment at the top of each file).
const monitoringCRDDir = "test/deploy/testdata/crds"

// startKube starts the test API server with Velero's CRDs, the Prometheus
// Operator's (pruned) CRDs and the namespaces the overlays use, and returns
// it with the admin's kubeconfig.
func startKube(t *testing.T) (*harness.Kube, string) {
	t.Helper()
	start := time.Now()
	k := harness.StartKube(t)
	k.InstallCRDs(t)
	entries, err := os.ReadDir(filepath.Join(harness.RepoRoot(t), monitoringCRDDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		k.ApplyFile(t, filepath.Join(monitoringCRDDir, e.Name()))
	}
	// GVR waits until discovery serves each kind.
	for _, kind := range []string{"ServiceMonitor", "PodMonitor", "PrometheusRule"} {
		k.GVR(t, "monitoring.coreos.com/v1", kind)
	}
	for _, ns := range []string{"velero", "openshift-adp"} {
		k.EnsureNamespace(t, ns)
	}
	t.Logf("API server with CRDs ready in %v", time.Since(start).Round(time.Millisecond))
	return k, k.AdminKubeconfig(t)
}

// dryRun has the API server admit yaml with `kubectl apply
// --dry-run=server` (namespace-less objects go to default, as with a plain
// `kubectl apply -k`) and returns kubectl's output, one line per object
// (-o name), failing the test on an error or a warning.
func dryRun(t *testing.T, kubeconfig string, yaml []byte) []string {
	t.Helper()
	out, errOut, err := harness.Kubectl(t, yaml, "apply", "--dry-run=server", "--kubeconfig", kubeconfig, "-f", "-", "-o", "name")
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server: %v\n%s", err, errOut)
	}
	// The server's warnings (deprecated APIs, duplicate port names, ...)
	// come on standard error.
	if s := strings.TrimSpace(string(errOut)); s != "" {
		t.Errorf("kubectl apply --dry-run=server warned:\n%s", s)
	}
	return strings.Fields(string(out))
}

// TestDryRunServer renders every Kustomization under deploy/ (base, each
// overlay, the safety=none Job, monitoring) with kubectl kustomize and has
// the real kube-apiserver admit every object with `kubectl apply
// --dry-run=server` (strict field validation, the built-in types' own
// validation and admission, the CRDs' schemas), without a warning. The
// Components are applied inside the overlays that use them. Velero's CRDs
// are installed as for the other Kubernetes tests, the Prometheus
// Operator's from test/deploy/testdata/crds. A last subtest shows that the
// dry run refuses a wrong manifest of each sort, so a pass means something.
func TestDryRunServer(t *testing.T) {
	t.Parallel()
	_, kubeconfig := startKube(t)
	// kubectl and the API server are one Kubernetes release
	// (scripts/install-tools.sh builds both), so the dry runs are those a
	// user of that release gets.
	out, errOut, err := harness.Kubectl(t, nil, "version", "-o", "json", "--kubeconfig", kubeconfig)
	if err != nil {
		t.Fatalf("kubectl version: %v\n%s", err, errOut)
	}
	var v struct {
		Client struct{ GitVersion string } `json:"clientVersion"`
		Server struct{ GitVersion string } `json:"serverVersion"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("kubectl version: %v\n%s", err, out)
	}
	if v.Client.GitVersion == "" || v.Client.GitVersion != v.Server.GitVersion {
		t.Errorf("kubectl %q, kube-apiserver %q: want the same release", v.Client.GitVersion, v.Server.GitVersion)
	}
	t.Logf("kubectl and kube-apiserver %s", v.Client.GitVersion)
	for _, d := range kustomizationDirs(t) {
		if d.kind != "Kustomization" {
			continue
		}
		t.Run(d.rel, func(t *testing.T) {
			yaml, objs := render(t, d.rel)
			if d.rel == "jobs/safety-none-once" {
				yaml = bytes.ReplaceAll(yaml, []byte(safetyNoneRepositoryPlaceholder), []byte("velero-app1"))
			}
			start := time.Now()
			names := dryRun(t, kubeconfig, yaml)
			t.Logf("%d objects admitted in %v", len(names), time.Since(start).Round(time.Millisecond))
			if len(names) != len(objs) {
				t.Errorf("the dry run admitted %d objects (%v), kustomize rendered %d", len(names), names, len(objs))
			}
		})
	}

	t.Run("refuses", func(t *testing.T) {
		cases := []struct {
			name  string
			yaml  string
			error string
		}{
			{"unknown container field", `
apiVersion: apps/v1
kind: Deployment
metadata: {name: x, namespace: velero}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers: [{name: c, image: i, securityContxt: {}}]
`, `unknown field "spec.template.spec.containers[0].securityContxt"`},
			{"RoleBinding without roleRef", `
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: x, namespace: velero}
subjects: [{kind: ServiceAccount, name: kopia-maintd, namespace: velero}]
`, "roleRef"},
			{"ServiceMonitor interval", `
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: x, namespace: velero}
spec:
  selector: {matchLabels: {a: b}}
  endpoints: [{port: metrics, interval: 30 seconds}]
`, "spec.endpoints[0].interval"},
			{"PrometheusRule group without name", `
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: x, namespace: velero}
spec:
  groups: [{rules: [{alert: A, expr: up == 0}]}]
`, "spec.groups[0].name"},
			{"BackupRepository phase", `
apiVersion: velero.io/v1
kind: BackupRepository
metadata: {name: x, namespace: velero}
spec: {}
status: {phase: Broken}
`, "status.phase"},
		}
		for _, c := range cases {
			_, errOut, err := harness.Kubectl(t, []byte(c.yaml), "apply", "--dry-run=server", "--kubeconfig", kubeconfig, "-f", "-")
			if err == nil || !strings.Contains(string(errOut), c.error) {
				t.Errorf("%s: err = %v, stderr %q; want a refusal naming %s", c.name, err, errOut, c.error)
			}
		}
	})
}

// veleroPatchFile is the strategic-merge patch that adds the daemon to
// Velero's Deployment, and veleroRemovePatchFile the one that takes it out
// again, relative to deploy/.
const (
	veleroPatchFile       = "overlays/velero-sidecar/velero-deployment-patch.yaml"
	veleroRemovePatchFile = "overlays/velero-sidecar/velero-deployment-remove-patch.yaml"
)

// TestVeleroSidecarPatch creates a Deployment shaped like the one `velero
// install` makes (testdata/velero-deployment.yaml), applies
// deploy/overlays/velero-sidecar the documented way (kubectl apply of the
// rendered overlay, then `kubectl patch --type strategic --patch-file` of
// the Deployment), first as a server-side dry run, and checks the patched
// Deployment: Velero's container, init container and volumes exactly as
// they were, the daemon's container next to them with its settings, the
// ConfigMap the overlay renders and Velero's cloud-credentials volume
// mounted where the config expects it, Velero's ServiceAccount. The patch
// applied a second time changes nothing (re-applying after a Velero upgrade
// is safe), the remove patch restores Velero's pod template exactly, and a
// Velero installed without a cloud-credentials volume (velero install
// --no-secret) refuses the patch.
func TestVeleroSidecarPatch(t *testing.T) {
	t.Parallel()
	k, kubeconfig := startKube(t)
	patchFile := filepath.Join(deployDir(t), filepath.FromSlash(veleroPatchFile))
	k.ApplyFile(t, "test/deploy/testdata/velero-deployment.yaml")
	deployments := k.Dynamic(t).Resource(schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}).Namespace("velero")
	// Read through kubectl too, so that it decodes as the patched objects
	// below do (numbers as float64).
	out, errOut, err := harness.Kubectl(t, nil, "-n", "velero", "get", "deployment", "velero", "-o", "json", "--kubeconfig", kubeconfig)
	if err != nil {
		t.Fatalf("kubectl get deployment velero: %v\n%s", err, errOut)
	}
	got, err := harness.DecodeObjects(out)
	if err != nil || len(got) != 1 {
		t.Fatalf("decode Velero's Deployment: %v", err)
	}
	before := got[0]

	// Step 1 of the overlay's instructions.
	yaml, objs := render(t, "overlays/velero-sidecar")
	if out, errOut, err := harness.Kubectl(t, yaml, "apply", "--kubeconfig", kubeconfig, "-f", "-"); err != nil {
		t.Fatalf("kubectl apply the rendered overlay: %v\n%s%s", err, out, errOut)
	}

	patchWith := func(t *testing.T, patchFile string, dryRun bool) (*unstructured.Unstructured, string) {
		t.Helper()
		args := []string{"-n", "velero", "patch", "deployment", "velero", "--type", "strategic", "--patch-file", patchFile, "--kubeconfig", kubeconfig, "-o", "json"}
		if dryRun {
			args = append(args, "--dry-run=server")
		}
		out, errOut, err := harness.Kubectl(t, nil, args...)
		if err != nil {
			t.Fatalf("kubectl patch: %v\n%s", err, errOut)
		}
		objs, err := harness.DecodeObjects(out)
		if err != nil || len(objs) != 1 {
			t.Fatalf("kubectl patch -o json: %v, %d objects", err, len(objs))
		}
		return objs[0], strings.TrimSpace(string(errOut))
	}
	patch := func(t *testing.T, dryRun bool) (*unstructured.Unstructured, string) {
		t.Helper()
		return patchWith(t, patchFile, dryRun)
	}

	// Step 2, as a dry run first: nothing changes on the server.
	after, warnings := patch(t, true)
	if warnings != "" {
		t.Errorf("kubectl patch warned: %s", warnings)
	}
	stored, err := deployments.Get(t.Context(), "velero", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if stored.GetResourceVersion() != before.GetResourceVersion() {
		t.Errorf("the dry run changed the stored Deployment (resourceVersion %s, was %s)", stored.GetResourceVersion(), before.GetResourceVersion())
	}
	checkPatchedVelero(t, before, after, objs)

	// For real, then again: the second patch is a no-op.
	applied, _ := patch(t, false)
	checkPatchedVelero(t, before, applied, objs)
	if applied.GetResourceVersion() == before.GetResourceVersion() {
		t.Errorf("the patch did not change the stored Deployment")
	}
	again, _ := patch(t, false)
	if again.GetResourceVersion() != applied.GetResourceVersion() {
		t.Errorf("patching twice changed the Deployment again (resourceVersion %s, then %s)", applied.GetResourceVersion(), again.GetResourceVersion())
	}

	// Undo: Velero's pod template as it was.
	removed, warnings := patchWith(t, filepath.Join(deployDir(t), filepath.FromSlash(veleroRemovePatchFile)), false)
	if warnings != "" {
		t.Errorf("kubectl patch (remove) warned: %s", warnings)
	}
	oldTemplate, _, _ := unstructured.NestedMap(before.Object, "spec", "template")
	newTemplate, _, _ := unstructured.NestedMap(removed.Object, "spec", "template")
	if !reflect.DeepEqual(newTemplate, oldTemplate) {
		t.Errorf("after the remove patch the pod template is\n%v\nwant Velero's\n%v", newTemplate, oldTemplate)
	}

	// velero install --no-secret: no cloud-credentials volume. The patch's
	// mount then names no volume and the API server refuses it.
	if err := deployments.Delete(t.Context(), "velero", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	noSecret := before.DeepCopy()
	noSecret.SetResourceVersion("")
	noSecret.SetUID("")
	unstructured.RemoveNestedField(noSecret.Object, "status")
	pod, _, _ := unstructured.NestedMap(noSecret.Object, "spec", "template", "spec")
	var volumes []any
	for _, v := range list(pod["volumes"]) {
		if v["name"] != "cloud-credentials" {
			volumes = append(volumes, v)
		}
	}
	pod["volumes"] = volumes
	c := list(pod["containers"])[0]
	var mounts []any
	for _, m := range list(c["volumeMounts"]) {
		if m["name"] != "cloud-credentials" {
			mounts = append(mounts, m)
		}
	}
	c["volumeMounts"] = mounts
	pod["containers"] = []any{c}
	if err := unstructured.SetNestedMap(noSecret.Object, pod, "spec", "template", "spec"); err != nil {
		t.Fatal(err)
	}
	if _, err := deployments.Create(t.Context(), noSecret, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Velero's Deployment without cloud-credentials: %v", err)
	}
	_, errOut, err = harness.Kubectl(t, nil, "-n", "velero", "patch", "deployment", "velero", "--type", "strategic", "--patch-file", patchFile, "--kubeconfig", kubeconfig, "--dry-run=server")
	if err == nil || !strings.Contains(string(errOut), `name: Not found: "cloud-credentials"`) {
		t.Errorf("patch without Velero's cloud-credentials volume: err = %v, stderr %s; want it refused", err, errOut)
	}
	if _, err := deployments.Get(t.Context(), "velero", metav1.GetOptions{}); apierrors.IsNotFound(err) {
		t.Errorf("the refused patch removed the Deployment")
	}
}

// checkPatchedVelero checks Velero's Deployment after the sidecar patch
// against before, the Deployment as Velero made it, and overlay, the
// objects of the rendered velero-sidecar overlay.
func checkPatchedVelero(t *testing.T, before, after *unstructured.Unstructured, overlay []*unstructured.Unstructured) {
	t.Helper()
	oldPod, _, _ := unstructured.NestedMap(before.Object, "spec", "template", "spec")
	pod, _, _ := unstructured.NestedMap(after.Object, "spec", "template", "spec")
	// The strategic merge puts the new container first.
	containers := list(pod["containers"])
	if len(containers) != 2 || containers[0]["name"] != container || containers[1]["name"] != "velero" {
		t.Fatalf("containers %v, want %s and velero", names(containers), container)
	}
	// So kubectl logs and exec need telling which one is Velero.
	if got, _, _ := unstructured.NestedString(after.Object, "spec", "template", "metadata", "annotations", "kubectl.kubernetes.io/default-container"); got != "velero" {
		t.Errorf("annotation kubectl.kubernetes.io/default-container = %q, want velero", got)
	}
	// Velero's own parts are untouched.
	if old := list(oldPod["containers"])[0]; !reflect.DeepEqual(containers[1], old) {
		t.Errorf("Velero's container changed:\n%v\nwas\n%v", containers[1], old)
	}
	if !reflect.DeepEqual(pod["initContainers"], oldPod["initContainers"]) {
		t.Errorf("Velero's init containers changed")
	}
	volumes := map[string]map[string]any{}
	for _, v := range list(pod["volumes"]) {
		volumes[v["name"].(string)] = v
	}
	for _, v := range list(oldPod["volumes"]) {
		if !reflect.DeepEqual(volumes[v["name"].(string)], v) {
			t.Errorf("Velero's volume %v changed: %v", v, volumes[v["name"].(string)])
		}
	}
	if len(volumes) != len(list(oldPod["volumes"]))+3 {
		t.Errorf("volumes %v, want Velero's and the daemon's config, state and tmp", volumes)
	}
	if pod["serviceAccountName"] != "velero" {
		t.Errorf("serviceAccountName = %v, want velero", pod["serviceAccountName"])
	}
	if got := pod["terminationGracePeriodSeconds"]; got != float64(120) {
		t.Errorf("terminationGracePeriodSeconds = %v (%T), want 120 (time to hand ownership back)", got, got)
	}

	c := containers[0]
	present := map[string]bool{}
	for name := range volumes {
		present[name] = true
	}
	checkContainer(t, pod, c, present)
	checkDaemon(t, c, "maintd-metrics")
	if img, _ := c["image"].(string); !strings.HasPrefix(img, "ghcr.io/kopia-maintd/kopia-maintd:") {
		t.Errorf("image = %q, want the full ghcr.io/kopia-maintd/kopia-maintd reference (kustomize does not rewrite this file)", img)
	}

	// The ConfigMap is the overlay's, and the config finds the credentials
	// file in Velero's volume.
	cm, _, _ := unstructured.NestedString(volumes["kopia-maintd-config"], "configMap", "name")
	if find(overlay, "ConfigMap", cm) == nil {
		t.Errorf("the config volume names ConfigMap %q, which the overlay does not render", cm)
	}
	cfg := configOf(t, overlay, "kopia-maintd-config")
	file, _ := lookup(cfg, "velero", "cloudCredentialsFile").(string)
	mounted := false
	for _, m := range list(c["volumeMounts"]) {
		if m["name"] == "cloud-credentials" {
			mounted = m["readOnly"] == true && strings.HasPrefix(file, m["mountPath"].(string)+"/")
		}
	}
	if !mounted {
		t.Errorf("velero.cloudCredentialsFile %q is not in Velero's cloud-credentials volume mounted read-only: %v", file, c["volumeMounts"])
	}
	if secret, _, _ := unstructured.NestedString(volumes["cloud-credentials"], "secret", "secretName"); secret != "cloud-credentials" {
		t.Errorf("cloud-credentials volume = %v", volumes["cloud-credentials"])
	}
}

func names(items []map[string]any) []any {
	var out []any
	for _, it := range items {
		out = append(out, it["name"])
	}
	return out
}
