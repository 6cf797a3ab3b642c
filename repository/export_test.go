package repository

import (
	"context"

	"github.com/kopia/kopia/repo/blob"
)

// CustomStorage returns a Storage backed by open, for tests that need a
// storage with a fake clock or injected faults.
func CustomStorage(open func(ctx context.Context) (blob.Storage, error)) Storage {
	return Storage{open: open}
}
