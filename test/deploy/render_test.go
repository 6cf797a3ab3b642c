package deploy

import (
	"path"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"gopkg.in/yaml.v3"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// kustomizationDir is a directory under deploy/ with a kustomization.yaml.
type kustomizationDir struct {
	rel  string // relative to deploy/, e.g. "overlays/velero"
	kind string // Kustomization or Component
}

// kustomizationDirs lists every kustomization under deploy/, sorted.
func kustomizationDirs(t *testing.T) []kustomizationDir {
	t.Helper()
	var out []kustomizationDir
	for rel, m := range loadManifests(t, deployDir(t)) {
		if path.Base(rel) != "kustomization.yaml" || len(m.docs) != 1 {
			continue
		}
		kind, _ := m.docs[0]["kind"].(string)
		out = append(out, kustomizationDir{rel: path.Dir(rel), kind: kind})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].rel < out[j].rel })
	return out
}

var (
	renderMu    sync.Mutex
	renderCache = map[string]rendered{}
)

// rendered is the output of `kubectl kustomize` for one directory.
type rendered struct {
	yaml []byte
	objs []*unstructured.Unstructured
}

// render renders deploy/<rel> with kubectl kustomize, once per test binary
// (the output depends only on the files). Callers must not modify the
// objects: they get deep copies.
func render(t *testing.T, rel string) ([]byte, []*unstructured.Unstructured) {
	t.Helper()
	renderMu.Lock()
	r, ok := renderCache[rel]
	renderMu.Unlock()
	if !ok {
		r.yaml, r.objs = harness.Kustomize(t, path.Join("deploy", rel))
		renderMu.Lock()
		renderCache[rel] = r
		renderMu.Unlock()
	}
	objs := make([]*unstructured.Unstructured, len(r.objs))
	for i, o := range r.objs {
		objs[i] = o.DeepCopy()
	}
	return r.yaml, objs
}

// find returns the object of kind and name in objs, or nil.
func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// ofKind returns the objects of kind in objs.
func ofKind(objs []*unstructured.Unstructured, kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// rules decodes a rendered Role's or ClusterRole's rules.
func rules(t *testing.T, role *unstructured.Unstructured) []rbacv1.PolicyRule {
	t.Helper()
	var r rbacv1.Role
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(role.Object, &r); err != nil {
		t.Fatalf("decode %s %s: %v", role.GetKind(), role.GetName(), err)
	}
	return r.Rules
}

// subjects decodes a rendered RoleBinding's or ClusterRoleBinding's subjects.
func subjects(t *testing.T, binding *unstructured.Unstructured) []rbacv1.Subject {
	t.Helper()
	var b rbacv1.RoleBinding
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(binding.Object, &b); err != nil {
		t.Fatalf("decode %s %s: %v", binding.GetKind(), binding.GetName(), err)
	}
	return b.Subjects
}

// configOf decodes config.yaml of the rendered ConfigMap name.
func configOf(t *testing.T, objs []*unstructured.Unstructured, name string) map[string]any {
	t.Helper()
	cm := find(objs, "ConfigMap", name)
	if cm == nil {
		t.Fatalf("no ConfigMap %s rendered", name)
	}
	data, _, _ := unstructured.NestedString(cm.Object, "data", "config.yaml")
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(data), &cfg); err != nil {
		t.Fatalf("ConfigMap %s: decode config.yaml: %v", name, err)
	}
	return cfg
}

// TestRender renders every kustomization under deploy/ with the real
// kubectl (kustomize v5.8.1 inside kubectl v1.36.3): Kustomizations to at
// least one object, each with a kind and a name; Components render (to
// nothing on their own) and are used by at least one Kustomization, through
// which TestVeleroOverlays and TestDryRunServer check what they add.
func TestRender(t *testing.T) {
	dirs := kustomizationDirs(t)
	used := map[string]bool{}
	for _, rel := range kustomizationDirs(t) {
		m := loadManifests(t, deployDir(t))[path.Join(rel.rel, "kustomization.yaml")]
		for _, c := range stringList(m.docs[0]["components"]) {
			used[path.Clean(path.Join(rel.rel, c))] = true
		}
	}
	for _, d := range dirs {
		t.Run(d.rel, func(t *testing.T) {
			_, objs := render(t, d.rel)
			switch d.kind {
			case "Component":
				if !used[d.rel] {
					t.Errorf("Component %s is used by no kustomization under deploy/", d.rel)
				}
			case "Kustomization":
				if len(objs) == 0 {
					t.Fatalf("renders no objects")
				}
			default:
				t.Fatalf("kind %q", d.kind)
			}
			seen := map[string]bool{}
			for _, o := range objs {
				id := o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
				if o.GetKind() == "" || o.GetAPIVersion() == "" || o.GetName() == "" {
					t.Errorf("object without apiVersion, kind or name: %v", o.Object)
				}
				if seen[id] {
					t.Errorf("%s rendered twice", id)
				}
				seen[id] = true
			}
		})
	}
}

