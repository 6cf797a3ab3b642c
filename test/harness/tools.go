package harness

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
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

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Another
// process may take it before the caller binds it; servers started by this
// package retry with a new port when that happens.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreeAddr returns "127.0.0.1:<port>" for a port that was free a moment ago
// (see FreePort).
func FreeAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t))
}
