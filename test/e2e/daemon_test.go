// Package e2e drives the kopia-maintd binary as a user would: config files,
// exit codes, /metrics, signals, and repositories made by the real kopia CLI.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

const password = "e2e-password-not-secret"

// daemon is a running kopia-maintd process.
type daemon struct {
	cmd    *exec.Cmd
	addr   string
	mu     sync.Mutex
	stderr bytes.Buffer
	done   chan struct{}
	err    error
}

func (d *daemon) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()

	return d.stderr.Write(p)
}

func (d *daemon) logs() string {
	d.mu.Lock()
	defer d.mu.Unlock()

	return d.stderr.String()
}

// writeFile writes content to dir/name and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()

	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}

	return p
}

// runCLI runs the binary to completion and returns stdout, stderr and the
// exit code.
func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()

	bin := harness.BuildBinary(t, "./cmd/kopia-maintd")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	var stdout, stderr bytes.Buffer

	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()

	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}

	return stdout.String(), stderr.String(), code
}

func startDaemon(t *testing.T, configPath, addr string) *daemon {
	t.Helper()

	bin := harness.BuildBinary(t, "./cmd/kopia-maintd")
	d := &daemon{addr: addr, done: make(chan struct{})}
	d.cmd = exec.Command(bin, "run", "--config", configPath)
	d.cmd.Stdout = d
	d.cmd.Stderr = d

	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}

	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()

	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = d.cmd.Process.Kill()
			<-d.done
		}

		if t.Failed() {
			t.Logf("daemon logs:\n%s", d.logs())
		}
	})

	return d
}

// stop sends SIGTERM and waits up to 40s for the daemon to exit; d.err is
// then its exit error.
func (d *daemon) stop(t *testing.T) {
	t.Helper()

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	select {
	case <-d.done:
	case <-time.After(40 * time.Second):
		t.Fatal("daemon did not exit within 40s of SIGTERM")
	}
}

// metric returns the value of the first sample whose line starts with
// series, or -1 when it is absent.
func (d *daemon) metric(t *testing.T, series string) float64 {
	t.Helper()

	return harness.MetricValue(t, d.addr, series)
}

func waitFor(t *testing.T, d *daemon, what string, timeout time.Duration, cond func() bool) {
	t.Helper()

	deadline := time.Now().Add(timeout)
	for !cond() {
		select {
		case <-d.done:
			t.Fatalf("daemon exited (%v) while waiting for %s", d.err, what)
		default:
		}

		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}

		time.Sleep(200 * time.Millisecond)
	}
}

func httpStatus(addr, path string) int {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)

	return resp.StatusCode
}

// TestDaemonRunsCyclesAndStopsOnSIGTERM starts the daemon with short
// schedules on a repository it creates and one that does not exist: the
// good one is maintained and counted in /metrics, the broken one fails
// alone, and SIGTERM ends the process with exit code 0.
func TestDaemonRunsCyclesAndStopsOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	addr := harness.FreeAddr(t)
	writeFile(t, dir, "password", password)

	if err := os.Mkdir(filepath.Join(dir, "empty"), 0o700); err != nil {
		t.Fatal(err)
	}

	cfg := writeFile(t, dir, "config.yaml", fmt.Sprintf(`
identity: {username: maintd, hostname: e2e}
stateDirectory: %[1]s/state
server: {listenAddress: "%[2]s"}
log: {level: debug, format: json}
defaults:
  schedule: {quick: "@every 2s", full: "@every 10s", jitter: 0s}
  ownership: {takeover: if-unowned}
repositories:
  - name: good
    create: true
    storage: {filesystem: {path: %[1]s/repo}}
    passwordFile: password
  - name: missing
    storage: {filesystem: {path: %[1]s/empty}}
    passwordFile: password
`, dir, addr))

	d := startDaemon(t, cfg, addr)

	waitFor(t, d, "quick and full successes in /metrics", 60*time.Second, func() bool {
		return d.metric(t, `kopia_maintenance_runs_total{cycle="full",repository="good",result="success"}`) >= 2 &&
			d.metric(t, `kopia_maintenance_runs_total{cycle="quick",repository="good",result="success"}`) >= 1
	})

	if got := d.metric(t, `kopia_maintenance_runs_total{cycle="full",repository="missing",result="failure"}`); got < 1 {
		t.Fatalf("missing repository failures = %v, want >= 1", got)
	}

	if ts := d.metric(t, `kopia_maintenance_last_success_timestamp_seconds{cycle="full",repository="good"}`); ts < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Fatalf("last full success timestamp = %v, want within the last minute", ts)
	}

	if code := httpStatus(addr, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d", code)
	}

	if code := httpStatus(addr, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz = %d", code)
	}

	logs := d.logs()
	if !strings.Contains(logs, `no kopia repository at filesystem:`+dir+`/empty`) {
		t.Fatalf("logs do not explain the missing repository:\n%s", logs)
	}

	if strings.Contains(logs, password) {
		t.Fatal("logs contain the repository password")
	}

	start := time.Now()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not exit within 30s of SIGTERM")
	}

	if d.err != nil {
		t.Fatalf("daemon exit after SIGTERM: %v", d.err)
	}

	t.Logf("daemon stopped %s after SIGTERM", time.Since(start).Round(time.Millisecond))
}

func TestCheckConfigExitCodes(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "password", password)

	good := writeFile(t, dir, "good.yaml", fmt.Sprintf(`
identity: {username: maintd, hostname: e2e}
stateDirectory: %s/state
repositories:
  - name: r
    storage: {filesystem: {path: /data}}
    passwordFile: password
`, dir))

	bad := writeFile(t, dir, "bad.yaml", `
identity: {username: maintd}
concurrency: 0
repositories:
  - name: r
    storage: {filesystem: {path: /data}}
    passwordFile: password
    schedule: {full: "61 * * * *"}
`)

	stdout, stderr, code := runCLI(t, "check-config", "--config", good)
	if code != 0 || !strings.Contains(stdout, "is valid") {
		t.Fatalf("check-config good: code %d\n%s%s", code, stdout, stderr)
	}

	_, stderr, code = runCLI(t, "check-config", "--config", bad)
	if code != 2 {
		t.Fatalf("check-config bad: code %d, want 2\n%s", code, stderr)
	}

	for _, want := range []string{"identity.hostname:", "concurrency:", `repositories[0].schedule.full: invalid cron spec "61 * * * *"`} {
		if !strings.Contains(stderr, want) {
			t.Errorf("check-config bad: stderr lacks %q:\n%s", want, stderr)
		}
	}

	// run refuses the same file before touching anything.
	_, _, code = runCLI(t, "run", "--config", bad)
	if code != 2 {
		t.Fatalf("run with bad config: code %d, want 2", code)
	}

	if _, err := os.Stat(filepath.Join(dir, "state")); !os.IsNotExist(err) {
		t.Fatalf("a rejected config created the state directory (%v)", err)
	}

	_, _, code = runCLI(t, "check-config")
	if code != 2 {
		t.Fatalf("check-config without --config: code %d, want 2", code)
	}

	_, _, code = runCLI(t, "run-once", "--config", good, "--repository", "r", "--cycle", "weekly")
	if code != 2 {
		t.Fatalf("run-once --cycle weekly: code %d, want 2", code)
	}
}

var taskLine = regexp.MustCompile(`(?m)^\s+(snapshot-gc|delete-superseded-epoch-indexes|cleanup-logs)\s+ok\s`)
