package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// gateEnv is a Kubernetes API with Velero's CRDs and deploy/'s RBAC, a
// MinIO bucket with a kopia repository made by the CLI, and a daemon config
// allowing gated safety=none cycles with the daemon's service account.
type gateEnv struct {
	kube *harness.Kube
	mc   *harness.MinIO
	k    *harness.KopiaCLI
	dir  string
	cfg  string
}

func newGateEnv(t *testing.T, s3Endpoint func(mc *harness.MinIO) string, watchInterval string) *gateEnv {
	t.Helper()

	kube := harness.StartKube(t)
	kube.InstallCRDs(t)
	kube.ApplyFile(t, "deploy/base/role.yaml")
	kube.ApplyFile(t, "deploy/base/rolebinding.yaml")
	kube.ApplyFile(t, "deploy/base/namespace-reader.yaml")
	// Velero's installation, as the gate requires one in each namespace it
	// checks: its BackupStorageLocation (the server is not running).
	kube.Apply(t, []byte(`
apiVersion: velero.io/v1
kind: BackupStorageLocation
metadata: {name: default, namespace: velero}
spec: {provider: aws, objectStorage: {bucket: backups}}
`))
	kubeconfig := kube.ServiceAccountKubeconfig(t, "velero", "kopia-maintd")

	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, "backups")

	k := harness.NewKopiaCLI(t, password)
	k.Run(t, append([]string{"repository", "create", "s3", "--override-username", "default", "--override-hostname", "default"}, mc.KopiaS3Flags("backups", "kopia/ns1/")...)...)

	dir := t.TempDir()
	writeFile(t, dir, "password", password)
	writeFile(t, dir, "access-key", mc.AccessKey)
	writeFile(t, dir, "secret-key", mc.SecretKey)

	endpoint := mc.Endpoint
	if s3Endpoint != nil {
		endpoint = s3Endpoint(mc)
	}

	cfg := writeFile(t, dir, "config.yaml", fmt.Sprintf(`
identity: {username: maintd, hostname: e2e}
stateDirectory: %[1]s/state
log: {level: info, format: json}
kubernetes: {kubeconfig: %[2]s}
safetyNone:
  allow: true
  veleroNamespaces: [velero]
  quietPeriod: 6s
  watchInterval: %[4]s
defaults:
  ownership: {takeover: always}
repositories:
  - name: ns1
    storage:
      s3: {bucket: backups, prefix: kopia/ns1/, endpoint: "%[3]s", insecure: true, accessKeyIDFile: access-key, secretAccessKeyFile: secret-key}
    passwordFile: password
`, dir, kubeconfig, endpoint, watchInterval))

	return &gateEnv{kube: kube, mc: mc, k: k, dir: dir, cfg: cfg}
}

// writeDeletedSnapshot snapshots size bytes of unique data next to a small
// snapshot that is kept, then deletes the big one.
func (e *gateEnv) writeDeletedSnapshot(t *testing.T, size int) {
	t.Helper()

	big := filepath.Join(e.dir, "big")
	keep := filepath.Join(e.dir, "keep")

	for _, d := range []string{big, keep} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}

	const part = 16 << 20
	for i := 0; i*part < size; i++ {
		writeRandomFile(t, filepath.Join(big, fmt.Sprintf("part%d", i)), part, int64(i+1))
	}

	writeRandomFile(t, filepath.Join(keep, "small"), 1<<20, 99)

	e.k.Run(t, "snapshot", "create", keep)

	var man struct {
		ID string `json:"id"`
	}

	out := e.k.Run(t, "snapshot", "create", big, "--json")
	if err := json.Unmarshal([]byte(jsonObject(out)), &man); err != nil || man.ID == "" {
		t.Fatalf("snapshot create --json: %v\n%s", err, out)
	}

	e.k.Run(t, "snapshot", "delete", man.ID, "--delete")
}

func writeRandomFile(t *testing.T, path string, size int, seed int64) {
	t.Helper()

	b := make([]byte, size)
	x := uint64(seed)*0x9E3779B97F4A7C15 + 1

	for i := 0; i+8 <= size; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17

		for j := range 8 {
			b[i+j] = byte(x >> (8 * j))
		}
	}

	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func (e *gateEnv) bucketBytes(t *testing.T) int64 {
	t.Helper()

	var n int64

	for obj := range e.mc.Client(t).ListObjects(context.Background(), "backups", minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}

		n += obj.Size
	}

	return n
}

