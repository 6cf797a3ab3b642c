// Package lease makes sure at most one process maintains a repository at
// any moment, even across replicas sharing one identity, paused processes and
// network partitions.
//
// A lease is held through a Backend (a Kubernetes Lease object, or a lease
// blob in the repository's own storage) and renewed in the background.
// Acquiring returns a Held whose context is cancelled the moment the lease
// can no longer be proven: a renewal failed or came too late, another holder
// took it, or the WALL clock passed the lease's deadline (monotonic timers
// stop while a machine sleeps; restic's strict lock handling taught this).
// The deadline is also what the storage fencing wrapper checks before every
// write and delete, so a process resumed after a pause touches nothing.
package lease

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Backend stores leases. Implementations: Kubernetes (coordination.k8s.io
// Lease objects) and Blob (a lease blob in the repository's storage).
type Backend interface {
	// TryAcquire takes the named lease for holder when it is free or stale
	// (its holder stopped renewing for at least duration). It returns the
	// wall-clock time from which the lease counts as held: the time just
	// before the write that took it, so the holder's deadline never runs
	// past what the other side can see. A live lease of another holder
	// returns a *HeldError.
	TryAcquire(ctx context.Context, name, holder string, duration time.Duration) (time.Time, error)
	// Renew extends the holder's lease, returning like TryAcquire. It
	// returns an error wrapping ErrLost when another holder has it now.
	Renew(ctx context.Context, name, holder string, duration time.Duration) (time.Time, error)
	// Release gives the lease up, so the next holder need not wait.
	Release(ctx context.Context, name, holder string) error
}

// ErrLost reports a lease taken by another holder.
var ErrLost = errors.New("lease lost to another holder")

// ErrExpired reports a lease whose deadline passed before it was renewed.
var ErrExpired = errors.New("lease deadline passed")

// HeldError reports a lease another holder holds and renews.
type HeldError struct {
	Name   string
	Holder string
	// Age is how long ago the holder last renewed, as far as known.
	Age time.Duration
	// Retry is when, from now, the lease is worth trying again: one
	// renewal after it goes stale if its holder stops renewing now. Zero
	// when this process itself holds it.
	Retry time.Duration
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("lease %s is held by %s (renewed %s ago)", e.Name, e.Holder, e.Age.Round(time.Second))
}

// Skipped makes the scheduler count a run another process holds as skipped.
func (e *HeldError) Skipped() bool { return true }

// RetryAfter tells the scheduler to look again after Retry rather than only
// at the next slot: if the holder died during its run, the run is picked up
// once the lease is stale; if it finished, the next attempt finds the work
// done.
func (e *HeldError) RetryAfter() time.Duration { return e.Retry }

// Holding is a holder of a lease as a backend records it, for display.
type Holding struct {
	Holder string `json:"holder"`
	// Renewed is when the lease was last written for the holder, by the
	// backend's record: the storage's timestamp of a lease blob, or a
	// Kubernetes Lease's renewTime (the holder's own clock).
	Renewed time.Time `json:"renewed"`
}

// Inspector reads the holders of a lease without taking it. Both backends
// implement it.
type Inspector interface {
	Inspect(ctx context.Context, name string) ([]Holding, error)
}

// Inspect returns the holders the manager's backend records for the named
// lease: none when it is free, more than one only for claimants racing.
// Whether a holding is still live is for the caller to judge against the
// lease duration.
func (m *Manager) Inspect(ctx context.Context, name string) ([]Holding, error) {
	in, ok := m.opts.Backend.(Inspector)
	if !ok {
		return nil, errors.New("inspect lease: the backend cannot be inspected")
	}
	return in.Inspect(ctx, name)
}

// Duration returns the manager's lease duration.
func (m *Manager) Duration() time.Duration { return m.opts.Duration }
