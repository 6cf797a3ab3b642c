package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// TestCompactionOnRepositoryMadeByKopiaCLI: the kopia CLI makes a
// repository in MinIO with a live snapshot of about 4 MB and a second of
// about 12 MB, each its own CLI session, and deletes the second. Three
// `kopia maintenance run --full --safety=none` leave the deleted data in a
// pack beside the live data; then three gated safety=none cycles of the
// daemon binary (run-once, compaction on by default) bring the bucket
// below what kopia left, and `kopia snapshot verify --verify-files-percent=100`
// and `kopia content verify` pass.
func TestCompactionOnRepositoryMadeByKopiaCLI(t *testing.T) {
	harness.BuildBinary(t, "./cmd/kopia-maintd")

	e := newGateEnv(t, nil, "1s")

	// kopia keeps the 12 MB deleted beside the live data.
	kopiaLeft, live := mixedPackRepository(t, e)

	var last string

	for i := 1; i <= 3; i++ {
		time.Sleep(7 * time.Second) // past the 6s quiet period after the last write

		stdout, stderr, code := runCLI(t, "run-once", "--config", e.cfg, "--repository", "ns1", "--cycle", "full", "--safety", "none")
		if code != 0 {
			t.Fatalf("safety=none cycle %d: code %d\n%s%s", i, code, stdout, stderr)
		}

		last = stdout
		t.Logf("bucket after the daemon's safety=none cycle %d: %.2f MB", i, float64(e.bucketBytes(t))/1e6)
	}

	after := e.bucketBytes(t)
	if after >= kopiaLeft || after > live+4e6 {
		t.Fatalf("after the daemon's cycles the bucket holds %.2f MB, kopia left %.2f MB; want the live data only (%.2f MB plus metadata)\n%s", float64(after)/1e6, float64(kopiaLeft)/1e6, float64(live)/1e6, last)
	}

	stdout, _, _ := runCLI(t, "status", "--config", e.cfg)
	if !strings.Contains(stdout, "compaction:") {
		t.Fatalf("status has no compaction line:\n%s", stdout)
	}

	t.Logf("status:\n%s", stdout)

	e.k.Run(t, "snapshot", "verify", "--verify-files-percent=100")
	e.k.Run(t, "content", "verify")
}

// mixedPackRepository has the kopia CLI write a live snapshot of 160 files
// (4.1 MB) and one of 480 files (12.4 MB), each its own session, delete the
// second, and run three `kopia maintenance run --full --safety=none`.
// kopia's full rewrite usually merges both short packs into one mixed pack
// that it never frees (16.6 MB). Whether it does depends on how the CLI cut
// the packs and on timing; when kopia happened to free the deleted data
// itself, the repository is verified and another pair is written, up to
// three times. It returns what kopia left and the live data's size.
func mixedPackRepository(t *testing.T, e *gateEnv) (kopiaLeft, live int64) {
	t.Helper()

	for attempt := range 3 {
		base := e.bucketBytes(t)
		writeMixedPackSnapshots(t, e, attempt)

		deleted := e.bucketBytes(t)

		for range 3 {
			e.k.Run(t, "maintenance", "run", "--full", "--safety=none")
		}

		kopiaLeft = e.bucketBytes(t)
		live += 160 * 25 << 10
		t.Logf("bucket: %.2f MB after the deletion, %.2f MB after three kopia safety=none full cycles (live data %.2f MB)", float64(deleted)/1e6, float64(kopiaLeft)/1e6, float64(live)/1e6)

		if kopiaLeft-base >= 14e6 || kopiaLeft >= live+10e6 {
			return kopiaLeft, live
		}

		t.Logf("kopia's own cycles freed the deleted snapshot themselves this time (no mixed pack); verifying and writing another pair")
		e.k.Run(t, "snapshot", "verify", "--verify-files-percent=100")
		e.k.Run(t, "content", "verify")
	}

	t.Fatalf("three times kopia's own safety=none cycles left no mixed pack: nothing to compact")

	return 0, 0
}

// writeMixedPackSnapshots writes and deletes one pair of mixedPackRepository.
func writeMixedPackSnapshots(t *testing.T, e *gateEnv, attempt int) {
	t.Helper()

	live := filepath.Join(e.dir, fmt.Sprintf("net%d", attempt))
	doomed := filepath.Join(e.dir, fmt.Sprintf("crypto%d", attempt))

	for _, d := range []string{live, doomed} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}

	seed := int64(attempt * 100000)

	for i := range 160 {
		writeRandomFile(t, filepath.Join(live, fmt.Sprintf("f%03d.go", i)), 25<<10, seed+int64(1000+i))
	}

	for i := range 480 {
		writeRandomFile(t, filepath.Join(doomed, fmt.Sprintf("f%03d.go", i)), 25<<10, seed+int64(5000+i))
	}

	e.k.Run(t, "snapshot", "create", live)

	var man struct {
		ID string `json:"id"`
	}

	out := e.k.Run(t, "snapshot", "create", doomed, "--json")
	if err := json.Unmarshal([]byte(jsonObject(out)), &man); err != nil || man.ID == "" {
		t.Fatalf("snapshot create --json: %v\n%s", err, out)
	}

	e.k.Run(t, "snapshot", "delete", man.ID, "--delete")
}

