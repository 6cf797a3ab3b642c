package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// documentedSecretPatch returns the JSON patch that the comment of
// deploy/base/discovery-role.yaml tells users to apply to let the daemon
// read a location's own Secret, with name in place of its example name.
func documentedSecretPatch(t *testing.T, name string) []byte {
	t.Helper()

	data, err := os.ReadFile(filepath.Join(harness.RepoRoot(t), "deploy/base/discovery-role.yaml"))
	if err != nil {
		t.Fatal(err)
	}

	// The comment's overlay, uncommented: "#   patches:" up to the next
	// blank comment line.
	var overlay []string

	for _, line := range strings.Split(string(data), "\n") {
		if len(overlay) == 0 && line != "#   patches:" {
			continue
		}

		text := strings.TrimPrefix(line, "#")
		if strings.TrimSpace(text) == "" {
			break
		}

		overlay = append(overlay, text)
	}

	var kust struct {
		Patches []struct {
			Target struct{ Kind, Name string }
			Patch  string
		}
	}
	if err := yaml.Unmarshal([]byte(strings.Join(overlay, "\n")), &kust); err != nil || len(kust.Patches) != 1 ||
		kust.Patches[0].Target.Name != "kopia-maintd-velero-discovery" || !strings.Contains(kust.Patches[0].Patch, "my-bsl-credentials") {
		t.Fatalf("the documented patch in discovery-role.yaml: %v %+v", err, kust)
	}

	ops, err := yaml.YAMLToJSON([]byte(strings.ReplaceAll(kust.Patches[0].Patch, "my-bsl-credentials", name)))
	if err != nil {
		t.Fatal(err)
	}

	return ops
}

