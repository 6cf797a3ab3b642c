package harness

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// BuildTimeout bounds one `go build` by BuildBinary. A cold race build of the
// daemon compiles kopia and its cloud SDKs, which takes minutes on two cores.
const BuildTimeout = 15 * time.Minute

var (
	buildsMu sync.Mutex
	builds   = map[string]*buildResult{}
)

type buildResult struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// BuildBinary builds the main package pkg of this module (a path relative to
// the module root, such as "./cmd/kopia-maintd") once per test process and
// returns the path of the executable. The binary is built with -race when the
// test binary was, so the race detector also watches the daemon's process.
//
// Binaries go to CacheDir()/build, one file per package and race mode,
// replaced atomically on each process's first build, so repeated test runs do
// not pile up copies.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	return BuildBinaryTags(t, pkg, "")
}

// BuildBinaryTags is BuildBinary with build tags (a comma-separated list for
// go build -tags; "" for none). Each set of tags gets a binary of its own.
func BuildBinaryTags(t testing.TB, pkg, tags string) string {
	t.Helper()
	key := pkg + "\x00" + tags
	buildsMu.Lock()
	r, ok := builds[key]
	if !ok {
		r = &buildResult{}
		builds[key] = r
	}
	buildsMu.Unlock()
	r.once.Do(func() { r.path, r.out, r.err = build(pkg, tags) })
	if r.err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, r.err, r.out)
	}
	return r.path
}

func build(pkg, tags string) (string, []byte, error) {
	root, err := findRepoRoot()
	if err != nil {
		return "", nil, err
	}
	sum := sha256.Sum256([]byte(root + "\x00" + pkg))
	mode := "norace"
	if raceEnabled {
		mode = "race"
	}
	if tags != "" {
		mode += "-" + strings.ReplaceAll(tags, ",", "-")
	}
	dir := filepath.Join(CacheDir(), "build", hex.EncodeToString(sum[:6])+"-"+mode)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, fmt.Errorf("create build directory: %w", err)
	}
	dest := filepath.Join(dir, path.Base(filepath.ToSlash(pkg)))
	// Build next to dest and rename: another test process may be running
	// the previous binary, and a rename never changes a file in use.
	tmp, err := os.CreateTemp(dir, ".build-*")
	if err != nil {
		return "", nil, fmt.Errorf("create temporary binary: %w", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())

	args := []string{"build", "-buildvcs=false", "-o", tmp.Name()}
	if raceEnabled {
		args = append(args, "-race")
	}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	args = append(args, pkg)
	ctx, cancel := context.WithTimeout(context.Background(), BuildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", out, fmt.Errorf("go %v: %w", args, err)
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		return "", out, fmt.Errorf("move binary into place: %w", err)
	}
	return dest, out, nil
}