// TestCompactionSurvivesSIGKILL: the daemon binary is killed with SIGKILL
// while its compact-live step rewrites (storage slowed by toxiproxy, the
// kill shortly after the cycle's snapshot GC, which the step follows). The repository then
// verifies with the kopia CLI; run-once right after the kill is refused
// (the dead process's lease is not broken while it could be live). Once
// that lease is stale, the next gated safety=none cycles take it over: the
// killed run's session marker is reported as a dead session of this
// daemon's (it predates the new lease) instead of shutting the gate, the
// cycles finish the compaction, and the repository verifies again.
func TestCompactionSurvivesSIGKILL(t *testing.T) {
	var tp *harness.Toxiproxy

	e := newGateEnv(t, func(mc *harness.MinIO) string {
		tp = harness.StartToxiproxy(t)
		return tp.Proxy(t, "s3", mc.Endpoint)
	}, "1s")

	kopiaLeft, live := mixedPackRepository(t, e)

	// A short lease, so that the killed process's lease goes stale soon.
	cfg, err := os.ReadFile(e.cfg)
	if err != nil {
		t.Fatal(err)
	}

	writeFile(t, filepath.Dir(e.cfg), filepath.Base(e.cfg), string(cfg)+"lease: {duration: 10s, renewInterval: 2s}\n")

	bin := harness.BuildBinary(t, "./cmd/kopia-maintd")

	time.Sleep(7 * time.Second) // past the 6s quiet period
	tp.Latency(t, "s3", 100)

	cmd := exec.Command(bin, "run-once", "--config", e.cfg, "--repository", "ns1", "--cycle", "full", "--safety", "none")

	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}

	var (
		mu   sync.Mutex
		logs strings.Builder
	)

	lastTask := make(chan struct{})

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

			// snapshot-gc opens a full cycle: the compact-live step, the
			// cycle's rewrite, comes next.
			if strings.Contains(sc.Text(), "maintenance task finished") && strings.Contains(sc.Text(), `"snapshot-gc"`) {
				once.Do(func() { close(lastTask) })
			}
		}

		_, _ = io.Copy(io.Discard, stderr)
	}()

	select {
	case <-lastTask:
	case <-time.After(3 * time.Minute):
		_ = cmd.Process.Kill()
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("snapshot GC did not finish:\n%s", logs.String())
	}

	// Inside the step: listing and measuring take a few round trips, the
	// rewrite reads 160 contents at 100 ms each (a few seconds).
	time.Sleep(1500 * time.Millisecond)

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}

	_ = cmd.Wait()

	mu.Lock()
	out := logs.String()
	mu.Unlock()

	if strings.Contains(out, "compact-live rewrote") {
		t.Fatalf("the compaction step finished before the kill: the test did not kill it mid-step\n%s", out)
	}

	killed := e.bucketBytes(t)
	t.Logf("bucket: kopia left %.2f MB; %.2f MB after the SIGKILL during compact-live", float64(kopiaLeft)/1e6, float64(killed)/1e6)

	// The CLI reaches MinIO directly. The daemon's later cycles need no
	// latency.
	tp.RemoveToxic(t, "s3", "latency")

	e.k.Run(t, "snapshot", "verify", "--verify-files-percent=100")
	e.k.Run(t, "content", "verify")

	// The killed process's lease is not broken while it could be live.
	if stdout, stderr, code := runCLI(t, "run-once", "--config", e.cfg, "--repository", "ns1", "--cycle", "full", "--safety", "none"); code == 0 || !strings.Contains(stderr, "lease ns1 is held by") {
		t.Fatalf("run-once right after the kill: code %d, want a skip on the dead process's lease\n%s%s", code, stdout, stderr)
	}

	// A running daemon whose safety=none window comes every 15 s sees the
	// dead lease unchanged for its duration and takes it over. The killed
	// run's session marker is still in the bucket; it is this daemon's own
	// session, written before the new lease was acquired, so the gate
	// reports it as dead instead of refusing, and the window's cycles
	// finish the compaction.
	cfg, err = os.ReadFile(e.cfg)
	if err != nil {
		t.Fatal(err)
	}

	addr := harness.FreeAddr(t)
	winCfg := writeFile(t, e.dir, "window.yaml", strings.Replace(strings.Replace(string(cfg),
		"  ownership: {takeover: always}\n", "  ownership: {takeover: always}\n  schedule: {quick: \"@every 1h\", full: \"@every 1h\", jitter: 0s}\n", 1),
		"  watchInterval: 1s\n", "  watchInterval: 1s\n  windows: [{schedule: \"@every 15s\", repositories: [ns1]}]\n", 1)+
		fmt.Sprintf("server: {listenAddress: %q}\n", addr))

	d := startDaemon(t, winCfg, addr)

	waitFor(t, d, "two safety=none cycles after the kill", 3*time.Minute, func() bool {
		return d.metric(t, `kopia_maintenance_unsafe_runs_total{repository="ns1",result="success"}`) >= 2
	})

	d.stop(t)

	after := e.bucketBytes(t)
	t.Logf("bucket after two safety=none cycles following the kill: %.2f MB", float64(after)/1e6)

	var first map[string]any

	for _, l := range e.auditLines(t) {
		if l["result"] == "success" {
			first = l
			break
		}
	}

	if b, _ := json.Marshal(first); !strings.Contains(string(b), "dead session") {
		t.Fatalf("the first safety=none cycle after the kill does not record the killed run's marker as dead: %s\n%s", b, d.logs())
	}

	if after > live+4e6 {
		t.Fatalf("after two gated cycles following the kill the bucket holds %.2f MB, want the live data only (%.2f MB plus metadata)\n%s", float64(after)/1e6, float64(live)/1e6, d.logs())
	}

	e.k.Run(t, "snapshot", "verify", "--verify-files-percent=100")
	e.k.Run(t, "content", "verify")
}
