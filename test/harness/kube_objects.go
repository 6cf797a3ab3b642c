package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	sigsyaml "sigs.k8s.io/yaml"
)

// kubeOpTimeout bounds each API call the harness makes.
const kubeOpTimeout = 30 * time.Second

// Resources the harness itself uses.
var (
	namespacesGVR      = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	serviceAccountsGVR = schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}
	crdsGVR            = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
)

// kubeClients are the admin's clients, made once per Kube.
type kubeClients struct {
	dynamic   dynamic.Interface
	discovery discovery.DiscoveryInterface
	mapper    *restmapper.DeferredDiscoveryRESTMapper
}

func (k *Kube) adminClients(t testing.TB) *kubeClients {
	t.Helper()
	k.clientsOnce.Do(func() {
		cfg := k.AdminConfig()
		dyn, err := dynamic.NewForConfig(cfg)
		if err != nil {
			k.clientsErr = err
			return
		}
		disc, err := discovery.NewDiscoveryClientForConfig(cfg)
		if err != nil {
			k.clientsErr = err
			return
		}
		k.clients = &kubeClients{
			dynamic:   dyn,
			discovery: disc,
			mapper:    restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc)),
		}
	})
	if k.clientsErr != nil {
		t.Fatalf("make kubernetes clients: %v", k.clientsErr)
	}
	return k.clients
}

// Dynamic returns a dynamic client acting as the admin.
func (k *Kube) Dynamic(t testing.TB) dynamic.Interface {
	t.Helper()
	return k.adminClients(t).dynamic
}

// RESTMapper returns the admin's discovery-backed REST mapper. Apply and
// InstallCRDs reset it when they meet a kind it does not know yet.
func (k *Kube) RESTMapper(t testing.TB) meta.ResettableRESTMapper {
	t.Helper()
	return k.adminClients(t).mapper
}

// NewRESTMapper returns a REST mapper backed by the discovery API of cfg's
// server, as cfg's user sees it, re-reading discovery when asked for a kind
// it does not know.
func NewRESTMapper(t testing.TB, cfg *rest.Config) meta.RESTMapper {
	t.Helper()
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatalf("make discovery client: %v", err)
	}
	return restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
}

func kubeContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), kubeOpTimeout)
}

// AdminKubeconfig writes a kubeconfig file for the admin (system:masters)
// into a temporary directory of t and returns its path.
func (k *Kube) AdminKubeconfig(t testing.TB) string {
	t.Helper()
	return k.writeKubeconfig(t, "admin", k.AdminToken, "default")
}

// ServiceAccountKubeconfig creates the namespace and the ServiceAccount
// namespace/name when they are missing, obtains a token for it from the
// TokenRequest API (audience Kube.Audience, valid for 24 hours), and writes a
// kubeconfig file for it whose context's namespace is namespace. It returns
// the file's path. Clients using it have exactly the permissions RBAC gives
// the ServiceAccount: bind them by applying the Roles and RoleBindings under
// test (for example deploy/base/role.yaml and rolebinding.yaml).
func (k *Kube) ServiceAccountKubeconfig(t testing.TB, namespace, name string) string {
	t.Helper()
	return k.writeKubeconfig(t, "system:serviceaccount:"+namespace+":"+name, k.ServiceAccountToken(t, namespace, name), namespace)
}

// ServiceAccountConfig is ServiceAccountKubeconfig as a client configuration.
func (k *Kube) ServiceAccountConfig(t testing.TB, namespace, name string) *rest.Config {
	t.Helper()
	return k.tokenConfig(k.ServiceAccountToken(t, namespace, name))
}