// TestDaemonContainer checks every kopia-maintd container in what the
// kustomizations render (the objects a user applies, after every patch):
// security settings, memory limit, TMPDIR, volumes for what it writes; for
// the daemon its arguments, metrics port and probes; for the safety=none
// Job its run-once command. The sidecar patch of Velero's Deployment is
// checked on the patched Deployment (TestVeleroSidecarPatch).
func TestDaemonContainer(t *testing.T) {
	daemons, jobs := 0, 0
	for _, d := range kustomizationDirs(t) {
		if d.kind != "Kustomization" {
			continue
		}
		_, objs := render(t, d.rel)
		for _, o := range objs {
			if o.GetKind() != "Deployment" && o.GetKind() != "Job" {
				continue
			}
			pod, _, _ := unstructured.NestedMap(o.Object, "spec", "template", "spec")
			volumes := map[string]bool{}
			for _, v := range list(pod["volumes"]) {
				name, _ := v["name"].(string)
				volumes[name] = true
			}
			for _, c := range list(pod["containers"]) {
				if c["name"] != container {
					continue
				}
				t.Run(d.rel+"/"+o.GetKind()+"/"+o.GetName(), func(t *testing.T) {
					checkContainer(t, pod, c, volumes)
					if o.GetKind() == "Job" {
						checkSafetyNoneJob(t, c)
					} else {
						checkDaemon(t, c, "metrics")
					}
				})
				if o.GetKind() == "Job" {
					jobs++
				} else {
					daemons++
				}
			}
		}
	}
	// base, overlays velero, oadp and sidecar; the safety=none Job.
	if daemons != 4 || jobs != 1 {
		t.Errorf("found %d daemon Deployments and %d Jobs with a %s container, want 4 and 1", daemons, jobs, container)
	}
}

// checkSafetyNoneJob checks the container of the one-shot safety=none Job.
func checkSafetyNoneJob(t *testing.T, c map[string]any) {
	t.Helper()
	want := "run-once --config /etc/kopia-maintd/config.yaml --repository $(REPOSITORY) --cycle full --safety none"
	if got := strings.Join(stringList(c["args"]), " "); got != want {
		t.Errorf("args = %q, want %q", got, want)
	}
	if envValue(c, "REPOSITORY") != safetyNoneRepositoryPlaceholder {
		t.Errorf("env REPOSITORY = %v, want the placeholder %q that README's sed replaces", envValue(c, "REPOSITORY"), safetyNoneRepositoryPlaceholder)
	}
	if len(list(c["ports"])) != 0 || c["livenessProbe"] != nil {
		t.Errorf("a run-once container serves nothing: ports %v, livenessProbe %v", c["ports"], c["livenessProbe"])
	}
}

// safetyNoneRepositoryPlaceholder is the REPOSITORY value of
// deploy/jobs/safety-none-once/job.yaml that the documented command replaces.
const safetyNoneRepositoryPlaceholder = "set-the-repository-name"

// veleroOverlay is what an overlay that discovers Velero's repositories must
// render.
type veleroOverlay struct {
	rel string
	// namespace is Velero's namespace and the daemon's.
	namespace string
	// serviceAccount is the daemon's ServiceAccount (in namespace).
	serviceAccount string
	// deployment tells whether the overlay renders the daemon's own
	// Deployment (the sidecar runs in Velero's).
	deployment bool
	// discovery is the discovery Role's rules, exactly.
	discovery []rbacv1.PolicyRule
	// configMap names the daemon's ConfigMap ("" = the one the
	// Deployment mounts).
	configMap string
}

