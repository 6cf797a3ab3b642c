package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// TestMetricsPassPromtoolLint runs the daemon until a repository has finished
// quick and full cycles, so every per-repository, per-task, health and
// ownership series exists, and lints the real /metrics exposition with
// `promtool check metrics`.
func TestMetricsPassPromtoolLint(t *testing.T) {
	promtool := harness.ToolPath(t, "promtool")
	dir := t.TempDir()
	addr := harness.FreeAddr(t)
	writeFile(t, dir, "password", password)

	cfg := writeFile(t, dir, "config.yaml", fmt.Sprintf(`
identity: {username: maintd, hostname: e2e}
stateDirectory: %[1]s/state
server: {listenAddress: "%[2]s"}
defaults:
  schedule: {quick: "@every 2s", full: "@every 10s", jitter: 0s}
  ownership: {takeover: if-unowned}
repositories:
  - name: lint
    create: true
    storage: {filesystem: {path: %[1]s/repo}}
    passwordFile: password
`, dir, addr))

	d := startDaemon(t, cfg, addr)

	waitFor(t, d, "quick and full successes", 90*time.Second, func() bool {
		return d.metric(t, `kopia_maintenance_runs_total{cycle="full",repository="lint",result="success"}`) >= 1 &&
			d.metric(t, `kopia_maintenance_runs_total{cycle="quick",repository="lint",result="success"}`) >= 1
	})

	body := httpBody(t, "http://"+addr+"/metrics")

	for _, want := range []string{
		`kopia_maintenance_task_runs_total{repository="lint",result="success",task="snapshot-gc"}`,
		`kopia_maintenance_task_last_success_timestamp_seconds{repository="lint",task="snapshot-gc"}`,
		`kopia_maintenance_index_blobs{repository="lint"}`,
		`kopia_maintenance_repository_size_bytes{class="p",repository="lint"}`,
		`kopia_maintenance_owner_info{is_self="true",owner="maintd@e2e",repository="lint"} 1`,
		`kopia_maintenance_config_last_reload_successful 1`,
		`kopia_maintenance_repositories 1`,
		`kopia_maintenance_run_duration_seconds_bucket{cycle="full",repository="lint",le="+Inf"}`,
		`kopia_maintenance_build_info{`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)

	var out bytes.Buffer

	cmd.Stdout, cmd.Stderr = &out, &out

	if err := cmd.Run(); err != nil || strings.TrimSpace(out.String()) != "" {
		t.Fatalf("promtool check metrics: %v\n%s\n--- exposition:\n%s", err, out.String(), body)
	}

	t.Logf("promtool check metrics: no problems in %d lines", strings.Count(body, "\n"))
}

// httpBody GETs url and returns the body of a 200 answer.
func httpBody(t *testing.T, url string) string {
	t.Helper()

	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v\n%s", url, resp.StatusCode, err, b)
	}

	return string(b)
}
