package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// The reference repositories' fixed, bench-only secrets and identity.
const (
	benchPassword = "bench-only-password"
	benchUser     = "maintd"
	benchHost     = "bench"
	minioUser     = "benchadmin"
	minioSecret   = "bench-only-secret"
	minioBucket   = "bench"
)

// cleanEnv is the environment without the caller's kopia and AWS settings.
func cleanEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if strings.HasPrefix(e, "KOPIA_") || strings.HasPrefix(e, "AWS_") || strings.HasPrefix(e, "GOMEMLIMIT=") || strings.HasPrefix(e, "GOGC=") {
			continue
		}
		env = append(env, e)
	}
	return env
}

// kopiaCLI is one kopia CLI connection: a config file and a cache of its own.
type kopiaCLI struct {
	bin string
	dir string // config, cache, logs
}

func newCLI(bin, dir string) (*kopiaCLI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &kopiaCLI{bin: bin, dir: dir}, nil
}

func (k *kopiaCLI) env() []string {
	return append(cleanEnv(),
		"KOPIA_PASSWORD="+benchPassword,
		"KOPIA_CHECK_FOR_UPDATES=false",
		"KOPIA_LOG_DIR="+filepath.Join(k.dir, "logs"),
	)
}

// args puts the global flags first. File logging is off so that the CLI side
// does not pay for debug logs that Velero's in-process maintenance does not
// write either.
func (k *kopiaCLI) args(args ...string) []string {
	return append([]string{"--config-file=" + filepath.Join(k.dir, "repository.config"), "--disable-file-logging", "--disable-content-log"}, args...)
}

func (k *kopiaCLI) run(ctx context.Context, args ...string) error {
	return run(ctx, k.env(), k.bin, k.args(args...)...)
}

func (k *kopiaCLI) output(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, k.bin, k.args(args...)...)
	cmd.Env = k.env()
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("kopia %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}

// command returns the measured command kopia args.
func (k *kopiaCLI) command(args ...string) *exec.Cmd {
	cmd := exec.Command(k.bin, k.args(args...)...)
	cmd.Env = k.env()
	return cmd
}

func (k *kopiaCLI) cacheDir() string { return filepath.Join(k.dir, "cache") }

func identityFlags() []string {
	return []string{"--override-username=" + benchUser, "--override-hostname=" + benchHost}
}

// connectFS connects to a filesystem repository as maintd@bench.
func (k *kopiaCLI) connectFS(ctx context.Context, path string) error {
	return k.run(ctx, append([]string{"repository", "connect", "filesystem", "--path=" + path, "--cache-directory=" + k.cacheDir()}, identityFlags()...)...)
}

// connectS3 connects to the bucket of m as maintd@bench.
func (k *kopiaCLI) connectS3(ctx context.Context, m *minioServer) error {
	return k.run(ctx, append(append([]string{"repository", "connect", "s3", "--cache-directory=" + k.cacheDir()}, m.kopiaFlags()...), identityFlags()...)...)
}

// dropCache empties the CLI's cache so that the measured run starts cold,
// as a new maintenance Job does.
func (k *kopiaCLI) dropCache() error {
	if err := os.RemoveAll(k.cacheDir()); err != nil {
		return err
	}
	return os.MkdirAll(k.cacheDir(), 0o700)
}

// minioServer is a MinIO process on a data directory.
type minioServer struct {
	cmd      *exec.Cmd
	endpoint string
	done     chan struct{}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startMinIO(bin, dataDir, homeDir string, logw *os.File) (*minioServer, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "server", "--quiet", "--address", addr, "--console-address", "127.0.0.1:0",
		"--certs-dir", filepath.Join(homeDir, "certs"), dataDir)
	cmd.Env = append(cleanEnv(), "HOME="+homeDir, "MINIO_ROOT_USER="+minioUser, "MINIO_ROOT_PASSWORD="+minioSecret,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_REGION=us-east-1")
	cmd.Stdout, cmd.Stderr = logw, logw
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	m := &minioServer{cmd: cmd, endpoint: addr, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(m.done) }()
	c, err := m.client()
	if err != nil {
		m.stop()
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, herr := http.Get("http://" + addr + "/minio/health/ready")
		if herr == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				_, herr = c.ListBuckets(ctx)
			} else {
				herr = fmt.Errorf("status %d", resp.StatusCode)
			}
		}
		cancel()
		if herr == nil {
			return m, nil
		}
		select {
		case <-m.done:
			return nil, fmt.Errorf("minio exited before it was ready")
		default:
		}
		if time.Now().After(deadline) {
			m.stop()
			return nil, fmt.Errorf("minio not ready: %w", herr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (m *minioServer) client() (*minio.Client, error) {
	return minio.New(m.endpoint, &minio.Options{Creds: credentials.NewStaticV4(minioUser, minioSecret, ""), Region: "us-east-1"})
}

func (m *minioServer) makeBucket(ctx context.Context) error {
	c, err := m.client()
	if err != nil {
		return err
	}
	return c.MakeBucket(ctx, minioBucket, minio.MakeBucketOptions{Region: "us-east-1"})
}

func (m *minioServer) kopiaFlags() []string {
	return []string{"--bucket=" + minioBucket, "--endpoint=" + m.endpoint, "--region=us-east-1", "--disable-tls",
		"--access-key=" + minioUser, "--secret-access-key=" + minioSecret}
}

// stop stops MinIO gracefully (SIGTERM) so that its data directory can be
// copied, and kills it if it does not exit.
func (m *minioServer) stop() {
	_ = m.cmd.Process.Signal(os.Interrupt)
	select {
	case <-m.done:
	case <-time.After(15 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.done
	}
}
