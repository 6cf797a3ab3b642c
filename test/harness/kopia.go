package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// KopiaCommandTimeout bounds a single kopia CLI invocation, so that a hung
// command fails its test instead of the whole test binary.
const KopiaCommandTimeout = 5 * time.Minute

// KopiaCLI runs the real kopia CLI (built by scripts/install-tools.sh) with a
// config file, cache and log directory of its own in a temporary directory,
// so it never touches the user's kopia setup.
type KopiaCLI struct {
	// Bin is the path of the kopia executable.
	Bin string
	// ConfigFile is passed as --config-file to every command.
	ConfigFile string
	// Password is passed as KOPIA_PASSWORD.
	Password string
	// Env holds extra KEY=value entries appended to the environment.
	Env []string

	dir string
}

// Kopia CLI versions that scripts/install-tools.sh builds, each installed as
// kopia-<version>.
const (
	// KopiaV0223 is the kopia CLI Velero 1.18 ships; the plain "kopia" tool
	// is this version.
	KopiaV0223 = "v0.22.3"
	// KopiaV0231 is the version of the kopia library the daemon is built
	// with.
	KopiaV0231 = "v0.23.1"
)

// NewKopiaCLI returns a KopiaCLI whose commands use password as the
// repository password and keep their state in t.TempDir(). It runs the
// default kopia tool (KopiaV0223).
func NewKopiaCLI(t testing.TB, password string) *KopiaCLI {
	t.Helper()
	return newKopiaCLI(t, "kopia", password)
}

// NewKopiaCLIVersion is NewKopiaCLI for the kopia CLI of the given version
// (for example KopiaV0231), installed by scripts/install-tools.sh as
// kopia-<version>.
func NewKopiaCLIVersion(t testing.TB, version, password string) *KopiaCLI {
	t.Helper()
	return newKopiaCLI(t, "kopia-"+version, password)
}

func newKopiaCLI(t testing.TB, tool, password string) *KopiaCLI {
	t.Helper()
	dir := t.TempDir()
	return &KopiaCLI{
		Bin:        ToolPath(t, tool),
		ConfigFile: filepath.Join(dir, "repository.config"),
		Password:   password,
		dir:        dir,
	}
}

// Version returns the version the CLI reports (`kopia --version`, first
// word), for example "v0.22.3".
func (k *KopiaCLI) Version(t testing.TB) string {
	t.Helper()
	out := k.Stdout(t, "--version")
	f := strings.Fields(out)
	if len(f) == 0 {
		t.Fatalf("kopia --version printed nothing")
	}
	return f[0]
}

// Run runs kopia with args and returns its combined stdout and stderr. It
// fails the test, showing the output, if the command fails.
func (k *KopiaCLI) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := k.RunErr(args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// RunErr runs kopia with args and returns its combined stdout and stderr and
// the error, if any, for tests that expect a command to fail.
func (k *KopiaCLI) RunErr(args ...string) (string, error) {
	var out bytes.Buffer
	err := k.run(&out, &out, args)
	return out.String(), err
}

// Stdout runs kopia with args and returns only its standard output (for
// example the result of a --json command). It fails the test, showing stderr,
// if the command fails.
func (k *KopiaCLI) Stdout(t testing.TB, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if err := k.run(&stdout, &stderr, args); err != nil {
		t.Fatalf("%v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// Output runs kopia with args and returns its standard output, its standard
// error and the error, if any, without failing the test: for commands that
// run on a goroutine of their own, such as a concurrent backup client.
func (k *KopiaCLI) Output(args ...string) (stdout, stderr string, err error) {
	var o, e bytes.Buffer
	err = k.run(&o, &e, args)
	return o.String(), e.String(), err
}

func (k *KopiaCLI) run(stdout, stderr *bytes.Buffer, args []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), KopiaCommandTimeout)
	defer cancel()
	full := append([]string{"--config-file=" + k.ConfigFile}, args...)
	cmd := exec.CommandContext(ctx, k.Bin, full...)
	cmd.Env = append(kopiaFreeEnv(),
		"KOPIA_PASSWORD="+k.Password,
		"KOPIA_CHECK_FOR_UPDATES=false",
		"KOPIA_LOG_DIR="+filepath.Join(k.stateDir(), "logs"),
		"KOPIA_CACHE_DIRECTORY="+filepath.Join(k.stateDir(), "cache"),
	)
	cmd.Env = append(cmd.Env, k.Env...)
	cmd.Stdin = nil
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("kopia %s: timed out after %v: %w", strings.Join(args, " "), KopiaCommandTimeout, err)
		}
		return fmt.Errorf("kopia %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// stateDir is where logs and caches go: the temporary directory from
// NewKopiaCLI, or the config file's directory for a literal KopiaCLI.
func (k *KopiaCLI) stateDir() string {
	if k.dir != "" {
		return k.dir
	}
	return filepath.Dir(k.ConfigFile)
}

// kopiaFreeEnv returns the process environment without KOPIA_* variables, so
// a developer's own kopia settings cannot leak into a test.
func kopiaFreeEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KOPIA_") {
			env = append(env, kv)
		}
	}
	return env
}
