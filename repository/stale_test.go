package repository

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/kopia/kopia/repo/blob"
	"go.uber.org/zap/zaptest"
)

// TestStaleTakeoverWithoutFlapping: with policy stale (staleAfter 48h), the
// daemon leaves an active owner alone, takes over once the owner has
// completed no maintenance for 48h, does not take ownership back for 48h
// after the owner reclaims it, and then may take over again.
func TestStaleTakeoverWithoutFlapping(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	st := newMemStorage(clk.Now)
	open := func(context.Context) (blob.Storage, error) { return st, nil }

	newMgr := func(user, host string, policy Policy) *Manager {
		m, err := NewManager(Options{
			StateDirectory: filepath.Join(t.TempDir(), "state"),
			Identity:       Identity{Username: user, Hostname: host},
			Logger:         zaptest.NewLogger(t),
			Now:            clk.Now,
		}, []Spec{{
			Name: "r", Storage: CustomStorage(open), Password: staticPassword(testPassword), Create: true,
			Ownership: Ownership{Policy: policy, StaleAfter: 48 * time.Hour},
		}})
		if err != nil {
			t.Fatal(err)
		}

		return m
	}

	velero := newMgr("default", "default", PolicyNever)
	us := newMgr("maintd", "cluster-a", PolicyStale)

	run := func(m *Manager) (*Report, error) {
		return m.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick})
	}

	// Velero creates the repository and maintains it.
	if _, err := run(velero); err != nil {
		t.Fatalf("owner's run: %v", err)
	}

	clk.Advance(47 * time.Hour)

	var notOwner *NotOwnerError
	if _, err := run(us); !errors.As(err, &notOwner) {
		t.Fatalf("47h after the owner's last maintenance: err = %v, want skipped", err)
	}

	clk.Advance(time.Hour)

	rep, err := run(us)
	if err != nil || !rep.TookOver {
		t.Fatalf("48h after the owner's last maintenance: err = %v, report %+v, want a takeover", err, rep)
	}

	info, err := us.Owner(ctx, "r")
	if err != nil || info.PreviousOwner != "default@default" || !info.TookOverAt.Equal(clk.Now()) {
		t.Fatalf("remembered owner = %+v (%v)", info, err)
	}

	// The old owner takes ownership back and does no maintenance. Our
	// takeover run recorded activity, so 47h later the owner is not stale.
	clk.Advance(time.Hour)

	if _, err := velero.TakeOwnership(ctx, testLease(t, "r"), "r"); err != nil {
		t.Fatal(err)
	}

	clk.Advance(46 * time.Hour)

	if _, err := run(us); !errors.As(err, &notOwner) {
		t.Fatalf("owner idle 47h: err = %v, want skipped", err)
	}

	clk.Advance(2 * time.Hour)

	if rep, err := run(us); err != nil || !rep.TookOver {
		t.Fatalf("owner idle 49h: err = %v, want a second takeover", err)
	}

	// The flap guard alone: an operator's `owner take` records a takeover
	// but no maintenance, the old owner reclaims an hour later, and although
	// nobody completed maintenance for 58h, the daemon waits until 48h after
	// that takeover before taking ownership again.
	clk.Advance(10 * time.Hour)

	if _, err := velero.TakeOwnership(ctx, testLease(t, "r"), "r"); err != nil {
		t.Fatal(err)
	}

	clk.Advance(time.Hour)

	if _, err := us.TakeOwnership(ctx, testLease(t, "r"), "r"); err != nil {
		t.Fatal(err)
	}

	clk.Advance(time.Hour)

	if _, err := velero.TakeOwnership(ctx, testLease(t, "r"), "r"); err != nil {
		t.Fatal(err)
	}

	clk.Advance(46 * time.Hour) // 47h after our takeover; last maintenance 58h ago

	if _, err := run(us); !errors.As(err, &notOwner) || notOwner.Reason == "" {
		t.Fatalf("47h after our last takeover with the owner idle 58h: err = %v, want skipped by the flap guard", err)
	} else {
		t.Logf("skipped: %v", err)
	}

	clk.Advance(time.Hour)

	if rep, err := run(us); err != nil || !rep.TookOver {
		t.Fatalf("48h after our last takeover: err = %v, want a takeover", err)
	}
}
