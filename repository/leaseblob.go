package repository

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/kopia/kopia/repo/blob"
)

// LeaseBlobPrefix starts the names of lease blobs in a repository's storage.
// No kopia task lists or deletes blobs under it: maintenance touches p, q, s
// (packs, sessions), x and n (indexes), _log_ (logs) and the kopia.* blobs.
const LeaseBlobPrefix = "kopia-maintd-lease-"

// LeaseBlob is a lease blob as the storage lists it.
type LeaseBlob struct {
	Holder string
	// Written is the storage's timestamp of the blob: leases go stale by
	// the storage's clock, never by the writer's.
	Written time.Time
}

var unsafeHolderChars = regexp.MustCompile(`[^a-z0-9.-]`)

func leaseBlobID(holder string) blob.ID {
	return blob.ID(LeaseBlobPrefix + unsafeHolderChars.ReplaceAllString(strings.ToLower(holder), "-"))
}

// leaseStorage opens the repository's raw blob storage, outside kopia and
// outside the fencing wrapper: renewing the lease must work exactly when
// maintenance writes are fenced.
func (m *Manager) leaseStorage(ctx context.Context, name string) (blob.Storage, error) {
	spec, err := m.spec(name)
	if err != nil {
		return nil, err
	}

	// With create, the lease is taken before the repository exists: the
	// storage must be created (a filesystem directory) for the lease blob.
	st, err := spec.Storage.openBlobStorage(ctx, spec.Create)
	if err != nil {
		return nil, fmt.Errorf("repository %q: open %s: %w", name, spec.Storage.Location(), err)
	}

	return st, nil
}

// LeaseBlobs lists the repository's lease blobs of the list-based
// protocol (the lease record, LeaseRecordBlob, is not one).
func (m *Manager) LeaseBlobs(ctx context.Context, name string) ([]LeaseBlob, error) {
	st, err := m.leaseStorage(ctx, name)
	if err != nil {
		return nil, err
	}
	defer st.Close(ctx) //nolint:errcheck

	var out []LeaseBlob

	err = st.ListBlobs(ctx, LeaseBlobPrefix, func(bm blob.Metadata) error {
		holder := strings.TrimPrefix(string(bm.BlobID), LeaseBlobPrefix)
		// The lease record and its probe are no holder's blob: holder
		// names never contain '_'.
		if strings.HasPrefix(holder, "_") {
			return nil
		}

		out = append(out, LeaseBlob{Holder: holder, Written: bm.Timestamp})

		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("repository %q: list lease blobs: %w", name, err)
	}

	return out, nil
}

// PutLeaseBlob writes (or rewrites) the holder's lease blob and returns it
// with the storage's timestamp.
func (m *Manager) PutLeaseBlob(ctx context.Context, name, holder string) (LeaseBlob, error) {
	st, err := m.leaseStorage(ctx, name)
	if err != nil {
		return LeaseBlob{}, err
	}
	defer st.Close(ctx) //nolint:errcheck

	host, _ := os.Hostname()

	payload, err := json.Marshal(map[string]any{"holder": holder, "host": host, "pid": os.Getpid(), "localTime": time.Now().UTC()})
	if err != nil {
		return LeaseBlob{}, err
	}

	id := leaseBlobID(holder)

	if err := st.PutBlob(ctx, id, byteSlice(payload), blob.PutOptions{}); err != nil {
		return LeaseBlob{}, fmt.Errorf("repository %q: write lease blob: %w", name, err)
	}

	// Our write time must come from the same source as the other holders'
	// (a listing): S3 metadata lookups round to whole seconds where
	// listings carry milliseconds, and mixing the two made two writers in
	// the same second each believe it wrote first.
	var written time.Time

	err = st.ListBlobs(ctx, id, func(bm blob.Metadata) error {
		if bm.BlobID == id {
			written = bm.Timestamp
		}

		return nil
	})
	if err != nil {
		return LeaseBlob{}, fmt.Errorf("repository %q: read lease blob time: %w", name, err)
	}

	if written.IsZero() {
		return LeaseBlob{}, fmt.Errorf("repository %q: lease blob %s not listed after writing it", name, id)
	}

	return LeaseBlob{Holder: strings.TrimPrefix(string(id), LeaseBlobPrefix), Written: written}, nil
}

// DeleteLeaseBlob removes the holder's lease blob; a missing one is fine.
func (m *Manager) DeleteLeaseBlob(ctx context.Context, name, holder string) error {
	st, err := m.leaseStorage(ctx, name)
	if err != nil {
		return err
	}
	defer st.Close(ctx) //nolint:errcheck

	if err := st.DeleteBlob(ctx, leaseBlobID(holder)); err != nil && !errors.Is(err, blob.ErrBlobNotFound) {
		return fmt.Errorf("repository %q: delete lease blob: %w", name, err)
	}

	return nil
}

// LeaseHolderName is how a holder identity appears in lease blob names.
func LeaseHolderName(holder string) string {
	return strings.TrimPrefix(string(leaseBlobID(holder)), LeaseBlobPrefix)
}

// byteSlice is a blob.Bytes over a byte slice.
type byteSlice []byte

func (b byteSlice) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(b)
	return int64(n), err
}

func (b byteSlice) Length() int { return len(b) }

func (b byteSlice) Reader() io.ReadSeekCloser { return nopCloser{bytes.NewReader(b)} }

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }
