package repository

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/kopia/kopia/repo/blob"
	"go.uber.org/zap"

	"github.com/kopia-maintd/kopia-maintd/lease"
)

// ErrNoLease reports a write refused because no valid lease on the
// repository guards it: none was given, it is another repository's, or it
// can no longer be proven (expired, lost, released).
var ErrNoLease = errors.New("no valid lease on the repository")

// fenceStats counts, per repository, the storage operations fences refused.
type fenceStats struct {
	refused atomic.Int64
	log     *zap.Logger
}

// runFence guards the storage of one leased operation (a maintenance run,
// an ownership change, a repository creation). It is built from the lease
// the operation was given and travels in the context the repository is
// opened with, so the storage wrapper kopia writes through finds it: a
// storage opened without one refuses every write.
type runFence struct {
	held  *lease.Held
	stats *fenceStats
	// deletes, set for safety=none runs, holds back the run's first blob
	// delete until a synchronous re-check passed.
	deletes *deleteGate
}

type fenceKey struct{}

// withFence returns ctx carrying f for the storage opened under it.
func withFence(ctx context.Context, f *runFence) context.Context {
	return context.WithValue(ctx, fenceKey{}, f)
}

// fenceFrom returns the fence ctx carries, or nil.
func fenceFrom(ctx context.Context) *runFence {
	f, _ := ctx.Value(fenceKey{}).(*runFence)
	return f
}

// leaseFence checks that held is a valid lease on the named repository and
// returns the fence of one operation under it.
func (m *Manager) leaseFence(name string, held *lease.Held) (*runFence, error) {
	if held == nil {
		return nil, fmt.Errorf("repository %q: %w: no lease given", name, ErrNoLease)
	}

	if err := held.Check(); err != nil {
		return nil, fmt.Errorf("repository %q: %w: %w", name, ErrNoLease, err)
	}

	if held.Name() != name {
		return nil, fmt.Errorf("repository %q: %w: the lease given is for %q", name, ErrNoLease, held.Name())
	}

	return &runFence{held: held, stats: m.fenceStats(name)}, nil
}

// leased returns ctx carrying the fence of one operation under held,
// bounded by the lease, or an error wrapping ErrNoLease when held is not a
// valid lease on the named repository. Call done when the operation ends.
func (m *Manager) leased(ctx context.Context, held *lease.Held, name string) (_ context.Context, done context.CancelFunc, _ error) {
	f, err := m.leaseFence(name, held)
	if err != nil {
		return nil, nil, err
	}

	ctx, done = held.Bound(withFence(ctx, f))

	return ctx, done, nil
}

// Leased returns ctx carrying the fence of one operation under held, for
// the repository's own records that callers write outside Run (the
// safety=none audit record): it refuses with ErrNoLease, like Run, when
// held is not a valid lease on the named repository. Call done when the
// operation ends.
func (m *Manager) Leased(ctx context.Context, held *lease.Held, name string) (_ context.Context, done context.CancelFunc, _ error) {
	return m.leased(ctx, held, name)
}

// FencedOperations returns how many storage writes and deletes the fences
// of the repository refused since the process started.
func (m *Manager) FencedOperations(name string) int64 {
	return m.fenceStats(name).refused.Load()
}

func (m *Manager) fenceStats(name string) *fenceStats {
	m.mu.Lock()
	defer m.mu.Unlock()

	f := m.fences[name]
	if f == nil {
		f = &fenceStats{log: m.log.With(zap.String("repository", name))}
		m.fences[name] = f
	}

	return f
}

// pass returns an error when the fence refuses op on id: always without a
// fence (nil f), and when the lease can no longer be proven.
func (f *runFence) pass(stats *fenceStats, op string, id blob.ID) error {
	var err error

	if f == nil {
		err = fmt.Errorf("%w: the storage was opened outside a leased operation", ErrNoLease)
	} else if cerr := f.held.Check(); cerr != nil {
		err = fmt.Errorf("%w: %w", ErrNoLease, cerr)
	}

	if err == nil {
		return nil
	}

	if n := stats.refused.Add(1); n == 1 || n%100 == 0 {
		stats.log.Error("storage write refused: the lease can no longer be proven",
			zap.String("op", op), zap.String("blob", string(id)), zap.Int64("refused_total", n), zap.Error(err))
	}

	return fmt.Errorf("%s %s refused by the lease fence: %w", op, id, err)
}

