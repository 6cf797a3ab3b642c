package lease

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	testclock "k8s.io/utils/clock/testing"
)

// recErr is what memRecord's Swap reports, as the repository package does.
type recErr struct{ conflict, unsupported bool }

func (e *recErr) Error() string {
	if e.unsupported {
		return "no conditional writes"
	}
	return "record changed"
}
func (e *recErr) Conflict() bool    { return e.conflict }
func (e *recErr) Unsupported() bool { return e.unsupported }

// memRecord is an in-memory lease record with compare-and-swap, its
// timestamps from a fake clock.
type memRecord struct {
	clk *testclock.FakeClock

	mu       sync.Mutex
	data     []byte
	version  int
	modified time.Time
	swaps    int
}

func (r *memRecord) Read(context.Context) ([]byte, string, time.Time, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.version == 0 {
		return nil, "", time.Time{}, nil
	}
	return slices.Clone(r.data), strconv.Itoa(r.version), r.modified, nil
}

func (r *memRecord) Swap(_ context.Context, version string, data []byte) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := ""
	if r.version != 0 {
		cur = strconv.Itoa(r.version)
	}
	if version != cur {
		return "", fmt.Errorf("swap: %w", &recErr{conflict: true})
	}
	r.version++
	r.swaps++
	r.data, r.modified = slices.Clone(data), r.clk.Now()
	return strconv.Itoa(r.version), nil
}

// holder returns the holder the record names, "" when free.
func (r *memRecord) holder() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return decodeRecord(r.data).Holder
}

// recView is one process' access to a memRecord: beforeSwap runs before
// each Swap reaches the record, failSwap may fail it (before, or after it
// was applied: an answer lost on the way back).
type recView struct {
	r          *memRecord
	beforeSwap func()
	failSwap   func() (err error, applied bool)
}

func (v *recView) Read(ctx context.Context) ([]byte, string, time.Time, error) {
	return v.r.Read(ctx)
}

func (v *recView) Swap(ctx context.Context, version string, data []byte) (string, error) {
	if v.beforeSwap != nil {
		v.beforeSwap()
	}
	if v.failSwap != nil {
		if err, applied := v.failSwap(); err != nil {
			if applied {
				_, _ = v.r.Swap(ctx, version, data)
			}
			return "", err
		}
	}
	return v.r.Swap(ctx, version, data)
}

func newTestRecord(rec Record, st *memStorage, clk *testclock.FakeClock) Backend {
	return NewRecord(func(string) Record { return rec }, st.store(nil), time.Second, clk)
}

// TestRecordDelayedWrite: b's write to take a free lease is on its way
// (stamped before a's, shown after a's settle would have passed) while a
// takes the lease. The storage evaluates b's condition when the write
// lands: b is refused and exactly one holder remains; renewals agree.
func TestRecordDelayedWrite(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	rec := &memRecord{clk: clk}
	started, land := make(chan struct{}), make(chan struct{})
	var once sync.Once
	slow := &recView{r: rec, beforeSwap: func() { once.Do(func() { close(started); <-land }) }}
	b := newTestRecord(slow, st, clk)
	a := newTestRecord(rec, st, clk)

	bErr := make(chan error, 1)
	go func() { _, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration); bErr <- err }()
	<-started // b read the record (none) and its write is in flight

	clk.Step(10 * time.Millisecond)
	if _, err := a.TryAcquire(context.Background(), "repo", "a", blobDuration); err != nil {
		t.Fatalf("a: %v", err)
	}
	clk.Step(2 * time.Second)
	close(land)
	heldBy(t, <-bErr, "a")
	if h := rec.holder(); h != "a" {
		t.Fatalf("record names %q, want a", h)
	}

	clk.Step(15 * time.Second)
	if _, err := a.Renew(context.Background(), "repo", "a", blobDuration); err != nil {
		t.Errorf("a's renewal: %v", err)
	}
	if _, err := b.Renew(context.Background(), "repo", "b", blobDuration); !errors.Is(err, ErrLost) {
		t.Errorf("b's renewal: %v, want ErrLost", err)
	}
	hs, err := b.(Inspector).Inspect(context.Background(), "repo")
	if err != nil || len(hs) != 1 || hs[0].Holder != "a" || !hs[0].Renewed.Equal(clk.Now()) {
		t.Errorf("Inspect = %+v, %v; want only a, renewed at %v", hs, err, clk.Now())
	}
}

