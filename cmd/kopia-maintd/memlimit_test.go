package main

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// fakeCgroup writes content into the file f under a new root.
func fakeCgroup(t *testing.T, f, content string) string {
	t.Helper()
	root := t.TempDir()
	if f != "" {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCgroupMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		name, file, content string
		want                int64
		ok                  bool
		err                 string
	}{
		{"v2 limit", cgroupV2MemoryMax, "536870912\n", 512 << 20, true, ""},
		{"v2 max", cgroupV2MemoryMax, "max\n", 0, false, ""},
		{"v1 limit", cgroupV1MemoryMax, "1073741824\n", 1 << 30, true, ""},
		{"v1 unlimited", cgroupV1MemoryMax, "9223372036854771712\n", 0, false, ""},
		{"no cgroup", "", "", 0, false, ""},
		{"garbage", cgroupV2MemoryMax, "lots\n", 0, false, "parse cgroup memory limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, ok, err := cgroupMemoryLimit(fakeCgroup(t, tc.file, tc.content))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want || ok != tc.ok {
				t.Fatalf("cgroupMemoryLimit = %d, %v, %v; want %d, %v", got, ok, err, tc.want, tc.ok)
			}
		})
	}
}

func TestApplyMemoryLimit(t *testing.T) {
	saved := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(saved) })

	t.Run("from the cgroup", func(t *testing.T) {
		t.Setenv("GOMEMLIMIT", "")
		core, logs := observer.New(zap.InfoLevel)
		applyMemoryLimit(zap.New(core), fakeCgroup(t, cgroupV2MemoryMax, "1000000000\n"))
		if got := debug.SetMemoryLimit(-1); got != 900000000 {
			t.Errorf("memory limit = %d, want 900000000 (90 %% of the cgroup's)", got)
		}
		e := logs.FilterMessage("memory limit").All()
		if len(e) != 1 || e[0].ContextMap()["gomemlimit_bytes"] != int64(900000000) || e[0].ContextMap()["source"] != "cgroup" {
			t.Errorf("log = %+v", e)
		}
	})
	t.Run("GOMEMLIMIT wins", func(t *testing.T) {
		debug.SetMemoryLimit(123 << 20)
		t.Setenv("GOMEMLIMIT", "123MiB")
		core, logs := observer.New(zap.InfoLevel)
		applyMemoryLimit(zap.New(core), fakeCgroup(t, cgroupV2MemoryMax, "1000000000\n"))
		if got := debug.SetMemoryLimit(-1); got != 123<<20 {
			t.Errorf("memory limit = %d, want GOMEMLIMIT's %d", got, 123<<20)
		}
		if e := logs.FilterMessage("memory limit").All(); len(e) != 1 || e[0].ContextMap()["source"] != "GOMEMLIMIT" {
			t.Errorf("log = %+v", e)
		}
	})
}
