package repository

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/content"

	"github.com/kopia-maintd/kopia-maintd/lease"
)

// Activity is evidence, from the repository's own blobs, that a client
// other than this daemon is writing or was writing recently. It covers
// writers that no Kubernetes API can see, such as clients in other clusters
// sharing the bucket.
type Activity struct {
	// Kind is "session-marker" (an unflushed write session) or
	// "recent-write" (a pack or index blob of another session written within
	// the quiet period).
	Kind string `json:"kind"`
	Blob string `json:"blob"`
	// Age is how long ago the storage says the blob was written.
	Age     time.Duration `json:"age"`
	Session string        `json:"session,omitempty"`
	// Writer is the session's user@host where kopia can decode its marker.
	Writer string `json:"writer,omitempty"`
	// Dead, when set, says why this evidence is not a writer: a session
	// marker of this daemon's own session left by a process that is gone
	// (killed during a run) and so no longer writes. Such evidence is
	// reported, and does not refuse.
	Dead string `json:"dead,omitempty"`
}

// String describes the evidence in one line.
func (a Activity) String() string {
	s := fmt.Sprintf("%s %s written %s ago", a.Kind, a.Blob, a.Age.Round(time.Second))
	if a.Session != "" {
		s += " by session " + a.Session
	}

	if a.Writer != "" {
		s += " (" + a.Writer + ")"
	}

	if a.Dead != "" {
		s += ": not a writer: " + a.Dead
	}

	return s
}

// Activity kinds.
const (
	ActivitySessionMarker = "session-marker"
	ActivityRecentWrite   = "recent-write"
)

// writePrefixes are the blobs a writing client produces: data and metadata
// packs and uncompacted index blobs (epoch xn, legacy n). Compacted indexes
// and epoch markers come from maintenance only.
var writePrefixes = []blob.ID{content.PackBlobIDPrefixRegular, content.PackBlobIDPrefixSpecial, "xn", "n"}

// Activity lists the evidence of other writers in the repository: every
// session marker, and every pack or index blob written within quietPeriod
// by a session that is not one of this daemon's.
//
// held is the repository's lease when the caller holds it, else nil. Under
// a lease, a session marker of one of this daemon's own sessions (one that
// a process on this state directory opened) that the storage says was
// written before the lease was acquired is reported as Dead: every own
// session writes under the repository's lease and stops writing by that
// lease's deadline, so a marker older than the current lease belongs to a
// process that was killed before it could commit the session. Without a
// lease nothing proves that, and such a marker counts as a writer.
func (m *Manager) Activity(ctx context.Context, held *lease.Held, name string, quietPeriod time.Duration) ([]Activity, error) {
	s, err := m.open(ctx, name)
	if err != nil {
		return nil, err
	}
	defer s.Close()

	acts, err := m.activity(s.ctx, s.rep, name, quietPeriod, ownMarkers{deadBefore: held.Acquired()})
	if err != nil {
		return nil, fmt.Errorf("repository %q: look for other writers: %w", name, err)
	}

	return acts, nil
}

// ownMarkers says how activity treats session markers of this daemon's own
// sessions.
type ownMarkers struct {
	// all leaves every own marker out: during an unsafe run, the run's own
	// session marker is expected.
	all bool
	// deadBefore, when set, is when the current lease was acquired: own
	// markers the storage dates before it are reported as Dead.
	deadBefore time.Time
}

