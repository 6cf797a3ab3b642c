package repository

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kopia/kopia/repo/blob"
	"go.uber.org/zap/zaptest"
)

// faultyStorage fails every write whose blob name starts with prefix ("":
// every write) while fail is set, like an S3 endpoint answering 503.
type faultyStorage struct {
	*memStorage
	fail   *atomic.Bool
	prefix string
}

func (s faultyStorage) PutBlob(ctx context.Context, id blob.ID, data blob.Bytes, opts blob.PutOptions) error {
	if s.fail.Load() && strings.HasPrefix(string(id), s.prefix) {
		return errors.New("injected: 503 slow down")
	}

	return s.memStorage.PutBlob(ctx, id, data, opts)
}

// ownershipManager is a manager of repository "r" on st with its own new
// state directory, as a freshly started pod has.
func ownershipManager(t *testing.T, clk *fakeClock, user, host string, o Ownership, st blob.Storage) *Manager {
	t.Helper()

	m, err := NewManager(Options{
		StateDirectory: filepath.Join(t.TempDir(), "state"),
		Identity:       Identity{Username: user, Hostname: host},
		Logger:         zaptest.NewLogger(t),
		Now:            clk.Now,
	}, []Spec{{
		Name: "r", Storage: CustomStorage(func(context.Context) (blob.Storage, error) { return st, nil }), Password: staticPassword(testPassword), Create: true,
		Ownership: o,
	}})
	if err != nil {
		t.Fatal(err)
	}

	return m
}

// TestFailedTakeoverWriteRecordsNothing: a stale takeover whose params
// write fails (a transient 503) records no takeover, so the flap guard
// does not hold the next attempt back; an hour later, with storage healthy,
// the takeover happens and records the previous owner.
func TestFailedTakeoverWriteRecordsNothing(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	st := newMemStorage(clk.Now)

	var fail atomic.Bool

	stale := Ownership{Policy: PolicyStale, StaleAfter: 48 * time.Hour}
	velero := ownershipManager(t, clk, "default", "default", Ownership{Policy: PolicyNever}, st)
	us := ownershipManager(t, clk, "maintd", "cluster-a", stale, faultyStorage{st, &fail, ""})

	if _, err := velero.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	clk.Advance(72 * time.Hour) // the owner is long dead

	fail.Store(true)

	_, err := us.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick})

	fail.Store(false)

	var notOwner *NotOwnerError
	if err == nil || errors.As(err, &notOwner) {
		t.Fatalf("takeover with every write failing: err = %v, want the write error", err)
	}

	t.Logf("takeover with a transient storage error: %v", err)

	info, err := us.Owner(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}

	if info.Owner != "default@default" || info.PreviousOwnerKnown || !info.TookOverAt.IsZero() {
		t.Fatalf("after the failed takeover: %+v, want owner default@default and no takeover recorded", info)
	}

	clk.Advance(time.Hour)

	rep, err := us.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick})
	if err != nil || !rep.TookOver || rep.TakeoverReason != ReasonStale || rep.Owner != "maintd@cluster-a" {
		t.Fatalf("retry an hour later, storage healthy, owner dead for 73h: err = %v, report %+v", err, rep)
	}

	info, err = us.Owner(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}

	if !info.PreviousOwnerKnown || info.PreviousOwner != "default@default" || !info.TookOverAt.Equal(clk.Now()) {
		t.Fatalf("after the takeover: %+v, want previous owner default@default taken over at %s", info, clk.Now())
	}
}

// TestHandBackAfterRestart: the daemon takes ownership from
// default@default, and is restarted on a new empty state directory (an
// emptyDir after a pod restart); the new process hands back to
// default@default, on exit and with `owner hand-back`.
func TestHandBackAfterRestart(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	st := newMemStorage(clk.Now)

	always := Ownership{Policy: PolicyAlways, StaleAfter: 48 * time.Hour, HandBackOnExit: true}
	velero := ownershipManager(t, clk, "default", "default", Ownership{Policy: PolicyNever}, st)

	if _, err := velero.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	takeOver := func() {
		t.Helper()
		clk.Advance(time.Hour)

		rep, err := ownershipManager(t, clk, "maintd", "cluster-a", always, st).Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick})
		if err != nil || !rep.TookOver || rep.PreviousOwner != "default@default" {
			t.Fatalf("takeover: err = %v, report %+v", err, rep)
		}

		clk.Advance(time.Hour)
	}

	owner := func() string {
		t.Helper()

		info, err := velero.Owner(ctx, "r")
		if err != nil {
			t.Fatal(err)
		}

		return info.Owner
	}

	takeOver()

	restarted := ownershipManager(t, clk, "maintd", "cluster-a", always, st)

	info, err := restarted.Owner(ctx, "r")
	if err != nil || !info.PreviousOwnerKnown || info.PreviousOwner != "default@default" {
		t.Fatalf("restarted daemon's view: %+v (%v), want previous owner default@default", info, err)
	}

	restarted.HandBackOnExit(ctx, passGuard)

	if got := owner(); got != "default@default" {
		t.Fatalf("after hand back on exit by a restarted daemon: owner %q, want default@default", got)
	}

	// The record is gone with the hand-back: nothing left to hand back.
	if _, err := ownershipManager(t, clk, "maintd", "cluster-a", always, st).HandBack(ctx, testLease(t, "r"), "r", ""); !errors.Is(err, ErrNothingToHandBack) {
		t.Fatalf("hand back after handing back: err = %v, want ErrNothingToHandBack", err)
	}

	takeOver()

	if _, err := ownershipManager(t, clk, "maintd", "cluster-a", always, st).HandBack(ctx, testLease(t, "r"), "r", ""); err != nil {
		t.Fatalf("owner hand-back by a restarted daemon: %v", err)
	}

	if got := owner(); got != "default@default" {
		t.Fatalf("after owner hand-back by a restarted daemon: owner %q, want default@default", got)
	}
}

// TestFlapGuardSurvivesRestart: the one-takeover-per-staleAfter rule counts
// from a takeover made before a restart on a new state directory.
func TestFlapGuardSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	st := newMemStorage(clk.Now)

	stale := Ownership{Policy: PolicyStale, StaleAfter: 48 * time.Hour}
	velero := ownershipManager(t, clk, "default", "default", Ownership{Policy: PolicyNever}, st)

	if _, err := velero.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	clk.Advance(72 * time.Hour)

	// An operator takes ownership (no maintenance), the old owner takes it
	// back an hour later, and the daemon restarts with an empty state
	// directory.
	if _, err := ownershipManager(t, clk, "maintd", "cluster-a", stale, st).TakeOwnership(ctx, testLease(t, "r"), "r"); err != nil {
		t.Fatal(err)
	}

	clk.Advance(time.Hour)

	if _, err := velero.TakeOwnership(ctx, testLease(t, "r"), "r"); err != nil {
		t.Fatal(err)
	}

	clk.Advance(time.Hour)

	restarted := ownershipManager(t, clk, "maintd", "cluster-a", stale, st)

	var notOwner *NotOwnerError
	if _, err := restarted.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); !errors.As(err, &notOwner) {
		t.Fatalf("2h after our takeover, owner idle 74h, after a restart: err = %v, want skipped by the flap guard", err)
	} else {
		t.Logf("skipped: %v", err)
	}

	clk.Advance(46 * time.Hour)

	if rep, err := restarted.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil || !rep.TookOver {
		t.Fatalf("48h after our takeover: err = %v, want a takeover", err)
	}
}
