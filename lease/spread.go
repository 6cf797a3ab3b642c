package lease

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Spread spreads repositories between replicas that share a configuration.
//
// Replicas fire the same cron slots at the same moments (the jitter is a hash
// of the repository's name, @every slots are multiples since the epoch), so
// whichever reaches the lease first maintains the repository. Spread decides
// that race: before acquiring a lease for a scheduled run, a process waits
//
//	Step × (offset(holder, repository) + load(runs))
//
// where offset is a hash of this process' holder identity and the
// repository's name in [0, 1), runs is the number of other repositories this
// process is maintaining at that moment or started within Max before
// (re-read as runs start and end), and load(runs) is runs up to 4, then two
// more per doubling (4 + 2·log2(runs/4)), at most Max/Step - 1. A replica
// that already took more of a slot's repositories than another waits longer
// for each, so the less busy one takes the next; between replicas equally
// busy the offsets decide, a rendezvous hash that hands each about its
// share and keeps the same split slot after slot. The load grows slower
// past 4 so that replicas with dozens of runs each are still told apart
// within Max. A replica that finds the lease held skips the run. A daemon
// running alone waits too, Step/2 on average plus a Step per run it started
// just before; that is the price of never needing to know how many
// replicas there are.
//
// Spread also remembers this process' own last run of each repository, so
// that a success recorded in a repository's history can be told apart from
// one another replica made (Mine).
type Spread struct {
	holder    string
	step, max time.Duration
	clock     clock.WithTicker

	// testHookWaiting, when set, runs each time Turn starts waiting, with
	// the time it waits for.
	testHookWaiting func(name string, until time.Time)

	mu      sync.Mutex
	changed chan struct{} // closed and replaced whenever running changes
	running map[string]int
	started map[string]time.Time // the latest start of a run that did work
	last    map[string]span
}

// span is one finished run of this process.
type span struct{ start, end time.Time }

// SpreadOption configures a Spread.
type SpreadOption func(*Spread)

// WithSpreadClock makes Turn read the time and wait on clk instead of the
// real clock, so that the turn rule can be tested on a fake clock.
func WithSpreadClock(clk clock.WithTicker) SpreadOption {
	return func(s *Spread) { s.clock = clk }
}

// NewSpread returns a Spread for the process with the given holder identity.
func NewSpread(holder string, step, maxWait time.Duration, opts ...SpreadOption) *Spread {
	s := &Spread{
		holder: holder, step: step, max: maxWait, clock: clock.RealClock{},
		changed: make(chan struct{}), running: map[string]int{}, started: map[string]time.Time{}, last: map[string]span{},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Offset returns this process' offset for name, in [0, 1).
func (s *Spread) Offset(name string) float64 {
	// A cryptographic hash: names that differ in one character (r1, r2)
	// must get unrelated offsets, which FNV's top bits do not give.
	sum := sha256.Sum256([]byte(s.holder + "\x00" + name))
	return float64(binary.BigEndian.Uint64(sum[:8])>>11) / (1 << 53)
}

// Runs returns the number of repositories other than name this process is
// maintaining at now or started maintaining within Max before: runs due at
// one slot count for each other while the slot's turns are being taken,
// even when they are quick.
func (s *Spread) Runs(name string, now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runs(name, now)
}

func (s *Spread) runs(name string, now time.Time) int {
	n := 0
	for r, c := range s.running {
		if r != name && c > 0 {
			n++
		}
	}
	for r, at := range s.started {
		if r != name && s.running[r] == 0 && now.Sub(at) < s.max {
			n++
		}
	}
	return n
}

// Wait returns how long after the run became ready name's lease should be
// taken, given runs other repositories in progress or just started. A
// Spread with a zero step never waits.
func (s *Spread) Wait(name string, runs int) time.Duration {
	if s.step <= 0 {
		return 0
	}
	return time.Duration(float64(s.step) * (s.Offset(name) + s.load(runs)))
}

// load is the load term of the wait, in steps: runs up to 4, then growing
// by two steps per doubling, at most Max/Step - 1 so that the offset still
// decides between replicas at the cap.
func (s *Spread) load(runs int) float64 {
	l := float64(runs)
	if l > 4 {
		l = 4 + 2*math.Log2(l/4)
	}
	return max(min(l, float64(s.max/s.step)-1), 0)
}

// Turn blocks until it is name's turn to take its lease: Wait after since,
// re-evaluated whenever this process starts or ends another run, and when a
// finished run stops counting (Max after its start). It returns ctx's error
// if ctx ends first.
func (s *Spread) Turn(ctx context.Context, name string, since time.Time) error {
	for {
		s.mu.Lock()
		changed := s.changed
		now := s.clock.Now()
		target := since.Add(s.Wait(name, s.runs(name, now)))
		wake := s.expiry(name, now)
		s.mu.Unlock()

		d := target.Sub(now)
		if d <= 0 {
			return nil
		}
		// A finished run that stops counting before the target lowers the
		// load: look again then, or the turn would come later than the
		// rule says.
		if !wake.IsZero() && wake.Sub(now) < d {
			d = wake.Sub(now)
		}

		t := s.clock.NewTimer(d)
		if f := s.testHookWaiting; f != nil {
			f(name, now.Add(d))
		}
		select {
		case <-t.C():
		case <-changed:
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// expiry returns the earliest time after now at which a finished run that
// counts in runs(name, now) stops counting, or zero if none does.
func (s *Spread) expiry(name string, now time.Time) time.Time {
	var first time.Time
	for r, at := range s.started {
		if r == name || s.running[r] != 0 {
			continue
		}
		if end := at.Add(s.max); end.After(now) && (first.IsZero() || end.Before(first)) {
			first = end
		}
	}
	return first
}

// Started records that this process starts on a run of name at, right
// after its turn: from then on the run counts for the others' turns, also
// while its lease is being acquired. It returns the function that records
// the end: work is when the run held its lease and began its work, ended
// when it ended. worked false (the lease was another's, or the run found the
// cycle done by another replica) forgets the run, keeping the previous one
// as the last.
func (s *Spread) Started(name string, at time.Time) (end func(work, ended time.Time, worked bool)) {
	s.mu.Lock()
	s.running[name]++
	prev, had := s.started[name]
	s.started[name] = at
	s.notify()
	s.mu.Unlock()

	var once sync.Once
	return func(work, ended time.Time, worked bool) {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.running[name]--
			if s.running[name] <= 0 {
				delete(s.running, name)
			}
			switch {
			case worked:
				s.last[name] = span{start: work, end: ended}
			case had:
				s.started[name] = prev
			default:
				delete(s.started, name)
			}
			s.notify()
		})
	}
}

func (s *Spread) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Mine reports whether t lies within this process' last finished run of
// name: a success recorded at t in the repository's history was then made by
// this process, not by another replica.
func (s *Spread) Mine(name string, t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp, ok := s.last[name]
	return ok && !t.Before(sp.start) && !t.After(sp.end)
}
