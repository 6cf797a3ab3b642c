package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// TestNoSecretAnywhere runs the daemon, at debug level, on three MinIO
// repositories with known secrets: one that works, one given the wrong
// password, one given a wrong secret key; then the one-shot commands,
// including a refused safety=none request (audited) and failing runs. It
// collects every log line, /metrics, `status --json`, every command's
// output, the local audit log and state files, and every object in the
// bucket (kopia's blobs and the daemon's own records), and finds none of
// the passwords or secret keys in any of them.
func TestNoSecretAnywhere(t *testing.T) {
	const (
		goodPassword  = "Pa55-good-7f3c9a1e2b"
		wrongPassword = "Pa55-wrong-c81d04e6aa"
		realPassword  = "Pa55-real-59be2f7d10"
		wrongSecret   = "Wr0ngSecretKey-4d9e1f7a2c6b8e0d"
	)

	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, "backups")

	// The repository the daemon gets the wrong password for, made by the
	// CLI with the real one.
	k := harness.NewKopiaCLI(t, realPassword)
	k.Run(t, append([]string{"repository", "create", "s3"}, mc.KopiaS3Flags("backups", "kopia/badpw/")...)...)

	dir := t.TempDir()
	writeFile(t, dir, "good.password", goodPassword)
	writeFile(t, dir, "wrong.password", wrongPassword)
	writeFile(t, dir, "access-key", mc.AccessKey)
	writeFile(t, dir, "secret-key", mc.SecretKey)
	writeFile(t, dir, "wrong-secret-key", wrongSecret)

	addr := harness.FreeAddr(t)
	s3 := func(prefix, secretFile string) string {
		return fmt.Sprintf(`{s3: {bucket: backups, prefix: %s, endpoint: "%s", insecure: true, accessKeyIDFile: access-key, secretAccessKeyFile: %s}}`,
			prefix, mc.Endpoint, secretFile)
	}
	cfg := writeFile(t, dir, "config.yaml", fmt.Sprintf(`
identity: {username: maintd, hostname: e2e}
stateDirectory: %[1]s/state
server: {listenAddress: "%[2]s"}
log: {level: debug, format: json}
lease: {kind: repository}
defaults:
  schedule: {quick: "@every 2s", full: "@every 20s", jitter: 0s}
  ownership: {takeover: always}
repositories:
  - name: good
    create: true
    passwordFile: good.password
    storage: %[3]s
  - name: badpw
    passwordFile: wrong.password
    storage: %[4]s
  - name: badkey
    create: true
    passwordFile: good.password
    storage: %[5]s
`, dir, addr, s3("kopia/good/", "secret-key"), s3("kopia/badpw/", "secret-key"), s3("kopia/badkey/", "wrong-secret-key")))

	d := startDaemon(t, cfg, addr)

	runs := func(repo, cycle, result string) float64 {
		return d.metric(t, fmt.Sprintf(`kopia_maintenance_runs_total{cycle=%q,repository=%q,result=%q}`, cycle, repo, result))
	}

	waitFor(t, d, "good maintained, badpw and badkey failing", 4*time.Minute, func() bool {
		return runs("good", "full", "success") >= 1 && runs("good", "quick", "success") >= 1 &&
			runs("badpw", "quick", "failure")+runs("badpw", "full", "failure") >= 1 &&
			runs("badkey", "quick", "failure")+runs("badkey", "full", "failure") >= 1
	})

	metricsText := httpBody(t, "http://"+addr+"/metrics")

	// The one-shot commands run after the daemon has stopped: with it
	// running they would find its leases held.
	d.stop(t)

	collected := map[string]string{
		"daemon log": d.logs(),
		"/metrics":   metricsText,
	}

	for name, args := range map[string][]string{
		"status --json":           {"status", "--config", cfg, "--json"},
		"status":                  {"status", "--config", cfg},
		"run-once badpw":          {"run-once", "--config", cfg, "--repository", "badpw", "--cycle", "quick"},
		"run-once badkey":         {"run-once", "--config", cfg, "--repository", "badkey", "--cycle", "quick"},
		"run-once safety=none":    {"run-once", "--config", cfg, "--repository", "good", "--cycle", "full", "--safety", "none"},
		"gate":                    {"gate", "--config", cfg, "--repository", "good"},
		"check-config":            {"check-config", "--config", cfg},
		"owner show badpw":        {"owner", "show", "--config", cfg, "--repository", "badpw"},
		"owner take badkey":       {"owner", "take", "--config", cfg, "--repository", "badkey"},
		"run-once good (success)": {"run-once", "--config", cfg, "--repository", "good", "--cycle", "quick"},
	} {
		stdout, stderr, code := runCLI(t, args...)
		collected[name] = stdout + stderr
		t.Logf("%s: exit %d", name, code)
	}

	// The failing commands did fail, for the expected reasons (so the
	// search below covers error paths, not only successes).
	for name, want := range map[string]string{
		"run-once badpw":       "wrong repository password",
		"run-once badkey":      "signature",
		"run-once safety=none": "refused",
	} {
		if !strings.Contains(strings.ToLower(collected[name]), want) {
			t.Errorf("%s: output does not say %q:\n%s", name, want, collected[name])
		}
	}

	// The local state: audit log, session and status files.
	if err := filepath.WalkDir(filepath.Join(dir, "state"), func(p string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() || strings.Contains(p, string(filepath.Separator)+"cache"+string(filepath.Separator)) {
			return err
		}

		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}

		collected["state file "+p] = string(data)

		return nil
	}); err != nil {
		t.Fatal(err)
	}

	if !strings.Contains(strings.Join(keysOf(collected), " "), "audit") {
		t.Errorf("no audit file in the state directory: the refused safety=none request is not covered")
	}

	// Everything in the bucket.
	cli := mc.Client(t)
	ctx := context.Background()

	for obj := range cli.ListObjects(ctx, "backups", minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}

		r, err := cli.GetObject(ctx, "backups", obj.Key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}

		data, err := io.ReadAll(r)
		r.Close() //nolint:errcheck

		if err != nil {
			t.Fatal(err)
		}

		collected["object "+obj.Key] = string(data)
	}

	t.Logf("searched %d outputs, files and objects", len(collected))

	for _, secret := range []string{goodPassword, wrongPassword, realPassword, mc.SecretKey, wrongSecret} {
		for where, text := range collected {
			if strings.Contains(text, secret) {
				t.Errorf("a secret (%d characters, starting %q) appears in %s", len(secret), secret[:3], where)
			}
		}
	}
}

func keysOf(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}

	return out
}
