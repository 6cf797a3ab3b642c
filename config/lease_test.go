package config

import (
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestMain runs the tests in a fixed surroundings: outside a cluster, no
// pod namespace, host name "test-host" and random bytes de ad be ef, so
// that lease.kind auto, the namespace and the generated holder identity do
// not depend on where the tests run.
func TestMain(m *testing.M) {
	env = fakeEnvironment(nil)
	os.Exit(m.Run())
}

type repeatReader []byte

func (r repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = r[i%len(r)]
	}
	return len(p), nil
}

// fakeEnvironment returns surroundings with the given environment
// variables, no namespace file, host name test-host and fixed randomness.
func fakeEnvironment(vars map[string]string) environment {
	return environment{
		lookupEnv: func(name string) (string, bool) {
			v, ok := vars[name]
			return v, ok
		},
		namespaceFile: "/nonexistent/serviceaccount/namespace",
		hostname:      func() (string, error) { return "test-host", nil },
		random:        repeatReader{0xde, 0xad, 0xbe, 0xef},
	}
}

// withEnvironment replaces the surroundings for one test.
func withEnvironment(t *testing.T, e environment) {
	t.Helper()
	saved := env
	env = e
	t.Cleanup(func() { env = saved })
}

const leaseBase = `
identity: {username: maintd, hostname: cluster-a}
repositories:
  - name: local
    storage: {filesystem: {path: /data/kopia}}
    passwordFile: pw
`

func parseLease(t *testing.T, section string) (*Config, error) {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, dir, "pw", "secret\n")
	return Parse([]byte(leaseBase+section), dir)
}

func mustParseLease(t *testing.T, section string) Lease {
	t.Helper()
	cfg, err := parseLease(t, section)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Lease
}

// TestLeaseSettleDefault: without lease.repository.settle the list-based
// fallback waits a twentieth of the duration, at most a second.
func TestLeaseSettleDefault(t *testing.T) {
	for _, tc := range []struct {
		section string
		want    time.Duration
	}{
		{"", time.Second},
		{"lease: {duration: 8s, renewInterval: 2s}", 400 * time.Millisecond},
		{"lease: {duration: 8s, renewInterval: 2s, repository: {settle: 2s}}", 2 * time.Second},
	} {
		if got := mustParseLease(t, tc.section).Repository.Settle; got != tc.want {
			t.Errorf("%q: settle %v, want %v", tc.section, got, tc.want)
		}
	}
}

func TestLeaseSpreadStepDefault(t *testing.T) {
	if got := mustParseLease(t, "").SpreadStep; got != time.Second {
		t.Errorf("spreadStep %v, want 1s", got)
	}
}

func TestMaintenanceListParallelism(t *testing.T) {
	cfg, err := parseLease(t, "maintenance: {listParallelism: 4}")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Maintenance.ListParallelism; got != 4 {
		t.Errorf("maintenance.listParallelism = %d, want 4", got)
	}
}

func TestLeaseKeys(t *testing.T) {
	got := mustParseLease(t, `
lease:
  kind: kubernetes
  duration: 2m
  renewInterval: 20s
  holderIdentity: kopia-maintd-0.velero
  kubernetes:
    namespace: backup
    namePrefix: maint.
  repository:
    settle: 2500ms
  spreadStep: 0s
`)
	want := Lease{
		Kind:           LeaseKindKubernetes,
		Duration:       2 * time.Minute,
		RenewInterval:  20 * time.Second,
		HolderIdentity: "kopia-maintd-0.velero",
		Kubernetes:     LeaseKubernetes{Namespace: "backup", NamePrefix: "maint."},
		Repository:     LeaseRepository{Settle: 2500 * time.Millisecond},
		SpreadStep:     0,
	}
	if got != want {
		t.Errorf("Lease = %+v\nwant    %+v", got, want)
	}
	if n := got.LeaseName("local"); n != "maint.local" {
		t.Errorf("LeaseName = %q", n)
	}
}

