package harness

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// ToolsEnv names the environment variable that overrides the directory in
// which ToolPath looks for tools first.
const ToolsEnv = "KOPIA_MAINTD_TOOLS"

// CacheEnv names the environment variable that overrides the cache root
// ($HOME/.cache/kopia-maintd) shared with scripts/install-tools.sh.
const CacheEnv = "KOPIA_MAINTD_CACHE"

// modulePath is the module whose root RepoRoot looks for.
const modulePath = "github.com/kopia-maintd/kopia-maintd"

// CacheDir returns the cache root of the project: $KOPIA_MAINTD_CACHE, or
// $HOME/.cache/kopia-maintd.
func CacheDir() string {
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "kopia-maintd-cache")
	}
	return filepath.Join(home, ".cache", "kopia-maintd")
}

// ToolDirs returns the directories ToolPath searches, in order:
// $KOPIA_MAINTD_TOOLS (when set), then CacheDir()/tools/bin.
func ToolDirs() []string {
	var dirs []string
	if d := os.Getenv(ToolsEnv); d != "" {
		dirs = append(dirs, d)
	}
	return append(dirs, filepath.Join(CacheDir(), "tools", "bin"))
}

// Tools are the executables scripts/install-tools.sh installs by default,
// under the names tests pass to ToolPath: MinIO, the kopia CLI (kopia is
// v0.22.3; kopia-v0.22.3 and kopia-v0.23.1 name each version), staticcheck,
// Prometheus and promtool, the toxiproxy server, etcd, kube-apiserver and
// kubectl (the same Kubernetes release as kube-apiserver, for `kubectl
// kustomize` and server-side dry runs of the manifests under deploy/).
var Tools = []string{
	"minio",
	"kopia", "kopia-v0.22.3", "kopia-v0.23.1",
	"staticcheck",
	"prometheus", "promtool",
	"toxiproxy-server",
	"etcd", "kube-apiserver", "kubectl",
}

// ToolPath returns the path of the executable tool name (one of Tools)
// installed by scripts/install-tools.sh. When it is missing the test fails
// with the exact command that installs it.
func ToolPath(t testing.TB, name string) string {
	t.Helper()
	dirs := ToolDirs()
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	script := "scripts/install-tools.sh"
	if root, err := findRepoRoot(); err == nil {
		script = filepath.Join(root, script)
	}
	t.Fatalf("tool %q not found in %v; install it with:\n\tbash %s %s", name, dirs, script, name)
	return ""
}

// RepoRoot returns the root directory of this module, found by walking up
// from the working directory (go test runs each test in its package's
// directory).
func RepoRoot(t testing.TB) string {
	t.Helper()
	root, err := findRepoRoot()
	if err != nil {
		t.Fatalf("find repository root: %v", err)
	}
	return root
}

func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("get working directory: %w", err)
	}
	want := []byte("module " + modulePath + "\n")
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(data, want) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod of module " + modulePath + " above the working directory")
		}
		dir = parent
	}
}

// FreePort returns a TCP port on 127.0.0.1 that is free and reserved for the
// test until it ends.
//
// Two things can take a port between the check and the caller's bind. Another
// test process can pick the same one: every port handed out is locked in a
// file under /tmp/kopia-maintd-ports (flock, released when the test ends or
// its process dies), and other processes skip locked ports. And any outbound
// connection on the machine can get it as its source port, when it lies in
// the kernel's ephemeral range: ports are therefore taken below that range.
// Servers started by this package still retry with a new port if a bind
// fails.
func FreePort(t testing.TB) int {
	t.Helper()
	lo, hi := listenPortRange()
	dir, err := portLockDir()
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	span := hi - lo
	start := rand.IntN(span)
	for i := range span {
		port := lo + (start+i)%span
		lock, ok := lockPort(dir, port)
		if !ok {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			lock.Close()
			continue
		}
		l.Close()
		t.Cleanup(func() { lock.Close() })
		return port
	}
	t.Fatalf("find a free port: none free in %d-%d", lo, hi-1)
	return 0
}

// listenPortRange is the range [lo, hi) FreePort picks from: the ports below
// the kernel's ephemeral range, from 10000 on.
func listenPortRange() (lo, hi int) {
	lo, hi = 10000, 32768
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	var first, last int
	if _, err := fmt.Sscan(string(data), &first, &last); err != nil {
		return lo, hi
	}
	if first-lo >= 2000 {
		return lo, first
	}
	// The ephemeral range starts low; take the ports above it instead.
	if last < 65535-2000 {
		return last + 1, 65536
	}
	return lo, hi
}

// portLockDir is the directory of the port locks. It is the same for every
// test process whatever its TMPDIR (the soak step sets its own), under /tmp,
// or under the temporary directory where /tmp cannot be written.
func portLockDir() (string, error) {
	dir := "/tmp/kopia-maintd-ports"
	if err := os.MkdirAll(dir, 0o777); err == nil {
		return dir, nil
	}
	dir = filepath.Join(os.TempDir(), "kopia-maintd-ports")
	return dir, os.MkdirAll(dir, 0o777)
}

// lockPort takes the cross-process lock of port, or reports that another
// process holds it.
func lockPort(dir string, port int) (*os.File, bool) {
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d.lock", port)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, false
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, false
	}
	return f, true
}

// FreeAddr returns "127.0.0.1:<port>" for a port from FreePort.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t))
}
