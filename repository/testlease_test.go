package repository

import (
	"context"
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/lease"
)

// freeLeases is a lease backend for tests in which every lease is free.
type freeLeases struct{}

func (freeLeases) TryAcquire(context.Context, string, string, time.Duration) (time.Time, error) {
	return time.Now(), nil
}

func (freeLeases) Renew(context.Context, string, string, time.Duration) (time.Time, error) {
	return time.Now(), nil
}

func (freeLeases) Release(context.Context, string, string) error { return nil }

// testLease returns a valid lease on the named repository, released when
// the test ends.
func testLease(t testing.TB, name string) *lease.Held {
	t.Helper()

	lm, err := lease.New(lease.Options{Backend: freeLeases{}, Holder: "test", Duration: time.Hour, RenewInterval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}

	held, err := lm.Acquire(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { _ = held.Release(context.Background()) })

	return held
}

// passGuard is a HandBackOnExit guard that runs fn inside a free lease.
func passGuard(ctx context.Context, name string, fn func(context.Context, *lease.Held) error) error {
	lm, err := lease.New(lease.Options{Backend: freeLeases{}, Holder: "test", Duration: time.Hour, RenewInterval: time.Minute})
	if err != nil {
		return err
	}

	held, err := lm.Acquire(ctx, name)
	if err != nil {
		return err
	}
	defer held.Release(context.WithoutCancel(ctx)) //nolint:errcheck

	return fn(held.Context(), held)
}
