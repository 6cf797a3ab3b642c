package repository

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kopia/kopia/repo/blob/filesystem"
	"go.uber.org/zap/zaptest"
)

func staticPassword(p string) func() (string, error) {
	return func() (string, error) { return p, nil }
}

func newTestManager(t *testing.T, id Identity, specs ...Spec) *Manager {
	t.Helper()

	m, err := NewManager(Options{StateDirectory: filepath.Join(t.TempDir(), "state"), Identity: id, Logger: zaptest.NewLogger(t)}, specs)
	if err != nil {
		t.Fatalf("new manager: %v", err)
	}

	return m
}

func fsSpec(name, path string, create bool, policy Policy) Spec {
	return Spec{
		Name:      name,
		Storage:   Storage{Filesystem: &FilesystemStorage{Path: path}},
		Password:  staticPassword(testPassword),
		Create:    create,
		Ownership: Ownership{Policy: policy, StaleAfter: 48 * time.Hour},
	}
}

func taskNames(r *Report) []string {
	var names []string
	for _, t := range r.Tasks {
		names = append(names, t.Task)
	}

	return names
}

func hasTask(r *Report, name string) bool {
	for _, t := range r.Tasks {
		if t.Task == name {
			return true
		}
	}

	return false
}

func TestCreateAndMaintainFilesystemRepository(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "repo")
	me := Identity{Username: "maintd", Hostname: "test"}
	m := newTestManager(t, me, fsSpec("local", path, true, PolicyNever))

	next := time.Now().Add(time.Hour).Truncate(time.Second).UTC()
	nextFull := time.Now().Add(24 * time.Hour).Truncate(time.Second).UTC()

	rep, err := m.Run(ctx, testLease(t, "local"), "local", RunRequest{Cycle: Quick, NextQuick: next, NextFull: nextFull, QuickInterval: time.Hour, FullInterval: 24 * time.Hour})
	if err != nil {
		t.Fatalf("quick run: %v", err)
	}

	if rep.Owner != me.String() || rep.TookOver {
		t.Fatalf("creator should own the new repository without a takeover, got owner %q tookOver %v", rep.Owner, rep.TookOver)
	}

	if !hasTask(rep, "advance-epoch") {
		t.Fatalf("quick cycle tasks = %v, want advance-epoch among them", taskNames(rep))
	}

	rep, err = m.Run(ctx, testLease(t, "local"), "local", RunRequest{Cycle: Full, NextQuick: next, NextFull: nextFull, QuickInterval: time.Hour, FullInterval: 24 * time.Hour})
	if err != nil {
		t.Fatalf("full run: %v", err)
	}

	for _, want := range []string{"snapshot-gc", "full-rewrite-contents", "cleanup-logs"} {
		if !hasTask(rep, want) {
			t.Fatalf("full cycle tasks = %v, want %s", taskNames(rep), want)
		}
	}

	for _, task := range rep.Tasks {
		if !task.Success {
			t.Fatalf("task %s failed: %s", task.Task, task.Error)
		}
	}

	st, err := m.Status(ctx, "local")
	if err != nil {
		t.Fatalf("status: %v", err)
	}

	if !st.IsSelf || st.Owner != "maintd@test" {
		t.Fatalf("status owner = %q (self %v)", st.Owner, st.IsSelf)
	}

	if !st.NextQuick.Equal(next) || !st.NextFull.Equal(nextFull) {
		t.Fatalf("kopia schedule next quick/full = %v/%v, want the daemon's %v/%v", st.NextQuick, st.NextFull, next, nextFull)
	}

	if st.LastFull.IsZero() || st.LastQuick.Before(st.LastFull) {
		t.Fatalf("last success quick=%v full=%v: want a full success that also counts as quick", st.LastQuick, st.LastFull)
	}

	var gc *TaskResult
	for i := range st.Tasks {
		if st.Tasks[i].Task == "snapshot-gc" {
			gc = &st.Tasks[i]
		}
	}

	if gc == nil || !gc.Success || gc.Summary == "" {
		t.Fatalf("status snapshot-gc = %+v, want a successful run with a stats summary", gc)
	}

	// The private connection file must not be readable by others and must
	// not contain the password.
	fi, err := os.Stat(filepath.Join(m.opts.StateDirectory, "repositories"))
	if err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("connection directory mode = %v (%v), want no group/other access", fi.Mode(), err)
	}

	b, err := os.ReadFile(m.configFile("local"))
	if err != nil {
		t.Fatal(err)
	}

	if strings.Contains(string(b), testPassword) {
		t.Fatal("connection file contains the password")
	}
}