// TestRecordRacingAcquirers: many processes try to take one lease at once,
// over and over, each holding it briefly and releasing it. At no instant
// do two hold it, and every one of them gets it at some point.
func TestRecordRacingAcquirers(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	rec := &memRecord{clk: clk}
	const racers, rounds = 16, 40
	var active atomic.Int32
	var overlaps atomic.Int32
	wins := make([]int, racers)
	var wg sync.WaitGroup
	for i := range racers {
		// Yield before each write so reads and writes interleave.
		view := &recView{r: rec, beforeSwap: runtime.Gosched}
		b := newTestRecord(view, st, clk)
		holder := fmt.Sprintf("h%02d", i)
		wg.Go(func() {
			for range rounds {
				if _, err := b.TryAcquire(context.Background(), "repo", holder, blobDuration); err != nil {
					if _, ok := errors.AsType[*HeldError](err); !ok {
						t.Errorf("%s: %v", holder, err)
						return
					}
					runtime.Gosched()
					continue
				}
				if n := active.Add(1); n > 1 {
					overlaps.Add(1)
				}
				wins[i]++
				runtime.Gosched()
				if _, err := b.Renew(context.Background(), "repo", holder, blobDuration); err != nil {
					t.Errorf("%s renewing: %v", holder, err)
				}
				active.Add(-1)
				if err := b.Release(context.Background(), "repo", holder); err != nil {
					t.Errorf("%s releasing: %v", holder, err)
				}
			}
		})
	}
	wg.Wait()
	if n := overlaps.Load(); n != 0 {
		t.Fatalf("%d times two racers held the lease at once", n)
	}
	total := 0
	for _, w := range wins {
		total += w
	}
	if total == 0 {
		t.Fatal("nobody ever took the lease")
	}
	t.Logf("%d acquisitions among %d racers, %d swaps", total, racers, rec.swaps)
}

// TestRecordStale: a holder that stops renewing is taken over exactly one
// duration after the claimant first saw its last write, on the claimant's
// clock, however far the holder's clock is off; the holder's next renewal
// finds the lease lost. A renewing holder is never taken over.
func TestRecordStale(t *testing.T) {
	for _, offset := range []time.Duration{0, 3 * time.Hour, -3 * time.Hour} {
		t.Run(offset.String(), func(t *testing.T) {
			clk := testclock.NewFakeClock(t0)
			holderClk := testclock.NewFakeClock(t0.Add(offset))
			st := newMemStorage(clk)
			rec := &memRecord{clk: clk}
			a := newTestRecord(rec, st, holderClk)
			b := newTestRecord(rec, st, clk)
			if _, err := a.TryAcquire(context.Background(), "repo", "a", blobDuration); err != nil {
				t.Fatal(err)
			}
			// a renews for ten durations; b never gets it.
			for range 40 {
				clk.Step(15 * time.Second)
				holderClk.Step(15 * time.Second)
				if _, err := a.Renew(context.Background(), "repo", "a", blobDuration); err != nil {
					t.Fatal(err)
				}
				_, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration)
				heldBy(t, err, "a")
			}
			// a stops; b saw its last write just now.
			seen := clk.Now()
			clk.SetTime(seen.Add(blobDuration - time.Nanosecond))
			_, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration)
			heldBy(t, err, "a")
			clk.SetTime(seen.Add(blobDuration))
			if _, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration); err != nil {
				t.Fatalf("taking over a stale lease: %v", err)
			}
			holderClk.Step(time.Hour)
			if _, err := a.Renew(context.Background(), "repo", "a", blobDuration); !errors.Is(err, ErrLost) {
				t.Fatalf("renewal after the takeover: %v, want ErrLost", err)
			}
			if h := rec.holder(); h != "b" {
				t.Errorf("record names %q, want b", h)
			}
		})
	}
}

// TestRecordClockJump: the claimant's clock jumping back never shortens
// the wait, and a holder whose clock jumps keeps its lease while it renews.
func TestRecordClockJump(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	holderClk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	rec := &memRecord{clk: clk}
	a := newTestRecord(rec, st, holderClk)
	b := newTestRecord(rec, st, clk)
	if _, err := a.TryAcquire(context.Background(), "repo", "a", blobDuration); err != nil {
		t.Fatal(err)
	}
	_, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration)
	heldBy(t, err, "a")

	// The holder's clock jumps a day ahead and it renews: a new version,
	// so b starts counting again.
	holderClk.Step(24 * time.Hour)
	clk.Step(30 * time.Second)
	if _, err := a.Renew(context.Background(), "repo", "a", blobDuration); err != nil {
		t.Fatal(err)
	}
	renewed := clk.Now()
	_, err = b.TryAcquire(context.Background(), "repo", "b", blobDuration)
	heldBy(t, err, "a")

	// b's clock jumps an hour back, then runs on: the wait still counts
	// from when b saw the version, so it ends an hour and a duration later.
	clk.SetTime(renewed.Add(-time.Hour))
	for _, at := range []time.Duration{0, blobDuration, time.Hour, time.Hour + blobDuration - time.Nanosecond} {
		clk.SetTime(renewed.Add(-time.Hour + at))
		_, err = b.TryAcquire(context.Background(), "repo", "b", blobDuration)
		heldBy(t, err, "a")
	}
	clk.SetTime(renewed.Add(blobDuration))
	if _, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration); err != nil {
		t.Fatalf("taking over after the full wait: %v", err)
	}
}

