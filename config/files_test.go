package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFilesThatNeverEnd: a password file that is a device, a named pipe
// nobody writes to, or a file far larger than any secret is refused at
// once with an error naming the file and what it is, instead of a load that
// never returns or fills memory; a symbolic link to a regular file (how
// Kubernetes mounts Secrets) is read.
func TestFilesThatNeverEnd(t *testing.T) {
	dir := t.TempDir()

	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}

	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, maxFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}

	secret := filepath.Join(dir, "..data", "password")
	if err := os.MkdirAll(filepath.Dir(secret), 0o700); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(secret, []byte("s3cr3t\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	link := filepath.Join(dir, "password")
	if err := os.Symlink(secret, link); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ file, want string }{
		{"/dev/zero", "/dev/zero is a device, not a regular file"},
		{fifo, fifo + " is a named pipe, not a regular file"},
		{big, big + " is larger than 4 MiB"},
		{link, ""},
	} {
		t.Run(filepath.Base(tc.file), func(t *testing.T) {
			data := fmt.Sprintf(`
identity: {username: a, hostname: b}
stateDirectory: %[1]s/state
repositories:
  - name: r
    passwordFile: %[2]s
    storage: {filesystem: {path: %[1]s/repo}}
`, dir, tc.file)

			done := make(chan error, 1)
			go func() {
				_, err := Parse([]byte(data), dir)
				done <- err
			}()

			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Parse did not return within 10s")
			}

			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Parse: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), "repositories[0].passwordFile: "+tc.want)):
				t.Fatalf("Parse error %v, want %q", err, tc.want)
			}
		})
	}

	if _, err := Load("/dev/zero"); err == nil || !strings.Contains(err.Error(), "/dev/zero is a device") {
		t.Fatalf("Load(/dev/zero) = %v", err)
	}
}
