package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Record is the one lease record of a repository, kept in the repository's
// own storage and written only by compare-and-swap. The repository package
// implements it with S3 conditional writes (If-None-Match / If-Match on the
// object's ETag) and, for a filesystem, with exclusively created generation
// files.
type Record interface {
	// Read returns the record's contents, its version (the token a Swap
	// must name to replace it) and the storage's timestamp of its last
	// write. A missing record has version "" and no error.
	Read(ctx context.Context) (data []byte, version string, modified time.Time, err error)
	// Swap replaces the record with data if its version is still version
	// ("" creates it only if it does not exist) and returns the new
	// version. A record changed or created since returns an error whose
	// Conflict method reports true; a storage that cannot write
	// conditionally returns one whose Unsupported method reports true.
	Swap(ctx context.Context, version string, data []byte) (string, error)
}

// isConflict reports whether err says a conditional write found the record
// changed.
func isConflict(err error) bool {
	var c interface{ Conflict() bool }
	return errors.As(err, &c) && c.Conflict()
}

// isUnsupported reports whether err says the storage cannot write
// conditionally.
func isUnsupported(err error) bool {
	var u interface{ Unsupported() bool }
	return errors.As(err, &u) && u.Unsupported()
}

// recordData is the JSON a lease record holds.
type recordData struct {
	// Holder is the holder's identity; "" for a released lease.
	Holder string `json:"holder,omitempty"`
	// Token is new for every acquisition, so a holder recognises its own
	// write when the answer to it was lost.
	Token string `json:"token,omitempty"`
	// DurationMS is the holder's lease duration: observers wait the longer
	// of theirs and this.
	DurationMS int64 `json:"durationMs,omitempty"`
	// Written is the writer's local time, for people only: no decision
	// reads it.
	Written time.Time `json:"written,omitzero"`
}

// unreadableHolder names the holder of a record that cannot be decoded. Such
// a record counts as held until it stays unchanged for a duration, like any
// other.
const unreadableHolder = "(unreadable lease record)"

func decodeRecord(data []byte) recordData {
	var r recordData
	if err := json.Unmarshal(data, &r); err != nil {
		return recordData{Holder: unreadableHolder}
	}
	return r
}

// recordBackend keeps each lease as one record written by compare-and-swap,
// so that two holders are impossible rather than unlikely: of any number of
// writers naming the same version, the storage accepts exactly one.
//
// Whether a held record is stale is judged as client-go's leader election
// and the Kubernetes backend judge it: by how long THIS process has seen the
// same version unchanged, on its own (monotonic) clock. Neither the holder's
// clock nor the storage's counts, so no skew between them matters. The
// holder's deadline runs from just before its write; an observer can only
// see that write after it happened, so its count starts later and ends
// later. A takeover is itself a Swap naming the version judged stale: if the
// holder renewed in between, the Swap fails.
//
// Lease blobs of the older list-based protocol (one blob per holder, named
// LeaseBlobPrefix + holder by the repository package) are respected: a
// claimant yields to any such blob it has not seen unchanged for a duration,
// checks again after its own write (yielding to one that appeared
// meanwhile), and deletes the stale ones once it holds the lease.
//
// A storage that cannot write conditionally (reported by Swap) gets the
// list-based protocol (NewBlob) for that lease instead.
type recordBackend struct {
	record   func(name string) Record
	legacy   func(name string) Store
	fallback *blobBackend
	clock    clock.Clock

	mu sync.Mutex
	// mine is, per lease and holder, the record as our last write left it.
	mine map[blobKey]mineRecord
	// seen is, per lease, the record version last read and when this
	// process first saw it.
	seen map[string]versionSeen
	// legacySeen is, per lease and old-format blob, its timestamp last
	// listed and when this process first saw it.
	legacySeen map[blobKey]versionSeen
	// listed is the set of leases whose storage cannot write conditionally.
	listed map[string]bool
}

type mineRecord struct {
	version string
	token   string
}

type versionSeen struct {
	version string
	since   time.Time
}

// NewRecord returns a Backend keeping each lease as one record that
// record(name) reads and swaps. legacy(name) lists (and deletes) the lease
// blobs of the older list-based protocol in the same storage; it is also the
// store of the fallback protocol, with delay settle (see NewBlob), when the
// storage cannot write conditionally. clk measures how long a record stays
// unchanged and gives the times TryAcquire and Renew return.
func NewRecord(record func(name string) Record, legacy func(name string) Store, settle time.Duration, clk clock.Clock) Backend {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &recordBackend{
		record:     record,
		legacy:     legacy,
		fallback:   NewBlob(legacy, settle, clk).(*blobBackend),
		clock:      clk,
		mine:       map[blobKey]mineRecord{},
		seen:       map[string]versionSeen{},
		legacySeen: map[blobKey]versionSeen{},
		listed:     map[string]bool{},
	}
}

