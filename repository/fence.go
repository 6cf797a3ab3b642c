package repository

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/kopia/kopia/repo/blob"
	"go.uber.org/zap"
)

// fence is the check every storage write and delete of a repository passes
// first while a lease guards it, and what it refused.
type fence struct {
	check   atomic.Pointer[func() error]
	refused atomic.Int64
	log     *zap.Logger
}

// Fence makes every blob write, delete and retention change of the
// repository call check first and fail, without touching storage, when it
// returns an error: a process whose lease can no longer be proven (paused,
// partitioned) performs no write, not even one already queued. The returned
// function removes the fence.
func (m *Manager) Fence(name string, check func() error) (remove func()) {
	f := m.fence(name)
	f.check.Store(&check)

	return func() { f.check.CompareAndSwap(&check, nil) }
}

// FencedOperations returns how many storage writes and deletes the fence of
// the repository refused since the process started.
func (m *Manager) FencedOperations(name string) int64 {
	return m.fence(name).refused.Load()
}

func (m *Manager) fence(name string) *fence {
	m.mu.Lock()
	defer m.mu.Unlock()

	f := m.fences[name]
	if f == nil {
		f = &fence{log: m.log.With(zap.String("repository", name))}
		m.fences[name] = f
	}

	return f
}

// pass returns an error when the fence refuses op on id.
func (f *fence) pass(op string, id blob.ID) error {
	c := f.check.Load()
	if c == nil {
		return nil
	}

	if err := (*c)(); err != nil {
		if f.refused.Add(1) == 1 || f.refused.Load()%100 == 0 {
			f.log.Error("storage write refused: the lease can no longer be proven",
				zap.String("op", op), zap.String("blob", string(id)), zap.Int64("refused_total", f.refused.Load()), zap.Error(err))
		}

		return fmt.Errorf("%s %s refused by the lease fence: %w", op, id, err)
	}

	return nil
}

func (s *trackingStorage) ExtendBlobRetention(ctx context.Context, id blob.ID, opts blob.ExtendOptions) error {
	if err := s.fence.pass("extend retention of", id); err != nil {
		return err
	}

	return s.Storage.ExtendBlobRetention(ctx, id, opts)
}