// activity is Activity on an open repository.
func (m *Manager) activity(ctx context.Context, dr repo.DirectRepository, name string, quietPeriod time.Duration, own ownMarkers) ([]Activity, error) {
	book := m.sessions(name)
	if err := book.load(); err != nil {
		return nil, err
	}

	now := m.opts.Now()

	var (
		out []Activity
		err error
	)

	// The session markers' payload names the writer. kopia decodes them on
	// its write manager, which the read-only interface does not expose but
	// every direct repository has.
	markers := map[content.SessionID]*content.SessionInfo{}

	if cm, ok := dr.(interface{ ContentManager() *content.WriteManager }); ok {
		if markers, err = cm.ContentManager().ListActiveSessions(ctx); err != nil {
			return nil, fmt.Errorf("list session markers: %w", err)
		}
	}

	err = dr.BlobReader().ListBlobs(ctx, content.BlobIDPrefixSession, func(bm blob.Metadata) error {
		sid := content.SessionIDFromBlobID(bm.BlobID)
		ours := book.ours(string(sid))

		if own.all && ours {
			return nil
		}

		a := Activity{Kind: ActivitySessionMarker, Blob: string(bm.BlobID), Age: now.Sub(bm.Timestamp), Session: string(sid)}
		if si := markers[sid]; si != nil {
			a.Writer = si.User + "@" + si.Host
		}

		if ours && !own.deadBefore.IsZero() && bm.Timestamp.Before(own.deadBefore) {
			a.Dead = fmt.Sprintf("a session of this daemon written before the current lease was acquired at %s, by a process that stopped without committing it",
				own.deadBefore.UTC().Round(time.Second).Format(time.RFC3339))
		}

		out = append(out, a)

		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list session markers: %w", err)
	}

	for _, prefix := range writePrefixes {
		err := dr.BlobReader().ListBlobs(ctx, prefix, func(bm blob.Metadata) error {
			age := now.Sub(bm.Timestamp)
			if age >= quietPeriod {
				return nil
			}

			sid := string(content.SessionIDFromBlobID(bm.BlobID))
			if sid != "" && book.ours(sid) {
				return nil
			}

			out = append(out, Activity{Kind: ActivityRecentWrite, Blob: string(bm.BlobID), Age: age, Session: sid})

			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list %q blobs: %w", prefix, err)
		}
	}

	sort.Slice(out, func(i, j int) bool { return out[i].Age < out[j].Age })

	return out, nil
}

// sessionBook remembers the write sessions this daemon (or a run-once on
// the same state directory) opened in a repository, so their packs are not
// taken for another writer's. kopia names every pack and index blob after
// its session (…-s<session>), and the storage wrapper sees every blob the
// daemon writes.
type sessionBook struct {
	file string

	mu       sync.Mutex
	sessions map[string]time.Time
}

// sessionMemory is how long a session is remembered: longer than any
// sensible quiet period.
const sessionMemory = 7 * 24 * time.Hour

func (m *Manager) sessions(name string) *sessionBook {
	m.mu.Lock()
	defer m.mu.Unlock()

	b := m.books[name]
	if b == nil {
		b = &sessionBook{file: filepath.Join(m.opts.StateDirectory, "sessions", name+".json"), sessions: map[string]time.Time{}}
		m.books[name] = b
	}

	return b
}

// load merges the sessions other processes on this state directory wrote.
func (b *sessionBook) load() error {
	var disk map[string]time.Time
	if _, err := readJSON(b.file, &disk); err != nil {
		return err
	}

	b.mu.Lock()
	defer b.mu.Unlock()

	for id, t := range disk {
		if t.After(b.sessions[id]) {
			b.sessions[id] = t
		}
	}

	return nil
}

func (b *sessionBook) ours(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()

	_, ok := b.sessions[id]

	return ok
}

// record remembers the session of a blob this process wrote. A new session
// is saved at once: it happens once per write session.
func (b *sessionBook) record(id blob.ID, now time.Time) {
	sid := string(content.SessionIDFromBlobID(id))
	if sid == "" {
		return
	}

	b.mu.Lock()
	_, known := b.sessions[sid]
	b.sessions[sid] = now

	if known {
		b.mu.Unlock()
		return
	}

	for id, t := range b.sessions {
		if now.Sub(t) > sessionMemory {
			delete(b.sessions, id)
		}
	}

	snapshot := make(map[string]time.Time, len(b.sessions))
	for id, t := range b.sessions {
		snapshot[id] = t
	}
	b.mu.Unlock()

	// Merge with what other processes saved since, then save.
	var disk map[string]time.Time
	if _, err := readJSON(b.file, &disk); err == nil {
		for id, t := range disk {
			if _, ok := snapshot[id]; !ok && now.Sub(t) <= sessionMemory {
				snapshot[id] = t
			}
		}
	}

	if err := writeJSON(b.file, snapshot, true); err != nil {
		fmt.Fprintf(os.Stderr, "kopia-maintd: save own write sessions: %v\n", err)
	}
}
