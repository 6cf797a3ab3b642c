package config

import (
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func TestServerKeys(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "pw", "secret\n")
	writeFile(t, dir, "tls/web.yml", "# plain HTTP, no users\n")
	cfg, err := Parse([]byte(`
identity: {username: maintd, hostname: cluster-a}
server:
  listenAddress: ":9810"
  probeAddress: ":9811"
  webConfigFile: tls/web.yml
repositories:
  - name: local
    storage: {filesystem: {path: /data/kopia}}
    passwordFile: pw
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	want := Server{ListenAddress: ":9810", ProbeAddress: ":9811", WebConfigFile: filepath.Join(dir, "tls", "web.yml")}
	if cfg.Server != want {
		t.Errorf("Server = %+v, want %+v", cfg.Server, want)
	}
}

func TestCheckReload(t *testing.T) {
	base := func() *Config {
		return &Config{
			Identity:       Identity{Username: "maintd", Hostname: "a"},
			StateDirectory: "/var/lib/kopia-maintd",
			Concurrency:    1,
			Server:         Server{ListenAddress: ":9810"},
			Log:            Log{Level: "info", Format: "json"},
			Repositories:   []Repository{{Name: "one"}},
			Lease: Lease{
				Kind: LeaseKindRepository, Duration: time.Minute, RenewInterval: 15 * time.Second,
				HolderIdentity: "host-00000000", HolderIdentityGenerated: true,
				Kubernetes: LeaseKubernetes{NamePrefix: "kopia-maintd-"},
			},
		}
	}
	for _, tc := range []struct {
		name   string
		change func(c *Config)
		want   string
	}{
		{"nothing", func(*Config) {}, ""},
		{"reloadable", func(c *Config) {
			c.Log.Level = "debug"
			c.Repositories = []Repository{{Name: "two", Schedule: Schedule{Quick: "@every 1m"}}}
			c.Defaults.Ownership.Takeover = TakeoverAlways
		}, ""},
		{"safetyNone", func(c *Config) {
			c.SafetyNone = SafetyNone{
				Allow:            true,
				VeleroNamespaces: []string{"openshift-adp"},
				IgnorePods:       []string{"kopia-maintd-0"},
				QuietPeriod:      time.Hour,
				ScheduleMargin:   0,
				WatchInterval:    time.Second,
				Windows:          []Window{{Schedule: "0 4 * * 0"}},
			}
			c.Repositories = []Repository{{Name: "one", SafetyNoneAllowed: true, UnsafeWindows: []string{"0 4 * * 0"}}}
		}, ""},
		{"kubeconfig", func(c *Config) { c.Kubernetes.Kubeconfig = "/etc/kube/config" },
			`kubernetes.kubeconfig: cannot be changed without a restart (was "", now "/etc/kube/config")`},
		{"generated holder identity", func(c *Config) {
			c.Lease.HolderIdentity = "host-11111111"
		}, ""},
		{"lease", func(c *Config) {
			c.Lease = Lease{
				Kind:           LeaseKindKubernetes,
				Duration:       2 * time.Minute,
				RenewInterval:  30 * time.Second,
				HolderIdentity: "pinned",
				Kubernetes:     LeaseKubernetes{Namespace: "backup", NamePrefix: "maint-"},
				Repository:     LeaseRepository{Settle: 2 * time.Second},
			}
		}, `lease.kind: cannot be changed without a restart (was "repository", now "kubernetes")
lease.duration: cannot be changed without a restart (was 1m0s, now 2m0s)
lease.renewInterval: cannot be changed without a restart (was 15s, now 30s)
lease.holderIdentity: cannot be changed without a restart (was "", now "pinned")
lease.kubernetes.namespace: cannot be changed without a restart (was "", now "backup")
lease.kubernetes.namePrefix: cannot be changed without a restart (was "kopia-maintd-", now "maint-")
lease.repository.settle: cannot be changed without a restart (was 0s, now 2s)`},
		{"identity", func(c *Config) { c.Identity.Hostname = "b" },
			`identity: cannot be changed without a restart (was "maintd@a", now "maintd@b")`},
		{"everything restart-only", func(c *Config) {
			c.StateDirectory = "/srv/state"
			c.Concurrency = 4
			c.Server = Server{ListenAddress: ":9000", ProbeAddress: ":9001", WebConfigFile: "/etc/web.yml"}
			c.Log.Format = "console"
			c.Kubernetes.Kubeconfig = "/etc/kube/config"
		}, `stateDirectory: cannot be changed without a restart (was "/var/lib/kopia-maintd", now "/srv/state")
concurrency: cannot be changed without a restart (was 1, now 4)
server.listenAddress: cannot be changed without a restart (was ":9810", now ":9000")
server.probeAddress: cannot be changed without a restart (was "", now ":9001")
server.webConfigFile: cannot be changed without a restart (was "", now "/etc/web.yml")
log.format: cannot be changed without a restart (was "json", now "console")
kubernetes.kubeconfig: cannot be changed without a restart (was "", now "/etc/kube/config")`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := base()
			tc.change(next)
			err := CheckReload(base(), next)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("CheckReload: %v", err)
				}
				return
			}
			var cerr *Error
			if !errors.As(err, &cerr) {
				t.Fatalf("CheckReload error is %T (%v), want *Error", err, err)
			}
			if err.Error() != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", err, tc.want)
			}
		})
	}
}
