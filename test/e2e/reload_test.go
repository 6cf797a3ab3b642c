package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

const (
	scrapeUser     = "prometheus"
	scrapePassword = "scrape-password-not-secret"
)

// secureDaemon talks to a daemon whose main listener has TLS and basic auth.
type secureDaemon struct {
	*daemon
	probeAddr string
	client    *http.Client
}

// request sends method to path on the main listener over TLS, with the
// scrape credentials when auth is true.
func (s *secureDaemon) request(t *testing.T, method, path string, auth bool) (int, string) {
	t.Helper()

	req, err := http.NewRequest(method, "https://"+s.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}

	if auth {
		req.SetBasicAuth(scrapeUser, scrapePassword)
	}

	resp, err := s.client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()

	b, _ := io.ReadAll(resp.Body)

	return resp.StatusCode, string(b)
}

// scrape returns the /metrics exposition, or "" when it cannot be had.
func (s *secureDaemon) scrape(t *testing.T) string {
	t.Helper()

	code, body := s.request(t, http.MethodGet, "/metrics", true)
	if code != http.StatusOK {
		return ""
	}

	return body
}

// value returns the sample of series in the exposition, -1 when absent.
func value(t *testing.T, exposition, series string) float64 {
	t.Helper()

	sc := bufio.NewScanner(strings.NewReader(exposition))
	sc.Buffer(make([]byte, 1<<20), 1<<20)

	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("parse %q: %v", sc.Text(), err)
			}

			return v
		}
	}

	return -1
}

func (s *secureDaemon) metric(t *testing.T, series string) float64 {
	t.Helper()
	return value(t, s.scrape(t), series)
}

// successes is the number of successful runs of a cycle of a repository.
func (s *secureDaemon) successes(t *testing.T, repo, cycle string) float64 {
	t.Helper()
	return s.metric(t, fmt.Sprintf(`kopia_maintenance_runs_total{cycle=%q,repository=%q,result="success"}`, cycle, repo))
}

// reloadConfig is the daemon configuration of TestReload with the given
// repositories; extra is spliced in at the top level.
func reloadConfig(dir, addr, probeAddr, extra string, repos ...string) string {
	var b strings.Builder

	fmt.Fprintf(&b, `
identity: {username: maintd, hostname: e2e}
stateDirectory: %[1]s/state
server:
  listenAddress: "%[2]s"
  probeAddress: "%[3]s"
  webConfigFile: web/web.yml
log: {level: info, format: json}
%[4]s
defaults:
  schedule: {quick: "@every 2s", full: "@every 12s", jitter: 0s}
  ownership: {takeover: if-unowned}
repositories:
`, dir, addr, probeAddr, extra)

	for _, r := range repos {
		fmt.Fprintf(&b, `  - name: %[2]s
    create: true
    storage: {filesystem: {path: %[1]s/%[2]s}}
    passwordFile: password
`, dir, r)
	}

	return b.String()
}

