package harness

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

func TestMinIOStopStartKeepsData(t *testing.T) {
	t.Parallel()
	m := StartMinIO(t)
	m.MakeBucket(t, "harness")

	ctx := context.Background()
	payload := []byte("survives a restart")
	if _, err := m.Client(t).PutObject(ctx, "harness", "dir/object", bytes.NewReader(payload), int64(len(payload)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("put object: %v", err)
	}

	m.Stop(t)
	if c, err := net.DialTimeout("tcp", m.Endpoint, time.Second); err == nil {
		c.Close()
		t.Fatalf("minio still accepts connections on %s after Stop", m.Endpoint)
	}

	m.Start(t)
	obj, err := m.Client(t).GetObject(ctx, "harness", "dir/object", minio.GetObjectOptions{})
	if err != nil {
		t.Fatalf("get object after restart: %v", err)
	}
	defer obj.Close()
	got, err := io.ReadAll(obj)
	if err != nil {
		t.Fatalf("read object after restart: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("object after restart = %q, want %q", got, payload)
	}
}

// TestMinIOServesS3WhenStarted checks that the very first S3 request after
// StartMinIO is answered (not 503 XMinioServerNotInitialized) and that
// requests without the root credentials are refused.
func TestMinIOServesS3WhenStarted(t *testing.T) {
	t.Parallel()
	m := StartMinIO(t)
	resp, err := http.Get(m.URL() + "/")
	if err != nil {
		t.Fatalf("anonymous list buckets: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("anonymous list buckets: status %d, want %d\n%s", resp.StatusCode, http.StatusForbidden, body)
	}

	wrong := &MinIO{Endpoint: m.Endpoint, AccessKey: m.AccessKey, SecretKey: "not-the-secret"}
	if _, err := wrong.Client(t).ListBuckets(context.Background()); minio.ToErrorResponse(err).Code != "SignatureDoesNotMatch" {
		t.Fatalf("list buckets with a wrong secret: %v, want SignatureDoesNotMatch", err)
	}
}

// TestMinIOTLS: a server from StartMinIOTLS serves HTTPS only, with a
// certificate that verifies against its CA and no other; its client, its
// kopia flags and a restart keep working.
func TestMinIOTLS(t *testing.T) {
	t.Parallel()
	m := StartMinIOTLS(t)
	if !strings.HasPrefix(m.URL(), "https://") {
		t.Fatalf("URL = %q, want https", m.URL())
	}
	m.MakeBucket(t, "tls")

	get := func(roots *x509.CertPool) error {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
		resp, err := c.Get(m.URL() + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := get(m.CA.Pool()); err != nil {
		t.Fatalf("GET with the server's CA: %v", err)
	}
	var unknown x509.UnknownAuthorityError
	if err := get(NewCA(t).Pool()); !errors.As(err, &unknown) {
		t.Fatalf("GET trusting another CA: %v, want x509.UnknownAuthorityError", err)
	}
	if err := get(nil); !errors.As(err, &unknown) {
		t.Fatalf("GET trusting the system roots: %v, want x509.UnknownAuthorityError", err)
	}
	if resp, err := http.Get("http://" + m.Endpoint + "/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("plain HTTP to the TLS server: status %d, want 400", resp.StatusCode)
		}
	}
	if pem, err := os.ReadFile(m.CAFile); err != nil || !bytes.Equal(pem, m.CA.PEM) {
		t.Fatalf("CAFile %s: %v, or not the CA", m.CAFile, err)
	}

	m.Stop(t)
	m.Start(t)
	if _, err := m.Client(t).ListBuckets(context.Background()); err != nil {
		t.Fatalf("list buckets after a restart: %v", err)
	}

	k := NewKopiaCLI(t, "harness-password")
	k.Run(t, append([]string{"repository", "create", "s3"}, m.KopiaS3Flags("tls", "cli/")...)...)
}

// TestKopiaCLIVersion: the plain kopia tool is v0.22.3 and each versioned
// tool reports its own version.
func TestKopiaCLIVersion(t *testing.T) {
	t.Parallel()
	if got := NewKopiaCLI(t, "unused").Version(t); got != KopiaV0223 {
		t.Fatalf("kopia --version = %q, want %s", got, KopiaV0223)
	}
	for _, v := range []string{KopiaV0223, KopiaV0231} {
		k := NewKopiaCLIVersion(t, v, "unused")
		if got := k.Version(t); got != v {
			t.Fatalf("%s --version = %q, want %s", k.Bin, got, v)
		}
		if filepath.Base(k.Bin) != "kopia-"+v {
			t.Fatalf("NewKopiaCLIVersion(%s) runs %s", v, k.Bin)
		}
	}
}

func TestKopiaCLICreatesRepositories(t *testing.T) {
	t.Parallel()
	m := StartMinIO(t)
	m.MakeBucket(t, "repos")
	fsRoot := t.TempDir()

	tests := []struct {
		name string
		// create returns the create command; version keeps the
		// versions' repositories apart.
		create func(version string) []string
	}{
		{"filesystem", func(version string) []string {
			return []string{"repository", "create", "filesystem", "--path=" + filepath.Join(fsRoot, version)}
		}},
		{"s3", func(version string) []string {
			return append([]string{"repository", "create", "s3"}, m.KopiaS3Flags("repos", "cli-"+version+"/")...)
		}},
	}
	for _, v := range []string{KopiaV0223, KopiaV0231} {
		for _, tt := range tests {
			t.Run(v+"/"+tt.name, func(t *testing.T) {
				k := NewKopiaCLIVersion(t, v, "harness-password")
				k.Run(t, tt.create(v)...)
				out := k.Stdout(t, "repository", "status", "--json")
				if !strings.Contains(out, `"configFile"`) {
					t.Fatalf("repository status --json does not look like JSON status:\n%s", out)
				}
				if _, err := os.Stat(k.ConfigFile); err != nil {
					t.Fatalf("config file: %v", err)
				}

				wrong := &KopiaCLI{Bin: k.Bin, ConfigFile: filepath.Join(t.TempDir(), "other.config"), Password: "wrong"}
				connect := tt.create(v)
				connect[1] = "connect"
				if out, err := wrong.RunErr(connect...); err == nil {
					t.Fatalf("connect with a wrong password succeeded:\n%s", out)
				}
			})
		}
	}
}

func TestBuildBinaryOncePerProcess(t *testing.T) {
	t.Parallel()
	first := BuildBinary(t, "./test/harness/testdata/hello")
	fi, err := os.Stat(first)
	if err != nil {
		t.Fatalf("stat built binary: %v", err)
	}
	second := BuildBinary(t, "./test/harness/testdata/hello")
	if second != first {
		t.Fatalf("second BuildBinary = %q, want %q", second, first)
	}
	if fi2, err := os.Stat(second); err != nil || !os.SameFile(fi, fi2) {
		t.Fatalf("second BuildBinary rebuilt the binary (stat error %v)", err)
	}
	out, err := exec.Command(first).CombinedOutput()
	if err != nil || string(out) != "hello from kopia-maintd harness\n" {
		t.Fatalf("run built binary: %v, output %q", err, out)
	}
}

func TestFreeAddrIsBindable(t *testing.T) {
	t.Parallel()
	addr := FreeAddr(t)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	l.Close()
}

// Ports handed out stay reserved until the test ends: a second caller, in
// this process or another, never gets the same one, and none lies in the
// kernel's ephemeral range, where outbound connections take their source
// ports.
func TestFreePortReservesItsPorts(t *testing.T) {
	t.Parallel()
	lo, hi := listenPortRange()
	dir, err := portLockDir()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for range 40 {
		port := FreePort(t)
		if port < lo || port >= hi {
			t.Fatalf("port %d outside %d-%d", port, lo, hi-1)
		}
		if seen[port] {
			t.Fatalf("port %d handed out twice", port)
		}
		seen[port] = true
		if f, ok := lockPort(dir, port); ok {
			f.Close()
			t.Fatalf("port %d could be locked again while reserved", port)
		}
	}
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var first, last int
		if _, err := fmt.Sscan(string(data), &first, &last); err == nil {
			for port := range seen {
				if port >= first && port <= last {
					t.Fatalf("port %d inside the ephemeral range %d-%d", port, first, last)
				}
			}
		}
	}
}

// fatalRecorder is a testing.TB whose Fatalf records the message and ends the
// goroutine, as the real one does, without failing the enclosing test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestToolPath(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "present")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(ToolsEnv, dir)
	t.Setenv(CacheEnv, t.TempDir())

	if got := ToolPath(t, "present"); got != bin {
		t.Errorf("ToolPath(present) = %q, want %q", got, bin)
	}

	rec := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ToolPath(rec, "absent")
	}()
	<-done
	want := "install-tools.sh absent"
	if !strings.Contains(rec.msg, want) || !strings.Contains(rec.msg, dir) {
		t.Errorf("ToolPath(absent) failed with %q, want the directories searched and %q", rec.msg, want)
	}
}