func TestMissingRepositoryAndWrongPassword(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	// An empty directory holds no repository.
	empty := filepath.Join(dir, "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}

	good := filepath.Join(dir, "good")
	me := Identity{Username: "maintd", Hostname: "test"}

	creator := newTestManager(t, me, fsSpec("good", good, true, PolicyNever))
	if _, err := creator.Run(ctx, testLease(t, "good"), "good", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	wrong := fsSpec("wrong", good, false, PolicyNever)
	wrong.Password = staticPassword("not the password")

	m := newTestManager(t, me, fsSpec("missing", empty, false, PolicyNever), wrong, fsSpec("good", good, false, PolicyNever))

	_, err := m.Run(ctx, testLease(t, "missing"), "missing", RunRequest{Cycle: Quick})
	if !errors.Is(err, ErrNoRepository) {
		t.Fatalf("missing repository: err = %v, want ErrNoRepository", err)
	}

	want := `repository "missing": no kopia repository at filesystem:` + empty + ` (set create: true to create one)`
	if err.Error() != want {
		t.Fatalf("missing repository error:\n got %s\nwant %s", err, want)
	}

	_, err = m.Run(ctx, testLease(t, "wrong"), "wrong", RunRequest{Cycle: Quick})
	if !errors.Is(err, ErrWrongPassword) || err.Error() != `repository "wrong": wrong repository password` {
		t.Fatalf("wrong password: err = %v", err)
	}

	if strings.Contains(err.Error(), "not the password") {
		t.Fatal("error leaks the password")
	}

	// The healthy repository is unaffected by the others' failures.
	if _, err := m.Run(ctx, testLease(t, "good"), "good", RunRequest{Cycle: Quick}); err != nil {
		t.Fatalf("good repository: %v", err)
	}

	// The connection file written for the wrong password stays; correcting
	// the password is all it takes.
	fixed := fsSpec("wrong", good, false, PolicyNever)
	if err := m.Update([]Spec{fsSpec("missing", empty, false, PolicyNever), fixed, fsSpec("good", good, false, PolicyNever)}); err != nil {
		t.Fatal(err)
	}

	if _, err := m.Run(ctx, testLease(t, "wrong"), "wrong", RunRequest{Cycle: Quick}); err != nil {
		t.Fatalf("after the password was corrected: %v", err)
	}
}

// setOwner sets the maintenance owner as another client would.
func setOwner(t *testing.T, path string, owner string) {
	t.Helper()

	user, host, _ := strings.Cut(owner, "@")
	m := newTestManager(t, Identity{Username: user, Hostname: host}, fsSpec("r", path, false, PolicyAlways))

	if _, err := m.TakeOwnership(context.Background(), testLease(t, "r"), "r"); err != nil {
		t.Fatalf("set owner %s: %v", owner, err)
	}
}

func TestOwnershipPolicies(t *testing.T) {
	ctx := context.Background()
	me := Identity{Username: "maintd", Hostname: "cluster-a"}

	tests := []struct {
		policy   Policy
		owner    string // "" = unowned
		wantRun  bool
		wantTook bool
	}{
		{PolicyNever, "default@default", false, false},
		{PolicyNever, "", false, false},
		{PolicyNever, "maintd@cluster-a", true, false},
		{PolicyIfUnowned, "", true, true},
		{PolicyIfUnowned, "default@default", false, false},
		{PolicyStale, "default@default", false, false}, // fresh repository: the owner is not stale
		{PolicyStale, "", true, true},
		{PolicyAlways, "default@default", true, true},
	}

	for _, tc := range tests {
		t.Run(string(tc.policy)+"/"+tc.owner, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "repo")
			creator := newTestManager(t, Identity{Username: "default", Hostname: "default"}, fsSpec("r", path, true, PolicyNever))

			if _, err := creator.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
				t.Fatal(err)
			}

			switch tc.owner {
			case "default@default":
			case "":
				if _, err := creator.HandBack(ctx, testLease(t, "r"), "r", ""); !errors.Is(err, ErrNothingToHandBack) {
					t.Fatalf("hand back without memory: %v", err)
				}

				m := newTestManager(t, Identity{Username: "default", Hostname: "default"}, fsSpec("r", path, false, PolicyNever))
				if _, err := m.TakeOwnership(ctx, testLease(t, "r"), "r"); err != nil {
					t.Fatal(err)
				}

				if _, err := m.HandBack(ctx, testLease(t, "r"), "r", "nobody@nowhere"); err != nil {
					t.Fatal(err)
				}

				// No API sets an empty owner except handing back to an
				// unowned state, which the memory of a takeover from "" does.
				setUnowned(t, path)
			default:
				setOwner(t, path, tc.owner)
			}

			m := newTestManager(t, me, fsSpec("r", path, false, tc.policy))
			rep, err := m.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick})

			var notOwner *NotOwnerError
			if tc.wantRun {
				if err != nil {
					t.Fatalf("run: %v", err)
				}

				if rep.TookOver != tc.wantTook || rep.Owner != me.String() {
					t.Fatalf("owner %q tookOver %v, want us and tookOver %v", rep.Owner, rep.TookOver, tc.wantTook)
				}

				info, err := m.Owner(ctx, "r")
				if err != nil {
					t.Fatal(err)
				}

				if tc.wantTook && (!info.PreviousOwnerKnown || info.PreviousOwner != tc.owner) {
					t.Fatalf("remembered previous owner = %q (known %v), want %q", info.PreviousOwner, info.PreviousOwnerKnown, tc.owner)
				}

				return
			}

			if !errors.As(err, &notOwner) || notOwner.Owner != tc.owner {
				t.Fatalf("run: err = %v, want NotOwnerError naming %q", err, tc.owner)
			}

			info, err := m.Owner(ctx, "r")
			if err != nil {
				t.Fatal(err)
			}

			if info.Owner != tc.owner {
				t.Fatalf("owner changed to %q by a skipped run", info.Owner)
			}
		})
	}
}

// setUnowned clears the maintenance owner of the repository at path.
func setUnowned(t *testing.T, path string) {
	t.Helper()

	m := newTestManager(t, Identity{Username: "x", Hostname: "y"}, fsSpec("r", path, false, PolicyAlways))

	if _, err := m.TakeOwnership(context.Background(), testLease(t, "r"), "r"); err != nil {
		t.Fatal(err)
	}

	// TakeOwnership recorded the current owner; record an unowned
	// repository instead and hand back to it.
	ctx, done, err := m.Leased(context.Background(), testLease(t, "r"), "r")
	if err != nil {
		t.Fatal(err)
	}
	defer done()

	if err := m.writeOwnerRecord(ctx, "r", ownerState{PreviousOwner: "", Remembered: true}); err != nil {
		t.Fatal(err)
	}

	info, err := m.HandBack(context.Background(), testLease(t, "r"), "r", "")
	if err != nil || info.Owner != "" {
		t.Fatalf("hand back to unowned: %v %+v", err, info)
	}
}

var _ = filesystem.Options{}
