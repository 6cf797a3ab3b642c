package repository

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kopia/kopia/fs"
	"github.com/kopia/kopia/fs/virtualfs"
	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/manifest"
	"github.com/kopia/kopia/repo/object"
	"github.com/kopia/kopia/snapshot"
	"github.com/kopia/kopia/snapshot/policy"
	"github.com/kopia/kopia/snapshot/snapshotfs"
	"github.com/kopia/kopia/snapshot/upload"
)

const testPassword = "correct horse battery staple"

// testClient is another kopia client of a repository: it writes, deletes and
// reads back snapshots the way a backup tool would, under its own identity.
type testClient struct {
	t    testing.TB
	ctx  context.Context
	rep  repo.Repository
	user string
	// want maps a snapshot to the SHA-256 of each of its files.
	want map[manifest.ID]map[string][32]byte
}

var clientSeq atomic.Int64

// newTestClient connects a kopia client to st. now may be nil (wall clock).
func newTestClient(t testing.TB, st blob.Storage, password, user, host string, now func() time.Time) *testClient {
	t.Helper()

	registerHandleType()

	ctx := context.Background()
	handle := fmt.Sprintf("test-client-%d", clientSeq.Add(1))
	handles.Store(handle, func(context.Context) (blob.Storage, error) { return st, nil })
	t.Cleanup(func() { handles.Delete(handle) })

	cfg := filepath.Join(t.TempDir(), "client.config")
	if err := repo.Connect(ctx, cfg, &handleStorage{Storage: st, handle: handle}, password, &repo.ConnectOptions{
		ClientOptions: repo.ClientOptions{Username: user, Hostname: host},
	}); err != nil {
		t.Fatalf("connect test client: %v", err)
	}

	r, err := repo.Open(ctx, cfg, password, &repo.Options{TimeNowFunc: now, OnFatalError: func(err error) { t.Errorf("fatal: %v", err) }})
	if err != nil {
		t.Fatalf("open test client: %v", err)
	}

	t.Cleanup(func() { _ = r.Close(ctx) })

	return &testClient{t: t, ctx: ctx, rep: r, user: user, want: map[manifest.ID]map[string][32]byte{}}
}

// snapshot writes files as one snapshot of source path and returns its ID.
func (c *testClient) snapshot(path string, files map[string][]byte) manifest.ID {
	c.t.Helper()

	var entries []fs.Entry

	sums := map[string][32]byte{}

	for name, data := range files {
		entries = append(entries, virtualfs.StreamingFileFromReader(name, io.NopCloser(bytes.NewReader(data))))
		sums[name] = sha256.Sum256(data)
	}

	src := snapshot.SourceInfo{UserName: c.user, Host: "client", Path: path}

	var id manifest.ID

	err := repo.WriteSession(c.ctx, c.rep, repo.WriteSessionOptions{Purpose: "test snapshot"}, func(ctx context.Context, w repo.RepositoryWriter) error {
		u := upload.NewUploader(w)
		pol := policy.BuildTree(nil, policy.DefaultPolicy)

		man, err := u.Upload(ctx, virtualfs.NewStaticDirectory("root", entries), pol, src)
		if err != nil {
			return err
		}

		id, err = snapshot.SaveSnapshot(ctx, w, man)

		return err
	})
	if err != nil {
		c.t.Fatalf("write snapshot: %v", err)
	}

	c.want[id] = sums

	return id
}

// deleteSnapshot deletes a snapshot manifest, as `kopia snapshot delete` does.
func (c *testClient) deleteSnapshot(id manifest.ID) {
	c.t.Helper()

	err := repo.WriteSession(c.ctx, c.rep, repo.WriteSessionOptions{Purpose: "test delete"}, func(ctx context.Context, w repo.RepositoryWriter) error {
		return w.DeleteManifest(ctx, id)
	})
	if err != nil {
		c.t.Fatalf("delete snapshot: %v", err)
	}

	delete(c.want, id)
}

// refresh makes the client see what others wrote (index blobs).
func (c *testClient) refresh() {
	c.t.Helper()

	if err := c.rep.Refresh(c.ctx); err != nil {
		c.t.Fatalf("refresh: %v", err)
	}
}

// verifyAll reads back every file of every live snapshot and compares it
// with what was written.
func (c *testClient) verifyAll() {
	c.t.Helper()
	c.refresh()

	for id, sums := range c.want {
		man, err := snapshot.LoadSnapshot(c.ctx, c.rep, id)
		if err != nil {
			c.t.Fatalf("load snapshot %v: %v", id, err)
		}

		root, err := snapshotfs.SnapshotRoot(c.rep, man)
		if err != nil {
			c.t.Fatalf("snapshot root %v: %v", id, err)
		}

		dir, ok := root.(fs.Directory)
		if !ok {
			c.t.Fatalf("snapshot %v root is not a directory", id)
		}

		for name, want := range sums {
			e, err := dir.Child(c.ctx, name)
			if err != nil {
				c.t.Fatalf("snapshot %v: file %s: %v", id, name, err)
			}

			f, ok := e.(fs.File)
			if !ok {
				c.t.Fatalf("snapshot %v: %s is not a file", id, name)
			}

			r, err := f.Open(c.ctx)
			if err != nil {
				c.t.Fatalf("snapshot %v: open %s: %v", id, name, err)
			}

			h := sha256.New()
			_, err = io.Copy(h, r)
			r.Close() //nolint:errcheck

			if err != nil {
				c.t.Fatalf("snapshot %v: read %s: %v", id, name, err)
			}

			if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
				c.t.Fatalf("snapshot %v: file %s does not read back intact", id, name)
			}
		}
	}
}

// randomBytes returns n bytes that do not deduplicate or compress.
func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	x := uint64(seed)*0x9E3779B97F4A7C15 + 1

	for i := 0; i+8 <= n; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17

		for j := 0; j < 8; j++ {
			b[i+j] = byte(x >> (8 * j))
		}
	}

	return b
}

func objectWriterOptions() object.WriterOptions {
	return object.WriterOptions{Description: "test"}
}
