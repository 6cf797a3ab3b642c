package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// cliRepository creates a filesystem repository and a snapshot with the
// real kopia CLI under the identity cli@laptop, which then owns maintenance.
func cliRepository(t *testing.T) (k *harness.KopiaCLI, repoPath string) {
	t.Helper()

	dir := t.TempDir()
	repoPath = filepath.Join(dir, "repo")
	src := filepath.Join(dir, "src")

	if err := os.MkdirAll(filepath.Join(src, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}

	for i, name := range []string{"a.txt", "sub/b.bin", "sub/c.bin"} {
		data := strings.Repeat(fmt.Sprintf("file %d %s\n", i, name), 5000*(i+1))
		if err := os.WriteFile(filepath.Join(src, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	k = harness.NewKopiaCLI(t, password)
	k.Run(t, "repository", "create", "filesystem", "--path", repoPath, "--override-username", "cli", "--override-hostname", "laptop")
	k.Run(t, "snapshot", "create", src)

	return k, repoPath
}

// maintenanceInfo is the part of `kopia maintenance info --json` the tests
// read: the params' fields sit at the top level beside the schedule.
type maintenanceInfo struct {
	Owner    string `json:"owner"`
	Schedule struct {
		NextFull  time.Time `json:"nextFullMaintenance"`
		NextQuick time.Time `json:"nextQuickMaintenance"`
		Runs      map[string][]struct {
			Success bool `json:"success"`
		} `json:"runs"`
	} `json:"schedule"`
}

func maintInfo(t *testing.T, k *harness.KopiaCLI) maintenanceInfo {
	t.Helper()

	var mi maintenanceInfo
	if err := json.Unmarshal([]byte(k.Stdout(t, "maintenance", "info", "--json")), &mi); err != nil {
		t.Fatalf("parse maintenance info: %v", err)
	}

	return mi
}

func cliConfig(t *testing.T, repoPath, takeover string, handBack bool, addr string) string {
	t.Helper()

	dir := t.TempDir()
	writeFile(t, dir, "password", password)

	return writeFile(t, dir, "config.yaml", fmt.Sprintf(`
identity: {username: maintd, hostname: e2e}
stateDirectory: %s/state
server: {listenAddress: "%s"}
defaults:
  schedule: {quick: "@every 3s", full: "@every 6s", jitter: 0s}
repositories:
  - name: cli
    storage: {filesystem: {path: %s}}
    passwordFile: password
    ownership: {takeover: %s, handBackOnExit: %v}
`, dir, addr, repoPath, takeover, handBack))
}

// TestRepositoryMadeByKopiaCLI: a repository created and snapshotted by the
// real kopia CLI v0.22.3 is maintained by kopia-maintd; the CLI then sees
// the daemon as owner with the tasks recorded, its schedule following the
// daemon's cron, the snapshot verifies, and hand-back restores the owner.
func TestRepositoryMadeByKopiaCLI(t *testing.T) {
	k, repoPath := cliRepository(t)
	cfg := cliConfig(t, repoPath, "never", false, harness.FreeAddr(t))

	// Policy never: the CLI's user owns it, so run-once is refused.
	stdout, stderr, code := runCLI(t, "run-once", "--config", cfg, "--repository", "cli", "--cycle", "full")
	if code != 1 || !strings.Contains(stderr, "maintenance is owned by cli@laptop") {
		t.Fatalf("run-once under policy never: code %d\n%s%s", code, stdout, stderr)
	}

	if mi := maintInfo(t, k); mi.Owner != "cli@laptop" {
		t.Fatalf("refused run changed the owner to %q", mi.Owner)
	}

	cfg = cliConfig(t, repoPath, "always", false, harness.FreeAddr(t))

	stdout, stderr, code = runCLI(t, "run-once", "--config", cfg, "--repository", "cli", "--cycle", "full")
	if code != 0 {
		t.Fatalf("run-once full: code %d\n%s%s", code, stdout, stderr)
	}

	if n := len(taskLine.FindAllString(stdout, -1)); n != 3 || !strings.Contains(stdout, "taken over by this run") {
		t.Fatalf("run-once output lacks the takeover or the task results:\n%s", stdout)
	}

	if !strings.Contains(stderr, `"previous_owner": "cli@laptop"`) && !strings.Contains(stderr, `"previous_owner":"cli@laptop"`) {
		t.Fatalf("takeover not logged with both identities:\n%s", stderr)
	}

	mi := maintInfo(t, k)
	if mi.Owner != "maintd@e2e" {
		t.Fatalf("kopia maintenance info owner = %q, want maintd@e2e", mi.Owner)
	}

	for _, task := range []string{"snapshot-gc", "delete-superseded-epoch-indexes", "cleanup-logs"} {
		runs := mi.Schedule.Runs[task]
		if len(runs) == 0 || !runs[0].Success {
			t.Fatalf("kopia maintenance info has no successful %s run: %+v", task, mi.Schedule.Runs)
		}
	}

	// The daemon wrote its cron's next time (the next multiple of 6s after
	// the run's start), not kopia's own now+24h.
	if d := time.Until(mi.Schedule.NextFull); d < -time.Minute || d > 10*time.Second {
		t.Fatalf("kopia's next full maintenance = %v, want the daemon's slot of a few seconds after the run", mi.Schedule.NextFull)
	}

	k.Run(t, "snapshot", "verify", "--verify-files-percent=100")

	stdout, _, code = runCLI(t, "status", "--config", cfg, "--json")
	if code != 0 || !strings.Contains(stdout, `"previousOwner": "cli@laptop"`) || !strings.Contains(stdout, `"isSelf": true`) {
		t.Fatalf("status --json: code %d\n%s", code, stdout)
	}

	stdout, stderr, code = runCLI(t, "owner", "hand-back", "--config", cfg, "--repository", "cli")
	if code != 0 {
		t.Fatalf("owner hand-back: code %d\n%s%s", code, stdout, stderr)
	}

	if mi := maintInfo(t, k); mi.Owner != "cli@laptop" {
		t.Fatalf("after hand-back kopia sees owner %q, want cli@laptop", mi.Owner)
	}

	// The CLI can maintain its repository again.
	k.Run(t, "maintenance", "run", "--full", "--safety=full")
}

// TestHandBackOnExit: the daemon takes a CLI-owned repository over and gives
// it back when it receives SIGTERM.
func TestHandBackOnExit(t *testing.T) {
	k, repoPath := cliRepository(t)
	addr := harness.FreeAddr(t)
	cfg := cliConfig(t, repoPath, "always", true, addr)

	d := startDaemon(t, cfg, addr)

	waitFor(t, d, "a successful full cycle", 60*time.Second, func() bool {
		return d.metric(t, `kopia_maintenance_runs_total{cycle="full",repository="cli",result="success"}`) >= 1
	})

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not exit within 30s of SIGTERM")
	}

	if d.err != nil {
		t.Fatalf("daemon exit: %v\n%s", d.err, d.logs())
	}

	if mi := maintInfo(t, k); mi.Owner != "cli@laptop" {
		t.Fatalf("after shutdown the owner is %q, want cli@laptop back", mi.Owner)
	}

	k.Run(t, "snapshot", "verify", "--verify-files-percent=100")
}
