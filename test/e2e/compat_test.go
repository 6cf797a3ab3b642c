package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// compatBackend is where a compatibility test keeps its repository: the
// kopia CLI flags that address it, the daemon's storage section for it, and
// a way to read a blob's raw bytes behind kopia's back.
type compatBackend struct {
	// flags follow `kopia repository create|connect <kind>`.
	kind  string
	flags []string
	// storage is the daemon's `storage:` value (YAML flow mapping).
	storage string
	// blob returns the stored bytes of the named blob.
	blob func(t *testing.T, id string) []byte
}

func filesystemBackend(t *testing.T) compatBackend {
	path := filepath.Join(t.TempDir(), "repo")

	return compatBackend{
		kind:    "filesystem",
		flags:   []string{"--path=" + path},
		storage: fmt.Sprintf("{filesystem: {path: %s}}", path),
		blob: func(t *testing.T, id string) []byte {
			t.Helper()

			// kopia's filesystem storage appends ".f" to every blob file;
			// the format blobs sit at the top, unsharded.
			b, err := os.ReadFile(filepath.Join(path, id+".f"))
			if err != nil {
				t.Fatalf("read blob %s: %v", id, err)
			}

			return b
		},
	}
}

func s3Backend(t *testing.T) compatBackend {
	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, "velero")

	const prefix = "kopia/ns1/"

	dir := t.TempDir()
	idFile := writeFile(t, dir, "access-key-id", mc.AccessKey+"\n")
	secretFile := writeFile(t, dir, "secret-access-key", mc.SecretKey+"\n")

	return compatBackend{
		kind:  "s3",
		flags: mc.KopiaS3Flags("velero", prefix),
		storage: fmt.Sprintf("{s3: {bucket: velero, prefix: %s, endpoint: %q, region: %s, insecure: true, accessKeyIDFile: %s, secretAccessKeyFile: %s}}",
			prefix, mc.Endpoint, harness.MinIORegion, idFile, secretFile),
		blob: func(t *testing.T, id string) []byte {
			t.Helper()

			obj, err := mc.Client(t).GetObject(context.Background(), "velero", prefix+id, minio.GetObjectOptions{})
			if err != nil {
				t.Fatalf("get blob %s: %v", id, err)
			}
			defer obj.Close()

			b, err := io.ReadAll(obj)
			if err != nil {
				t.Fatalf("read blob %s: %v", id, err)
			}

			return b
		},
	}
}

// snapshotIDs lists the snapshot manifest IDs the CLI sees, oldest first.
func snapshotIDs(t *testing.T, k *harness.KopiaCLI) []string {
	t.Helper()

	var list []struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(k.Stdout(t, "snapshot", "list", "--json")), &list); err != nil {
		t.Fatalf("parse snapshot list: %v", err)
	}

	ids := make([]string, len(list))
	for i, s := range list {
		ids[i] = s.ID
	}

	return ids
}

// contentFormat is the part of `kopia repository status --json` that says
// which format the repository has: what decides whether a client can open
// it.
type contentFormat struct {
	Version      int             `json:"version"`
	IndexVersion int             `json:"indexVersion"`
	MaxPackSize  int             `json:"maxPackSize"`
	Epoch        json.RawMessage `json:"epochParameters"`
}

func repoFormat(t *testing.T, k *harness.KopiaCLI) contentFormat {
	t.Helper()

	var st struct {
		ContentFormat contentFormat `json:"contentFormat"`
	}
	if err := json.Unmarshal([]byte(k.Stdout(t, "repository", "status", "--json")), &st); err != nil {
		t.Fatalf("parse repository status: %v", err)
	}

	return st.ContentFormat
}

// daemonRuns is what `kopia maintenance info --json` records of the
// daemon: for every task, the runs that started after since and whether
// they all succeeded.
func daemonRuns(t *testing.T, k *harness.KopiaCLI, since time.Time) (owner string, runs map[string]int) {
	t.Helper()

	var mi struct {
		Owner    string `json:"owner"`
		Schedule struct {
			Runs map[string][]struct {
				Start   time.Time `json:"start"`
				Success bool      `json:"success"`
				Error   string    `json:"error"`
			} `json:"runs"`
		} `json:"schedule"`
	}
	if err := json.Unmarshal([]byte(k.Stdout(t, "maintenance", "info", "--json")), &mi); err != nil {
		t.Fatalf("%s: parse maintenance info: %v", k.Bin, err)
	}

	runs = map[string]int{}

	for task, rs := range mi.Schedule.Runs {
		for _, r := range rs {
			if r.Start.Before(since) {
				continue
			}

			if !r.Success {
				t.Fatalf("%s: maintenance info shows a failed %s run: %s", k.Bin, task, r.Error)
			}

			runs[task]++
		}
	}

	return mi.Owner, runs
}

