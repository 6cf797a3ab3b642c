package velero

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestReadCredentialsFileRefusesWhatNeverEnds: a credentials file that is
// too large, a directory, a named pipe without a writer and a device fail
// at once with an error naming the path; a regular file is read.
func TestReadCredentialsFileRefusesWhatNeverEnds(t *testing.T) {
	dir := t.TempDir()

	ok := filepath.Join(dir, "cloud")
	if err := os.WriteFile(ok, []byte("[default]\naws_access_key_id=AKIA\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	if b, err := readCredentialsFile(ok); err != nil || !strings.Contains(string(b), "AKIA") {
		t.Fatalf("regular file: %q, %v", b, err)
	}

	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, maxCredentialsFile+1), 0o600); err != nil {
		t.Fatal(err)
	}

	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}

	for path, want := range map[string]string{
		big:         "larger than 1 MiB",
		dir:         "not a regular file",
		fifo:        "not a regular file",
		"/dev/zero": "not a regular file",
	} {
		if _, err := readCredentialsFile(path); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			t.Errorf("readCredentialsFile(%s) = %v, want an error with %q and the path", path, err, want)
		}
	}
}