func (b *recordBackend) listMode(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.listed[name]
}

func (b *recordBackend) useList(name string) {
	b.mu.Lock()
	b.listed[name] = true
	b.mu.Unlock()
}

// recordAttempts bounds the reads and swaps of one TryAcquire: a conflict
// means someone wrote in between, which the next read shows.
const recordAttempts = 3

// TryAcquire implements Backend.
func (b *recordBackend) TryAcquire(ctx context.Context, name, holder string, duration time.Duration) (time.Time, error) {
	if b.listMode(name) {
		return b.fallback.TryAcquire(ctx, name, holder, duration)
	}
	rec := b.record(name)
	for range recordAttempts {
		data, version, _, err := rec.Read(ctx)
		if isUnsupported(err) {
			b.useList(name)
			return b.fallback.TryAcquire(ctx, name, holder, duration)
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("read lease record of %q: %w", name, err)
		}
		now := b.clock.Now()
		if version != "" {
			since := b.observe(name, version, now)
			cur := decodeRecord(data)
			if cur.Holder != "" && cur.Holder != holder {
				// The longer of ours and the holder's duration: a holder
				// configured with a longer one renews less often.
				d := max(duration, time.Duration(cur.DurationMS)*time.Millisecond)
				if age := now.Sub(since); age < d {
					return time.Time{}, &HeldError{Name: name, Holder: cur.Holder, Age: max(age, 0)}
				}
			}
		}
		before, err := b.checkLegacy(ctx, name, duration, now)
		if err != nil {
			return time.Time{}, err
		}

		token, err := newToken()
		if err != nil {
			return time.Time{}, fmt.Errorf("acquire lease record of %q: %w", name, err)
		}
		at := b.clock.Now()
		next, err := rec.Swap(ctx, version, encodeRecord(holder, token, duration, at))
		if isConflict(err) {
			continue // written in between: the next read shows by whom
		}
		if isUnsupported(err) {
			b.useList(name)
			return b.fallback.TryAcquire(ctx, name, holder, duration)
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("write lease record of %q: %w", name, err)
		}
		b.wrote(name, holder, next, token, at)

		// An older daemon may have written its blob after our listing; it
		// cannot see our conditional write as a lock, so one of us must
		// yield, and it is us (both yielding leaves the lease free).
		if he, err := b.newLegacy(ctx, name, before); he != nil || err != nil {
			rerr := b.Release(ctx, name, holder)
			if err != nil {
				return time.Time{}, errors.Join(err, rerr)
			}
			return time.Time{}, he
		}
		for h := range before {
			if before[h].stale {
				// Best effort: a stale blob left behind only costs a listing.
				_ = b.legacy(name).Delete(ctx, h)
			}
		}
		return at, nil
	}
	return time.Time{}, fmt.Errorf("acquire lease record of %q: still changing after %d attempts", name, recordAttempts)
}

// legacyEntry is an old-format lease blob as listed before our write.
type legacyEntry struct {
	written time.Time
	stale   bool
}

// checkLegacy lists the old-format lease blobs of name and returns a
// HeldError for one this process has not seen unchanged for duration, else
// every blob listed.
func (b *recordBackend) checkLegacy(ctx context.Context, name string, duration time.Duration, now time.Time) (map[string]legacyEntry, error) {
	entries, err := b.legacy(name).List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list lease blobs of %q: %w", name, err)
	}
	out := map[string]legacyEntry{}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range entries {
		key := blobKey{name, e.Holder}
		v := e.Written.UTC().Format(time.RFC3339Nano)
		o, ok := b.legacySeen[key]
		if !ok || o.version != v {
			o = versionSeen{version: v, since: now}
			b.legacySeen[key] = o
		}
		if age := now.Sub(o.since); age < duration {
			return nil, &HeldError{Name: name, Holder: e.Holder, Age: max(age, 0)}
		}
		out[e.Holder] = legacyEntry{written: e.Written, stale: true}
	}
	return out, nil
}

// newLegacy lists the old-format lease blobs again and returns a HeldError
// for one not in before or rewritten since.
func (b *recordBackend) newLegacy(ctx context.Context, name string, before map[string]legacyEntry) (*HeldError, error) {
	entries, err := b.legacy(name).List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list lease blobs of %q: %w", name, err)
	}
	for _, e := range entries {
		if old, ok := before[e.Holder]; !ok || !old.written.Equal(e.Written) {
			return &HeldError{Name: name, Holder: e.Holder}, nil
		}
	}
	return nil, nil
}