// bound derives the context of one storage call: it ends when the lease
// ends (lost, released, or its deadline passed by the lease's clock), also
// when kopia passed a context that never ends (context.WithoutCancel), so
// no call of a leased operation outlives its lease. Without a fence (a
// read-only open) ctx is used as it is.
func (f *runFence) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if f == nil {
		return ctx, func() {}
	}

	return f.held.Bound(ctx)
}

// deleteGate holds back the first blob delete of a safety=none run until
// check, a synchronous re-check of the repository and of Kubernetes, has
// passed; a failed check refuses that delete and every later one. It is the
// second line behind the re-check before snapshot GC: whatever path kopia
// takes to its first delete, that delete waits for fresh evidence.
type deleteGate struct {
	mu sync.Mutex
	// check is set once the run's writer exists; nil refuses.
	check  func(ctx context.Context) error
	passed bool
	err    error
}

// setCheck installs the re-check.
func (g *deleteGate) setCheck(check func(ctx context.Context) error) {
	g.mu.Lock()
	defer g.mu.Unlock()

	g.check = check
}

// pass runs the re-check on the first call and returns its verdict, the
// same for every later call. Concurrent deletes wait for the first one's
// re-check.
func (g *deleteGate) pass(ctx context.Context) error {
	if g == nil {
		return nil
	}

	g.mu.Lock()
	defer g.mu.Unlock()

	switch {
	case g.err != nil:
		return g.err
	case g.passed:
		return nil
	case g.check == nil:
		g.err = errors.New("safety=none delete before the re-check could run")
		return g.err
	}

	if err := g.check(ctx); err != nil {
		g.err = fmt.Errorf("safety=none re-check before the first delete: %w", err)
		return g.err
	}

	g.passed = true

	return nil
}

// fencedStorage puts the fence of a leased operation on every call: writes,
// deletes and retention changes pass the fence first, and every call, reads
// included, runs under a context bounded by the lease. A repository is
// created and connected through it, kopia's runs write through it (inside a
// trackingStorage), and so do the daemon's own records.
type fencedStorage struct {
	blob.Storage
	fence *runFence
	stats *fenceStats
}

func (s *fencedStorage) PutBlob(ctx context.Context, id blob.ID, data blob.Bytes, opts blob.PutOptions) error {
	if err := s.fence.pass(s.stats, "write", id); err != nil {
		return err
	}

	ctx, done := s.fence.bound(ctx)
	defer done()

	return s.Storage.PutBlob(ctx, id, data, opts)
}

func (s *fencedStorage) DeleteBlob(ctx context.Context, id blob.ID) error {
	if err := s.fence.pass(s.stats, "delete", id); err != nil {
		return err
	}

	ctx, done := s.fence.bound(ctx)
	defer done()

	return s.Storage.DeleteBlob(ctx, id)
}

func (s *fencedStorage) ExtendBlobRetention(ctx context.Context, id blob.ID, opts blob.ExtendOptions) error {
	if err := s.fence.pass(s.stats, "extend retention of", id); err != nil {
		return err
	}

	ctx, done := s.fence.bound(ctx)
	defer done()

	return s.Storage.ExtendBlobRetention(ctx, id, opts)
}

func (s *fencedStorage) GetBlob(ctx context.Context, id blob.ID, offset, length int64, output blob.OutputBuffer) error {
	ctx, done := s.fence.bound(ctx)
	defer done()

	return s.Storage.GetBlob(ctx, id, offset, length, output)
}

func (s *fencedStorage) GetMetadata(ctx context.Context, id blob.ID) (blob.Metadata, error) {
	ctx, done := s.fence.bound(ctx)
	defer done()

	return s.Storage.GetMetadata(ctx, id)
}

func (s *fencedStorage) ListBlobs(ctx context.Context, prefix blob.ID, cb func(blob.Metadata) error) error {
	ctx, done := s.fence.bound(ctx)
	defer done()

	return s.Storage.ListBlobs(ctx, prefix, cb)
}

func (s *fencedStorage) GetCapacity(ctx context.Context) (blob.Capacity, error) {
	ctx, done := s.fence.bound(ctx)
	defer done()

	return s.Storage.GetCapacity(ctx)
}

func (s *fencedStorage) FlushCaches(ctx context.Context) error {
	ctx, done := s.fence.bound(ctx)
	defer done()

	return s.Storage.FlushCaches(ctx)
}
