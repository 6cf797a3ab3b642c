package harness

import (
	"context"
	"crypto/rand"
	"crypto/tls"
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

// MinIO is a real MinIO server on 127.0.0.1 serving a data directory in
// t.TempDir(): plain HTTP when started by StartMinIO, HTTPS when started by
// StartMinIOTLS.
type MinIO struct {
	// Endpoint is host:port of the S3 API, without a scheme.
	Endpoint string
	// AccessKey is the root user, random per server.
	AccessKey string
	// SecretKey is the root password, random per server.
	SecretKey string
	// CA is the authority that signed the server's certificate, nil for a
	// plain HTTP server. Its PEM is the bundle clients must trust.
	CA *CA
	// CAFile is the path of a file holding CA.PEM, "" for plain HTTP.
	CAFile string

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
// root credentials, serving plain HTTP, waits until it is ready, and stops it
// in t.Cleanup.
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	return startMinIO(t, false)
}

// StartMinIOTLS is StartMinIO for a server that serves HTTPS only, with a
// certificate for 127.0.0.1 signed by a CA made for this server (m.CA, also
// written to m.CAFile). Clients that do not trust that CA are refused the
// handshake, as with a private CA in production.
func StartMinIOTLS(t testing.TB) *MinIO {
	t.Helper()
	return startMinIO(t, true)
}

func startMinIO(t testing.TB, withTLS bool) *MinIO {
	t.Helper()
	m := &MinIO{
		AccessKey: "u" + randomHex(t, 8),
		SecretKey: randomHex(t, 16),
		bin:       ToolPath(t, "minio"),
		dataDir:   t.TempDir(),
		homeDir:   t.TempDir(),
		logs:      &tailBuffer{max: 64 << 10},
	}
	if withTLS {
		m.writeCerts(t)
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

// URL returns the base URL of the S3 API: "http://" + Endpoint, or
// "https://" + Endpoint for a server started by StartMinIOTLS.
func (m *MinIO) URL() string {
	if m.CA != nil {
		return "https://" + m.Endpoint
	}
	return "http://" + m.Endpoint
}

// Client returns a minio-go client authenticated as the root user (trusting
// m.CA over HTTPS).
func (m *MinIO) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := m.newClient(0)
	if err != nil {
		t.Fatalf("create minio client for %s: %v", m.Endpoint, err)
	}
	return c
}

// newClient returns a root client; maxRetries 0 keeps minio-go's default.
func (m *MinIO) newClient(maxRetries int) (*minio.Client, error) {
	return minio.New(m.Endpoint, &minio.Options{
		Creds:      credentials.NewStaticV4(m.AccessKey, m.SecretKey, ""),
		Secure:     m.CA != nil,
		Region:     MinIORegion,
		Transport:  m.transport(),
		MaxRetries: maxRetries,
	})
}

// transport is an HTTP transport that trusts m.CA only, or the default one
// for plain HTTP.
func (m *MinIO) transport() http.RoundTripper {
	if m.CA == nil {
		return http.DefaultTransport
	}
	tr := http.DefaultTransport.(*http.Transport).Clone() //nolint:forcetypeassert
	tr.TLSClientConfig = &tls.Config{RootCAs: m.CA.Pool(), MinVersion: tls.VersionTLS12}
	return tr
}

// writeCerts makes the CA and the server's certificate, and writes them
// where MinIO reads them: public.crt and private.key in --certs-dir.
func (m *MinIO) writeCerts(t testing.TB) {
	t.Helper()
	m.CA = NewCA(t)
	certPEM, keyPEM := m.CA.ServerCert(t)
	dir := filepath.Join(m.homeDir, "certs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m.CAFile = filepath.Join(m.homeDir, "ca.pem")
	for name, data := range map[string][]byte{
		filepath.Join(dir, "public.crt"):  certPEM,
		filepath.Join(dir, "private.key"): keyPEM,
		m.CAFile:                          m.CA.PEM,
	} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
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
// server, for use with KopiaCLI: --disable-tls for plain HTTP, the CA file
// for HTTPS.
func (m *MinIO) KopiaS3Flags(bucket, prefix string) []string {
	tlsFlag := "--disable-tls"
	if m.CA != nil {
		tlsFlag = "--root-ca-pem-path=" + m.CAFile
	}
	return []string{
		"--bucket=" + bucket,
		"--prefix=" + prefix,
		"--endpoint=" + m.Endpoint,
		"--region=" + MinIORegion,
		tlsFlag,
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
	httpClient := &http.Client{Timeout: 2 * time.Second, Transport: m.transport()}
	s3, err := m.newClient(1)
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
