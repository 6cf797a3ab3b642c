package lease

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	testclock "k8s.io/utils/clock/testing"
)

// memStorage is an in-memory repository storage holding lease blobs, whose
// timestamps come from a fake clock plus skew (the storage's clock running
// ahead of, or behind, the holders').
type memStorage struct {
	clk  *testclock.FakeClock
	skew time.Duration

	mu    sync.Mutex
	blobs map[string]map[string]time.Time // lease name -> holder -> written
}

func newMemStorage(clk *testclock.FakeClock) *memStorage {
	return &memStorage{clk: clk, blobs: map[string]map[string]time.Time{}}
}

// view is what one process sees of the storage: beforePut, when set, runs
// before each of its writes.
type view struct {
	s         *memStorage
	name      string
	beforePut func()
	afterList func()
}

func (s *memStorage) store(hooks *view) func(name string) Store {
	return func(name string) Store {
		v := &view{s: s, name: name}
		if hooks != nil {
			v.beforePut, v.afterList = hooks.beforePut, hooks.afterList
		}
		return v
	}
}

func (v *view) List(ctx context.Context) ([]Entry, error) {
	v.s.mu.Lock()
	var out []Entry
	for h, w := range v.s.blobs[v.name] {
		out = append(out, Entry{Holder: h, Written: w})
	}
	v.s.mu.Unlock()
	if v.afterList != nil {
		v.afterList()
	}
	return out, nil
}

func (v *view) Put(ctx context.Context, holder string) (Entry, error) {
	if v.beforePut != nil {
		v.beforePut()
	}
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	if v.s.blobs[v.name] == nil {
		v.s.blobs[v.name] = map[string]time.Time{}
	}
	w := v.s.clk.Now().Add(v.s.skew)
	v.s.blobs[v.name][holder] = w
	return Entry{Holder: holder, Written: w}, nil
}

func (v *view) Delete(ctx context.Context, holder string) error {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	delete(v.s.blobs[v.name], holder)
	return nil
}

// holders returns the holders with a blob for name, sorted.
func (s *memStorage) holders(name string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for h := range s.blobs[name] {
		out = append(out, h)
	}
	slices.Sort(out)
	return out
}

func (s *memStorage) put(name, holder string, w time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.blobs[name] == nil {
		s.blobs[name] = map[string]time.Time{}
	}
	s.blobs[name][holder] = w
}

const blobDuration = time.Minute

func heldBy(t *testing.T, err error, holder string) {
	t.Helper()
	he, ok := errors.AsType[*HeldError](err)
	if !ok {
		t.Fatalf("err = %v, want a HeldError naming %s", err, holder)
	}
	if he.Holder != holder {
		t.Fatalf("HeldError names %s, want %s", he.Holder, holder)
	}
}

// TestBlobRace: two holders list, both see nothing, both write before either
// lists again: exactly one wins, by the earliest write, ties broken by the
// holder string, and the loser's blob is gone.
func TestBlobRace(t *testing.T) {
	for _, tc := range []struct {
		name       string
		first      string // writes first (or at the same time)
		second     string
		gap        time.Duration // between the two writes
		wantWinner string
	}{
		{"same timestamp, smaller holder wins", "b", "a", 0, "a"},
		{"same timestamp, other order", "a", "b", 0, "a"},
		{"earlier write wins", "z", "a", time.Millisecond, "z"},
		{"earlier write wins, other names", "a", "z", time.Millisecond, "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := testclock.NewFakeClock(t0)
			st := newMemStorage(clk)
			const settle = 5 * time.Second
			// Both list before either writes.
			var listed sync.WaitGroup
			listed.Add(2)
			firstWrote := make(chan struct{})
			hooks := func(h string) *view {
				var once sync.Once
				return &view{
					afterList: func() { once.Do(listed.Done) },
					beforePut: func() {
						listed.Wait()
						if h == tc.second {
							<-firstWrote
						}
					},
				}
			}
			type result struct {
				holder string
				err    error
			}
			results := make(chan result, 2)
			for _, h := range []string{tc.first, tc.second} {
				b := NewBlob(st.store(hooks(h)), settle, clk)
				go func() {
					_, err := b.TryAcquire(context.Background(), "repo", h, blobDuration)
					results <- result{h, err}
				}()
			}
			// The first writes, then (after gap) the second; both then
			// wait for the settle delay.
			waitWaiters(t, clk, 1)
			clk.Step(tc.gap)
			close(firstWrote)
			waitWaiters(t, clk, 2)
			if got := st.holders("repo"); len(got) != 2 {
				t.Fatalf("blobs before the second listing: %v, want both", got)
			}
			clk.Step(settle)
			wins := 0
			for range 2 {
				r := <-results
				if r.err == nil {
					wins++
					if r.holder != tc.wantWinner {
						t.Errorf("%s won, want %s", r.holder, tc.wantWinner)
					}
					continue
				}
				heldBy(t, r.err, tc.wantWinner)
			}
			if wins != 1 {
				t.Fatalf("%d winners, want 1", wins)
			}
			if got := st.holders("repo"); !slices.Equal(got, []string{tc.wantWinner}) {
				t.Errorf("blobs after the race: %v, want only the winner's", got)
			}
		})
	}
}