// TestRepositoryOfKopiaV0223MaintainedAndStillReadable is the compatibility
// proof for Velero 1.18, whose kopia is v0.22.3 while the daemon links
// v0.23.1: a repository the v0.22.3 CLI made, with three snapshots of which
// one is deleted, gets a quick and a full cycle from the daemon binary, and
// then both the v0.22.3 and the v0.23.1 CLI verify every file of the kept
// snapshots, see exactly those snapshots, and read the daemon's runs from
// `maintenance info --json`. The format blobs (kopia.repository,
// kopia.blobcfg) are byte for byte what v0.22.3 wrote: the daemon neither
// upgrades the format nor takes an upgrade lock, so v0.22.3 keeps opening
// the repository.
func TestRepositoryOfKopiaV0223MaintainedAndStillReadable(t *testing.T) {
	for _, tc := range []struct {
		name    string
		backend func(t *testing.T) compatBackend
	}{
		{"filesystem", filesystemBackend},
		{"s3", s3Backend},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := tc.backend(t)
			old := harness.NewKopiaCLIVersion(t, harness.KopiaV0223, password)

			if v := old.Version(t); v != harness.KopiaV0223 {
				t.Fatalf("old CLI is %s, want %s", v, harness.KopiaV0223)
			}

			identity := []string{"--override-username=velero", "--override-hostname=node-1"}
			old.Run(t, slices.Concat([]string{"repository", "create", be.kind}, be.flags, identity)...)

			src := t.TempDir()
			write := func(name string, size int) {
				data := strings.Repeat(fmt.Sprintf("%s %d\n", name, size), size/len(name))
				if err := os.WriteFile(filepath.Join(src, name), []byte(data), 0o600); err != nil {
					t.Fatal(err)
				}
			}

			// Three snapshots; the second alone holds "only-in-two.bin",
			// and it is the one deleted, so its data is garbage for the
			// daemon's full cycle to find.
			write("kept.txt", 200<<10)
			old.Run(t, "snapshot", "create", src)
			write("only-in-two.bin", 2<<20)
			old.Run(t, "snapshot", "create", src)

			if err := os.Remove(filepath.Join(src, "only-in-two.bin")); err != nil {
				t.Fatal(err)
			}

			write("third.txt", 300<<10)
			old.Run(t, "snapshot", "create", src)

			ids := snapshotIDs(t, old)
			if len(ids) != 3 {
				t.Fatalf("after three snapshots the CLI lists %v", ids)
			}

			old.Run(t, "snapshot", "delete", ids[1], "--delete")

			kept := []string{ids[0], ids[2]}
			if got := snapshotIDs(t, old); !slices.Equal(got, kept) {
				t.Fatalf("after deleting %s the CLI lists %v, want %v", ids[1], got, kept)
			}

			formatBefore := repoFormat(t, old)
			blobsBefore := map[string][]byte{}

			for _, id := range []string{"kopia.repository", "kopia.blobcfg"} {
				blobsBefore[id] = be.blob(t, id)
			}

			// The daemon takes the repository over from the CLI's user
			// and runs a quick and a full cycle.
			dir := t.TempDir()
			writeFile(t, dir, "password", password)
			cfg := writeFile(t, dir, "config.yaml", fmt.Sprintf(`
identity: {username: maintd, hostname: e2e}
stateDirectory: %s/state
server: {listenAddress: "%s"}
repositories:
  - name: velero
    storage: %s
    passwordFile: password
    ownership: {takeover: always}
`, dir, harness.FreeAddr(t), be.storage))

			since := time.Now().Add(-time.Second)

			for _, cycle := range []string{"quick", "full"} {
				stdout, stderr, code := runCLI(t, "run-once", "--config", cfg, "--repository", "velero", "--cycle", cycle)
				if code != 0 {
					t.Fatalf("run-once %s: code %d\n%s%s", cycle, code, stdout, stderr)
				}
			}

			// Every kept file is read back in full by both CLI versions,
			// each through its own connection, and both see the kept
			// snapshots only and the daemon's runs.
			current := harness.NewKopiaCLIVersion(t, harness.KopiaV0231, password)
			current.Run(t, slices.Concat([]string{"repository", "connect", be.kind}, be.flags, identity)...)

			for _, k := range []*harness.KopiaCLI{old, current} {
				k.Run(t, "snapshot", "verify", "--verify-files-percent=100")

				if got := snapshotIDs(t, k); !slices.Equal(got, kept) {
					t.Fatalf("%s lists snapshots %v after maintenance, want %v", k.Bin, got, kept)
				}

				owner, runs := daemonRuns(t, k, since)
				if owner != "maintd@e2e" {
					t.Fatalf("%s: maintenance owner %q, want maintd@e2e", k.Bin, owner)
				}

				// A quick cycle of an epoch repository and the tasks of
				// every full cycle.
				for _, task := range []string{"advance-epoch", "snapshot-gc", "cleanup-logs"} {
					if runs[task] == 0 {
						t.Fatalf("%s: maintenance info has no successful %s run by the daemon: %v", k.Bin, task, runs)
					}
				}

				if got := repoFormat(t, k); got.Version != formatBefore.Version || got.IndexVersion != formatBefore.IndexVersion ||
					got.MaxPackSize != formatBefore.MaxPackSize || !bytes.Equal(got.Epoch, formatBefore.Epoch) {
					t.Fatalf("%s: repository format %+v after maintenance, was %+v", k.Bin, got, formatBefore)
				}
			}

			for id, want := range blobsBefore {
				if got := be.blob(t, id); !bytes.Equal(got, want) {
					t.Fatalf("%s changed after the daemon and the v0.23.1 CLI:\nbefore %s\nafter  %s", id, want, got)
				}
			}

			t.Logf("format version %d, index version %d: unchanged", formatBefore.Version, formatBefore.IndexVersion)

			// The old CLI can still maintain the repository once it owns
			// it again.
			old.Run(t, "maintenance", "set", "--owner=me")
			old.Run(t, "maintenance", "run", "--full", "--safety=full")
			old.Run(t, "snapshot", "verify", "--verify-files-percent=100")
		})
	}
}

