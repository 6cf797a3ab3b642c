package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

var jobsGVR = schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}

// TestVeleroActiveMaintenanceJobDefersRuns: while one of Velero's own
// maintenance Jobs for a repository is active (it checked kopia's owner
// when it started and writes to the end), neither the daemon nor run-once
// maintains that repository; the other repository is not held up, and both
// go on once the Job has completed. run-once also quiets Velero's
// maintenance of the repository it took over.
func TestVeleroActiveMaintenanceJobDefersRuns(t *testing.T) {
	e := newVeleroEnv(t)
	e.addRepository(t, "app1")
	e.addRepository(t, "app2")

	// A Job as Velero's controller creates it (label velero.io/repo-name),
	// running: no controller manager runs here, so its status is set.
	e.kube.Apply(t, []byte(`
apiVersion: batch/v1
kind: Job
metadata: {name: app1-default-kopia-x7k2p-maintain-job-1764, namespace: velero, labels: {velero.io/repo-name: app1-default-kopia-x7k2p}}
spec:
  backoffLimit: 0
  template:
    metadata: {labels: {velero.io/repo-name: app1-default-kopia-x7k2p}}
    spec:
      restartPolicy: Never
      containers: [{name: velero-repo-maintenance-container, image: velero/velero, command: [/velero], args: [repo-maintenance]}]
`))

	start := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
	e.kube.SetStatus(t, jobsGVR, "velero", "app1-default-kopia-x7k2p-maintain-job-1764", map[string]any{"active": 1, "startTime": start})

	kubeconfig := veleroDiscoveryKubeconfig(t, e.kube)
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
  suppressBuiltinMaintenance: true
  repositoryDefaults:
    schedule: {quick: "@every 2s", full: "@every 1h", jitter: 0s}
    ownership: {takeover: always}
`, e.dir, addr, kubeconfig))

	// run-once refuses while the Job runs, and writes nothing.
	_, stderr, code := runCLI(t, "run-once", "--config", cfg, "--repository", "app1-default", "--cycle", "quick")
	if code == 0 || !strings.Contains(stderr, "app1-default-kopia-x7k2p-maintain-job-1764") || !strings.Contains(stderr, "still running") {
		t.Fatalf("run-once during Velero's Job: exit %d, stderr %s", code, stderr)
	}

	if mi := maintInfo(t, e.clis["app1"]); mi.Owner != "default@default" {
		t.Fatalf("app1 owner after the refused run-once: %q, want default@default (untouched)", mi.Owner)
	}

	d := startDaemon(t, cfg, addr)

	runs := func(repo, result string) float64 {
		return d.metric(t, fmt.Sprintf(`kopia_maintenance_runs_total{cycle="quick",repository=%q,result=%q}`, repo, result))
	}

	waitFor(t, d, "app2 maintained while app1 waits for Velero's Job", time.Minute, func() bool {
		return runs("app2-default", "success") >= 2 && runs("app1-default", "failure") >= 1
	})

	if n := runs("app1-default", "success"); n > 0 {
		t.Fatalf("app1-default: %v successful runs during Velero's active Job", n)
	}

	if mi := maintInfo(t, e.clis["app1"]); mi.Owner != "default@default" {
		t.Fatalf("app1 owner while Velero's Job runs: %q, want default@default", mi.Owner)
	}

	if !strings.Contains(d.logs(), "is still running: this run waits until it ends") {
		t.Error("the daemon's log does not say why app1's run waits")
	}

	// The Job completes: the daemon takes over and maintains app1.
	end := time.Now().UTC().Format(time.RFC3339)
	e.kube.SetStatus(t, jobsGVR, "velero", "app1-default-kopia-x7k2p-maintain-job-1764", map[string]any{
		"active": 0, "startTime": start, "completionTime": end, "succeeded": 1,
		"conditions": []any{
			map[string]any{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": end},
			map[string]any{"type": "Complete", "status": "True", "lastTransitionTime": end},
		},
	})

	waitFor(t, d, "app1 maintained after Velero's Job completed", 2*time.Minute, func() bool {
		return runs("app1-default", "success") >= 1
	})

	d.stop(t)

	// run-once, now that no Job runs, maintains app2 and quiets Velero's
	// maintenance of it again (set back by hand here).
	if _, err := e.kube.Dynamic(t).Resource(backupRepositoriesGVR).Namespace("velero").Patch(context.Background(), "app2-default-kopia-x7k2p",
		types.MergePatchType, []byte(`{"spec":{"maintenanceFrequency":"1h0m0s"}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}

	stdout, stderr, code := runCLI(t, "run-once", "--config", cfg, "--repository", "app2-default", "--cycle", "quick")
	if code != 0 || !strings.Contains(stdout, "quick cycle succeeded") {
		t.Fatalf("run-once after the Job: exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}

	if f := frequency(e.backupRepository(t, "app2")); f != "87600h0m0s" && f != "87600h" {
		t.Errorf("app2 maintenanceFrequency after run-once: %q, want suppressed", f)
	}
}
