package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// The discovery Role of deploy/base/discovery-role.yaml and the Secrets it
// names.
const (
	discoveryRole  = "kopia-maintd-velero-discovery"
	repoSecret     = "velero-repo-credentials"
	cloudSecret    = "cloud-credentials"
	strangerSecret = "some-other-secret"
)

var (
	backupReposGVR = veleroGVR("velero.io/v1", "backuprepositories")
	bslsGVR        = veleroGVR("velero.io/v1", "backupstoragelocations")
)

// rendered returns the object of kind and name in the output of `kubectl
// kustomize dir`, encoded for Kube.Apply.
func rendered(t *testing.T, objs []*unstructured.Unstructured, kind, name string) []byte {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			data, err := json.Marshal(o.Object)
			if err != nil {
				t.Fatal(err)
			}
			return data
		}
	}
	t.Fatalf("no %s %s rendered", kind, name)
	return nil
}

// veleroObjects creates, as the admin, what discovery finds in namespace ns:
// Velero's two Secrets, another Secret, a BackupStorageLocation and a
// BackupRepository.
func veleroObjects(t *testing.T, k *harness.Kube, ns string) {
	t.Helper()
	k.Apply(t, []byte(fmt.Sprintf(`
apiVersion: v1
kind: Secret
metadata: {name: %[2]s, namespace: %[1]s}
stringData: {repository-password: static-passw0rd}
---
apiVersion: v1
kind: Secret
metadata: {name: %[3]s, namespace: %[1]s}
stringData: {cloud: "[default]\naws_access_key_id = a\naws_secret_access_key = b\n"}
---
apiVersion: v1
kind: Secret
metadata: {name: %[4]s, namespace: %[1]s}
stringData: {token: not-for-the-daemon}
---
apiVersion: velero.io/v1
kind: BackupStorageLocation
metadata: {name: default, namespace: %[1]s}
spec: {provider: aws, objectStorage: {bucket: velero-backups, prefix: velero}}
---
apiVersion: velero.io/v1
kind: BackupRepository
metadata: {name: app1-default-kopia-x7k2p, namespace: %[1]s}
spec: {volumeNamespace: app1, backupStorageLocation: default, repositoryType: kopia, maintenanceFrequency: 1h}
`, ns, repoSecret, cloudSecret, strangerSecret)))
}

