package config

import (
	"errors"
	"path/filepath"
	"testing"
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
		{"identity", func(c *Config) { c.Identity.Hostname = "b" },
			`identity: cannot be changed without a restart (was "maintd@a", now "maintd@b")`},
		{"everything restart-only", func(c *Config) {
			c.StateDirectory = "/srv/state"
			c.Concurrency = 4
			c.Server = Server{ListenAddress: ":9000", ProbeAddress: ":9001", WebConfigFile: "/etc/web.yml"}
			c.Log.Format = "console"
		}, `stateDirectory: cannot be changed without a restart (was "/var/lib/kopia-maintd", now "/srv/state")
concurrency: cannot be changed without a restart (was 1, now 4)
server.listenAddress: cannot be changed without a restart (was ":9810", now ":9000")
server.probeAddress: cannot be changed without a restart (was "", now ":9001")
server.webConfigFile: cannot be changed without a restart (was "", now "/etc/web.yml")
log.format: cannot be changed without a restart (was "json", now "console")`},
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
