package config

import (
	"path/filepath"
	"testing"

	// The examples use CRON_TZ= with IANA zone names; embed the zone
	// database so the test does not depend on the host's /usr/share/zoneinfo.
	_ "time/tzdata"
)

// TestExampleConfigs loads every example in configs/, which are
// documentation and must stay valid.
func TestExampleConfigs(t *testing.T) {
	// Password variables the examples name. AWS_* credentials are not read
	// by this package, so they need not be set.
	for _, name := range []string{
		"KOPIA_PASSWORD",
		"MULTI_NAS_PASSWORD", "MULTI_SHARED_PASSWORD", "MULTI_OFFSITE_PASSWORD", "MULTI_VELERO_PASSWORD",
		"VELERO_REPO_PASSWORD",
	} {
		t.Setenv(name, "example-test-password")
	}
	files, err := filepath.Glob(filepath.Join("..", "configs", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("found %d example configs in configs/, want at least 3", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if _, err := Load(f); err != nil {
				t.Fatalf("example does not load:\n%v", err)
			}
		})
	}
}

// TestLocalExample pins the demo's settings that the README and the demo
// script rely on.
func TestLocalExample(t *testing.T) {
	cfg, err := Load(filepath.Join("..", "configs", "local.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	configs, err := filepath.Abs(filepath.Join("..", "configs"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Identity.String(); got != "maintd@local-demo" {
		t.Errorf("identity = %q", got)
	}
	if cfg.StateDirectory != "/tmp/kopia-maintd-demo/state" || cfg.Server.ListenAddress != "127.0.0.1:9810" || cfg.Log.Format != "console" {
		t.Errorf("config = %+v", cfg)
	}
	if len(cfg.Repositories) != 1 {
		t.Fatalf("got %d repositories, want 1", len(cfg.Repositories))
	}
	r := cfg.Repositories[0]
	want := Repository{
		Name:         "local",
		Create:       true,
		Storage:      Storage{Filesystem: &Filesystem{Path: "/tmp/kopia-maintd-demo/repository"}},
		PasswordFile: filepath.Join(configs, "local.password"),
		Schedule:     Schedule{Quick: "@every 1m", Full: "@every 10m", Jitter: 0},
		Ownership:    Ownership{Takeover: TakeoverIfUnowned, StaleAfter: DefaultStaleAfter},
	}
	if r.Name != want.Name || r.Create != want.Create || *r.Storage.Filesystem != *want.Storage.Filesystem ||
		r.Storage.S3 != nil || r.PasswordFile != want.PasswordFile || r.Schedule != want.Schedule || r.Ownership != want.Ownership {
		t.Errorf("repository = %+v\nwant %+v", r, want)
	}
	if _, err := r.Password(); err != nil {
		t.Errorf("Password(): %v", err)
	}
}

// TestVeleroExample pins the safety=none settings that velero.yaml
// documents: off by default, its window resolved only once allowed.
func TestVeleroExample(t *testing.T) {
	t.Setenv("VELERO_REPO_PASSWORD", "example-test-password")
	cfg, err := Load(filepath.Join("..", "configs", "velero.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.SafetyNone
	if s.Allow || cfg.Kubernetes.Kubeconfig != "" || len(s.Windows) != 1 || s.Windows[0].Schedule != "CRON_TZ=UTC 0 4 * * 0" {
		t.Errorf("SafetyNone = %+v, Kubernetes = %+v", s, cfg.Kubernetes)
	}
	// The tests run as outside a cluster (TestMain): auto resolves to the
	// repository kind.
	l := cfg.Lease
	if l.Kind != LeaseKindRepository || l.Duration != DefaultLeaseDuration || l.RenewInterval != DefaultLeaseRenewInterval ||
		!l.HolderIdentityGenerated || l.Kubernetes != (LeaseKubernetes{NamePrefix: "kopia-maintd-"}) ||
		l.LeaseName("velero-default") != "kopia-maintd-velero-default" {
		t.Errorf("Lease = %+v", l)
	}
	withEnvironment(t, fakeEnvironment(map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1", "POD_NAMESPACE": "velero"}))
	if cfg, err := Load(filepath.Join("..", "configs", "velero.yaml")); err != nil {
		t.Errorf("in a cluster: %v", err)
	} else if cfg.Lease.Kind != LeaseKindKubernetes || cfg.Lease.Kubernetes.Namespace != "velero" {
		t.Errorf("in a cluster: Lease = %+v", cfg.Lease)
	}
	for _, r := range cfg.Repositories {
		if r.SafetyNoneAllowed || len(r.UnsafeWindows) != 0 {
			t.Errorf("%s: allowed %v, windows %q while safetyNone.allow is false", r.Name, r.SafetyNoneAllowed, r.UnsafeWindows)
		}
	}
}
