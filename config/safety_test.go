package config

import (
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"
)

func TestSafetyNoneKeys(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "pw", "secret\n")
	writeFile(t, dir, "kube/config", "apiVersion: v1\nkind: Config\n")
	cfg, err := Parse([]byte(`
identity: {username: maintd, hostname: cluster-a}
kubernetes:
  kubeconfig: kube/config
safetyNone:
  allow: true
  veleroNamespaces: [velero, openshift-adp]
  ignorePods: [kopia-maintd-7f9c4.sidecar]
  quietPeriod: 1h
  scheduleMargin: 0s
  watchInterval: 2s
  windows:
    - schedule: "CRON_TZ=UTC 0 4 * * 0"
      repositories: [a, opted-out]
    - schedule: "@monthly"
    - schedule: "CRON_TZ=UTC 0 4 * * 0"
repositories:
  - name: a
    storage: {filesystem: {path: /data/a}}
    passwordFile: pw
  - name: opted-out
    storage: {filesystem: {path: /data/b}}
    passwordFile: pw
    safetyNone: {allow: false}
  - name: c
    storage: {filesystem: {path: /data/c}}
    passwordFile: pw
    safetyNone: {}
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "kube", "config"); cfg.Kubernetes.Kubeconfig != want {
		t.Errorf("Kubeconfig = %q, want %q", cfg.Kubernetes.Kubeconfig, want)
	}
	want := SafetyNone{
		Allow:            true,
		VeleroNamespaces: []string{"velero", "openshift-adp"},
		IgnorePods:       []string{"kopia-maintd-7f9c4.sidecar"},
		QuietPeriod:      time.Hour,
		ScheduleMargin:   0,
		WatchInterval:    2 * time.Second,
		Windows: []Window{
			{Schedule: "CRON_TZ=UTC 0 4 * * 0", Repositories: []string{"a", "opted-out"}},
			{Schedule: "@monthly"},
			{Schedule: "CRON_TZ=UTC 0 4 * * 0"},
		},
	}
	if !reflect.DeepEqual(cfg.SafetyNone, want) {
		t.Errorf("SafetyNone = %+v\nwant %+v", cfg.SafetyNone, want)
	}
	for _, tt := range []struct {
		name    string
		allowed bool
		windows []string
	}{
		// The same spec from two windows is listed once.
		{"a", true, []string{"CRON_TZ=UTC 0 4 * * 0", "@monthly"}},
		// Named by a window, but opted out: no window applies.
		{"opted-out", false, nil},
		{"c", true, []string{"@monthly", "CRON_TZ=UTC 0 4 * * 0"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			i := slices.IndexFunc(cfg.Repositories, func(r Repository) bool { return r.Name == tt.name })
			r := cfg.Repositories[i]
			if r.SafetyNoneAllowed != tt.allowed || !slices.Equal(r.UnsafeWindows, tt.windows) {
				t.Errorf("SafetyNoneAllowed = %v, UnsafeWindows = %q; want %v, %q", r.SafetyNoneAllowed, r.UnsafeWindows, tt.allowed, tt.windows)
			}
		})
	}
}

// TestSafetyNoneOffByDefault checks the defaults, and that windows and
// repository opt-outs stay valid while the master switch is off, so turning
// it off never needs other edits.
func TestSafetyNoneOffByDefault(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "pw", "secret\n")
	cfg, err := Parse([]byte(`
identity: {username: maintd, hostname: cluster-a}
kubernetes: {kubeconfig: ""}
safetyNone:
  veleroNamespaces:
  windows:
    - schedule: "0 4 * * 0"
      repositories: [a]
repositories:
  - name: a
    storage: {filesystem: {path: /data/a}}
    passwordFile: pw
    safetyNone: {allow: false}
  - name: b
    storage: {filesystem: {path: /data/b}}
    passwordFile: pw
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Kubernetes.Kubeconfig != "" {
		t.Errorf("Kubeconfig = %q, want \"\" (in-cluster)", cfg.Kubernetes.Kubeconfig)
	}
	s := cfg.SafetyNone
	if s.Allow || !slices.Equal(s.VeleroNamespaces, []string{DefaultVeleroNamespace}) || s.IgnorePods != nil ||
		s.QuietPeriod != DefaultQuietPeriod || s.ScheduleMargin != DefaultScheduleMargin || s.WatchInterval != DefaultWatchInterval {
		t.Errorf("SafetyNone = %+v, want the defaults", s)
	}
	for _, r := range cfg.Repositories {
		if r.SafetyNoneAllowed || r.UnsafeWindows != nil {
			t.Errorf("%s: SafetyNoneAllowed = %v, UnsafeWindows = %q; want false, none", r.Name, r.SafetyNoneAllowed, r.UnsafeWindows)
		}
	}
}
