package lease

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Store holds the lease blobs of one repository, one blob per holder. The
// repository package implements it over the repository's own blob storage,
// under a name kopia neither reads nor deletes.
type Store interface {
	// List returns every lease blob of the repository.
	List(ctx context.Context) ([]Entry, error)
	// Put writes (or rewrites) holder's lease blob and returns its entry,
	// with the timestamp the storage gave the write.
	Put(ctx context.Context, holder string) (Entry, error)
	// Delete removes holder's lease blob; a missing blob is not an error.
	Delete(ctx context.Context, holder string) error
}

// Entry is one lease blob.
type Entry struct {
	Holder string
	// Written is the storage's timestamp of the blob's last write, on the
	// storage's clock.
	Written time.Time
}

// blobBackend keeps leases as blobs in the repository's own storage. The
// storage offers no compare-and-swap, so it works as restic's locks do:
// list, write our blob, wait for a settle delay, list again, and yield
// deterministically when another live lease is there.
//
// Whether a lease is live is judged by storage timestamps only: an entry is
// stale when the timestamp our own latest write got is at least duration
// after the entry's. The writer's clock never counts.
//
// Who yields to whom, as every party can tell it from the same listing:
//
//   - A claimant yields to any live entry that was already there when it
//     listed before writing (an incumbent, or a claimant that came first),
//     and to one of those rewritten since (a stale holder renewing late:
//     that holder then finds itself late and yields too, so nobody holds it
//     rather than two).
//   - Between claimants that did not see each other before writing (a race:
//     both listed, then both wrote), the earliest write wins, ties broken by
//     the holder string. The settle delay must exceed the time from a
//     claimant's write starting to its becoming visible, so both see both:
//     a claimant whose own write took the settle delay or longer to show
//     (it lists its blob before returning) yields, because a rival that
//     wrote later may have listed before it showed.
//   - A holder renewing loses to an entry written at least duration after
//     its previous write (someone took over the lease it let go stale), and
//     loses when its own rewrite came duration or more after the previous
//     one. An entry that was listed at our previous write and has been
//     rewritten since is a second holder renewing (a race nothing above
//     caught): of the two, the greater holder string yields, and both
//     reach the same verdict. Any other entry is a claimant that yields to
//     it.
//
// The storages the daemon configures (S3, filesystem) write conditionally,
// and NewRecord uses this protocol only where a storage turns out not to.
type blobBackend struct {
	store  func(name string) Store
	settle time.Duration
	clock  clock.Clock

	mu sync.Mutex
	// written is, per lease and holder, the storage timestamp of our last
	// write of the lease blob while holding it.
	written map[blobKey]time.Time
	// offset is, per lease, the storage's clock minus ours, learnt from
	// our last write. It only decides whether to write at all: the
	// decisions that count compare storage timestamps.
	offset map[string]time.Duration
	// listed is, per lease and holder, the other holders' blobs as our
	// last listing while holding showed them: a blob rewritten since is
	// another holder renewing.
	listed map[blobKey]map[string]time.Time
}

type blobKey struct{ name, holder string }

// NewBlob returns a Backend keeping each lease as blobs in the storage that
// store returns for the lease's name (the repository's). settle is the
// delay between writing our blob and listing again; it must exceed the
// time a write takes to become visible to other listers (a few seconds for
// object storage). clk reads the local wall clock (the value TryAcquire and
// Renew return) and times the settle delay.
func NewBlob(store func(name string) Store, settle time.Duration, clk clock.Clock) Backend {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &blobBackend{
		store:   store,
		settle:  settle,
		clock:   clk,
		written: map[blobKey]time.Time{},
		offset:  map[string]time.Duration{},
		listed:  map[blobKey]map[string]time.Time{},
	}
}

// TryAcquire implements Backend.
func (b *blobBackend) TryAcquire(ctx context.Context, name, holder string, duration time.Duration) (time.Time, error) {
	s := b.store(name)
	before, err := s.List(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("list lease blobs of %q: %w", name, err)
	}
	seen := map[string]time.Time{} // other holders' entries before our write
	offset, known := b.offsetOf(name)
	storageNow := b.clock.Now().Add(offset)
	for _, e := range before {
		if e.Holder == holder {
			continue
		}
		seen[e.Holder] = e.Written
		// Saves a write while a holder is clearly live. Only an estimate
		// of the storage's time, from the offset our last write showed:
		// a lease judged stale here is judged again below by the
		// timestamp our write gets. Until a first write has shown the
		// offset, write and judge by that.
		if age := storageNow.Sub(e.Written); known && age < duration {
			return time.Time{}, &HeldError{Name: name, Holder: e.Holder, Age: max(age, 0)}
		}
	}

	at := b.clock.Now()
	mine, err := s.Put(ctx, holder)
	if err != nil {
		return time.Time{}, fmt.Errorf("write lease blob of %q: %w", name, err)
	}
	b.learn(name, at, mine.Written)
	// The settle delay is only long enough if our own write became
	// visible within it: a write stamped early but shown late could be
	// missed by a claimant that wrote after it and listed before it
	// showed, and both would win.
	if took := b.clock.Since(at); b.settle > 0 && took >= b.settle {
		b.drop(ctx, s, holder)
		return time.Time{}, fmt.Errorf("write lease blob of %q: it took %v to become visible, not within the settle delay %v", name, took, b.settle)
	}
	if b.settle > 0 {
		select {
		case <-b.clock.After(b.settle):
		case <-ctx.Done():
			b.drop(ctx, s, holder)
			return time.Time{}, ctx.Err()
		}
	}
	after, err := s.List(ctx)
	if err != nil {
		b.drop(ctx, s, holder)
		return time.Time{}, fmt.Errorf("list lease blobs of %q: %w", name, err)
	}

	var stale []string
	found := false
	for _, e := range after {
		if e.Holder == holder {
			found = true
			continue
		}
		age := mine.Written.Sub(e.Written)
		if age >= duration {
			stale = append(stale, e.Holder)
			continue
		}
		_, incumbent := seen[e.Holder]
		if incumbent || beats(e, mine) {
			b.drop(ctx, s, holder)
			return time.Time{}, &HeldError{Name: name, Holder: e.Holder, Age: max(age, 0)}
		}
	}
	if !found {
		// Deleted by a holder that took it over in between: not ours.
		return time.Time{}, fmt.Errorf("lease blob of %q for %s vanished while acquiring", name, holder)
	}
	for _, h := range stale {
		// Best effort: a stale blob left behind only costs a listing.
		_ = s.Delete(ctx, h)
	}
	b.mu.Lock()
	b.written[blobKey{name, holder}] = mine.Written
	b.listed[blobKey{name, holder}] = others(after, holder, stale)
	b.mu.Unlock()
	return at, nil
}