// Renew implements Backend: a Swap naming the version of our last write.
func (b *recordBackend) Renew(ctx context.Context, name, holder string, duration time.Duration) (time.Time, error) {
	if b.listMode(name) {
		return b.fallback.Renew(ctx, name, holder, duration)
	}
	key := blobKey{name, holder}
	b.mu.Lock()
	m, ok := b.mine[key]
	b.mu.Unlock()
	if !ok {
		return time.Time{}, fmt.Errorf("renew lease record of %q: not held by %s: %w", name, holder, ErrLost)
	}
	rec := b.record(name)
	at := b.clock.Now()
	next, err := rec.Swap(ctx, m.version, encodeRecord(holder, m.token, duration, at))
	if isConflict(err) {
		// Either someone took the lease, or an earlier renewal of ours
		// was written although its answer was lost: the token tells.
		data, version, _, rerr := rec.Read(ctx)
		if rerr != nil {
			return time.Time{}, fmt.Errorf("read lease record of %q: %w", name, rerr)
		}
		cur := decodeRecord(data)
		if version == "" || cur.Holder != holder || cur.Token != m.token {
			b.forget(key)
			other := cur.Holder
			if other == "" {
				other = "nobody (released or deleted)"
			}
			return time.Time{}, fmt.Errorf("lease record of %q now held by %s: %w", name, other, ErrLost)
		}
		at = b.clock.Now()
		next, err = rec.Swap(ctx, version, encodeRecord(holder, m.token, duration, at))
		if isConflict(err) {
			b.forget(key)
			return time.Time{}, fmt.Errorf("lease record of %q changed by another writer: %w", name, ErrLost)
		}
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("rewrite lease record of %q: %w", name, err)
	}
	b.wrote(name, holder, next, m.token, at)
	return at, nil
}

// Release implements Backend: it marks the record released, only if it is
// still ours.
func (b *recordBackend) Release(ctx context.Context, name, holder string) error {
	if b.listMode(name) {
		return b.fallback.Release(ctx, name, holder)
	}
	key := blobKey{name, holder}
	b.mu.Lock()
	m, ok := b.mine[key]
	delete(b.mine, key)
	b.mu.Unlock()
	if !ok {
		return nil
	}
	next, err := b.record(name).Swap(ctx, m.version, encodeRecord("", "", 0, b.clock.Now()))
	if isConflict(err) {
		return nil // taken over already: nothing of ours to give up
	}
	if err != nil {
		return fmt.Errorf("release lease record of %q: %w", name, err)
	}
	b.observe(name, next, b.clock.Now())
	return nil
}

// Inspect implements Inspector: the record's holder, and the holders of
// old-format lease blobs.
func (b *recordBackend) Inspect(ctx context.Context, name string) ([]Holding, error) {
	if b.listMode(name) {
		return b.fallback.Inspect(ctx, name)
	}
	data, version, modified, err := b.record(name).Read(ctx)
	if isUnsupported(err) {
		return b.fallback.Inspect(ctx, name)
	}
	if err != nil {
		return nil, fmt.Errorf("read lease record of %q: %w", name, err)
	}
	var out []Holding
	if version != "" {
		if cur := decodeRecord(data); cur.Holder != "" {
			out = append(out, Holding{Holder: cur.Holder, Renewed: modified})
		}
	}
	old, err := b.fallback.Inspect(ctx, name)
	if err != nil {
		return nil, err
	}
	return append(out, old...), nil
}

// observe records version as read at now and returns when this process
// first saw it.
func (b *recordBackend) observe(name, version string, now time.Time) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	o, ok := b.seen[name]
	if !ok || o.version != version {
		o = versionSeen{version: version, since: now}
		b.seen[name] = o
	}
	return o.since
}

// wrote records our write of version, started at at.
func (b *recordBackend) wrote(name, holder, version, token string, at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mine[blobKey{name, holder}] = mineRecord{version: version, token: token}
	b.seen[name] = versionSeen{version: version, since: at}
}

func (b *recordBackend) forget(key blobKey) {
	b.mu.Lock()
	delete(b.mine, key)
	b.mu.Unlock()
}

func encodeRecord(holder, token string, duration time.Duration, at time.Time) []byte {
	data, _ := json.Marshal(recordData{Holder: holder, Token: token, DurationMS: duration.Milliseconds(), Written: at.Round(0).UTC()})
	return data
}

func newToken() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}