func (e *gateEnv) applyBackup(t *testing.T, name, phase string) {
	t.Helper()

	e.kube.Apply(t, []byte(fmt.Sprintf(`
apiVersion: velero.io/v1
kind: Backup
metadata: {name: %s, namespace: velero}
spec: {}
status: {phase: %s}
`, name, phase)))
}

func (e *gateEnv) auditLines(t *testing.T) []map[string]any {
	t.Helper()

	b, err := os.ReadFile(filepath.Join(e.dir, "state", "audit", "ns1.jsonl"))
	if err != nil {
		t.Fatalf("audit log: %v", err)
	}

	var out []map[string]any

	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}

		out = append(out, m)
	}

	return out
}

// TestGateRefusesThenAllowsAndReclaimsAtOnce: the gate refuses (exit 3,
// with the reasons) while a Backup is in progress and while the repository
// was written within the quiet period; once Velero is idle and the
// repository quiet, a safety=none cycle reclaims a deleted 64 MiB snapshot
// in one cycle, every request is in the audit log, and the repository
// verifies with the kopia CLI.
func TestGateRefusesThenAllowsAndReclaimsAtOnce(t *testing.T) {
	// Built first: compiling later would outlast the quiet period.
	harness.BuildBinary(t, "./cmd/kopia-maintd")

	e := newGateEnv(t, nil, "1s")
	e.writeDeletedSnapshot(t, 64<<20)

	// Written seconds ago: the repository itself refuses.
	stdout, stderr, code := runCLI(t, "gate", "--config", e.cfg)
	if code != 3 || !strings.Contains(stdout, "refuse  repository-activity") || !strings.Contains(stdout, "recent-write p") {
		t.Fatalf("gate right after a write: code %d\n%s%s", code, stdout, stderr)
	}

	time.Sleep(7 * time.Second) // past the 6s quiet period

	e.applyBackup(t, "nightly-1", "InProgress")

	stdout, stderr, code = runCLI(t, "run-once", "--config", e.cfg, "--repository", "ns1", "--cycle", "full", "--safety", "none")
	if code != 3 || !strings.Contains(stdout, "refuse  backups [velero]") || !strings.Contains(stdout, "Backup velero/nightly-1 phase InProgress") {
		t.Fatalf("run-once --safety none with a Backup in progress: code %d\n%s%s", code, stdout, stderr)
	}

	e.applyBackup(t, "nightly-1", "Completed")

	if stdout, stderr, code = runCLI(t, "gate", "--config", e.cfg, "--json"); code != 0 {
		t.Fatalf("gate with Velero idle and the repository quiet: code %d\n%s%s", code, stdout, stderr)
	}

	before := e.bucketBytes(t)

	stdout, stderr, code = runCLI(t, "run-once", "--config", e.cfg, "--repository", "ns1", "--cycle", "full", "--safety", "none")
	if code != 0 {
		t.Fatalf("allowed safety=none cycle: code %d\n%s%s", code, stdout, stderr)
	}

	after := e.bucketBytes(t)
	t.Logf("bucket: %.1f MB before, %.1f MB after one safety=none cycle", float64(before)/1e6, float64(after)/1e6)

	if before-after < 60<<20 {
		t.Fatalf("one safety=none cycle freed %d bytes, want the deleted 64 MiB", before-after)
	}

	audit := e.auditLines(t)
	if len(audit) != 2 || audit[0]["result"] != "refused" || audit[1]["result"] != "success" {
		t.Fatalf("audit log = %v, want a refusal then a success", audit)
	}

	if !strings.HasPrefix(fmt.Sprint(audit[1]["requestedBy"]), "run-once by ") {
		t.Fatalf("audit requestedBy = %v", audit[1]["requestedBy"])
	}

	stdout, _, _ = runCLI(t, "status", "--config", e.cfg)
	if !strings.Contains(stdout, "safety=none:") || !strings.Contains(stdout, "success, requested by run-once by") {
		t.Fatalf("status does not show the safety=none runs:\n%s", stdout)
	}

	e.k.Run(t, "snapshot", "verify", "--verify-files-percent=100")

	// The daemon runs a scheduled window through the same gate.
	cfgBytes, err := os.ReadFile(e.cfg)
	if err != nil {
		t.Fatal(err)
	}

	addr := harness.FreeAddr(t)
	windowCfg := writeFile(t, e.dir, "window.yaml", strings.Replace(string(cfgBytes),
		"  watchInterval: 1s\n", "  watchInterval: 1s\n  windows:\n    - schedule: \"@every 3s\"\n", 1)+
		fmt.Sprintf("server: {listenAddress: %q}\n", addr))

	d := startDaemon(t, windowCfg, addr)

	waitFor(t, d, "a scheduled safety=none window in the audit log", 90*time.Second, func() bool {
		lines := e.auditLines(t)
		last := lines[len(lines)-1]

		return last["requestedBy"] == "scheduled safety=none window" && last["result"] == "success"
	})

	if got := d.metric(t, `kopia_maintenance_unsafe_runs_total{repository="ns1",result="success"}`); got < 1 {
		t.Fatalf("unsafe_runs_total success = %v after a scheduled window", got)
	}
}

