package repository

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// A lookup answers from what the last read of the run history found while
// the schedule blob is unchanged, and opens the repository again as soon as
// another process wrote it. The wrong password shows which of the two
// happened: an open fails with it, the remembered answer does not need it.
func TestLastSuccessRememberedUntilTheScheduleChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "repo")
	testLastSuccessRemembered(t, func(create bool) Spec { return fsSpec("r", path, create, PolicyNever) })
}

// The same on MinIO, whose object times have a resolution of a second.
func TestLastSuccessRememberedOnMinIO(t *testing.T) {
	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, "backups")
	testLastSuccessRemembered(t, func(create bool) Spec { return s3Spec("r", mc, "backups", "kopia/", create) })
}

func testLastSuccessRemembered(t *testing.T, spec func(create bool) Spec) {
	ctx := context.Background()
	me := Identity{Username: "maintd", Hostname: "test"}

	m := newTestManager(t, me, spec(true))
	if _, err := m.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	quick, _, err := m.LastSuccess(ctx, "r")
	if err != nil || quick.IsZero() {
		t.Fatalf("after a quick cycle: quick = %v, err = %v", quick, err)
	}

	wrong := spec(false)
	wrong.Password = staticPassword("not the password")

	if err := m.Update([]Spec{wrong}); err != nil {
		t.Fatal(err)
	}

	again, _, err := m.LastSuccess(ctx, "r")
	if err != nil || !again.Equal(quick) {
		t.Fatalf("unchanged schedule: quick = %v, err = %v; want %v from the record, without an open", again, err, quick)
	}

	// Another process, same owner, runs a cycle: the blob changes.
	other := newTestManager(t, me, spec(false))
	if _, err := other.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	if _, _, err := m.LastSuccess(ctx, "r"); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("changed schedule: err = %v, want the open's ErrWrongPassword", err)
	}

	if err := m.Update([]Spec{spec(false)}); err != nil {
		t.Fatal(err)
	}

	newer, _, err := m.LastSuccess(ctx, "r")
	if err != nil || !newer.After(quick) {
		t.Fatalf("after the other process's cycle: quick = %v, err = %v; want after %v", newer, err, quick)
	}

	// Another storage under the same name is never answered from the record.
	elsewhere := t.TempDir()
	moved := fsSpec("r", elsewhere, false, PolicyNever)
	if err := m.Update([]Spec{moved}); err != nil {
		t.Fatal(err)
	}

	if _, _, err := m.LastSuccess(ctx, "r"); !errors.Is(err, ErrNoRepository) {
		t.Fatalf("other storage: err = %v, want ErrNoRepository", err)
	}
}