func waitWaiters(t *testing.T, clk *testclock.FakeClock, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for clk.Waiters() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d clock waiters, want %d", clk.Waiters(), n)
		}
		runtime.Gosched()
	}
}

// TestBlobStale: a lease that is not renewed is taken over once its blob is
// duration old by the storage's clock, never before, whatever the skew
// between the storage's clock and the holders'.
func TestBlobStale(t *testing.T) {
	for _, skew := range []time.Duration{0, -30 * time.Second, 30 * time.Second, -time.Hour} {
		t.Run(skew.String(), func(t *testing.T) {
			clk := testclock.NewFakeClock(t0)
			st := newMemStorage(clk)
			st.skew = skew
			a := NewBlob(st.store(nil), 0, clk)
			b := NewBlob(st.store(nil), 0, clk)
			at, err := a.TryAcquire(context.Background(), "repo", "a", blobDuration)
			if err != nil {
				t.Fatal(err)
			}
			if !at.Equal(t0) {
				t.Errorf("TryAcquire = %v, want the local time before the write, %v", at, t0)
			}
			for now := t0; now.Before(t0.Add(blobDuration)); now = now.Add(5 * time.Second) {
				clk.SetTime(now)
				_, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration)
				heldBy(t, err, "a")
				if got := st.holders("repo"); !slices.Equal(got, []string{"a"}) {
					t.Fatalf("blobs at %v: %v, want only a's", now, got)
				}
			}
			clk.SetTime(t0.Add(blobDuration - time.Nanosecond))
			_, err = b.TryAcquire(context.Background(), "repo", "b", blobDuration)
			heldBy(t, err, "a")
			clk.SetTime(t0.Add(blobDuration))
			if _, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration); err != nil {
				t.Fatalf("TryAcquire of a stale lease: %v", err)
			}
			if got := st.holders("repo"); !slices.Equal(got, []string{"b"}) {
				t.Errorf("blobs after the takeover: %v, want b's (a's stale blob deleted)", got)
			}
			// a's next renewal finds it lost.
			clk.Step(time.Second)
			if _, err := a.Renew(context.Background(), "repo", "a", blobDuration); !errors.Is(err, ErrLost) {
				t.Fatalf("Renew of the taken lease: %v, want ErrLost", err)
			}
			if got := st.holders("repo"); !slices.Equal(got, []string{"b"}) {
				t.Errorf("blobs after the late renewal: %v, want b's only", got)
			}
			if _, err := b.Renew(context.Background(), "repo", "b", blobDuration); err != nil {
				t.Errorf("Renew by the new holder: %v", err)
			}
		})
	}
}