// TestVeleroDiscoveryTLS: Velero's locations point at a MinIO that serves
// HTTPS with a certificate of a private CA. The daemon, with the RBAC of
// deploy/, maintains the repository of a location whose CA is inline
// (spec.objectStorage.caCert, deprecated) and the one of a location whose CA
// is in a Secret (caCertRef): refused (Forbidden, naming the Secret) until
// the Role is patched as discovery-role.yaml documents, then maintained from
// the next run on, with no restart and no change to Velero's objects. A
// location with no CA fails with a certificate error. No log shows the
// secret key.
func TestVeleroDiscoveryTLS(t *testing.T) {
	start := time.Now()

	kube := harness.StartKube(t)
	kube.InstallCRDs(t)
	kube.EnsureNamespace(t, "velero")

	mc := harness.StartMinIOTLS(t)
	mc.MakeBucket(t, "velero-backups")

	caB64 := base64.StdEncoding.EncodeToString(mc.CA.PEM)
	kube.Apply(t, []byte(fmt.Sprintf(`
apiVersion: velero.io/v1
kind: BackupStorageLocation
metadata: {name: ref, namespace: velero}
spec:
  provider: aws
  objectStorage:
    bucket: velero-backups
    prefix: cluster-a
    caCertRef: {name: minio-ca, key: ca.crt}
  config: {region: us-east-1, s3ForcePathStyle: "true", s3Url: "%[1]s"}
---
apiVersion: velero.io/v1
kind: BackupStorageLocation
metadata: {name: inline, namespace: velero}
spec:
  provider: aws
  objectStorage: {bucket: velero-backups, prefix: cluster-b, caCert: %[5]s}
  config: {region: us-east-1, s3ForcePathStyle: "true", s3Url: "%[1]s"}
---
apiVersion: velero.io/v1
kind: BackupStorageLocation
metadata: {name: noca, namespace: velero}
spec:
  provider: aws
  objectStorage: {bucket: velero-backups, prefix: cluster-c}
  config: {region: us-east-1, s3ForcePathStyle: "true", s3Url: "%[1]s"}
---
apiVersion: v1
kind: Secret
metadata: {name: minio-ca, namespace: velero}
data: {ca.crt: %[5]s}
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
`, mc.URL(), mc.AccessKey, mc.SecretKey, password, caB64)))

	// The repositories Velero would have created, by the kopia version it
	// ships, over TLS with the CA.
	for _, l := range []struct {
		bsl, prefix string
		create      bool
	}{{"ref", "cluster-a", true}, {"inline", "cluster-b", true}, {"noca", "cluster-c", false}} {
		if l.create {
			k := harness.NewKopiaCLIVersion(t, harness.KopiaV0223, password)
			k.Run(t, append([]string{"repository", "create", "s3", "--override-username", "default", "--override-hostname", "default"},
				mc.KopiaS3Flags("velero-backups", l.prefix+"/kopia/app1/")...)...)
		}

		kube.Apply(t, []byte(fmt.Sprintf(`
apiVersion: velero.io/v1
kind: BackupRepository
metadata:
  name: app1-%[1]s-kopia-x7k2p
  namespace: velero
  labels: {velero.io/volume-namespace: app1, velero.io/storage-location: %[1]s, velero.io/repository-type: kopia}
spec:
  volumeNamespace: app1
  backupStorageLocation: %[1]s
  repositoryType: kopia
  resticIdentifier: "s3:%[2]s/velero-backups/%[3]s/restic/app1"
  maintenanceFrequency: 1h0m0s
`, l.bsl, mc.URL(), l.prefix)))
	}

	dir := t.TempDir()
	kubeconfig := veleroDiscoveryKubeconfig(t, kube)
	addr := harness.FreeAddr(t)
	cfg := writeFile(t, dir, "config.yaml", fmt.Sprintf(`
identity: {username: maintd, hostname: e2e}
stateDirectory: %[1]s/state
concurrency: 3
server: {listenAddress: "%[2]s"}
log: {level: debug, format: json}
kubernetes: {kubeconfig: %[3]s}
lease: {kind: repository}
velero:
  discover: true
  repositoryDefaults:
    schedule: {quick: "@every 2s", full: "@every 1h", jitter: 0s}
    ownership: {takeover: always}
`, dir, addr, kubeconfig))

	t.Logf("set up in %s", time.Since(start).Round(time.Millisecond))

	d := startDaemon(t, cfg, addr)
	runs := func(repo, result string) float64 {
		return d.metric(t, fmt.Sprintf(`kopia_maintenance_runs_total{cycle="quick",repository=%q,result=%q}`, repo, result))
	}
	// finished returns the first log line of a finished run that holds
	// every one of parts, or "".
	finished := func(parts ...string) string {
		for _, line := range strings.Split(d.logs(), "\n") {
			if !strings.Contains(line, `"maintenance run finished"`) {
				continue
			}

			found := true
			for _, p := range parts {
				found = found && strings.Contains(line, p)
			}

			if found {
				return line
			}
		}

		return ""
	}
	refused := func(what, repo, reason string) {
		t.Helper()

		var line string

		waitFor(t, d, what, 30*time.Second, func() bool {
			line = finished(`"repository":"`+repo+`"`, `"result":"failure"`, reason)
			return line != ""
		})

		var entry struct{ Error string }
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("log line %s: %v", line, err)
		}

		t.Logf("%s: %s", repo, entry.Error)
	}

	waitFor(t, d, "a quick cycle of the repository with the inline CA", time.Minute, func() bool { return runs("app1-inline", "success") >= 1 })
	t.Logf("inline caCert maintained %s after the start", time.Since(start).Round(time.Millisecond))

	refused("the repository without a CA refused for its certificate", "app1-noca", "x509: certificate signed by unknown authority")

	// Under deploy/'s Role the CA Secret cannot be read: the run fails and
	// says which Secret to add.
	refused("the caCertRef repository refused its CA Secret", "app1-ref", `secrets \"minio-ca\" is forbidden`)

	if n := runs("app1-ref", "success"); n > 0 {
		t.Fatalf("the caCertRef repository was maintained %v times without access to its CA Secret", n)
	}

	roles := schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"}
	if _, err := kube.Dynamic(t).Resource(roles).Namespace("velero").Patch(context.Background(), "kopia-maintd-velero-discovery",
		types.JSONPatchType, documentedSecretPatch(t, "minio-ca"), metav1.PatchOptions{}); err != nil {
		t.Fatalf("apply the documented Secret patch: %v", err)
	}

	patched := time.Now()

	waitFor(t, d, "a quick cycle of the caCertRef repository after the Role patch", 30*time.Second, func() bool { return runs("app1-ref", "success") >= 1 })
	t.Logf("caCertRef maintained %s after the Role patch, %s after the start", time.Since(patched).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	if runs("app1-noca", "success") > 0 {
		t.Error("the repository without a CA was maintained")
	}

	if strings.Contains(d.logs(), mc.SecretKey) {
		t.Error("the daemon's logs contain the secret key")
	}
}