// TestUnsafeCycleCancelledWhenBackupStarts: a Backup switched to
// InProgress while a safety=none cycle runs (slowed by toxiproxy so it
// takes several seconds) cancels the cycle within watchInterval plus one
// second; the repository verifies afterwards and a SafetyFull cycle runs.
func TestUnsafeCycleCancelledWhenBackupStarts(t *testing.T) {
	var tp *harness.Toxiproxy

	e := newGateEnv(t, func(mc *harness.MinIO) string {
		tp = harness.StartToxiproxy(t)
		return tp.Proxy(t, "s3", mc.Endpoint)
	}, "1s")
	e.writeDeletedSnapshot(t, 32<<20)
	e.applyBackup(t, "nightly-1", "Completed")
	time.Sleep(7 * time.Second) // past the 6s quiet period
	tp.Latency(t, "s3", 150)

	bin := harness.BuildBinary(t, "./cmd/kopia-maintd")
	cmd := exec.Command(bin, "run-once", "--config", e.cfg, "--repository", "ns1", "--cycle", "full", "--safety", "none")

	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}

	var (
		mu   sync.Mutex
		logs strings.Builder
	)

	started := make(chan struct{})

	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}

		for sc.Scan() {
			mu.Lock()
			logs.WriteString(sc.Text() + "\n")
			mu.Unlock()

			if strings.Contains(sc.Text(), "safety=none full cycle starting") {
				once.Do(func() { close(started) })
			}
		}

		_, _ = io.Copy(io.Discard, stderr)
	}()

	select {
	case <-started:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatal("the safety=none cycle did not start")
	}

	time.Sleep(1500 * time.Millisecond) // well inside the cycle
	e.applyBackup(t, "nightly-2", "InProgress")
	switched := time.Now()

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	var werr error
	select {
	case werr = <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("run-once did not stop after the Backup started")
	}

	took := time.Since(switched)

	mu.Lock()
	out := logs.String()
	mu.Unlock()

	ee, ok := werr.(*exec.ExitError)
	if !ok || ee.ExitCode() != 3 || !strings.Contains(out, "safety=none full cycle cancelled") || !strings.Contains(out, "nightly-2") {
		t.Fatalf("run-once after the Backup started: %v\n%s", werr, out)
	}

	t.Logf("cancelled %s after the Backup switched to InProgress", took.Round(10*time.Millisecond))

	// watchInterval (1s) plus one second, plus the process' own exit.
	if took > 2*time.Second+500*time.Millisecond {
		t.Fatalf("cancellation took %s, want within watchInterval + 1s", took)
	}

	audit := e.auditLines(t)
	if last := audit[len(audit)-1]; last["result"] != "cancelled" || !strings.Contains(fmt.Sprint(last["cancelReason"]), "nightly-2") {
		t.Fatalf("audit of the cancelled cycle: %v", last)
	}

	// kopia leaves a cancelled cycle safe.
	e.k.Run(t, "snapshot", "verify", "--verify-files-percent=100")

	if stdout, stderr, code := runCLI(t, "run-once", "--config", e.cfg, "--repository", "ns1", "--cycle", "full"); code != 0 {
		t.Fatalf("SafetyFull cycle after the cancellation: code %d\n%s%s", code, stdout, stderr)
	}
}