// TestReload drives configuration reloads of the real binary through SIGHUP
// and POST /-/reload, with /metrics behind TLS and basic auth from an
// exporter-toolkit web config and the probes on their own plain listener:
// an added repository gets series and runs; a broken file and a restart-only
// change keep the running configuration, keep maintaining and are logged;
// a removed repository's series disappear; the repository kept throughout
// never has a run cancelled by a reload.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	addr, probeAddr := harness.FreeAddr(t), harness.FreeAddr(t)
	writeFile(t, dir, "password", password)
	pool := writeWebConfig(t, filepath.Join(dir, "web"))

	cfgPath := writeFile(t, dir, "config.yaml", reloadConfig(dir, addr, probeAddr, "", "alpha"))
	write := func(content string) {
		t.Helper()
		// Replace the file in one step, as a ConfigMap update does, so a
		// reload never reads half of it.
		tmp := writeFile(t, dir, "config.yaml.tmp", content)
		if err := os.Rename(tmp, cfgPath); err != nil {
			t.Fatal(err)
		}
	}

	s := &secureDaemon{
		daemon:    startDaemon(t, cfgPath, addr),
		probeAddr: probeAddr,
		client:    &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}},
	}
	hup := func() {
		t.Helper()

		if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}

	waitFor(t, s.daemon, "alpha's first full cycle", 90*time.Second, func() bool {
		return s.successes(t, "alpha", "full") >= 1
	})

	// The probes answer on their own listener without credentials; the
	// main listener wants TLS and the scrape user for everything.
	t.Run("listeners", func(t *testing.T) {
		for _, path := range []string{"/healthz", "/readyz"} {
			if code := httpStatus(probeAddr, path); code != http.StatusOK {
				t.Errorf("probe listener %s = %d, want 200", path, code)
			}
		}

		for _, tc := range []struct {
			method, path string
			auth         bool
			code         int
		}{
			{http.MethodGet, "/metrics", false, http.StatusUnauthorized},
			{http.MethodPost, "/-/reload", false, http.StatusUnauthorized},
			{http.MethodGet, "/healthz", false, http.StatusUnauthorized},
			{http.MethodGet, "/healthz", true, http.StatusNotFound},
			{http.MethodGet, "/metrics", true, http.StatusOK},
		} {
			if code, body := s.request(t, tc.method, tc.path, tc.auth); code != tc.code {
				t.Errorf("%s https://%s%s (auth %v) = %d, want %d\n%s", tc.method, addr, tc.path, tc.auth, code, tc.code, body)
			}
		}

		if code := httpStatus(addr, "/metrics"); code != http.StatusBadRequest {
			t.Errorf("plain HTTP /metrics on the TLS listener = %d, want 400", code)
		}
	})

	if got := s.metric(t, "kopia_maintenance_config_last_reload_successful"); got != 1 {
		t.Fatalf("config_last_reload_successful at start = %v, want 1", got)
	}

	startStamp := s.metric(t, "kopia_maintenance_config_last_reload_success_timestamp_seconds")

	// A good reload by SIGHUP: beta is added, gets series and is maintained.
	write(reloadConfig(dir, addr, probeAddr, "", "alpha", "beta"))
	hup()

	waitFor(t, s.daemon, "beta's cycles after the SIGHUP reload", 90*time.Second, func() bool {
		return s.successes(t, "beta", "full") >= 1 && s.successes(t, "beta", "quick") >= 1
	})

	body := s.scrape(t)
	if v := value(t, body, "kopia_maintenance_repositories"); v != 2 {
		t.Errorf("repositories after adding beta = %v, want 2", v)
	}

	if v := value(t, body, "kopia_maintenance_config_last_reload_successful"); v != 1 {
		t.Errorf("config_last_reload_successful after the good reload = %v, want 1", v)
	}

	if v := value(t, body, "kopia_maintenance_config_last_reload_success_timestamp_seconds"); v <= startStamp {
		t.Errorf("reload success timestamp = %v, not after the start's %v", v, startStamp)
	}

	// A broken file by POST: refused with the problems, old config kept.
	write(reloadConfig(dir, addr, probeAddr, "concurrency: 0", "alpha", "beta") +
		"    schedule: {full: \"61 * * * *\"}\n")

	code, answer := s.request(t, http.MethodPost, "/-/reload", true)
	if code != http.StatusInternalServerError ||
		!strings.Contains(answer, "concurrency: must be >= 1, got 0") ||
		!strings.Contains(answer, `repositories[1].schedule.full: invalid cron spec "61 * * * *"`) {
		t.Fatalf("POST /-/reload of a broken file = %d, want 500 listing the problems:\n%s", code, answer)
	}

	if got := s.metric(t, "kopia_maintenance_config_last_reload_successful"); got != 0 {
		t.Errorf("config_last_reload_successful after the broken reload = %v, want 0", got)
	}

	assertStillMaintained(t, s, "alpha", "beta")

	if logs := s.logs(); !strings.Contains(logs, `"msg":"configuration reload failed; keeping the running configuration"`) ||
		!strings.Contains(logs, `"trigger":"http"`) ||
		!strings.Contains(logs, `"problems":["concurrency: must be >= 1, got 0"`) {
		t.Errorf("the broken reload's problems are not logged:\n%s", logs)
	}

	// A YAML syntax error by SIGHUP: same outcome.
	write("identity: {username: maintd\n")
	hup()

	waitFor(t, s.daemon, "the failed SIGHUP reload to be logged", 30*time.Second, func() bool {
		return strings.Contains(s.logs(), `"trigger":"SIGHUP","config":"`+cfgPath+`","problems":["yaml: line`)
	})

	if got := s.metric(t, "kopia_maintenance_config_last_reload_successful"); got != 0 {
		t.Errorf("config_last_reload_successful after the SIGHUP with a broken file = %v, want 0", got)
	}

	assertStillMaintained(t, s, "alpha", "beta")

	// A change that needs a restart is refused the same way.
	write(strings.Replace(reloadConfig(dir, addr, probeAddr, "", "alpha", "beta"), "hostname: e2e", "hostname: elsewhere", 1))

	code, answer = s.request(t, http.MethodPost, "/-/reload", true)
	if code != http.StatusInternalServerError ||
		!strings.Contains(answer, `identity: cannot be changed without a restart (was "maintd@e2e", now "maintd@elsewhere")`) {
		t.Fatalf("POST /-/reload changing the identity = %d, want 500 naming identity:\n%s", code, answer)
	}

	// Removing beta by POST: its series go, alpha stays.
	write(reloadConfig(dir, addr, probeAddr, "", "alpha"))

	if code, answer := s.request(t, http.MethodPost, "/-/reload", true); code != http.StatusOK {
		t.Fatalf("POST /-/reload removing beta = %d\n%s", code, answer)
	}

	body = s.scrape(t)
	if strings.Contains(body, `repository="beta"`) {
		var lines []string

		for line := range strings.SplitSeq(body, "\n") {
			if strings.Contains(line, `repository="beta"`) {
				lines = append(lines, line)
			}
		}

		t.Errorf("beta's series remain after its removal:\n%s", strings.Join(lines, "\n"))
	}

	if v := value(t, body, "kopia_maintenance_repositories"); v != 1 {
		t.Errorf("repositories after removing beta = %v, want 1", v)
	}

	if v := value(t, body, "kopia_maintenance_config_last_reload_successful"); v != 1 {
		t.Errorf("config_last_reload_successful after removing beta = %v, want 1", v)
	}

	assertStillMaintained(t, s, "alpha")

	// Reloads never interrupted alpha, which was configured throughout.
	body = s.scrape(t)
	for _, cycle := range []string{"quick", "full"} {
		series := fmt.Sprintf(`kopia_maintenance_runs_total{cycle=%q,repository="alpha",result="cancelled"}`, cycle)
		if v := value(t, body, series); v != 0 {
			t.Errorf("%s = %v, want 0", series, v)
		}
	}

	if logs := s.logs(); strings.Contains(logs, password) || strings.Contains(logs, scrapePassword) {
		t.Error("logs contain a password")
	}

	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not exit within 30s of SIGTERM")
	}

	if s.err != nil {
		t.Fatalf("daemon exit after SIGTERM: %v", s.err)
	}
}

// assertStillMaintained waits for one more successful quick cycle of each
// repository.
func assertStillMaintained(t *testing.T, s *secureDaemon, repos ...string) {
	t.Helper()

	for _, r := range repos {
		before := s.successes(t, r, "quick")
		waitFor(t, s.daemon, r+" still maintained", 60*time.Second, func() bool {
			return s.successes(t, r, "quick") > before
		})
	}
}

// writeWebConfig writes an exporter-toolkit web config into dir with a
// self-signed certificate for 127.0.0.1 and one basic auth user, and returns
// a pool that trusts the certificate.
func writeWebConfig(t *testing.T, dir string) *x509.CertPool {
	t.Helper()

	pool := harness.SelfSignedCert(t, dir)
	harness.WebConfig(t, dir, scrapeUser, scrapePassword, true)

	return pool
}
