package repository

import (
	"context"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kopia/kopia/repo/blob"
)

// memStorage is an in-memory blob.Storage whose blob timestamps come from a
// clock the test controls. kopia compares blob timestamps with its own clock
// (the 5-minute skew check, pack and session ages), so a multi-day
// simulation needs both on the same fake clock.
type memStorage struct {
	now func() time.Time

	mu    sync.Mutex
	blobs map[blob.ID]memBlob

	puts, deletes int
}

type memBlob struct {
	data []byte
	ts   time.Time
}

func newMemStorage(now func() time.Time) *memStorage {
	return &memStorage{now: now, blobs: map[blob.ID]memBlob{}}
}

func (s *memStorage) GetCapacity(context.Context) (blob.Capacity, error) {
	return blob.Capacity{}, blob.ErrNotAVolume
}

func (s *memStorage) GetBlob(_ context.Context, id blob.ID, offset, length int64, out blob.OutputBuffer) error {
	s.mu.Lock()
	b, ok := s.blobs[id]
	s.mu.Unlock()

	if !ok {
		return blob.ErrBlobNotFound
	}

	out.Reset()

	if length < 0 {
		if offset > int64(len(b.data)) {
			return blob.ErrInvalidRange
		}

		_, err := out.Write(b.data[offset:])

		return err
	}

	if offset+length > int64(len(b.data)) {
		return blob.ErrInvalidRange
	}

	_, err := out.Write(b.data[offset : offset+length])

	return err
}

func (s *memStorage) GetMetadata(_ context.Context, id blob.ID) (blob.Metadata, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	b, ok := s.blobs[id]
	if !ok {
		return blob.Metadata{}, blob.ErrBlobNotFound
	}

	return blob.Metadata{BlobID: id, Length: int64(len(b.data)), Timestamp: b.ts}, nil
}

func (s *memStorage) PutBlob(_ context.Context, id blob.ID, data blob.Bytes, opts blob.PutOptions) error {
	var buf strings.Builder
	if _, err := data.WriteTo(&buf); err != nil {
		return err
	}

	s.mu.Lock()
	defer s.mu.Unlock()

	if opts.DoNotRecreate {
		if _, ok := s.blobs[id]; ok {
			return blob.ErrBlobAlreadyExists
		}
	}

	ts := s.now()
	if !opts.SetModTime.IsZero() {
		ts = opts.SetModTime
	}

	s.blobs[id] = memBlob{data: []byte(buf.String()), ts: ts}
	s.puts++

	if opts.GetModTime != nil {
		*opts.GetModTime = ts
	}

	return nil
}

func (s *memStorage) DeleteBlob(_ context.Context, id blob.ID) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	delete(s.blobs, id)
	s.deletes++

	return nil
}

func (s *memStorage) ListBlobs(ctx context.Context, prefix blob.ID, cb func(blob.Metadata) error) error {
	s.mu.Lock()

	var list []blob.Metadata

	for id, b := range s.blobs {
		if strings.HasPrefix(string(id), string(prefix)) {
			list = append(list, blob.Metadata{BlobID: id, Length: int64(len(b.data)), Timestamp: b.ts})
		}
	}
	s.mu.Unlock()

	sort.Slice(list, func(i, j int) bool { return list[i].BlobID < list[j].BlobID })

	for _, m := range list {
		if err := ctx.Err(); err != nil {
			return err
		}

		if err := cb(m); err != nil {
			return err
		}
	}

	return nil
}

// totalBytes sums the sizes of the blobs whose IDs start with prefix.
func (s *memStorage) totalBytes(prefix string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()

	var n int64

	for id, b := range s.blobs {
		if strings.HasPrefix(string(id), prefix) {
			n += int64(len(b.data))
		}
	}

	return n
}

func (s *memStorage) ConnectionInfo() blob.ConnectionInfo {
	return blob.ConnectionInfo{Type: "memory-test"}
}

func (s *memStorage) DisplayName() string               { return "memory" }
func (s *memStorage) Close(context.Context) error       { return nil }
func (s *memStorage) FlushCaches(context.Context) error { return nil }
func (s *memStorage) IsReadOnly() bool                  { return false }
func (s *memStorage) ExtendBlobRetention(context.Context, blob.ID, blob.ExtendOptions) error {
	return nil
}