// TestBlobRenewKeeps: renewals keep the lease over many durations; a
// claimant's blob written while the holder is live does not disturb it.
func TestBlobRenewKeeps(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	a := NewBlob(st.store(nil), 0, clk)
	b := NewBlob(st.store(nil), 0, clk)
	if _, err := a.TryAcquire(context.Background(), "repo", "a", blobDuration); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		clk.Step(15 * time.Second)
		at, err := a.Renew(context.Background(), "repo", "a", blobDuration)
		if err != nil {
			t.Fatalf("renewal %d: %v", i, err)
		}
		if !at.Equal(clk.Now()) {
			t.Fatalf("Renew = %v, want %v", at, clk.Now())
		}
		_, err = b.TryAcquire(context.Background(), "repo", "b", blobDuration)
		heldBy(t, err, "a")
	}
	// A claimant that misjudged a as stale wrote a blob just now.
	st.put("repo", "c", clk.Now())
	clk.Step(15 * time.Second)
	if _, err := a.Renew(context.Background(), "repo", "a", blobDuration); err != nil {
		t.Fatalf("renewal with a claimant's blob present: %v", err)
	}
	// c yields and deletes its blob; b still finds a live.
	if err := st.store(nil)("repo").Delete(context.Background(), "c"); err != nil {
		t.Fatal(err)
	}
	_, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration)
	heldBy(t, err, "a")
}

// TestBlobLateRenewal: a holder stopped (SIGSTOP) right before a renewal
// resumes while a taker waits for its settle delay. The late rewrite finds
// itself late and yields; the taker, finding the blob gone, wins.
func TestBlobLateRenewal(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	a := NewBlob(st.store(nil), 0, clk)
	b := NewBlob(st.store(nil), 5*time.Second, clk)
	if _, err := a.TryAcquire(context.Background(), "repo", "a", blobDuration); err != nil {
		t.Fatal(err)
	}
	clk.SetTime(t0.Add(blobDuration))
	done := make(chan error, 1)
	go func() {
		_, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration)
		done <- err
	}()
	waitWaiters(t, clk, 1)
	if _, err := a.Renew(context.Background(), "repo", "a", blobDuration); !errors.Is(err, ErrLost) {
		t.Fatalf("late renewal: %v, want ErrLost", err)
	}
	clk.Step(5 * time.Second)
	if err := <-done; err != nil {
		t.Fatalf("taker: %v", err)
	}
	if got := st.holders("repo"); !slices.Equal(got, []string{"b"}) {
		t.Errorf("blobs: %v, want b's", got)
	}
}

// TestBlobRelease: a released lease can be taken at once.
func TestBlobRelease(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	a := NewBlob(st.store(nil), 0, clk)
	b := NewBlob(st.store(nil), 0, clk)
	if _, err := a.TryAcquire(context.Background(), "repo", "a", blobDuration); err != nil {
		t.Fatal(err)
	}
	if hs, err := a.(Inspector).Inspect(context.Background(), "repo"); err != nil || len(hs) != 1 || hs[0].Holder != "a" || !hs[0].Renewed.Equal(t0) {
		t.Errorf("Inspect of a held lease: %+v, %v; want a, renewed at %v", hs, err, t0)
	}
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
}