// TestRecordRenewWriteFails: a renewal whose write fails is an error, not a
// loss, and the next renewal succeeds; a renewal whose write was applied
// but whose answer was lost is recognised by its token on the next one.
func TestRecordRenewWriteFails(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	rec := &memRecord{clk: clk}
	var fail atomic.Int32 // 1: fail before applying, 2: after
	view := &recView{r: rec, failSwap: func() (error, bool) {
		switch fail.Swap(0) {
		case 1:
			return errors.New("connection reset"), false
		case 2:
			return errors.New("connection reset after the write"), true
		}
		return nil, false
	}}
	a := newTestRecord(view, st, clk)
	b := newTestRecord(rec, st, clk)
	if _, err := a.TryAcquire(context.Background(), "repo", "a", blobDuration); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []int32{1, 2} {
		clk.Step(15 * time.Second)
		fail.Store(mode)
		_, err := a.Renew(context.Background(), "repo", "a", blobDuration)
		if err == nil || errors.Is(err, ErrLost) {
			t.Fatalf("renewal with a failing write (mode %d): %v, want an error that is not ErrLost", mode, err)
		}
		clk.Step(15 * time.Second)
		at, err := a.Renew(context.Background(), "repo", "a", blobDuration)
		if err != nil || !at.Equal(clk.Now()) {
			t.Fatalf("renewal after a failed one (mode %d): %v, %v", mode, at, err)
		}
		_, err = b.TryAcquire(context.Background(), "repo", "b", blobDuration)
		heldBy(t, err, "a")
	}
}