func TestLeaseKindAuto(t *testing.T) {
	nsFile := filepath.Join(t.TempDir(), "namespace")
	if err := os.WriteFile(nsFile, []byte("from-file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	inCluster := map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
	for _, tc := range []struct {
		name    string
		vars    map[string]string
		nsFile  string
		section string
		kind    string
		ns      string
		err     string
	}{
		{name: "outside a cluster", kind: LeaseKindRepository},
		{name: "empty KUBERNETES_SERVICE_HOST", vars: map[string]string{"KUBERNETES_SERVICE_HOST": ""}, kind: LeaseKindRepository},
		{name: "in a cluster, namespace from file", vars: inCluster, nsFile: nsFile, kind: LeaseKindKubernetes, ns: "from-file"},
		{name: "in a cluster, POD_NAMESPACE wins", vars: map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1", "POD_NAMESPACE": "from-env"},
			nsFile: nsFile, kind: LeaseKindKubernetes, ns: "from-env"},
		{name: "in a cluster, configured namespace wins", vars: map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1", "POD_NAMESPACE": "from-env"},
			nsFile: nsFile, section: "lease: {kubernetes: {namespace: configured}}", kind: LeaseKindKubernetes, ns: "configured"},
		{name: "in a cluster, no namespace", vars: inCluster,
			err: `lease.kubernetes.namespace: required with lease kind kubernetes: the pod's namespace is unknown (POD_NAMESPACE is not set and /nonexistent/serviceaccount/namespace is not readable)`},
		{name: "in a cluster, bad POD_NAMESPACE", vars: map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1", "POD_NAMESPACE": "Bad_NS"},
			err: `lease.kubernetes.namespace: invalid namespace name "Bad_NS" from POD_NAMESPACE (must be a DNS-1123 label)`},
		{name: "in a cluster, kind repository", vars: inCluster, section: "lease: {kind: repository}", kind: LeaseKindRepository},
		{name: "outside a cluster, kind kubernetes", vars: map[string]string{"POD_NAMESPACE": "from-env"},
			section: "lease: {kind: kubernetes}", kind: LeaseKindKubernetes, ns: "from-env"},
		{name: "outside a cluster, kind repository keeps a namespace", section: "lease: {kind: repository, kubernetes: {namespace: kept}}",
			kind: LeaseKindRepository, ns: "kept"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := fakeEnvironment(tc.vars)
			if tc.nsFile != "" {
				e.namespaceFile = tc.nsFile
			}
			withEnvironment(t, e)
			cfg, err := parseLease(t, tc.section)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("error:\n%v\nwant:\n%s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Lease.Kind != tc.kind || cfg.Lease.Kubernetes.Namespace != tc.ns {
				t.Errorf("kind %q, namespace %q; want %q, %q", cfg.Lease.Kind, cfg.Lease.Kubernetes.Namespace, tc.kind, tc.ns)
			}
		})
	}
}

func TestGeneratedHolderIdentity(t *testing.T) {
	for _, tc := range []struct {
		host string
		err  error
		want string
	}{
		{host: "test-host", want: "test-host-deadbeef"},
		{host: "Build_Box.Example.COM", want: "build-box.example.com-deadbeef"},
		{host: "-.weird host!.", want: "weird-host-deadbeef"},
		{host: "", want: "kopia-maintd-deadbeef"},
		{host: "ünïcode", want: "n-code-deadbeef"},
		{err: errors.New("no hostname"), want: "kopia-maintd-deadbeef"},
		{host: strings.Repeat("a", 62) + ".b", want: strings.Repeat("a", 62) + "-deadbeef"},
	} {
		e := fakeEnvironment(nil)
		e.hostname = func() (string, error) { return tc.host, tc.err }
		withEnvironment(t, e)
		l := mustParseLease(t, "")
		if l.HolderIdentity != tc.want || !l.HolderIdentityGenerated {
			t.Errorf("host %q: identity %q (generated %v), want %q", tc.host, l.HolderIdentity, l.HolderIdentityGenerated, tc.want)
		}
		if !holderIdentityRE.MatchString(l.HolderIdentity) {
			t.Errorf("host %q: generated identity %q is not valid when configured", tc.host, l.HolderIdentity)
		}
	}
}

// TestHolderIdentityNewPerParse checks with real randomness that every
// Parse (every process start) generates a new identity.
func TestHolderIdentityNewPerParse(t *testing.T) {
	e := fakeEnvironment(nil)
	e.random = rand.Reader
	withEnvironment(t, e)
	a, b := mustParseLease(t, ""), mustParseLease(t, "")
	re := regexp.MustCompile(`^test-host-[0-9a-f]{8}$`)
	if !re.MatchString(a.HolderIdentity) || !re.MatchString(b.HolderIdentity) || a.HolderIdentity == b.HolderIdentity {
		t.Errorf("identities %q and %q, want two different test-host-<8 hex digits>", a.HolderIdentity, b.HolderIdentity)
	}
}

func TestLeaseDefaultsCheckShortDuration(t *testing.T) {
	_, err := parseLease(t, "lease: {duration: 20s}")
	want := `lease.renewInterval: must be less than half of lease.duration (10s), so that a renewal may fail once and the next is still in time, got "15s" (the default)`
	if err == nil || err.Error() != want {
		t.Errorf("error:\n%v\nwant:\n%s", err, want)
	}
	if l := mustParseLease(t, "lease: {duration: 31s}"); l.Duration != 31*time.Second || l.RenewInterval != 15*time.Second {
		t.Errorf("Lease = %+v", l)
	}
}

// TestReloadKeepsGeneratedIdentity follows the reload path: Load twice,
// CheckReload, InheritRuntime.
func TestReloadKeepsGeneratedIdentity(t *testing.T) {
	e := fakeEnvironment(nil)
	e.random = rand.Reader
	withEnvironment(t, e)
	dir := t.TempDir()
	writeFile(t, dir, "pw", "secret\n")
	file := writeFile(t, dir, "config.yaml", leaseBase)
	old, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "config.yaml", leaseBase+"log: {level: debug}\n")
	next, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	if next.Lease.HolderIdentity == old.Lease.HolderIdentity {
		t.Fatalf("both loads generated %q", old.Lease.HolderIdentity)
	}
	if err := CheckReload(old, next); err != nil {
		t.Fatalf("CheckReload: %v", err)
	}
	next.InheritRuntime(old)
	if next.Lease.HolderIdentity != old.Lease.HolderIdentity || !next.Lease.HolderIdentityGenerated {
		t.Errorf("after InheritRuntime: %q (generated %v), want %q", next.Lease.HolderIdentity, next.Lease.HolderIdentityGenerated, old.Lease.HolderIdentity)
	}

	// A configured identity is left alone (and CheckReload refuses the change).
	writeFile(t, dir, "config.yaml", leaseBase+"lease: {holderIdentity: pinned}\n")
	pinned, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	want := `lease.holderIdentity: cannot be changed without a restart (was "", now "pinned")`
	if err := CheckReload(old, pinned); err == nil || err.Error() != want {
		t.Errorf("CheckReload:\n%v\nwant:\n%s", err, want)
	}
	pinned.InheritRuntime(old)
	if pinned.Lease.HolderIdentity != "pinned" {
		t.Errorf("InheritRuntime replaced a configured identity: %q", pinned.Lease.HolderIdentity)
	}
	pinned.InheritRuntime(nil)
}
