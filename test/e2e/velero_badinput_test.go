package e2e

import (
	"bufio"
	"context"
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

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// addVeleroRepository creates, as Velero would, the kopia repository of
// volume namespace ns in location bsl (bucket velero-backups, prefix
// cluster-a) with repoPassword, and its BackupRepository. It returns the
// repository's kopia CLI.
func (e *veleroEnv) addVeleroRepository(t *testing.T, ns, bsl, repoPassword string) *harness.KopiaCLI {
	t.Helper()

	k := harness.NewKopiaCLIVersion(t, harness.KopiaV0223, repoPassword)
	k.Run(t, append([]string{"repository", "create", "s3", "--override-username", "default", "--override-hostname", "default"},
		e.mc.KopiaS3Flags("velero-backups", "cluster-a/kopia/"+ns+"/")...)...)

	data := filepath.Join(e.dir, ns)
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}

	writeRandomFile(t, filepath.Join(data, "file"), 256<<10, int64(len(ns)))
	k.Run(t, "snapshot", "create", data)

	e.applyBackupRepository(t, ns, bsl)

	return k
}

// applyBackupRepository creates the BackupRepository of volume namespace
// ns in location bsl, named as Velero names it.
func (e *veleroEnv) applyBackupRepository(t *testing.T, ns, bsl string) {
	t.Helper()

	e.kube.Apply(t, []byte(fmt.Sprintf(`
apiVersion: velero.io/v1
kind: BackupRepository
metadata:
  name: %[1]s-%[2]s-kopia-q8m4z
  namespace: velero
  labels: {velero.io/volume-namespace: %[1]s, velero.io/storage-location: %[2]s, velero.io/repository-type: kopia}
spec:
  volumeNamespace: %[1]s
  backupStorageLocation: %[2]s
  repositoryType: kopia
  resticIdentifier: "s3:example/velero-backups/cluster-a/restic/%[1]s"
  maintenanceFrequency: 1h0m0s
`, ns, bsl)))
}

// logLine is one line of the daemon's JSON log.
type logLine struct {
	Level      string `json:"level"`
	Msg        string `json:"msg"`
	Repository string `json:"repository"`
	Error      string `json:"error"`
	Reason     string `json:"reason"`
}

func logLines(t *testing.T, logs string) []logLine {
	t.Helper()

	var out []logLine

	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)

	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) == nil {
			out = append(out, l)
		}
	}

	return out
}