// TestBlobManagersHandover: two Managers over one storage. The holder
// crashes (its renewals stop without a release); the other takes over
// after duration, and at no instant do both hold a valid lease.
func TestBlobManagersHandover(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	manager := func(holder string) *Manager {
		m, err := New(Options{
			Backend: NewBlob(st.store(nil), 0, clk), Holder: holder,
			Duration: blobDuration, RenewInterval: 15 * time.Second, Clock: clk,
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	ma, mb := manager("a"), manager("b")
	ctx, crash := context.WithCancel(context.Background())
	a, err := ma.Acquire(ctx, "repo")
	if err != nil {
		t.Fatal(err)
	}
	crash()
	a.wg.Wait()
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
	}
	defer b.Release(context.Background())
	if got, want := clk.Now(), t0.Add(blobDuration); !got.Equal(want) {
		t.Errorf("taken over at %v, want %v (duration after the last write)", got, want)
	}
	if err := a.Check(); !errors.Is(err, ErrExpired) {
		t.Errorf("crashed holder's Check: %v, want ErrExpired", err)
	}
}

// slowView is a view whose first Put gets its storage timestamp when the
// upload starts (as S3's LastModified and a filesystem temp file's mtime
// do) but becomes visible to listers only when release is closed.
type slowView struct {
	*view
	started chan struct{}
	release chan struct{}
	once    sync.Once
}

func (v *slowView) Put(ctx context.Context, holder string) (Entry, error) {
	w := v.s.clk.Now()
	v.once.Do(func() { close(v.started); <-v.release })
	v.s.put(v.name, holder, w)
	return Entry{Holder: holder, Written: w}, nil
}

// TestBlobSlowWriteYields: b's write is stamped before a's but shows only
// after a's settle delay, so a never saw it. b took longer than the settle
// delay to see its own write and yields: exactly one holder, and renewals
// agree.
func TestBlobSlowWriteYields(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	const settle = time.Second

	slow := &slowView{view: &view{s: st, name: "repo"}, started: make(chan struct{}), release: make(chan struct{})}
	b := NewBlob(func(string) Store { return slow }, settle, clk)
	a := NewBlob(st.store(nil), settle, clk)

	bErr := make(chan error, 1)
	go func() { _, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration); bErr <- err }()
	<-slow.started // b listed (empty) and its upload started at t0

	clk.Step(10 * time.Millisecond)
	aErr := make(chan error, 1)
	go func() { _, err := a.TryAcquire(context.Background(), "repo", "a", blobDuration); aErr <- err }()
	waitWaiters(t, clk, 1)
	clk.Step(settle)
	if err := <-aErr; err != nil {
		t.Fatalf("a: %v", err)
	}

	close(slow.release) // b's upload shows 1.01s after it started
	// Should b wait for its settle delay, let it pass.
	var err error
	for done := false; !done; {
		select {
		case err = <-bErr:
			done = true
		default:
			if clk.Waiters() > 0 {
				clk.Step(settle)
			}
			runtime.Gosched()
		}
	}
	if err == nil {
		t.Fatalf("b acquired the lease a holds; storage holds %v", st.holders("repo"))
	}
	if got := st.holders("repo"); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("blobs after the race: %v, want only a's", got)
	}
	clk.Step(15 * time.Second)
	if _, err := a.Renew(context.Background(), "repo", "a", blobDuration); err != nil {
		t.Errorf("a's renewal: %v", err)
	}
	if _, err := b.Renew(context.Background(), "repo", "b", blobDuration); !errors.Is(err, ErrLost) {
		t.Errorf("b's renewal: %v, want ErrLost", err)
	}
}

// hidingView is a view whose listings leave out hidden holders' blobs: a
// storage that shows another writer's blob late, later than any settle
// delay.
type hidingView struct {
	*view
	hidden *atomic.Bool
	holder string
}

func (v *hidingView) List(ctx context.Context) ([]Entry, error) {
	all, err := v.view.List(ctx)
	if !v.hidden.Load() {
		return all, err
	}
	return slices.DeleteFunc(all, func(e Entry) bool { return e.Holder == v.holder }), err
}

// TestBlobRenewTwoHolders: b missed a's blob (shown to it only later) and
// both hold the lease. Within two renewals each sees the other renewing;
// the greater holder string, b, yields, and a keeps the lease.
func TestBlobRenewTwoHolders(t *testing.T) {
	clk := testclock.NewFakeClock(t0)
	st := newMemStorage(clk)
	var hidden atomic.Bool
	hidden.Store(true)
	a := NewBlob(st.store(nil), 0, clk)
	b := NewBlob(func(name string) Store {
		return &hidingView{view: &view{s: st, name: name}, hidden: &hidden, holder: "a"}
	}, 0, clk)
	if _, err := a.TryAcquire(context.Background(), "repo", "a", blobDuration); err != nil {
		t.Fatal(err)
	}
	clk.Step(time.Second)
	if _, err := b.TryAcquire(context.Background(), "repo", "b", blobDuration); err != nil {
		t.Fatalf("b (not seeing a): %v", err)
	}
	hidden.Store(false)
	var errA, errB error
	for round := range 3 {
		clk.Step(15 * time.Second)
		_, errA = a.Renew(context.Background(), "repo", "a", blobDuration)
		if errB == nil {
			_, errB = b.Renew(context.Background(), "repo", "b", blobDuration)
		}
		if errA != nil {
			t.Fatalf("a's renewal %d: %v", round, errA)
		}
	}
	if !errors.Is(errB, ErrLost) {
		t.Fatalf("b's renewals: %v, want ErrLost", errB)
	}
	if got := st.holders("repo"); !slices.Equal(got, []string{"a"}) {
		t.Errorf("blobs: %v, want only a's", got)
	}
}