var (
	veleroReads    = rbacv1.PolicyRule{APIGroups: []string{"velero.io"}, Resources: []string{"backuprepositories", "backupstoragelocations"}, Verbs: []string{"get", "list", "watch"}}
	listJobs       = rbacv1.PolicyRule{APIGroups: []string{"batch"}, Resources: []string{"jobs"}, Verbs: []string{"list"}}
	getBothSecrets = rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"velero-repo-credentials", "cloud-credentials"}, Verbs: []string{"get"}}
	getRepoSecret  = rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"velero-repo-credentials"}, Verbs: []string{"get"}}
	patchRepos     = rbacv1.PolicyRule{APIGroups: []string{"velero.io"}, Resources: []string{"backuprepositories"}, Verbs: []string{"patch"}}
)

var veleroOverlays = []veleroOverlay{
	{rel: "overlays/velero", namespace: "velero", serviceAccount: "kopia-maintd", deployment: true,
		discovery: []rbacv1.PolicyRule{veleroReads, getBothSecrets, listJobs, patchRepos}},
	{rel: "overlays/oadp", namespace: "openshift-adp", serviceAccount: "kopia-maintd", deployment: true,
		discovery: []rbacv1.PolicyRule{veleroReads, getBothSecrets, listJobs, patchRepos}},
	{rel: "overlays/velero-sidecar", namespace: "velero", serviceAccount: "velero", configMap: "kopia-maintd-config",
		discovery: []rbacv1.PolicyRule{veleroReads, getRepoSecret, listJobs, patchRepos}},
}

// TestBaseDiscoveryRole checks the discovery Role as deploy/base renders it,
// without the suppression Component: read-only, the two named Secrets, a
// list of Velero's maintenance Jobs.
func TestBaseDiscoveryRole(t *testing.T) {
	_, objs := render(t, "base")
	role := find(objs, "Role", "kopia-maintd-velero-discovery")
	if role == nil || role.GetNamespace() != "velero" {
		t.Fatalf("deploy/base renders no Role kopia-maintd-velero-discovery in velero: %v", role)
	}
	if got, want := rules(t, role), []rbacv1.PolicyRule{veleroReads, getBothSecrets, listJobs}; !reflect.DeepEqual(got, want) {
		t.Errorf("rules = %+v, want %+v", got, want)
	}
	binding := find(objs, "RoleBinding", "kopia-maintd-velero-discovery")
	if binding == nil {
		t.Fatalf("no RoleBinding kopia-maintd-velero-discovery")
	}
	want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: "kopia-maintd", Namespace: "velero"}}
	if got := subjects(t, binding); !reflect.DeepEqual(got, want) {
		t.Errorf("subjects = %+v, want %+v", got, want)
	}
}