// ServiceAccountToken creates the namespace and the ServiceAccount when they
// are missing and returns a new token for the ServiceAccount from the
// TokenRequest API, valid for 24 hours.
func (k *Kube) ServiceAccountToken(t testing.TB, namespace, name string) string {
	t.Helper()
	k.EnsureNamespace(t, namespace)
	dyn := k.Dynamic(t)
	ctx, cancel := kubeContext()
	defer cancel()
	sa := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1",
		"kind":       "ServiceAccount",
		"metadata":   map[string]any{"name": name, "namespace": namespace},
	}}
	if _, err := dyn.Resource(serviceAccountsGVR).Namespace(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create service account %s/%s: %v", namespace, name, err)
	}
	req := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "authentication.k8s.io/v1",
		"kind":       "TokenRequest",
		// The dynamic client takes the ServiceAccount's name from here.
		"metadata": map[string]any{"name": name, "namespace": namespace},
		"spec": map[string]any{
			"audiences":         []any{k.Audience},
			"expirationSeconds": int64(24 * 60 * 60),
		},
	}}
	resp, err := dyn.Resource(serviceAccountsGVR).Namespace(namespace).Create(ctx, req, metav1.CreateOptions{}, "token")
	if err != nil {
		t.Fatalf("request a token for service account %s/%s: %v", namespace, name, err)
	}
	token, _, _ := unstructured.NestedString(resp.Object, "status", "token")
	if token == "" {
		t.Fatalf("token request for service account %s/%s returned no token: %v", namespace, name, resp.Object["status"])
	}
	return token
}

func (k *Kube) writeKubeconfig(t testing.TB, user, token, namespace string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kube"] = &clientcmdapi.Cluster{Server: k.Host, CertificateAuthorityData: k.CAData}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["kube"] = &clientcmdapi.Context{Cluster: "kube", AuthInfo: user, Namespace: namespace}
	cfg.CurrentContext = "kube"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatalf("write kubeconfig: %v", err)
	}
	return path
}

// EnsureNamespace creates the namespace name unless it exists.
func (k *Kube) EnsureNamespace(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := kubeContext()
	defer cancel()
	ns := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1",
		"kind":       "Namespace",
		"metadata":   map[string]any{"name": name},
	}}
	if _, err := k.Dynamic(t).Resource(namespacesGVR).Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}

// ApplyFile applies the YAML documents of the file at path (see Apply). A
// relative path is taken relative to the repository root, so every package
// can name, say, "deploy/base/role.yaml".
func (k *Kube) ApplyFile(t testing.TB, path string) []*unstructured.Unstructured {
	t.Helper()
	if !filepath.IsAbs(path) {
		path = filepath.Join(RepoRoot(t), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return k.Apply(t, data)
}

// Apply creates, as the admin, every object in the YAML (or JSON) documents,
// each of which may hold several documents separated by "---"; an object
// that exists already is replaced (its resourceVersion is taken from the
// server). A namespaced object without a namespace goes to "default", and a
// missing namespace is created first. Status given with an object is kept
// only for resources without a status subresource (Velero's); use SetStatus
// for the others. Apply returns the objects as the server stored them.
func (k *Kube) Apply(t testing.TB, yamlDocs ...[]byte) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, data := range yamlDocs {
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			var obj map[string]any
			if err := dec.Decode(&obj); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				t.Fatalf("decode YAML: %v", err)
			}
			if len(obj) == 0 {
				continue
			}
			out = append(out, k.applyObject(t, &unstructured.Unstructured{Object: obj}))
		}
	}
	return out
}

func (k *Kube) applyObject(t testing.TB, obj *unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	gvk := obj.GroupVersionKind()
	if gvk.Kind == "" || gvk.Version == "" {
		t.Fatalf("object without apiVersion or kind: %v", obj.Object)
	}
	mapping := k.restMapping(t, gvk)
	ri := dynamic.ResourceInterface(k.Dynamic(t).Resource(mapping.Resource))
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		if obj.GetNamespace() == "" {
			obj.SetNamespace("default")
		}
		k.EnsureNamespace(t, obj.GetNamespace())
		ri = k.Dynamic(t).Resource(mapping.Resource).Namespace(obj.GetNamespace())
	}
	what := fmt.Sprintf("%s %s", gvk.Kind, objectName(obj))
	ctx, cancel := kubeContext()
	defer cancel()
	for {
		created, err := ri.Create(ctx, obj, metav1.CreateOptions{})
		if err == nil {
			return created
		}
		if !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create %s: %v", what, err)
		}
		cur, err := ri.Get(ctx, obj.GetName(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue // deleted in between
		}
		if err != nil {
			t.Fatalf("get %s: %v", what, err)
		}
		obj.SetResourceVersion(cur.GetResourceVersion())
		updated, err := ri.Update(ctx, obj, metav1.UpdateOptions{})
		if err == nil {
			return updated
		}
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			t.Fatalf("update %s: %v", what, err)
		}
		obj.SetResourceVersion("")
		if ctx.Err() != nil {
			t.Fatalf("apply %s: %v", what, ctx.Err())
		}
	}
}

