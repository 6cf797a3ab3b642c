package config

import (
	"reflect"
	"testing"
	"time"
)

// TestVeleroDiscoverWithoutRepositories: with discovery on, the file needs
// no repositories, and a discovered repository gets velero.repositoryDefaults
// over defaults, the global safety=none permission and the windows that
// apply to it.
func TestVeleroDiscoverWithoutRepositories(t *testing.T) {
	cfg, err := Parse([]byte(`
identity: {username: maintd, hostname: cluster-a}
defaults:
  schedule: {quick: "@hourly", full: "@daily", jitter: 10m}
  ownership: {takeover: stale, staleAfter: 48h}
safetyNone:
  allow: true
  windows:
    - schedule: "0 3 * * 0"
    - schedule: "0 4 * * 0"
      repositories: [app1-default]
velero:
  discover: true
  namespace: openshift-adp
  suppressBuiltinMaintenance: true
  repositoryDefaults:
    schedule: {quick: "*/30 * * * *"}
    ownership: {takeover: always, handBackOnExit: true}
    compaction: {maxBytesPerCycle: 1GiB}
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Repositories) != 0 {
		t.Errorf("repositories = %v, want none", cfg.Repositories)
	}
	want := Velero{
		Discover:                   true,
		Namespace:                  "openshift-adp",
		CredentialsSecret:          "velero-repo-credentials",
		CloudCredentialsSecret:     "cloud-credentials",
		SuppressBuiltinMaintenance: true,
		RepositoryDefaults: VeleroRepositoryDefaults{
			Schedule:   Schedule{Quick: "*/30 * * * *", Full: "@daily", Jitter: 10 * time.Minute},
			Ownership:  Ownership{Takeover: TakeoverAlways, StaleAfter: 48 * time.Hour, HandBackOnExit: true},
			Compaction: Compaction{Enabled: true, LiveRatioThreshold: 0.5, MaxBytesPerCycle: 1 << 30},
		},
	}
	if !reflect.DeepEqual(cfg.Velero, want) {
		t.Errorf("velero = %+v\nwant     %+v", cfg.Velero, want)
	}

	s3 := &S3{Bucket: "b", Prefix: "velero/kopia/app1/", Endpoint: "minio:9000"}
	for _, tc := range []struct {
		name    string
		windows []string
	}{
		{"app1-default", []string{"0 3 * * 0", "0 4 * * 0"}},
		{"app2-default", []string{"0 3 * * 0"}},
	} {
		r := cfg.DiscoveredRepository(tc.name, s3)
		if r.Name != tc.name || r.Storage.S3 != s3 || r.Schedule != want.RepositoryDefaults.Schedule ||
			r.Ownership != want.RepositoryDefaults.Ownership || !r.SafetyNoneAllowed || r.PasswordFile != "" {
			t.Errorf("DiscoveredRepository(%q) = %+v", tc.name, r)
		}
		if !reflect.DeepEqual(r.UnsafeWindows, tc.windows) {
			t.Errorf("DiscoveredRepository(%q).UnsafeWindows = %v, want %v", tc.name, r.UnsafeWindows, tc.windows)
		}
	}
}

// TestVeleroRepositoryDefaultsOptOut: repositoryDefaults.safetyNone.allow:
// false keeps every discovered repository from safety=none, windows included.
func TestVeleroRepositoryDefaultsOptOut(t *testing.T) {
	cfg, err := Parse([]byte(`
identity: {username: maintd, hostname: cluster-a}
safetyNone: {allow: true, windows: [{schedule: "0 3 * * 0"}]}
velero: {discover: true, repositoryDefaults: {safetyNone: {allow: false}}}
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.DiscoveredRepository("app1-default", &S3{Bucket: "b"})
	if r.SafetyNoneAllowed || len(r.UnsafeWindows) != 0 {
		t.Errorf("opted-out discovered repository: allowed %t, windows %v", r.SafetyNoneAllowed, r.UnsafeWindows)
	}
}

// TestVeleroReloadRestartOnly: the discovery switches take a restart;
// repositoryDefaults do not.
func TestVeleroReloadRestartOnly(t *testing.T) {
	parse := func(velero string) *Config {
		t.Helper()
		cfg, err := Parse([]byte("identity: {username: maintd, hostname: a}\nlease: {holderIdentity: h}\nvelero: "+velero+"\n"), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	old := parse("{discover: true}")
	if err := CheckReload(old, parse(`{discover: true, repositoryDefaults: {schedule: {quick: "@daily"}}}`)); err != nil {
		t.Errorf("repositoryDefaults change refused: %v", err)
	}
	err := CheckReload(old, parse("{discover: true, namespace: openshift-adp, suppressBuiltinMaintenance: true}"))
	want := "velero.namespace: cannot be changed without a restart (was \"velero\", now \"openshift-adp\")\n" +
		"velero.suppressBuiltinMaintenance: cannot be changed without a restart (was false, now true)"
	if err == nil || err.Error() != want {
		t.Errorf("CheckReload = %v\nwant %s", err, want)
	}
}