// TestVeleroBadInputFailsOnlyThatRepository: discovered repositories with
// bad input (a location whose credential Secret is missing, a credentials
// file without the location's profile, a repository whose password is not
// Velero's, a location of a provider kopia cannot be configured for, and a
// location whose endpoint nothing listens on) each fail, or are reported as
// not maintained, with an error that says what is wrong with that
// repository, while a good repository of the same daemon keeps being
// maintained; no secret appears in the log or in status.
func TestVeleroBadInputFailsOnlyThatRepository(t *testing.T) {
	e := newVeleroEnv(t)

	unreachable := harness.FreeAddr(t) // nothing listens there
	e.kube.Apply(t, []byte(fmt.Sprintf(`
apiVersion: velero.io/v1
kind: BackupStorageLocation
metadata: {name: nosecret, namespace: velero}
spec:
  provider: aws
  objectStorage: {bucket: velero-backups, prefix: cluster-a}
  config: {region: us-east-1, s3ForcePathStyle: "true", s3Url: "%[1]s"}
  credential: {name: nosecret-credentials, key: cloud}
---
apiVersion: velero.io/v1
kind: BackupStorageLocation
metadata: {name: noprofile, namespace: velero}
spec:
  provider: aws
  objectStorage: {bucket: velero-backups, prefix: cluster-a}
  config: {region: us-east-1, s3ForcePathStyle: "true", s3Url: "%[1]s", profile: backup-writer}
---
apiVersion: velero.io/v1
kind: BackupStorageLocation
metadata: {name: azure, namespace: velero}
spec:
  provider: azure
  objectStorage: {bucket: velero-backups, prefix: cluster-a}
  config: {storageAccount: acct, resourceGroup: rg}
---
apiVersion: velero.io/v1
kind: BackupStorageLocation
metadata: {name: unreachable, namespace: velero}
spec:
  provider: aws
  objectStorage: {bucket: velero-backups, prefix: cluster-a}
  config: {region: us-east-1, s3ForcePathStyle: "true", s3Url: "http://%[2]s"}
`, e.mc.URL(), unreachable)))

	good := e.addVeleroRepository(t, "good", "default", password)
	e.addVeleroRepository(t, "badpw", "default", "not-velero-s-password")
	e.addVeleroRepository(t, "nosecret", "nosecret", password)
	e.addVeleroRepository(t, "noprofile", "noprofile", password)
	e.applyBackupRepository(t, "blob", "azure")
	e.applyBackupRepository(t, "offline", "unreachable")

	kubeconfig := veleroDiscoveryKubeconfig(t, e.kube)

	// As the discovery Role's comment tells users, a location's own
	// credential Secret is added to the Role: so the daemon meets the
	// missing Secret itself, not a Forbidden.
	roles := schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"}
	if _, err := e.kube.Dynamic(t).Resource(roles).Namespace("velero").Patch(context.Background(), "kopia-maintd-velero-discovery", types.JSONPatchType,
		[]byte(`[{"op":"add","path":"/rules/1/resourceNames/-","value":"nosecret-credentials"}]`), metav1.PatchOptions{}); err != nil {
		t.Fatalf("add the location's Secret to the discovery Role: %v", err)
	}

	addr := harness.FreeAddr(t)
	cfg := writeFile(t, e.dir, "config.yaml", fmt.Sprintf(`
identity: {username: maintd, hostname: e2e}
stateDirectory: %[1]s/state
concurrency: 2
server: {listenAddress: "%[2]s"}
log: {level: info, format: json}
kubernetes: {kubeconfig: %[3]s}
lease: {kind: repository}
velero:
  discover: true
  repositoryDefaults:
    schedule: {quick: "@every 3s", full: "@every 10s", jitter: 0s}
    ownership: {takeover: always}
`, e.dir, addr, kubeconfig))

	d := startDaemon(t, cfg, addr)

	runs := func(repo, cycle, result string) float64 {
		return d.metric(t, fmt.Sprintf(`kopia_maintenance_runs_total{cycle=%q,repository=%q,result=%q}`, cycle, repo, result))
	}

	failing := []string{"badpw-default", "nosecret-nosecret", "noprofile-noprofile", "offline-unreachable"}

	waitFor(t, d, "every bad repository failed, the good one maintained", 3*time.Minute, func() bool {
		for _, r := range failing {
			if runs(r, "quick", "failure")+runs(r, "full", "failure") < 1 {
				return false
			}
		}

		return runs("good-default", "quick", "success") >= 1 && runs("good-default", "full", "success") >= 1
	})

	// The good repository keeps being maintained while the others fail. A
	// full cycle does a quick cycle's work and stands for a quick slot that
	// comes while it runs (on a loaded machine every quick slot can fall
	// inside a full cycle), so both count.
	goodRuns := func() float64 {
		return runs("good-default", "quick", "success") + runs("good-default", "full", "success")
	}
	before := goodRuns()
	waitFor(t, d, "the good repository's next cycles", time.Minute, func() bool {
		return goodRuns() >= before+2
	})

	for _, r := range failing {
		if n := runs(r, "quick", "success") + runs(r, "full", "success"); n > 0 {
			t.Errorf("%s: %v successful runs, want none", r, n)
		}
	}

	if n := runs("good-default", "quick", "failure") + runs("good-default", "full", "failure"); n > 0 {
		t.Errorf("good-default: %v failed runs, want none", n)
	}

	if v := d.metric(t, `kopia_maintenance_discovered_not_maintained{reason="unsupported",repository="blob-azure"}`); v != 1 {
		t.Errorf("blob-azure: discovered_not_maintained{reason=unsupported} = %v, want 1", v)
	}

	if strings.Contains(httpBody(t, "http://"+addr+"/metrics"), `kopia_maintenance_runs_total{cycle="quick",repository="blob-azure"`) {
		t.Error("blob-azure has run series: an unsupported repository must not be scheduled")
	}

	// Each failure names its own cause, in that repository's log lines.
	want := map[string][]string{
		"badpw-default":       {"wrong repository password"},
		"nosecret-nosecret":   {"nosecret-credentials", "not found"},
		"noprofile-noprofile": {`profile "backup-writer"`},
		"offline-unreachable": {unreachable, "connection refused"},
	}

	lines := logLines(t, d.logs())

	for repo, subs := range want {
		found := false

		for _, l := range lines {
			if l.Repository != repo || l.Msg != "maintenance run finished" || l.Error == "" {
				continue
			}

			ok := true
			for _, s := range subs {
				ok = ok && strings.Contains(l.Error, s)
			}

			if ok {
				found = true
				break
			}
		}

		if !found {
			t.Errorf("%s: no failed run whose error contains %q", repo, subs)
		}
	}

	warned := false

	for _, l := range lines {
		if l.Repository == "blob-azure" && l.Level == "warn" && strings.Contains(l.Reason, "provider velero.io/azure") {
			warned = true
		}
	}

	if !warned {
		t.Error("no Warn naming the unsupported provider of blob-azure")
	}

	// status reports each repository on its own: the good one is readable,
	// each bad one carries its error.
	stdout, stderr, code := runCLI(t, "status", "--config", cfg, "--json")
	if code == 0 {
		t.Errorf("status exit code 0 with failing repositories; stderr: %s", stderr)
	}

	var st []struct {
		Name  string `json:"name"`
		Owner string `json:"owner"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, stdout)
	}

	seen := map[string]string{}
	for _, s := range st {
		seen[s.Name] = s.Error

		if s.Name == "good-default" && (s.Error != "" || s.Owner != "maintd@e2e") {
			t.Errorf("status of good-default: owner %q, error %q", s.Owner, s.Error)
		}
	}

	for repo, subs := range want {
		if !strings.Contains(seen[repo], subs[0]) {
			t.Errorf("status of %s: error %q, want it to contain %q", repo, seen[repo], subs[0])
		}
	}

	if !strings.Contains(stderr, "blob-azure") {
		t.Errorf("status says nothing of the unsupported blob-azure; stderr: %s", stderr)
	}

	for _, secret := range []string{e.mc.SecretKey, password, "not-velero-s-password"} {
		for where, text := range map[string]string{"log": d.logs(), "status": stdout + stderr, "metrics": httpBody(t, "http://"+addr+"/metrics")} {
			if strings.Contains(text, secret) {
				t.Errorf("a secret appears in the %s", where)
			}
		}
	}

	good.Run(t, "snapshot", "verify", "--verify-files-percent=100")
}