// restMapping maps gvk to its resource, re-reading discovery while the kind
// is unknown (a CRD just created takes a moment to be served).
func (k *Kube) restMapping(t testing.TB, gvk schema.GroupVersionKind) *meta.RESTMapping {
	t.Helper()
	mapper := k.adminClients(t).mapper
	deadline := time.Now().Add(kubeOpTimeout)
	for {
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err == nil {
			return m
		}
		if !meta.IsNoMatchError(err) || time.Now().After(deadline) {
			t.Fatalf("find the resource of %s: %v", gvk, err)
		}
		mapper.Reset()
		time.Sleep(100 * time.Millisecond)
	}
}

// GVR returns the resource that serves apiVersion and kind, for example
// GVR(t, "velero.io/v1", "Backup").
func (k *Kube) GVR(t testing.TB, apiVersion, kind string) schema.GroupVersionResource {
	t.Helper()
	gv, err := schema.ParseGroupVersion(apiVersion)
	if err != nil {
		t.Fatalf("parse apiVersion %q: %v", apiVersion, err)
	}
	return k.restMapping(t, gv.WithKind(kind)).Resource
}

func objectName(obj *unstructured.Unstructured) string {
	if ns := obj.GetNamespace(); ns != "" {
		return ns + "/" + obj.GetName()
	}
	return obj.GetName()
}

// CRDDir is the directory, relative to the repository root, of the
// CustomResourceDefinitions InstallCRDs applies: minimal definitions of
// Velero's kinds.
const CRDDir = "test/testdata/crds"

// InstallCRDs applies every YAML file in test/testdata/crds (Velero's
// Backup, Restore, Schedule, PodVolumeBackup, PodVolumeRestore,
// DeleteBackupRequest, BackupRepository in velero.io/v1 and DataUpload,
// DataDownload in velero.io/v2alpha1) and waits until each
// CustomResourceDefinition is Established and served. Like any
// kube-apiserver, it makes the first create of a custom resource within 2 s
// of its definition becoming Established wait out those 2 s.
func (k *Kube) InstallCRDs(t testing.TB) {
	t.Helper()
	dir := filepath.Join(RepoRoot(t), CRDDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var crds []*unstructured.Unstructured
	for _, e := range entries {
		if e.IsDir() || (!strings.HasSuffix(e.Name(), ".yaml") && !strings.HasSuffix(e.Name(), ".yml")) {
			continue
		}
		crds = append(crds, k.ApplyFile(t, filepath.Join(dir, e.Name()))...)
	}
	if len(crds) == 0 {
		t.Fatalf("no CustomResourceDefinitions in %s", dir)
	}
	k.waitCRDs(t, crds)
}

// waitCRDs waits until each CustomResourceDefinition is Established and its
// kinds are known to the REST mapper.
func (k *Kube) waitCRDs(t testing.TB, crds []*unstructured.Unstructured) {
	t.Helper()
	ctx, cancel := kubeContext()
	defer cancel()
	for _, crd := range crds {
		if crd.GetKind() != "CustomResourceDefinition" {
			continue
		}
		for {
			cur, err := k.Dynamic(t).Resource(crdsGVR).Get(ctx, crd.GetName(), metav1.GetOptions{})
			if err != nil {
				t.Fatalf("get CustomResourceDefinition %s: %v", crd.GetName(), err)
			}
			if crdEstablished(cur) {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("CustomResourceDefinition %s not Established after %v: %v", crd.GetName(), kubeOpTimeout, cur.Object["status"])
			}
			time.Sleep(50 * time.Millisecond)
		}
		group, _, _ := unstructured.NestedString(crd.Object, "spec", "group")
		kind, _, _ := unstructured.NestedString(crd.Object, "spec", "names", "kind")
		versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
		for _, v := range versions {
			vm, _ := v.(map[string]any)
			if served, _ := vm["served"].(bool); !served {
				continue
			}
			name, _ := vm["name"].(string)
			k.restMapping(t, schema.GroupVersionKind{Group: group, Version: name, Kind: kind})
		}
	}
}

func crdEstablished(crd *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		cm, _ := c.(map[string]any)
		if cm["type"] == "Established" && cm["status"] == "True" {
			return true
		}
	}
	return false
}

