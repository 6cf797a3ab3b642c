package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

var backupRepositoriesGVR = schema.GroupVersionResource{Group: "velero.io", Version: "v1", Resource: "backuprepositories"}

// veleroEnv is a Kubernetes API with Velero's CRDs, a BackupStorageLocation
// pointing at a MinIO bucket, Velero's two Secrets, and kopia repositories
// at Velero's prefixes created as default@default by the kopia version
// Velero 1.18 ships.
type veleroEnv struct {
	kube *harness.Kube
	mc   *harness.MinIO
	dir  string
	clis map[string]*harness.KopiaCLI // by volume namespace
}

func newVeleroEnv(t *testing.T) *veleroEnv {
	t.Helper()

	kube := harness.StartKube(t)
	kube.InstallCRDs(t)
	kube.EnsureNamespace(t, "velero")

	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, "velero-backups")

	kube.Apply(t, []byte(fmt.Sprintf(`
apiVersion: velero.io/v1
kind: BackupStorageLocation
metadata: {name: default, namespace: velero}
spec:
  provider: aws
  objectStorage: {bucket: velero-backups, prefix: cluster-a}
  config: {region: us-east-1, s3ForcePathStyle: "true", s3Url: "%[1]s"}
---
apiVersion: v1
kind: Secret
metadata: {name: cloud-credentials, namespace: velero}
stringData:
  cloud: |
    [default]
    aws_access_key_id = %[2]s
    aws_secret_access_key = %[3]s
---
apiVersion: v1
kind: Secret
metadata: {name: velero-repo-credentials, namespace: velero}
stringData: {repository-password: %[4]s}
`, mc.URL(), mc.AccessKey, mc.SecretKey, password)))

	return &veleroEnv{kube: kube, mc: mc, dir: t.TempDir(), clis: map[string]*harness.KopiaCLI{}}
}

// addRepository creates the kopia repository Velero would create for
// volume namespace ns (one snapshot in it) and its BackupRepository.
func (e *veleroEnv) addRepository(t *testing.T, ns string) {
	t.Helper()

	k := harness.NewKopiaCLIVersion(t, harness.KopiaV0223, password)
	k.Run(t, append([]string{"repository", "create", "s3", "--override-username", "default", "--override-hostname", "default"},
		e.mc.KopiaS3Flags("velero-backups", "cluster-a/kopia/"+ns+"/")...)...)

	data := filepath.Join(e.dir, ns)
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}

	writeRandomFile(t, filepath.Join(data, "file"), 1<<20, int64(len(ns)))
	k.Run(t, "snapshot", "create", data)
	e.clis[ns] = k

	e.kube.Apply(t, []byte(fmt.Sprintf(`
apiVersion: velero.io/v1
kind: BackupRepository
metadata:
  name: %[1]s-default-kopia-x7k2p
  namespace: velero
  labels: {velero.io/volume-namespace: %[1]s, velero.io/storage-location: default, velero.io/repository-type: kopia}
spec:
  volumeNamespace: %[1]s
  backupStorageLocation: default
  repositoryType: kopia
  resticIdentifier: "s3:%[2]s/velero-backups/cluster-a/restic/%[1]s"
  maintenanceFrequency: 1h0m0s
`, ns, e.mc.URL())))
}

func (e *veleroEnv) backupRepository(t *testing.T, ns string) *unstructured.Unstructured {
	t.Helper()

	obj, err := e.kube.Dynamic(t).Resource(backupRepositoriesGVR).Namespace("velero").Get(context.Background(), ns+"-default-kopia-x7k2p", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get BackupRepository of %s: %v", ns, err)
	}

	return obj
}

func frequency(obj *unstructured.Unstructured) string {
	f, _, _ := unstructured.NestedString(obj.Object, "spec", "maintenanceFrequency")
	return f
}

