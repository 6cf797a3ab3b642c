package config

import (
	"testing"
)

func TestParseCompaction(t *testing.T) {
	cfg, err := Parse([]byte(`
identity: {username: maintd, hostname: cluster-a}
defaults:
  compaction: {liveRatioThreshold: 0.3, maxBytesPerCycle: 512MiB}
repositories:
  - name: inherits
    storage: {filesystem: {path: /data/a}}
    passwordEnv: HOME
  - name: off
    storage: {filesystem: {path: /data/b}}
    passwordEnv: HOME
    compaction: {enabled: false}
  - name: overrides
    storage: {filesystem: {path: /data/c}}
    passwordEnv: HOME
    compaction: {liveRatioThreshold: 1, maxBytesPerCycle: 1073741824}
`), "/")
	if err != nil {
		t.Fatal(err)
	}
	wantDefaults := Compaction{Enabled: true, LiveRatioThreshold: 0.3, MaxBytesPerCycle: 512 << 20}
	if cfg.Defaults.Compaction != wantDefaults {
		t.Errorf("defaults.compaction = %+v, want %+v", cfg.Defaults.Compaction, wantDefaults)
	}
	want := map[string]Compaction{
		"inherits":  wantDefaults,
		"off":       {Enabled: false, LiveRatioThreshold: 0.3, MaxBytesPerCycle: 512 << 20},
		"overrides": {Enabled: true, LiveRatioThreshold: 1, MaxBytesPerCycle: 1 << 30},
	}
	for _, r := range cfg.Repositories {
		if r.Compaction != want[r.Name] {
			t.Errorf("%s: compaction = %+v, want %+v", r.Name, r.Compaction, want[r.Name])
		}
	}
	if got := cfg.Repositories[0].Compaction.String(); got != "on (live ratio < 0.3, 512MiB per cycle)" {
		t.Errorf("String() = %q", got)
	}
	if got := cfg.Repositories[1].Compaction.String(); got != "off" {
		t.Errorf("String() = %q", got)
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"2GiB", 2 << 30, true},
		{"512MiB", 512 << 20, true},
		{"1.5GiB", 3 << 29, true},
		{"64KiB", 64 << 10, true},
		{"1TiB", 1 << 40, true},
		{"100", 100, true},
		{"100B", 100, true},
		{"2 GiB", 2 << 30, true},
		{"1GB", 1e9, true},
		{"5MB", 5e6, true},
		{"0", 0, true},
		{"2gib", 0, false},
		{"2G", 0, false},
		{"-1GiB", 0, false},
		{"GiB", 0, false},
		{"", 0, false},
		{"99999999TiB", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var p problems
			got, ok := parseSize(tt.in, "x", &p)
			if ok != tt.ok || got != tt.want {
				t.Fatalf("parseSize(%q) = %d, %v, want %d, %v", tt.in, got, ok, tt.want, tt.ok)
			}
			if ok == (len(p.list) > 0) {
				t.Fatalf("parseSize(%q): ok %v with problems %v", tt.in, ok, p.list)
			}
		})
	}
}