// TestRecordManagersRenewFails: the holder's renewals all fail (its
// storage is unreachable, the record's other readers see it). The other
// manager takes the lease only once the holder's deadline passed, and at
// no instant both hold a valid lease.
func TestRecordManagersRenewFails(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	rec := &memRecord{clk: clk}
	var down atomic.Bool
	view := &recView{r: rec, failSwap: func() (error, bool) {
		if down.Load() {
			return errors.New("storage unreachable"), false
		}
		return nil, false
	}}
	manager := func(r Record, holder string) *Manager {
		m, err := New(Options{
			Backend: NewRecord(func(string) Record { return r }, st.store(nil), time.Second, clk), Holder: holder,
			Duration: blobDuration, RenewInterval: 15 * time.Second, Clock: clk,
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	ma, mb := manager(view, "a"), manager(rec, "b")
	a, err := ma.Acquire(context.Background(), "repo")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Release(context.Background())
	down.Store(true)
	var b *Held
	for b == nil {
		clk.Step(time.Second)
		b, err = mb.Acquire(context.Background(), "repo")
		if b == nil {
			heldBy(t, err, "a")
		}
		if a.Check() == nil && b != nil {
			t.Fatalf("both hold the lease at %v", clk.Now())
		}
		if clk.Now().After(t0.Add(3 * blobDuration)) {
			t.Fatal("never taken over")
		}
	}
	defer b.Release(context.Background())
	if err := a.Check(); err == nil {
		t.Error("the holder whose renewals failed still holds the lease")
	}
	if got := clk.Now(); got.Before(t0.Add(blobDuration)) {
		t.Errorf("taken over at %v, before the holder's last write was a duration old", got)
	}
	t.Logf("taken over %v after the holder's last write", clk.Now().Sub(t0))
}

// TestRecordLegacyBlob: a blob of the older list-based protocol is
// respected while its holder renews it, taken over one duration after this
// process saw its last write, and deleted then.
func TestRecordLegacyBlob(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	rec := &memRecord{clk: clk}
	b := newTestRecord(rec, st, clk)
	st.put("repo", "old-daemon", t0.Add(-time.Hour)) // however old it looks
	for range 10 {
		_, err := b.TryAcquire(context.Background(), "repo", "new-daemon", blobDuration)
		heldBy(t, err, "old-daemon")
		clk.Step(15 * time.Second)
		st.put("repo", "old-daemon", clk.Now()) // the old daemon renews
	}
	if rec.swaps != 0 {
		t.Fatalf("record written %d times while an old-format holder was live", rec.swaps)
	}
	hs, err := b.(Inspector).Inspect(context.Background(), "repo")
	if err != nil || len(hs) != 1 || hs[0].Holder != "old-daemon" {
		t.Errorf("Inspect = %+v, %v; want the old-format holder", hs, err)
	}
	_, err = b.TryAcquire(context.Background(), "repo", "new-daemon", blobDuration)
	heldBy(t, err, "old-daemon")
	seen := clk.Now()
	clk.SetTime(seen.Add(blobDuration - time.Nanosecond))
	_, err = b.TryAcquire(context.Background(), "repo", "new-daemon", blobDuration)
	heldBy(t, err, "old-daemon")
	clk.SetTime(seen.Add(blobDuration))
	if _, err := b.TryAcquire(context.Background(), "repo", "new-daemon", blobDuration); err != nil {
		t.Fatalf("taking over from a stale old-format blob: %v", err)
	}
	if got := st.holders("repo"); len(got) != 0 {
		t.Errorf("old-format blobs after the takeover: %v, want none", got)
	}
	if h := rec.holder(); h != "new-daemon" {
		t.Errorf("record names %q", h)
	}
}

// TestRecordLegacyBlobDuringAcquire: an old daemon writes its blob while
// we write the record. It cannot see the record as a lock, so we yield and
// leave the record released.
func TestRecordLegacyBlobDuringAcquire(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	rec := &memRecord{clk: clk}
	view := &recView{r: rec, beforeSwap: func() { st.put("repo", "old-daemon", clk.Now()) }}
	b := newTestRecord(view, st, clk)
	_, err := b.TryAcquire(context.Background(), "repo", "new-daemon", blobDuration)
	heldBy(t, err, "old-daemon")
	if h := rec.holder(); h != "" {
		t.Errorf("record names %q after yielding, want it released", h)
	}
	if _, err := b.Renew(context.Background(), "repo", "new-daemon", blobDuration); !errors.Is(err, ErrLost) {
		t.Errorf("Renew after yielding: %v, want ErrLost", err)
	}
}

// TestRecordRelease: a released lease is free at once for another process,
// and the releaser's renewal finds it lost.
func TestRecordRelease(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	rec := &memRecord{clk: clk}
	a := newTestRecord(rec, st, clk)
	b := newTestRecord(rec, st, clk)
	if _, err := a.TryAcquire(context.Background(), "repo", "a", blobDuration); err != nil {
		t.Fatal(err)
	}
	_, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration)
	heldBy(t, err, "a")
	if err := a.Release(context.Background(), "repo", "a"); err != nil {
		t.Fatal(err)
	}
	if hs, err := b.(Inspector).Inspect(context.Background(), "repo"); err != nil || len(hs) != 0 {
		t.Errorf("Inspect of a released lease: %+v, %v; want no holder", hs, err)
	}
	if _, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration); err != nil {
		t.Fatalf("TryAcquire after release: %v", err)
	}
	if _, err := a.Renew(context.Background(), "repo", "a", blobDuration); !errors.Is(err, ErrLost) {
		t.Fatalf("Renew after release: %v, want ErrLost", err)
	}
	// Releasing a lease someone else holds now changes nothing.
	if err := a.Release(context.Background(), "repo", "a"); err != nil || rec.holder() != "b" {
		t.Errorf("second release: %v; record names %q, want b", err, rec.holder())
	}
}

// unsupportedRecord is a storage without conditional writes.
type unsupportedRecord struct{}

func (unsupportedRecord) Read(context.Context) ([]byte, string, time.Time, error) {
	return nil, "", time.Time{}, &recErr{unsupported: true}
}

func (unsupportedRecord) Swap(context.Context, string, []byte) (string, error) {
	return "", &recErr{unsupported: true}
}

// TestRecordUnsupportedFallsBack: a storage without conditional writes
// gets the list-based protocol, one blob per holder.
func TestRecordUnsupportedFallsBack(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	a := NewRecord(func(string) Record { return unsupportedRecord{} }, st.store(nil), 0, clk)
	b := NewRecord(func(string) Record { return unsupportedRecord{} }, st.store(nil), 0, clk)
	if _, err := a.TryAcquire(context.Background(), "repo", "a", blobDuration); err != nil {
		t.Fatal(err)
	}
	if got := st.holders("repo"); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("blobs %v, want a's", got)
	}
	_, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration)
	heldBy(t, err, "a")
	clk.Step(15 * time.Second)
	if _, err := a.Renew(context.Background(), "repo", "a", blobDuration); err != nil {
		t.Fatal(err)
	}
	if hs, err := b.(Inspector).Inspect(context.Background(), "repo"); err != nil || len(hs) != 1 || hs[0].Holder != "a" {
		t.Errorf("Inspect = %+v, %v", hs, err)
	}
	if err := a.Release(context.Background(), "repo", "a"); err != nil {
		t.Fatal(err)
	}
	if got := st.holders("repo"); len(got) != 0 {
		t.Errorf("blobs after release: %v", got)
	}
}