// TestVeleroDiscoveryEndToEnd: the daemon, with the RBAC of deploy/,
// discovers Velero's kopia repositories from their BackupRepository and
// BackupStorageLocation objects (no repository in its config, no S3 key
// Secret of its own), takes ownership, quiets Velero's maintenance, runs
// quick and full cycles, follows a repository added and one deleted, and on
// SIGTERM hands every repository back to default@default with its original
// maintenanceFrequency; every repository still verifies with the kopia CLI.
func TestVeleroDiscoveryEndToEnd(t *testing.T) {
	e := newVeleroEnv(t)
	e.addRepository(t, "app1")
	e.addRepository(t, "app2")

	kubeconfig := veleroDiscoveryKubeconfig(t, e.kube)
	addr := harness.FreeAddr(t)
	cfg := writeFile(t, e.dir, "config.yaml", fmt.Sprintf(`
identity: {username: maintd, hostname: e2e}
stateDirectory: %[1]s/state
concurrency: 2
server: {listenAddress: "%[2]s"}
log: {level: debug, format: json}
kubernetes: {kubeconfig: %[3]s}
lease: {kind: repository}
velero:
  discover: true
  suppressBuiltinMaintenance: true
  repositoryDefaults:
    schedule: {quick: "@every 2s", full: "@every 15s", jitter: 0s}
    ownership: {takeover: always, handBackOnExit: true}
`, e.dir, addr, kubeconfig))

	d := startDaemon(t, cfg, addr)

	success := func(repo, cycle string) float64 {
		return d.metric(t, fmt.Sprintf(`kopia_maintenance_runs_total{cycle=%q,repository=%q,result="success"}`, cycle, repo))
	}
	maintained := func(repos ...string) func() bool {
		return func() bool {
			for _, r := range repos {
				if success(r, "quick") < 1 || success(r, "full") < 1 {
					return false
				}
			}

			return true
		}
	}

	waitFor(t, d, "quick and full cycles of both discovered repositories", 2*time.Minute, maintained("app1-default", "app2-default"))

	for _, ns := range []string{"app1", "app2"} {
		if mi := maintInfo(t, e.clis[ns]); mi.Owner != "maintd@e2e" {
			t.Errorf("%s: owner %q, want maintd@e2e", ns, mi.Owner)
		}

		waitFor(t, d, ns+"'s maintenanceFrequency suppressed", 30*time.Second, func() bool {
			return frequency(e.backupRepository(t, ns)) == "87600h0m0s" || frequency(e.backupRepository(t, ns)) == "87600h"
		})

		if got := e.backupRepository(t, ns).GetAnnotations()["kopia-maintd.io/original-maintenance-frequency"]; got != "1h0m0s" {
			t.Errorf("%s: original frequency annotation %q, want 1h0m0s", ns, got)
		}
	}

	// Velero re-initialising a repository sets its owner back to
	// default@default: the next run tells it (Warn, counted) and, under
	// takeover: always, takes the repository back.
	e.clis["app1"].Run(t, "maintenance", "set", "--owner", "default@default")
	waitFor(t, d, "the owner reset by Velero told and taken back", time.Minute, func() bool {
		return d.metric(t, `kopia_maintenance_ownership_changes_total{reason="velero-reset",repository="app1-default"}`) >= 1 &&
			maintInfo(t, e.clis["app1"]).Owner == "maintd@e2e"
	})

	if !strings.Contains(d.logs(), "Velero set the repository's maintenance owner back to default@default") {
		t.Error("no Warn log line for the owner Velero reset")
	}

	if n := d.metric(t, `kopia_maintenance_ownership_changes_total{reason="velero-reset",repository="app2-default"}`); n > 0 {
		t.Errorf("app2-default: velero-reset counted %v times, its owner was never reset", n)
	}

	// A third BackupRepository is picked up without a restart.
	e.addRepository(t, "app3")
	waitFor(t, d, "the added repository maintained", 2*time.Minute, maintained("app3-default"))

	// A deleted one stops being scheduled and its series leave /metrics.
	if err := e.kube.Dynamic(t).Resource(backupRepositoriesGVR).Namespace("velero").Delete(context.Background(), "app2-default-kopia-x7k2p", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	waitFor(t, d, "the deleted repository's series gone", time.Minute, func() bool {
		return !strings.Contains(httpBody(t, "http://"+addr+"/metrics"), `repository="app2-default"`)
	})

	d.stop(t)

	if d.err != nil {
		t.Errorf("daemon exit: %v", d.err)
	}

	for _, ns := range []string{"app1", "app3"} {
		br := e.backupRepository(t, ns)
		if f := frequency(br); f != "1h0m0s" {
			t.Errorf("%s: maintenanceFrequency after hand-back %q, want 1h0m0s", ns, f)
		}

		if _, ok := br.GetAnnotations()["kopia-maintd.io/original-maintenance-frequency"]; ok {
			t.Errorf("%s: annotation left after hand-back", ns)
		}

		if mi := maintInfo(t, e.clis[ns]); mi.Owner != "default@default" {
			t.Errorf("%s: owner after hand-back %q, want default@default", ns, mi.Owner)
		}
	}

	for ns, k := range e.clis {
		k.Run(t, "snapshot", "verify", "--verify-files-percent=100")
		k.Run(t, "content", "verify")
		t.Logf("%s verifies", ns)
	}
}

// veleroDiscoveryKubeconfig grants the daemon's ServiceAccount the RBAC of
// deploy/ for discovery with suppression (the gate's reader Role, the
// discovery Role and the suppression Component's JSON patch of it, read
// from the Component's file) and returns a kubeconfig with its token.
func veleroDiscoveryKubeconfig(t *testing.T, kube *harness.Kube) string {
	t.Helper()

	for _, f := range []string{"deploy/base/role.yaml", "deploy/base/rolebinding.yaml", "deploy/base/discovery-role.yaml", "deploy/base/discovery-rolebinding.yaml"} {
		kube.ApplyFile(t, f)
	}

	kube.ApplyRoleComponent(t, "deploy/components/suppress-builtin-maintenance", "velero")

	return kube.ServiceAccountKubeconfig(t, "velero", "kopia-maintd")
}