// beats reports whether a wins over b between claimants that raced: the
// earlier write, then the smaller holder string.
func beats(a, b Entry) bool {
	if !a.Written.Equal(b.Written) {
		return a.Written.Before(b.Written)
	}
	return a.Holder < b.Holder
}

// Renew implements Backend.
func (b *blobBackend) Renew(ctx context.Context, name, holder string, duration time.Duration) (time.Time, error) {
	key := blobKey{name, holder}
	b.mu.Lock()
	prev, ok := b.written[key]
	b.mu.Unlock()
	if !ok {
		return time.Time{}, fmt.Errorf("renew lease blob of %q: not held by %s: %w", name, holder, ErrLost)
	}
	s := b.store(name)
	at := b.clock.Now()
	mine, err := s.Put(ctx, holder)
	if err != nil {
		return time.Time{}, fmt.Errorf("rewrite lease blob of %q: %w", name, err)
	}
	b.learn(name, at, mine.Written)
	lost := func(err error) (time.Time, error) {
		b.mu.Lock()
		delete(b.written, key)
		delete(b.listed, key)
		b.mu.Unlock()
		// Our fresh blob would keep others waiting for a lease we do not
		// hold.
		b.drop(ctx, s, holder)
		return time.Time{}, err
	}
	if gap := mine.Written.Sub(prev); gap >= duration {
		return lost(fmt.Errorf("lease blob of %q rewritten %v after the previous write, not within %v: %w", name, gap, duration, ErrLost))
	}
	entries, err := s.List(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("list lease blobs of %q: %w", name, err)
	}
	b.mu.Lock()
	before := b.listed[key]
	b.mu.Unlock()
	found := false
	for _, e := range entries {
		if e.Holder == holder {
			found = true
			continue
		}
		live := mine.Written.Sub(e.Written) < duration
		if live && e.Written.Sub(prev) >= duration {
			return lost(fmt.Errorf("lease blob of %q taken over by %s: %w", name, e.Holder, ErrLost))
		}
		// A blob listed last time and rewritten since is another holder
		// renewing: a claimant writes once and yields. Two holders
		// (a race the settle delay did not cover) both see it; the
		// greater holder string yields, so exactly one keeps the lease.
		if last, ok := before[e.Holder]; live && ok && e.Written.After(last) && holder > e.Holder {
			return lost(fmt.Errorf("lease blob of %q also held by %s: %w", name, e.Holder, ErrLost))
		}
	}
	if !found {
		return lost(fmt.Errorf("lease blob of %q for %s deleted by another holder: %w", name, holder, ErrLost))
	}
	b.mu.Lock()
	b.written[key] = mine.Written
	b.listed[key] = others(entries, holder, nil)
	b.mu.Unlock()
	return at, nil
}

// others returns the timestamps of the entries not holder's and not in
// skip.
func others(entries []Entry, holder string, skip []string) map[string]time.Time {
	out := map[string]time.Time{}
	for _, e := range entries {
		if e.Holder != holder && !slices.Contains(skip, e.Holder) {
			out[e.Holder] = e.Written
		}
	}
	return out
}

// Release implements Backend: it deletes our blob, which is ours alone.
func (b *blobBackend) Release(ctx context.Context, name, holder string) error {
	b.mu.Lock()
	delete(b.written, blobKey{name, holder})
	delete(b.listed, blobKey{name, holder})
	b.mu.Unlock()
	if err := b.store(name).Delete(ctx, holder); err != nil {
		return fmt.Errorf("delete lease blob of %q: %w", name, err)
	}
	return nil
}

func (b *blobBackend) offsetOf(name string) (time.Duration, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	d, ok := b.offset[name]
	return d, ok
}

// learn records the storage's clock offset from a write started at local
// time at that got the storage timestamp written.
func (b *blobBackend) learn(name string, at, written time.Time) {
	b.mu.Lock()
	b.offset[name] = written.Sub(at.Round(0))
	b.mu.Unlock()
}

// dropTimeout bounds the deletion of our blob after yielding.
const dropTimeout = 30 * time.Second

// drop deletes our blob after yielding, also when ctx is cancelled: a blob
// left behind makes others wait until it is stale.
func (b *blobBackend) drop(ctx context.Context, s Store, holder string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dropTimeout)
	defer cancel()
	_ = s.Delete(ctx, holder)
}

// Inspect implements Inspector: every lease blob of name.
func (b *blobBackend) Inspect(ctx context.Context, name string) ([]Holding, error) {
	entries, err := b.store(name).List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list lease blobs of %q: %w", name, err)
	}
	out := make([]Holding, 0, len(entries))
	for _, e := range entries {
		out = append(out, Holding{Holder: e.Holder, Renewed: e.Written})
	}
	return out, nil
}