// eventually retries op until it succeeds, for grants just applied: the API
// server's RBAC authorizer reads Roles from an informer cache.
func eventually(t *testing.T, what string, op func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := op()
		if err == nil {
			return
		}
		if !apierrors.IsForbidden(err) || time.Now().After(deadline) {
			t.Errorf("%s: %v", what, err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// check is one request made with the daemon's token.
type check struct {
	what string
	do   func(ctx context.Context) error
}

// expectAllowed runs each check, waiting for grants to arrive.
func expectAllowed(t *testing.T, checks []check) {
	t.Helper()
	for _, c := range checks {
		eventually(t, c.what, func() error { return c.do(ctx(t)) })
	}
}

// expectForbidden runs each check once and wants Forbidden.
func expectForbidden(t *testing.T, checks []check) {
	t.Helper()
	for _, c := range checks {
		if err := c.do(ctx(t)); !apierrors.IsForbidden(err) {
			t.Errorf("%s: err = %v, want Forbidden", c.what, err)
		}
	}
}

func listWatch(dyn dynamic.Interface, ns string, gvr schema.GroupVersionResource, wantItems int) []check {
	return []check{
		{"list " + gvr.Resource + " in " + ns, func(c context.Context) error {
			l, err := dyn.Resource(gvr).Namespace(ns).List(c, metav1.ListOptions{})
			if err == nil && wantItems >= 0 && len(l.Items) != wantItems {
				return fmt.Errorf("%d items, want %d", len(l.Items), wantItems)
			}
			return err
		}},
		{"watch " + gvr.Resource + " in " + ns, func(c context.Context) error {
			w, err := dyn.Resource(gvr).Namespace(ns).Watch(c, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		}},
	}
}

func getSecret(dyn dynamic.Interface, ns, name string) check {
	return check{"get secret " + ns + "/" + name, func(c context.Context) error {
		s, err := dyn.Resource(secretsGVR).Namespace(ns).Get(c, name, metav1.GetOptions{})
		if err == nil && len(s.Object["data"].(map[string]any)) == 0 {
			return fmt.Errorf("secret %s/%s has no data", ns, name)
		}
		return err
	}}
}

func patchRepo(dyn dynamic.Interface, ns, name, freq string) check {
	return check{"patch backuprepository " + ns + "/" + name + " spec.maintenanceFrequency", func(c context.Context) error {
		r, err := dyn.Resource(backupReposGVR).Namespace(ns).Patch(c, name, types.MergePatchType,
			[]byte(`{"spec":{"maintenanceFrequency":"`+freq+`"}}`), metav1.PatchOptions{})
		if err == nil {
			if got, _, _ := unstructured.NestedString(r.Object, "spec", "maintenanceFrequency"); got != freq {
				return fmt.Errorf("maintenanceFrequency %q after the patch, want %q", got, freq)
			}
		}
		return err
	}}
}

// discoveryForbidden are the requests the discovery Role must refuse with or
// without the suppression Component: other Secrets, listing Secrets, every
// write but patch on backuprepositories, anything in another namespace.
func discoveryForbidden(dyn dynamic.Interface, ns, otherNS string) []check {
	repos := dyn.Resource(backupReposGVR).Namespace(ns)
	return []check{
		getSecret(dyn, ns, strangerSecret),
		{"list secrets in " + ns, func(c context.Context) error {
			_, err := dyn.Resource(secretsGVR).Namespace(ns).List(c, metav1.ListOptions{})
			return err
		}},
		{"watch secrets in " + ns, func(c context.Context) error {
			w, err := dyn.Resource(secretsGVR).Namespace(ns).Watch(c, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		}},
		{"update secret " + repoSecret, func(c context.Context) error {
			_, err := dyn.Resource(secretsGVR).Namespace(ns).Patch(c, repoSecret, types.MergePatchType, []byte(`{"stringData":{"x":"y"}}`), metav1.PatchOptions{})
			return err
		}},
		{"update backuprepository", func(c context.Context) error {
			_, err := repos.Update(c, &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "velero.io/v1", "kind": "BackupRepository",
				"metadata": map[string]any{"name": "app1-default-kopia-x7k2p", "namespace": ns, "resourceVersion": "1"},
			}}, metav1.UpdateOptions{})
			return err
		}},
		{"create backuprepository", func(c context.Context) error {
			_, err := repos.Create(c, &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "velero.io/v1", "kind": "BackupRepository",
				"metadata": map[string]any{"name": "new", "namespace": ns},
			}}, metav1.CreateOptions{})
			return err
		}},
		{"delete backuprepository", func(c context.Context) error {
			return repos.Delete(c, "app1-default-kopia-x7k2p", metav1.DeleteOptions{})
		}},
		{"patch backupstoragelocation", func(c context.Context) error {
			_, err := dyn.Resource(bslsGVR).Namespace(ns).Patch(c, "default", types.MergePatchType, []byte(`{"spec":{"accessMode":"ReadOnly"}}`), metav1.PatchOptions{})
			return err
		}},
		getSecret(dyn, otherNS, repoSecret),
		{"list backuprepositories in " + otherNS, func(c context.Context) error {
			_, err := dyn.Resource(backupReposGVR).Namespace(otherNS).List(c, metav1.ListOptions{})
			return err
		}},
		patchRepo(dyn, otherNS, "app1-default-kopia-x7k2p", "8760h"),
		{"list backuprepositories in all namespaces", func(c context.Context) error {
			_, err := dyn.Resource(backupReposGVR).List(c, metav1.ListOptions{})
			return err
		}},
	}
}

// TestDiscoveryRBAC proves the discovery Role minimal: bound alone, as
// deploy/base renders it, the daemon's token can get, list and watch
// BackupRepositories and BackupStorageLocations, get exactly the two named
// Secrets of Velero's namespace and list its Jobs, and is Forbidden to get
// any other Secret, to list or watch Secrets, to watch or delete Jobs, to
// patch (or otherwise write) BackupRepositories, and to do any of it in
// another namespace. With the
// Role as deploy/overlays/velero renders it (the suppress-builtin-maintenance
// Component) it can also patch BackupRepositories, and nothing else more.
func TestDiscoveryRBAC(t *testing.T) {
	t.Parallel()
	k := startKube(t)
	k.InstallCRDs(t)
	for _, ns := range []string{veleroNS, otherVeleroNS} {
		veleroObjects(t, k, ns)
	}
	_, base := harness.Kustomize(t, "deploy/base")
	k.Apply(t, rendered(t, base, "Role", discoveryRole), rendered(t, base, "RoleBinding", discoveryRole))
	dyn, err := dynamic.NewForConfig(k.ServiceAccountConfig(t, veleroNS, daemonSA))
	if err != nil {
		t.Fatal(err)
	}

	allowed := append(listWatch(dyn, veleroNS, backupReposGVR, 1), listWatch(dyn, veleroNS, bslsGVR, 1)...)
	allowed = append(allowed, getSecret(dyn, veleroNS, repoSecret), getSecret(dyn, veleroNS, cloudSecret),
		getObject(dyn, veleroNS, backupReposGVR, "app1-default-kopia-x7k2p"), getObject(dyn, veleroNS, bslsGVR, "default"),
		check{"list maintenance jobs of a repository in " + veleroNS, func(c context.Context) error {
			_, err := dyn.Resource(jobsGVR).Namespace(veleroNS).List(c, metav1.ListOptions{LabelSelector: "velero.io/repo-name=default-default-kopia-x7k2p"})
			return err
		}})
	expectAllowed(t, allowed)
	// Bound alone, the discovery Role lists Jobs and does nothing else with
	// them (the gate's reader Role adds get and watch).
	jobsForbidden := []check{
		{"watch jobs in " + veleroNS, func(c context.Context) error {
			w, err := dyn.Resource(jobsGVR).Namespace(veleroNS).Watch(c, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		}},
		{"delete jobs in " + veleroNS, func(c context.Context) error {
			return dyn.Resource(jobsGVR).Namespace(veleroNS).DeleteCollection(c, metav1.DeleteOptions{}, metav1.ListOptions{})
		}},
		{"list jobs in " + otherVeleroNS, func(c context.Context) error {
			_, err := dyn.Resource(jobsGVR).Namespace(otherVeleroNS).List(c, metav1.ListOptions{})
			return err
		}},
		{"list pods in " + veleroNS, func(c context.Context) error {
			_, err := dyn.Resource(podsGVR).Namespace(veleroNS).List(c, metav1.ListOptions{})
			return err
		}},
	}
	expectForbidden(t, append(append(discoveryForbidden(dyn, veleroNS, otherVeleroNS), jobsForbidden...),
		patchRepo(dyn, veleroNS, "app1-default-kopia-x7k2p", "8760h")))

	t.Run("suppress-builtin-maintenance", func(t *testing.T) {
		_, overlay := harness.Kustomize(t, "deploy/overlays/velero")
		k.Apply(t, rendered(t, overlay, "Role", discoveryRole))
		expectAllowed(t, append(allowed,
			patchRepo(dyn, veleroNS, "app1-default-kopia-x7k2p", "8760h"),
			// and back, as a hand-back restores it
			patchRepo(dyn, veleroNS, "app1-default-kopia-x7k2p", "1h")))
		expectForbidden(t, append(discoveryForbidden(dyn, veleroNS, otherVeleroNS), jobsForbidden...))
	})
}

func getObject(dyn dynamic.Interface, ns string, gvr schema.GroupVersionResource, name string) check {
	return check{"get " + gvr.Resource + " " + ns + "/" + name, func(c context.Context) error {
		_, err := dyn.Resource(gvr).Namespace(ns).Get(c, name, metav1.GetOptions{})
		return err
	}}
}

// overlayRBAC is an overlay whose whole RBAC TestOverlayRBAC applies.
type overlayRBAC struct {
	dir            string
	namespace      string // Velero's and the daemon's
	serviceAccount string
	otherNamespace string
}

// TestOverlayRBAC applies everything deploy/overlays/velero, oadp and
// velero-sidecar render (with kubectl apply, as a user would) and checks, with
// the token of the ServiceAccount the daemon runs as there, that it can do
// what the daemon does in Velero's namespace of that overlay: the gate's
// reads and get on the namespace itself, discovery with the Secrets its
// config names, its Leases, patching BackupRepositories; and nothing of it
// in the other Velero namespace, no other Secret, no listing of Secrets or
// Leases. For the sidecar this is Velero's ServiceAccount velero without the
// cluster-admin binding Velero's installer gives it: the overlay's own
// grants suffice.
func TestOverlayRBAC(t *testing.T) {
	t.Parallel()
	for _, o := range []overlayRBAC{
		{dir: "deploy/overlays/velero", namespace: veleroNS, serviceAccount: daemonSA, otherNamespace: otherVeleroNS},
		{dir: "deploy/overlays/oadp", namespace: otherVeleroNS, serviceAccount: daemonSA, otherNamespace: veleroNS},
		{dir: "deploy/overlays/velero-sidecar", namespace: veleroNS, serviceAccount: "velero", otherNamespace: otherVeleroNS},
	} {
		t.Run(path.Base(o.dir), func(t *testing.T) {
			t.Parallel()
			k := startKube(t)
			k.InstallCRDs(t)
			for _, ns := range []string{veleroNS, otherVeleroNS} {
				veleroObjects(t, k, ns)
			}
			yamlOut, objs := harness.Kustomize(t, o.dir)
			if out, errOut, err := harness.Kubectl(t, yamlOut, "apply", "--kubeconfig", k.AdminKubeconfig(t), "-f", "-"); err != nil {
				t.Fatalf("kubectl apply -k %s: %v\n%s%s", o.dir, err, out, errOut)
			}
			cfg := daemonConfig(t, objs)
			var secrets []string
			for _, key := range []string{"credentialsSecret", "cloudCredentialsSecret"} {
				if s, _ := cfg.Velero[key].(string); s != "" {
					secrets = append(secrets, s)
				}
			}
			if len(secrets) == 0 || !slices.Contains(secrets, repoSecret) {
				t.Fatalf("config names Secrets %v, want %s among them", secrets, repoSecret)
			}

			dyn, err := dynamic.NewForConfig(k.ServiceAccountConfig(t, o.namespace, o.serviceAccount))
			if err != nil {
				t.Fatal(err)
			}
			ns := o.namespace
			var allowed []check
			// The gate.
			allowed = append(allowed, listWatch(dyn, ns, podsGVR, -1)...)
			allowed = append(allowed, listWatch(dyn, ns, deploymentsGVR, -1)...)
			allowed = append(allowed, listWatch(dyn, ns, daemonSetsGVR, -1)...)
			allowed = append(allowed, listWatch(dyn, ns, jobsGVR, -1)...)
			for _, r := range veleroResources {
				allowed = append(allowed, listWatch(dyn, ns, veleroGVR(r.apiVersion, r.resource), -1)...)
			}
			allowed = append(allowed, check{"get namespace " + ns, func(c context.Context) error {
				_, err := dyn.Resource(namespacesGVR).Get(c, ns, metav1.GetOptions{})
				return err
			}})
			// Discovery and suppression.
			for _, s := range secrets {
				allowed = append(allowed, getSecret(dyn, ns, s))
			}
			allowed = append(allowed, patchRepo(dyn, ns, "app1-default-kopia-x7k2p", "8760h"))
			// Leases: create, then get and update by name.
			leases := dyn.Resource(leasesGVR).Namespace(ns)
			allowed = append(allowed, check{"create, get, update lease in " + ns, func(c context.Context) error {
				_, err := leases.Create(c, &unstructured.Unstructured{Object: map[string]any{
					"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
					"metadata": map[string]any{"name": "kopia-maintd-app1"},
					"spec":     map[string]any{"holderIdentity": "a", "leaseDurationSeconds": int64(60)},
				}}, metav1.CreateOptions{})
				if err != nil && !apierrors.IsAlreadyExists(err) {
					return err
				}
				l, err := leases.Get(c, "kopia-maintd-app1", metav1.GetOptions{})
				if err != nil {
					return err
				}
				_ = unstructured.SetNestedField(l.Object, "b", "spec", "holderIdentity")
				_, err = leases.Update(c, l, metav1.UpdateOptions{})
				return err
			}})
			expectAllowed(t, allowed)

			forbidden := discoveryForbidden(dyn, ns, o.otherNamespace)
			if !slices.Contains(secrets, cloudSecret) {
				// The sidecar reads the cloud credentials from its volume.
				forbidden = append(forbidden, getSecret(dyn, ns, cloudSecret))
			}
			forbidden = append(forbidden,
				check{"get namespace " + o.otherNamespace, func(c context.Context) error {
					_, err := dyn.Resource(namespacesGVR).Get(c, o.otherNamespace, metav1.GetOptions{})
					return err
				}},
				check{"list pods in " + o.otherNamespace, func(c context.Context) error {
					_, err := dyn.Resource(podsGVR).Namespace(o.otherNamespace).List(c, metav1.ListOptions{})
					return err
				}},
				check{"list leases in " + ns, func(c context.Context) error {
					_, err := leases.List(c, metav1.ListOptions{})
					return err
				}},
				check{"create lease in " + o.otherNamespace, func(c context.Context) error {
					_, err := dyn.Resource(leasesGVR).Namespace(o.otherNamespace).Create(c, &unstructured.Unstructured{Object: map[string]any{
						"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
						"metadata": map[string]any{"name": "kopia-maintd-app1"},
					}}, metav1.CreateOptions{})
					return err
				}},
				check{"scale deployment velero", func(c context.Context) error {
					_, err := dyn.Resource(deploymentsGVR).Namespace(ns).Patch(c, "velero", types.MergePatchType, []byte(`{"spec":{"replicas":0}}`), metav1.PatchOptions{})
					return err
				}},
			)
			expectForbidden(t, forbidden)
		})
	}
}

// renderedConfig is the part of the daemon's config TestOverlayRBAC reads.
type renderedConfig struct {
	Velero map[string]any `yaml:"velero"`
}

// daemonConfig decodes config.yaml of the one ConfigMap named
// kopia-maintd-config (with or without a hash suffix) in objs.
func daemonConfig(t *testing.T, objs []*unstructured.Unstructured) renderedConfig {
	t.Helper()
	var found []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "ConfigMap" && strings.HasPrefix(o.GetName(), "kopia-maintd-config") {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d kopia-maintd-config ConfigMaps rendered, want 1", len(found))
	}
	data, _, _ := unstructured.NestedString(found[0].Object, "data", "config.yaml")
	var cfg renderedConfig
	if err := yaml.Unmarshal([]byte(data), &cfg); err != nil {
		t.Fatalf("decode config.yaml: %v", err)
	}
	return cfg
}
