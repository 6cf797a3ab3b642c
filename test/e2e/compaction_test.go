package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// TestCompactionOnRepositoryMadeByKopiaCLI (issue 10): the kopia CLI makes a
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

	live := filepath.Join(e.dir, "net")
	doomed := filepath.Join(e.dir, "crypto")

	for _, d := range []string{live, doomed} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}

	for i := range 160 {
		writeRandomFile(t, filepath.Join(live, fmt.Sprintf("f%03d.go", i)), 25<<10, int64(1000+i))
	}

	for i := range 480 {
		writeRandomFile(t, filepath.Join(doomed, fmt.Sprintf("f%03d.go", i)), 25<<10, int64(5000+i))
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

	start := e.bucketBytes(t)

	for range 3 {
		e.k.Run(t, "maintenance", "run", "--full", "--safety=none")
	}

	kopiaLeft := e.bucketBytes(t)
	t.Logf("bucket: %.2f MB after the deletion, %.2f MB after three kopia safety=none full cycles", float64(start)/1e6, float64(kopiaLeft)/1e6)

	// The live data is 4.1 MB; kopia keeps the 12 MB deleted beside it.
	if kopiaLeft < 14e6 {
		t.Fatalf("kopia alone left %.2f MB: the reproduction no longer applies", float64(kopiaLeft)/1e6)
	}

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
	if after >= kopiaLeft || after > 8e6 {
		t.Fatalf("after the daemon's cycles the bucket holds %.2f MB, kopia left %.2f MB; want the live data only (about 4 MB plus metadata)\n%s", float64(after)/1e6, float64(kopiaLeft)/1e6, last)
	}

	stdout, _, _ := runCLI(t, "status", "--config", e.cfg)
	if !strings.Contains(stdout, "compaction:") {
		t.Fatalf("status has no compaction line:\n%s", stdout)
	}

	t.Logf("status:\n%s", stdout)

	e.k.Run(t, "snapshot", "verify", "--verify-files-percent=100")
	e.k.Run(t, "content", "verify")
}
