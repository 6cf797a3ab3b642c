package velero

import (
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestLogChanges checks that a repository not maintained, or with
// duplicate BackupRepositories, is logged once per change, not on every
// recomputation.
func TestLogChanges(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	d := &Discovery{log: zap.New(core)}

	dup := Repository{Name: "a", Source: Source{BackupRepository: "a-1", Duplicates: []string{"a-2"}}}
	readOnly := Repository{Name: "b", NotMaintained: "location velero/b is ReadOnly"}

	steps := []struct {
		repos []Repository
		warns int
	}{
		{[]Repository{dup, readOnly}, 2},
		{[]Repository{dup, readOnly}, 0},
		{[]Repository{dup}, 0},
		{[]Repository{dup, readOnly}, 1},
		{[]Repository{{Name: "a", Source: Source{BackupRepository: "a-1", Duplicates: []string{"a-2", "a-3"}}}, readOnly}, 1},
		{[]Repository{{Name: "a"}, {Name: "b", NotMaintained: "BackupStorageLocation velero/b not found"}}, 1},
	}

	for i, s := range steps {
		before := logs.Len()
		d.logChanges(s.repos)

		if got := logs.Len() - before; got != s.warns {
			t.Errorf("step %d: %d warnings, want %d: %v", i, got, s.warns, logs.All()[before:])
		}
	}
}