// TestVeleroOverlays checks the overlays that discover Velero's
// repositories: the discovery Role's rules exactly (with the suppression
// Component's patch), every RoleBinding and ClusterRoleBinding bound to the
// daemon's ServiceAccount in the daemon's namespace, the namespace reader
// naming exactly the gate's namespaces, no Secret rendered or mounted, and a
// config that asks for exactly what the RBAC grants: the Secrets it names
// are the ones the Role lets it get, suppression is on exactly when patch
// is granted, and Velero's namespace is where the Roles are.
func TestVeleroOverlays(t *testing.T) {
	for _, o := range veleroOverlays {
		t.Run(o.rel, func(t *testing.T) {
			_, objs := render(t, o.rel)
			role := find(objs, "Role", "kopia-maintd-velero-discovery")
			if role == nil {
				t.Fatalf("no discovery Role rendered")
			}
			if role.GetNamespace() != o.namespace {
				t.Errorf("discovery Role in %q, want %q", role.GetNamespace(), o.namespace)
			}
			if got := rules(t, role); !reflect.DeepEqual(got, o.discovery) {
				t.Errorf("discovery rules = %+v, want %+v", got, o.discovery)
			}
			sa := rbacv1.Subject{Kind: "ServiceAccount", Name: o.serviceAccount, Namespace: o.namespace}
			bindings := append(ofKind(objs, "RoleBinding"), ofKind(objs, "ClusterRoleBinding")...)
			if len(bindings) != 4 {
				t.Errorf("%d bindings rendered, want 4 (gate reader, namespace reader, discovery, leases)", len(bindings))
			}
			for _, b := range bindings {
				if got := subjects(t, b); !reflect.DeepEqual(got, []rbacv1.Subject{sa}) {
					t.Errorf("%s %s: subjects %+v, want %+v", b.GetKind(), b.GetName(), got, sa)
				}
				if b.GetKind() == "RoleBinding" && b.GetNamespace() != o.namespace {
					t.Errorf("RoleBinding %s in %q, want %q", b.GetName(), b.GetNamespace(), o.namespace)
				}
			}
			for _, r := range ofKind(objs, "Role") {
				if r.GetNamespace() != o.namespace {
					t.Errorf("Role %s in %q, want %q", r.GetName(), r.GetNamespace(), o.namespace)
				}
			}
			nsReader := find(objs, "ClusterRole", "kopia-maintd-velero-namespace-reader")
			if nsReader == nil {
				t.Fatalf("no namespace reader ClusterRole")
			}
			wantNS := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"namespaces"}, ResourceNames: []string{o.namespace}, Verbs: []string{"get"}}}
			if got := rules(t, nsReader); !reflect.DeepEqual(got, wantNS) {
				t.Errorf("namespace reader rules = %+v, want %+v", got, wantNS)
			}
			if s := ofKind(objs, "Secret"); len(s) != 0 {
				t.Errorf("renders %d Secrets; the daemon reads Velero's through the API", len(s))
			}

			cmName := o.configMap
			deps := ofKind(objs, "Deployment")
			if o.deployment {
				if len(deps) != 1 || deps[0].GetName() != "kopia-maintd" || deps[0].GetNamespace() != o.namespace {
					t.Fatalf("Deployments %v, want kopia-maintd in %s", deps, o.namespace)
				}
				pod, _, _ := unstructured.NestedMap(deps[0].Object, "spec", "template", "spec")
				if pod["serviceAccountName"] != o.serviceAccount {
					t.Errorf("serviceAccountName = %v, want %s", pod["serviceAccountName"], o.serviceAccount)
				}
				for _, v := range list(pod["volumes"]) {
					if v["secret"] != nil || v["projected"] != nil {
						t.Errorf("volume %v mounts a Secret; the daemon reads Velero's through the API", v["name"])
					}
					if cm, ok := v["configMap"].(map[string]any); ok && v["name"] == "config" {
						cmName, _ = cm["name"].(string)
					}
				}
				if find(objs, "ServiceAccount", o.serviceAccount) == nil {
					t.Errorf("no ServiceAccount %s rendered", o.serviceAccount)
				}
			} else {
				if len(deps) != 0 || len(ofKind(objs, "Service")) != 0 || len(ofKind(objs, "ServiceAccount")) != 0 {
					t.Errorf("renders a Deployment, Service or ServiceAccount; the sidecar runs in Velero's pod as velero")
				}
				if cm := find(objs, "ConfigMap", o.configMap); cm == nil {
					t.Errorf("no ConfigMap %s (the fixed name the sidecar patch mounts)", o.configMap)
				}
			}

			cfg := configOf(t, objs, cmName)
			if got := lookup(cfg, "velero", "namespace"); got != o.namespace {
				t.Errorf("config velero.namespace = %v, want %s", got, o.namespace)
			}
			if got := stringList(lookup(cfg, "safetyNone", "veleroNamespaces")); !slices.Equal(got, []string{o.namespace}) {
				t.Errorf("config safetyNone.veleroNamespaces = %v, want [%s] (the namespace reader's resourceNames)", got, o.namespace)
			}
			var secrets []string
			for _, key := range []string{"credentialsSecret", "cloudCredentialsSecret"} {
				if s, _ := lookup(cfg, "velero", key).(string); s != "" {
					secrets = append(secrets, s)
				}
			}
			var granted []string
			suppress := false
			for _, r := range o.discovery {
				if slices.Contains(r.Resources, "secrets") {
					granted = append(granted, r.ResourceNames...)
				}
				if slices.Contains(r.Verbs, "patch") {
					suppress = true
				}
			}
			if !slices.Equal(secrets, granted) {
				t.Errorf("the config reads Secrets %v, the Role grants %v", secrets, granted)
			}
			if got, _ := lookup(cfg, "velero", "suppressBuiltinMaintenance").(bool); got != suppress {
				t.Errorf("suppressBuiltinMaintenance = %v, but patch on backuprepositories granted = %v", got, suppress)
			}
		})
	}
}
