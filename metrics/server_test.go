package metrics

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// startServer runs a Server until the test ends.
func startServer(t *testing.T, opts ServerOptions) *Server {
	t.Helper()

	if opts.ListenAddress == "" {
		opts.ListenAddress = "127.0.0.1:0"
	}

	opts.Logger = zaptest.NewLogger(t)

	s, err := NewServer(New(BuildInfo{Version: "test", KopiaVersion: "v0.22.3"}), opts)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)

	go func() { done <- s.Run(ctx) }()

	t.Cleanup(func() {
		cancel()

		if err := <-done; err != nil {
			t.Errorf("server run: %v", err)
		}
	})

	return s
}

type request struct {
	method, url, user, password string
}

func do(t *testing.T, c *http.Client, r request) (int, string) {
	t.Helper()

	if c == nil {
		c = http.DefaultClient
	}

	req, err := http.NewRequest(r.method, r.url, nil)
	if err != nil {
		t.Fatal(err)
	}

	if r.user != "" {
		req.SetBasicAuth(r.user, r.password)
	}

	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", r.method, r.url, err)
	}
	defer resp.Body.Close()

	b, _ := io.ReadAll(resp.Body)

	return resp.StatusCode, string(b)
}

func TestServerEndpoints(t *testing.T) {
	ready := errors.New("scheduler not started")
	reloadErr := errors.New("repositories[0].name: required")
	reloads := 0

	s := startServer(t, ServerOptions{
		Ready: func() error { return ready },
		Reload: func(context.Context) error {
			reloads++
			return reloadErr
		},
	})
	base := "http://" + s.Addr()

	if s.ProbeAddr() != "" {
		t.Fatalf("ProbeAddr = %q without a probe address", s.ProbeAddr())
	}

	for _, tc := range []struct {
		req      request
		code     int
		contains string
	}{
		{request{method: "GET", url: base + "/healthz"}, 200, "ok"},
		{request{method: "GET", url: base + "/readyz"}, 503, "scheduler not started"},
		{request{method: "GET", url: base + "/metrics"}, 200, `kopia="v0.22.3"`},
		{request{method: "POST", url: base + "/-/reload"}, 500, "reload failed:\nrepositories[0].name: required"},
		{request{method: "GET", url: base + "/-/reload"}, 405, ""},
		{request{method: "GET", url: base + "/"}, 404, ""},
	} {
		code, body := do(t, nil, tc.req)
		if code != tc.code || !strings.Contains(body, tc.contains) {
			t.Errorf("%s %s = %d %q, want %d containing %q", tc.req.method, tc.req.url, code, body, tc.code, tc.contains)
		}
	}

	ready, reloadErr = nil, nil

	if code, _ := do(t, nil, request{method: "GET", url: base + "/readyz"}); code != 200 {
		t.Errorf("/readyz when ready = %d", code)
	}

	if code, body := do(t, nil, request{method: "POST", url: base + "/-/reload"}); code != 200 || body != "configuration reloaded\n" {
		t.Errorf("POST /-/reload = %d %q", code, body)
	}

	if reloads != 2 {
		t.Errorf("Reload called %d times, want 2", reloads)
	}
}

// TestServerAuthAndProbeListener serves the main listener with TLS and basic
// auth from a web config file and the probes on their own plain listener.
func TestServerAuthAndProbeListener(t *testing.T) {
	dir := t.TempDir()
	pool := harness.SelfSignedCert(t, dir)
	webConfig := harness.WebConfig(t, dir, "prometheus", "s3cret", true)

	s := startServer(t, ServerOptions{
		ProbeAddress:  "127.0.0.1:0",
		WebConfigFile: webConfig,
		Ready:         func() error { return nil },
		Reload:        func(context.Context) error { return nil },
	})
	base, probe := "https://"+s.Addr(), "http://"+s.ProbeAddr()
	tlsClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	for _, tc := range []struct {
		c    *http.Client
		req  request
		code int
	}{
		{tlsClient, request{method: "GET", url: base + "/metrics"}, 401},
		{tlsClient, request{method: "GET", url: base + "/metrics", user: "prometheus", password: "wrong"}, 401},
		{tlsClient, request{method: "GET", url: base + "/metrics", user: "prometheus", password: "s3cret"}, 200},
		{tlsClient, request{method: "POST", url: base + "/-/reload"}, 401},
		{tlsClient, request{method: "POST", url: base + "/-/reload", user: "prometheus", password: "s3cret"}, 200},
		// The probes live only on the probe listener, which needs no credentials.
		{tlsClient, request{method: "GET", url: base + "/healthz", user: "prometheus", password: "s3cret"}, 404},
		{nil, request{method: "GET", url: probe + "/healthz"}, 200},
		{nil, request{method: "GET", url: probe + "/readyz"}, 200},
		{nil, request{method: "GET", url: probe + "/metrics"}, 404},
		{nil, request{method: "POST", url: probe + "/-/reload"}, 404},
	} {
		if code, body := do(t, tc.c, tc.req); code != tc.code {
			t.Errorf("%s %s (user %q) = %d, want %d\n%s", tc.req.method, tc.req.url, tc.req.user, code, tc.code, body)
		}
	}

	// Plain HTTP on the TLS listener is refused.
	if code, _ := do(t, nil, request{method: "GET", url: "http://" + s.Addr() + "/metrics"}); code != http.StatusBadRequest {
		t.Errorf("plain HTTP on the TLS listener = %d, want 400", code)
	}
}

func TestNewServerErrors(t *testing.T) {
	dir := t.TempDir()
	broken := filepath.Join(dir, "web.yml")

	if err := os.WriteFile(broken, []byte("basic_auth_users: [nope]\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	ready := func() error { return nil }

	for name, opts := range map[string]ServerOptions{
		"broken web config": {ListenAddress: "127.0.0.1:0", WebConfigFile: broken, Ready: ready},
		"busy address":      {ListenAddress: busy.Addr().String(), Ready: ready},
		"busy probe":        {ListenAddress: "127.0.0.1:0", ProbeAddress: busy.Addr().String(), Ready: ready},
		"no ready":          {ListenAddress: "127.0.0.1:0"},
	} {
		if _, err := NewServer(New(BuildInfo{}), opts); err == nil {
			t.Errorf("%s: NewServer succeeded", name)
		}
	}
}