// SetStatus merges status into the status of the object gvr namespace/name
// (a JSON merge patch: given fields replace the object's, a nil value
// removes one, fields not given stay). It goes through the status
// subresource where the resource has one (Pods, Jobs, Deployments, ...) and
// through the object itself where it has none (Velero's custom resources),
// as the controllers that would own the status do. An empty namespace means
// a cluster-scoped object. It returns the object as stored.
func (k *Kube) SetStatus(t testing.TB, gvr schema.GroupVersionResource, namespace, name string, status map[string]any) *unstructured.Unstructured {
	t.Helper()
	patch, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		t.Fatalf("encode status: %v", err)
	}
	var subresources []string
	if k.hasStatusSubresource(t, gvr) {
		subresources = []string{"status"}
	}
	ri := dynamic.ResourceInterface(k.Dynamic(t).Resource(gvr))
	if namespace != "" {
		ri = k.Dynamic(t).Resource(gvr).Namespace(namespace)
	}
	ctx, cancel := kubeContext()
	defer cancel()
	obj, err := ri.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}, subresources...)
	if err != nil {
		t.Fatalf("set status of %s %s/%s: %v", gvr.Resource, namespace, name, err)
	}
	return obj
}

// hasStatusSubresource tells from discovery whether gvr has a status
// subresource.
func (k *Kube) hasStatusSubresource(t testing.TB, gvr schema.GroupVersionResource) bool {
	t.Helper()
	list, err := k.adminClients(t).discovery.ServerResourcesForGroupVersion(gvr.GroupVersion().String())
	if err != nil {
		t.Fatalf("discover %s: %v", gvr.GroupVersion(), err)
	}
	names := make([]string, 0, len(list.APIResources))
	for _, r := range list.APIResources {
		names = append(names, r.Name)
	}
	if !slices.Contains(names, gvr.Resource) {
		t.Fatalf("%s serves no resource %q (it serves %v)", gvr.GroupVersion(), gvr.Resource, names)
	}
	return slices.Contains(names, gvr.Resource+"/status")
}

// ApplyRoleComponent applies, as the admin, the JSON patches of the
// Kustomize Component in dir (relative to the repository root) to the Roles
// they target in namespace, as `kubectl kustomize` would have before the
// Roles were applied. Only patches of Roles are supported: the deploy/
// Components that grant RBAC are of that kind.
func (k *Kube) ApplyRoleComponent(t testing.TB, dir, namespace string) {
	t.Helper()

	data, err := os.ReadFile(filepath.Join(RepoRoot(t), dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}

	var comp struct {
		Kind    string `json:"kind"`
		Patches []struct {
			Target struct{ Group, Kind, Name string }
			Patch  string
		}
	}
	if err := sigsyaml.Unmarshal(data, &comp); err != nil {
		t.Fatalf("%s: %v", dir, err)
	}

	if comp.Kind != "Component" || len(comp.Patches) == 0 {
		t.Fatalf("%s: not a Component with patches", dir)
	}

	roles := schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"}

	for _, p := range comp.Patches {
		if p.Target.Kind != "Role" || p.Target.Name == "" {
			t.Fatalf("%s: patch of %s %q: only named Roles are supported", dir, p.Target.Kind, p.Target.Name)
		}

		ops, err := sigsyaml.YAMLToJSON([]byte(p.Patch))
		if err != nil {
			t.Fatalf("%s: patch of Role %s: %v", dir, p.Target.Name, err)
		}

		if _, err := k.Dynamic(t).Resource(roles).Namespace(namespace).Patch(context.Background(), p.Target.Name, types.JSONPatchType, ops, metav1.PatchOptions{}); err != nil {
			t.Fatalf("%s: patch of Role %s/%s: %v", dir, namespace, p.Target.Name, err)
		}
	}
}
