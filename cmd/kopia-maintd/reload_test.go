package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/kopia-maintd/kopia-maintd/metrics"
	"github.com/kopia-maintd/kopia-maintd/scheduler"
)

// idleMaintainer never runs: the reload tests do not start the scheduler.
type idleMaintainer struct{}

func (idleMaintainer) Run(context.Context, scheduler.Job) error { return nil }

func (idleMaintainer) LastSuccess(context.Context, string) (time.Time, time.Time, error) {
	return time.Time{}, time.Time{}, nil
}

// reloadConfig writes a configuration with filesystem repositories named
// repos and no lease.holderIdentity, so that every parse generates one.
func reloadConfig(t *testing.T, dir string, repos ...string) string {
	t.Helper()

	body := fmt.Sprintf(`
identity: {username: maintd, hostname: unit}
stateDirectory: %s/state
server: {listenAddress: "127.0.0.1:9"} # never bound: no server is started
lease: {kind: repository}
repositories:
`, dir)
	for _, r := range repos {
		body += fmt.Sprintf("  - {name: %s, storage: {filesystem: {path: %s/%s}}, passwordFile: password, create: true}\n", r, dir, r)
	}

	file := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}

	return file
}

// TestReloadKeepsGeneratedHolderIdentity: the leases are held under the
// holder identity generated at start; a reload parses the file again (which
// generates a new identity) but the configuration in force afterwards still
// names the running one, reload after reload.
func TestReloadKeepsGeneratedHolderIdentity(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "password"), []byte("unit-password"), 0o600); err != nil {
		t.Fatal(err)
	}

	path := reloadConfig(t, dir, "one")

	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}

	if !cfg.Lease.HolderIdentityGenerated || cfg.Lease.HolderIdentity == "" {
		t.Fatalf("start configuration: holder identity %q (generated %v), want a generated one", cfg.Lease.HolderIdentity, cfg.Lease.HolderIdentityGenerated)
	}

	started := cfg.Lease.HolderIdentity

	mgr, err := newManager(cfg, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}

	met := metrics.New(metrics.BuildInfo{Version: "test", KopiaVersion: "test"})

	sched, err := scheduler.New(scheduler.Options{Concurrency: 1, Maintainer: idleMaintainer{}}, schedules(cfg))
	if err != nil {
		t.Fatal(err)
	}

	rl := &reloader{
		path: path, log: zap.NewNop(), level: zap.NewAtomicLevel(),
		mgr: mgr, sched: sched, met: met, now: time.Now, cfg: cfg,
	}

	// The second reload adds a repository, so the test also sees that the
	// reloads were applied and not refused.
	for i, repos := range [][]string{{"one"}, {"one", "two"}} {
		reloadConfig(t, dir, repos...)

		if err := rl.reload(context.Background(), "test"); err != nil {
			t.Fatalf("reload %d: %v", i+1, err)
		}

		cur := rl.current()
		if len(cur.Repositories) != len(repos) {
			t.Fatalf("reload %d: %d repositories in force, want %d", i+1, len(cur.Repositories), len(repos))
		}

		if cur.Lease.HolderIdentity != started || !cur.Lease.HolderIdentityGenerated {
			t.Fatalf("reload %d: holder identity in force %q (generated %v), want the running %q", i+1, cur.Lease.HolderIdentity, cur.Lease.HolderIdentityGenerated, started)
		}
	}
}
