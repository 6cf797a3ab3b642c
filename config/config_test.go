package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// writeFile writes content to dir/name and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestParseAppliesDefaults(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "pw", "secret\n")
	cfg, err := Parse([]byte(`
identity: {username: maintd, hostname: cluster-a}
repositories:
  - name: local
    storage: {filesystem: {path: /data/kopia}}
    passwordFile: pw
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	defaults := Defaults{
		Schedule:   Schedule{Quick: "@hourly", Full: "@daily", Jitter: 5 * time.Minute},
		Ownership:  Ownership{Takeover: TakeoverStale, StaleAfter: 48 * time.Hour},
		Compaction: Compaction{Enabled: true, LiveRatioThreshold: 0.5, MaxBytesPerCycle: 2 << 30},
	}
	want := &Config{
		Identity:       Identity{Username: "maintd", Hostname: "cluster-a"},
		StateDirectory: "/var/lib/kopia-maintd",
		Concurrency:    1,
		Server:         Server{ListenAddress: "127.0.0.1:9810"},
		Log:            Log{Level: "info", Format: "json"},
		SafetyNone: SafetyNone{
			VeleroNamespaces: []string{"velero"},
			QuietPeriod:      30 * time.Minute,
			ScheduleMargin:   2 * time.Hour,
			WatchInterval:    5 * time.Second,
		},
		Lease: Lease{
			Kind:                    LeaseKindRepository,
			Duration:                time.Minute,
			RenewInterval:           15 * time.Second,
			HolderIdentity:          "test-host-deadbeef",
			HolderIdentityGenerated: true,
			Kubernetes:              LeaseKubernetes{NamePrefix: "kopia-maintd-"},
			Repository:              LeaseRepository{Settle: time.Second},
			SpreadStep:              time.Second,
		},
		Velero: Velero{
			Namespace:              "velero",
			CredentialsSecret:      "velero-repo-credentials",
			CloudCredentialsSecret: "cloud-credentials",
			RepositoryDefaults:     VeleroRepositoryDefaults{Schedule: defaults.Schedule, Ownership: defaults.Ownership, Compaction: defaults.Compaction},
		},
		Defaults: defaults,
		Repositories: []Repository{{
			Name:         "local",
			Storage:      Storage{Filesystem: &Filesystem{Path: "/data/kopia"}},
			PasswordFile: filepath.Join(dir, "pw"),
			Schedule:     defaults.Schedule,
			Ownership:    defaults.Ownership,
			Compaction:   defaults.Compaction,
		}},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
	if got := cfg.Identity.String(); got != "maintd@cluster-a" {
		t.Errorf("Identity.String() = %q, want %q", got, "maintd@cluster-a")
	}
}

func TestParseMergesOverrides(t *testing.T) {
	t.Setenv("KOPIA_MAINTD_TEST_PASSWORD", "from-env")
	cfg, err := Parse([]byte(`
identity: {username: maintd, hostname: cluster-a}
stateDirectory: /srv/state
concurrency: 3
server: {listenAddress: ":9999"}
log: {level: debug, format: console}
defaults:
  schedule: {quick: "*/30 * * * *", jitter: 0s}
  ownership: {takeover: if-unowned, handBackOnExit: true}
repositories:
  - name: inherits
    storage: {filesystem: {path: /data/a}}
    passwordEnv: KOPIA_MAINTD_TEST_PASSWORD
  - name: overrides-some
    create: true
    storage: {filesystem: {path: /data/b}}
    passwordEnv: KOPIA_MAINTD_TEST_PASSWORD
    schedule: {full: "CRON_TZ=UTC 0 3 * * *"}
    ownership: {staleAfter: 1h, handBackOnExit: false}
  - name: overrides-all
    storage: {filesystem: {path: /data/c}}
    passwordEnv: KOPIA_MAINTD_TEST_PASSWORD
    schedule: {quick: "@every 90s", full: "@weekly", jitter: 1m30s}
    ownership: {takeover: always, staleAfter: 72h, handBackOnExit: true}
  - name: null-overrides
    storage: {filesystem: {path: /data/d}}
    passwordEnv: KOPIA_MAINTD_TEST_PASSWORD
    schedule:
    ownership: {}
`), "/")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StateDirectory != "/srv/state" || cfg.Concurrency != 3 || cfg.Server.ListenAddress != ":9999" ||
		cfg.Log != (Log{Level: "debug", Format: "console"}) {
		t.Errorf("top-level settings not applied: %+v", cfg)
	}
	wantDefaults := Defaults{
		Schedule:   Schedule{Quick: "*/30 * * * *", Full: "@daily", Jitter: 0},
		Ownership:  Ownership{Takeover: TakeoverIfUnowned, StaleAfter: 48 * time.Hour, HandBackOnExit: true},
		Compaction: Compaction{Enabled: true, LiveRatioThreshold: 0.5, MaxBytesPerCycle: 2 << 30},
	}
	if cfg.Defaults != wantDefaults {
		t.Errorf("Defaults = %+v, want %+v", cfg.Defaults, wantDefaults)
	}
	tests := []struct {
		name      string
		create    bool
		schedule  Schedule
		ownership Ownership
	}{
		{"inherits", false, wantDefaults.Schedule, wantDefaults.Ownership},
		{
			"overrides-some", true,
			Schedule{Quick: "*/30 * * * *", Full: "CRON_TZ=UTC 0 3 * * *", Jitter: 0},
			Ownership{Takeover: TakeoverIfUnowned, StaleAfter: time.Hour, HandBackOnExit: false},
		},
		{
			"overrides-all", false,
			Schedule{Quick: "@every 90s", Full: "@weekly", Jitter: 90 * time.Second},
			Ownership{Takeover: TakeoverAlways, StaleAfter: 72 * time.Hour, HandBackOnExit: true},
		},
		{"null-overrides", false, wantDefaults.Schedule, wantDefaults.Ownership},
	}
	if len(cfg.Repositories) != len(tests) {
		t.Fatalf("got %d repositories, want %d", len(cfg.Repositories), len(tests))
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := cfg.Repositories[i]
			if r.Name != tt.name {
				t.Errorf("Name = %q, want %q", r.Name, tt.name)
			}
			if r.Create != tt.create {
				t.Errorf("Create = %v, want %v", r.Create, tt.create)
			}
			if r.Schedule != tt.schedule {
				t.Errorf("Schedule = %+v, want %+v", r.Schedule, tt.schedule)
			}
			if r.Ownership != tt.ownership {
				t.Errorf("Ownership = %+v, want %+v", r.Ownership, tt.ownership)
			}
			if r.PasswordEnv != "KOPIA_MAINTD_TEST_PASSWORD" || r.PasswordFile != "" {
				t.Errorf("password source = file %q env %q", r.PasswordFile, r.PasswordEnv)
			}
		})
	}
}

func TestLoadResolvesRelativePaths(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "secrets/pw", "secret")
	writeFile(t, dir, "secrets/id", "AKID")
	writeFile(t, dir, "secrets/key", "SAK")
	path := writeFile(t, dir, "etc/maintd.yaml", `
identity: {username: maintd, hostname: cluster-a}
stateDirectory: state
repositories:
  - name: fs
    storage: {filesystem: {path: ../data/./repo}}
    passwordFile: ../secrets/pw
  - name: s3
    storage:
      s3:
        bucket: backups
        accessKeyIDFile: ../secrets/id
        secretAccessKeyFile: /ABSOLUTE/../`+filepath.Join(dir, "secrets/key")[1:]+`
    passwordFile: `+filepath.Join(dir, "secrets/pw")+`
`)
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct{ field, got, want string }{
		{"stateDirectory", cfg.StateDirectory, filepath.Join(dir, "etc/state")},
		{"fs path", cfg.Repositories[0].Storage.Filesystem.Path, filepath.Join(dir, "data/repo")},
		{"fs passwordFile", cfg.Repositories[0].PasswordFile, filepath.Join(dir, "secrets/pw")},
		{"s3 accessKeyIDFile", cfg.Repositories[1].Storage.S3.AccessKeyIDFile, filepath.Join(dir, "secrets/id")},
		{"s3 secretAccessKeyFile", cfg.Repositories[1].Storage.S3.SecretAccessKeyFile, filepath.Join(dir, "secrets/key")},
		{"s3 passwordFile", cfg.Repositories[1].PasswordFile, filepath.Join(dir, "secrets/pw")},
		{"s3 endpoint default", cfg.Repositories[1].Storage.S3.Endpoint, "s3.amazonaws.com"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.field, c.got, c.want)
		}
	}
}

func TestParseRelativeDir(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse([]byte(`
identity: {username: maintd, hostname: cluster-a}
repositories:
  - name: local
    storage: {filesystem: {path: repo}}
    passwordFile: ../password
`), "testdata/bad")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Repositories[0].Storage.Filesystem.Path, filepath.Join(wd, "testdata/bad/repo"); got != want {
		t.Errorf("path = %q, want %q", got, want)
	}
}

func TestParseAnchorsAndAliases(t *testing.T) {
	cfg, err := Parse([]byte(`
identity: {username: maintd, hostname: cluster-a}
repositories:
  - name: a
    storage: &minio
      s3: {bucket: backups, endpoint: "minio:9000", insecure: true}
    passwordFile: &pw testdata/password
    schedule: &nightly {full: "0 2 * * *"}
  - name: b
    storage: *minio
    passwordFile: *pw
    schedule: *nightly
`), ".")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range cfg.Repositories {
		s3 := r.Storage.S3
		if s3 == nil || s3.Bucket != "backups" || s3.Endpoint != "minio:9000" || !s3.Insecure || s3.SkipTLSVerify {
			t.Errorf("%s: S3 = %+v", r.Name, s3)
		}
		if r.Schedule.Full != "0 2 * * *" {
			t.Errorf("%s: Full = %q", r.Name, r.Schedule.Full)
		}
	}
	if cfg.Repositories[0].Storage.S3 == cfg.Repositories[1].Storage.S3 {
		t.Errorf("repositories share one *S3; each must get its own")
	}
}

func TestPassword(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("KOPIA_MAINTD_TEST_PASSWORD", "env secret\n")
	tests := []struct {
		name    string
		content string
		want    string
	}{
		{"lf", "file secret\n", "file secret"},
		{"crlf", "file secret\r\n", "file secret"},
		{"several line ends", "file secret\n\r\n", "file secret"},
		{"no line end", "file secret", "file secret"},
		{"inner and outer spaces kept", " file  secret \n", " file  secret "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, dir, "pw", tt.content)
			r := Repository{Name: "r", PasswordFile: path}
			got, err := r.Password()
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("Password() = %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("env", func(t *testing.T) {
		got, err := Repository{Name: "r", PasswordEnv: "KOPIA_MAINTD_TEST_PASSWORD"}.Password()
		if err != nil {
			t.Fatal(err)
		}
		// An environment variable is used verbatim: only files get trimmed.
		if got != "env secret\n" {
			t.Errorf("Password() = %q, want %q", got, "env secret\n")
		}
	})
}

func TestPasswordErrors(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("KOPIA_MAINTD_TEST_EMPTY", "")
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name string
		repo Repository
		want string
	}{
		{"missing file", Repository{Name: "r", PasswordFile: missing}, `read password of repository "r": open ` + missing + `: no such file or directory`},
		{"empty file", Repository{Name: "r", PasswordFile: writeFile(t, dir, "empty", "\n")}, `read password of repository "r": file ` + filepath.Join(dir, "empty") + ` is empty`},
		{"empty env", Repository{Name: "r", PasswordEnv: "KOPIA_MAINTD_TEST_EMPTY"}, `read password of repository "r": environment variable "KOPIA_MAINTD_TEST_EMPTY" is empty`},
		{"no source", Repository{Name: "r"}, `read password of repository "r": no password source configured`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.repo.Password()
			if err == nil || err.Error() != tt.want {
				t.Errorf("Password() error = %v, want %q", err, tt.want)
			}
		})
	}
	_, err := Repository{Name: "r", PasswordFile: missing}.Password()
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file error does not wrap fs.ErrNotExist: %v", err)
	}
}

// TestPasswordRereadsFile checks that a rotated password file is picked up
// without reloading the config, and that a file removed after validation
// gives an error without its former contents.
func TestPasswordRereadsFile(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "pw", "first-secret\n")
	cfg, err := Parse([]byte(`
identity: {username: maintd, hostname: cluster-a}
repositories:
  - name: local
    storage: {filesystem: {path: /data}}
    passwordFile: pw
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "pw", "second-secret\n")
	if got, err := cfg.Repositories[0].Password(); err != nil || got != "second-secret" {
		t.Errorf("Password() = %q, %v; want %q", got, err, "second-secret")
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err = cfg.Repositories[0].Password()
	if err == nil || strings.Contains(err.Error(), "secret\n") || strings.Contains(err.Error(), "second-secret") {
		t.Errorf("Password() error = %v, want an error without the password", err)
	}
}

func TestS3Credentials(t *testing.T) {
	dir := t.TempDir()
	id := writeFile(t, dir, "id", "AKIDEXAMPLE\r\n")
	key := writeFile(t, dir, "key", "wJalrXUtnFEMI/K7MDENG\n")
	gotID, gotKey, err := S3{AccessKeyIDFile: id, SecretAccessKeyFile: key}.Credentials()
	if err != nil || gotID != "AKIDEXAMPLE" || gotKey != "wJalrXUtnFEMI/K7MDENG" {
		t.Errorf("Credentials() = %q, %q, %v", gotID, gotKey, err)
	}
	gotID, gotKey, err = S3{}.Credentials()
	if err != nil || gotID != "" || gotKey != "" {
		t.Errorf("Credentials() without files = %q, %q, %v; want empty and no error", gotID, gotKey, err)
	}
	missing := filepath.Join(dir, "missing")
	_, _, err = S3{AccessKeyIDFile: id, SecretAccessKeyFile: missing}.Credentials()
	want := "read s3 secret access key: open " + missing + ": no such file or directory"
	if err == nil || err.Error() != want {
		t.Errorf("Credentials() error = %v, want %q", err, want)
	}
	if err != nil && strings.Contains(err.Error(), "AKIDEXAMPLE") {
		t.Errorf("Credentials() error contains the access key ID")
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(path)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load error = %v, want one wrapping fs.ErrNotExist", err)
	}
	var cerr *Error
	if errors.As(err, &cerr) {
		t.Errorf("an unreadable file is not a validation *Error: %v", err)
	}
	if want := "read config file: open " + path + ": no such file or directory"; err == nil || err.Error() != want {
		t.Errorf("Load error = %v, want %q", err, want)
	}
}

func TestErrorFormat(t *testing.T) {
	err := &Error{Problems: []Problem{
		{Message: "config file is empty"},
		{Path: "repositories[1].schedule.full", Message: "invalid cron spec"},
	}}
	want := "config file is empty\nrepositories[1].schedule.full: invalid cron spec"
	if got := err.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
