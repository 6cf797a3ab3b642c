package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIORegion is the region the MinIO server reports; S3 clients may pass it
// or leave the region empty.
const MinIORegion = "us-east-1"

// minioReadyTimeout bounds the wait for /minio/health/ready. MinIO is ready in
// about half a second on an idle machine; a loaded CI machine running race
// builds in parallel can be much slower.
const minioReadyTimeout = 60 * time.Second

// MinIO is a real MinIO server started by StartMinIO on 127.0.0.1, serving
// plain HTTP from a data directory in t.TempDir().
type MinIO struct {
	// Endpoint is host:port of the S3 API, without a scheme.
	Endpoint string
	// AccessKey is the root user, random per server.
	AccessKey string
	// SecretKey is the root password, random per server.
	SecretKey string

	bin     string
	dataDir string
	homeDir string

	mu   sync.Mutex
	proc *minioProcess
	logs *tailBuffer
}

type minioProcess struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and been reaped
	err  error         // the result of Wait, valid once done is closed
}

// StartMinIO starts a MinIO server with a fresh data directory and random
// root credentials, waits until it is ready, and stops it in t.Cleanup.
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	m := &MinIO{
		AccessKey: "u" + randomHex(t, 8),
		SecretKey: randomHex(t, 16),
		bin:       ToolPath(t, "minio"),
		dataDir:   t.TempDir(),
		homeDir:   t.TempDir(),
		logs:      &tailBuffer{max: 64 << 10},
	}
	t.Cleanup(func() {
		m.kill()
		if t.Failed() {
			t.Logf("minio output (last %d bytes):\n%s", m.logs.max, m.logs.String())
		}
	})
	// The port is only reserved until FreePort returns; retry when another
	// process took it in between.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		m.Endpoint = FreeAddr(t)
		if lastErr = m.start(); lastErr == nil {
			return m
		}
		m.kill()
	}
	t.Fatalf("start minio: %v\nminio output:\n%s", lastErr, m.logs.String())
	return nil
}

// Stop kills the server (SIGKILL, as a crash or an outage would) and waits
// until it has exited. Its data stays; Start brings it back on the same
// endpoint.
func (m *MinIO) Stop(t testing.TB) {
	t.Helper()
	m.kill()
}

// Start restarts a stopped server on the same endpoint, credentials and data,
// and waits until it is ready. It fails the test if the port has been taken
// in the meantime.
func (m *MinIO) Start(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	running := m.proc != nil
	m.mu.Unlock()
	if running {
		t.Fatalf("start minio on %s: already running", m.Endpoint)
	}
	if err := m.start(); err != nil {
		m.kill()
		t.Fatalf("restart minio on %s: %v\nminio output:\n%s", m.Endpoint, err, m.logs.String())
	}
}

// URL returns the base URL of the S3 API, "http://" + Endpoint.
func (m *MinIO) URL() string { return "http://" + m.Endpoint }

// Client returns a minio-go client authenticated as the root user.
func (m *MinIO) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(m.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(m.AccessKey, m.SecretKey, ""),
		Secure: false,
		Region: MinIORegion,
	})
	if err != nil {
		t.Fatalf("create minio client for %s: %v", m.Endpoint, err)
	}
	return c
}

// MakeBucket creates the bucket name.
func (m *MinIO) MakeBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Client(t).MakeBucket(ctx, name, minio.MakeBucketOptions{Region: MinIORegion}); err != nil {
		t.Fatalf("make bucket %q: %v", name, err)
	}
}

// KopiaS3Flags returns the flags of `kopia repository create s3` and
// `kopia repository connect s3` that address bucket and prefix on this
// server, for use with KopiaCLI.
func (m *MinIO) KopiaS3Flags(bucket, prefix string) []string {
	return []string{
		"--bucket=" + bucket,
		"--prefix=" + prefix,
		"--endpoint=" + m.Endpoint,
		"--region=" + MinIORegion,
		"--disable-tls",
		"--access-key=" + m.AccessKey,
		"--secret-access-key=" + m.SecretKey,
	}
}

// start launches the process on m.Endpoint and waits until it is ready.
func (m *MinIO) start() error {
	cmd := exec.Command(m.bin, "server",
		"--quiet",
		"--address", m.Endpoint,
		// The console is off (MINIO_BROWSER) but still wants an address;
		// port 0 keeps it from competing for a fixed one.
		"--console-address", "127.0.0.1:0",
		"--certs-dir", filepath.Join(m.homeDir, "certs"),
		m.dataDir,
	)
	cmd.Env = append(os.Environ(),
		"HOME="+m.homeDir, // MinIO creates ~/.minio even with --certs-dir
		"MINIO_ROOT_USER="+m.AccessKey,
		"MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"MINIO_REGION="+MinIORegion,
	)
	cmd.Stdout = m.logs
	cmd.Stderr = m.logs
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("exec %s: %w", m.bin, err)
	}
	p := &minioProcess{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	m.mu.Lock()
	m.proc = p
	m.mu.Unlock()
	return m.waitReady(p)
}

// waitReady polls until the process serves S3 requests. /minio/health/ready
// answers 200 a little before the S3 API stops returning 503
// XMinioServerNotInitialized, so an authenticated ListBuckets must succeed
// too; otherwise the first request of a test fails now and then.
func (m *MinIO) waitReady(p *minioProcess) error {
	httpClient := &http.Client{Timeout: 2 * time.Second}
	s3, err := minio.New(m.Endpoint, &minio.Options{
		Creds:      credentials.NewStaticV4(m.AccessKey, m.SecretKey, ""),
		Region:     MinIORegion,
		MaxRetries: 1,
	})
	if err != nil {
		return fmt.Errorf("create minio client: %w", err)
	}
	url := m.URL() + "/minio/health/ready"
	deadline := time.Now().Add(minioReadyTimeout)
	for {
		select {
		case <-p.done:
			return fmt.Errorf("minio exited before it was ready: %v", p.err)
		default:
		}
		err = probe(httpClient, url, s3)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("minio at %s not ready after %v: %w", m.Endpoint, minioReadyTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func probe(httpClient *http.Client, healthURL string, s3 *minio.Client) error {
	resp, err := httpClient.Get(healthURL)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", healthURL, resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := s3.ListBuckets(ctx); err != nil {
		return fmt.Errorf("list buckets: %w", err)
	}
	return nil
}

// kill sends SIGKILL to the running process, if any, and waits for it.
func (m *MinIO) kill() {
	m.mu.Lock()
	p := m.proc
	m.proc = nil
	m.mu.Unlock()
	if p == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("read random bytes: %v", err)
	}
	return hex.EncodeToString(b)
}

// tailBuffer is an io.Writer, safe for concurrent use, that keeps the last max
// bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.TrimSpace(string(b.buf))
}
