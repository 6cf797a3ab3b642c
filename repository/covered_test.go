package repository

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// repoFiles lists the files of a filesystem repository with their sizes.
func repoFiles(t *testing.T, root string) []string {
	t.Helper()

	var out []string

	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}

		out = append(out, p)

		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	return out
}

// TestCoveredSkipsWorkDoneElsewhere: a replica whose run became due before
// another replica's run of the same cycle succeeded skips it without
// writing; a cycle nobody ran since runs.
func TestCoveredSkipsWorkDoneElsewhere(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "repo")
	me := Identity{Username: "maintd", Hostname: "test"}
	a := newTestManager(t, me, fsSpec("r", path, true, PolicyNever))
	b := newTestManager(t, me, fsSpec("r", path, false, PolicyNever))

	if _, err := a.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Full}); err != nil {
		t.Fatalf("first full run: %v", err)
	}

	due := time.Now()

	if _, err := a.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatalf("quick run of replica a: %v", err)
	}

	before := repoFiles(t, path)

	var seen time.Time

	covered := func(last time.Time) bool {
		seen = last
		return last.After(due)
	}

	_, err := b.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick, Covered: covered})

	var de *DoneError
	if !errors.As(err, &de) || !de.Skipped() {
		t.Fatalf("quick run of replica b after a's: %v, want a DoneError", err)
	}

	if !seen.After(due) || !de.LastSuccess.Equal(seen) {
		t.Errorf("Covered saw %v, DoneError says %v; want a's quick success after %v", seen, de.LastSuccess, due)
	}

	if after := repoFiles(t, path); !slices.Equal(before, after) {
		t.Errorf("the skipped run changed the repository's files:\nbefore %q\nafter  %q", before, after)
	}

	// The full cycle ran before due: b runs it.
	rep, err := b.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Full, Covered: covered})
	if err != nil {
		t.Fatalf("full run of replica b: %v", err)
	}

	if !seen.Before(due) || !hasTask(rep, "snapshot-gc") {
		t.Errorf("full run: Covered saw %v (due %v), tasks %v", seen, due, taskNames(rep))
	}
}