// TestS3KeyFileRotationWithoutRestart: the daemon starts with a secret key
// file that holds a wrong secret, so its runs fail; once the right secret is
// written to the file, a following run succeeds without a restart or a
// reload, and neither secret ever appears in the logs.
func TestS3KeyFileRotationWithoutRestart(t *testing.T) {
	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, "velero")

	const wrong = "wrong-secret-before-rotation"

	dir := t.TempDir()
	addr := harness.FreeAddr(t)
	writeFile(t, dir, "password", password)
	writeFile(t, dir, "access-key-id", mc.AccessKey+"\n")
	secretFile := writeFile(t, dir, "secret-access-key", wrong+"\n")

	cfg := writeFile(t, dir, "config.yaml", fmt.Sprintf(`
identity: {username: maintd, hostname: e2e}
stateDirectory: %[1]s/state
server: {listenAddress: "%[2]s"}
log: {level: debug, format: json}
defaults:
  schedule: {quick: "@every 2s", full: "@every 1h", jitter: 0s}
repositories:
  - name: s3
    create: true
    storage:
      s3:
        bucket: velero
        prefix: rotate/
        endpoint: "%[3]s"
        region: %[4]s
        insecure: true
        accessKeyIDFile: access-key-id
        secretAccessKeyFile: secret-access-key
    passwordFile: password
`, dir, addr, mc.Endpoint, harness.MinIORegion))

	d := startDaemon(t, cfg, addr)

	failed := func() float64 {
		return d.metric(t, `kopia_maintenance_runs_total{cycle="quick",repository="s3",result="failure"}`)
	}
	succeeded := func() float64 {
		return d.metric(t, `kopia_maintenance_runs_total{cycle="quick",repository="s3",result="success"}`)
	}

	waitFor(t, d, "a quick cycle failing with the wrong secret", 60*time.Second, func() bool { return failed() >= 1 })

	if s := succeeded(); s > 0 {
		t.Fatalf("%v quick cycles succeeded with a wrong secret", s)
	}

	// The Secret is rotated in place, as a kubelet updates a mounted one.
	writeFile(t, dir, "secret-access-key.new", mc.SecretKey+"\n")

	if err := os.Rename(filepath.Join(dir, "secret-access-key.new"), secretFile); err != nil {
		t.Fatal(err)
	}

	waitFor(t, d, "a quick cycle succeeding after the key file was rotated", 90*time.Second, func() bool { return succeeded() >= 1 })

	logs := d.logs()
	for _, secret := range []string{wrong, mc.SecretKey, password} {
		if strings.Contains(logs, secret) {
			t.Fatal("daemon logs contain a secret")
		}
	}
}
