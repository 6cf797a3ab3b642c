package lease

import (
	"math"
	"sync"
	"time"
)

// Spread spreads repositories between replicas that share a configuration.
//
// Replicas fire the same cron slots at the same moments (the jitter is a hash
// of the repository's name), so whichever reaches the lease first maintains
// the repository. Spread makes the race favour the replica with the least
// recent work: before acquiring a lease for a scheduled run, a process waits
// Step × log2(1 + load), at most Max, where load is the number of other
// repositories it is running or ran within their last interval and a half.
// An idle replica therefore takes the lease while a busy one still waits,
// and a busy one that finds the lease held skips the run; replicas with
// similar loads race as before. The wait is logarithmic so that a daemon
// running alone, which waits on every run, loses little: at most Max per
// run, half a second for one other repository.
//
// Spread also remembers this process' own last run of each repository, so
// that a run recorded in a repository's history can be told apart from one
// another replica made (Mine).
type Spread struct {
	// Step and Max scale the wait; see the type's documentation.
	Step, Max time.Duration

	mu      sync.Mutex
	running map[string]int
	last    map[string]span
}

// span is one finished run of this process, and how long it counts as load.
type span struct {
	start, end time.Time
	keep       time.Duration
}

// NewSpread returns a Spread with the given step and maximum wait.
func NewSpread(step, maxWait time.Duration) *Spread {
	return &Spread{Step: step, Max: maxWait, running: map[string]int{}, last: map[string]span{}}
}

// Load returns the number of repositories other than name this process is
// running now or ran within their keep time before now.
func (s *Spread) Load(name string, now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()

	n := 0
	for r, c := range s.running {
		if r != name && c > 0 {
			n++
		}
	}
	for r, sp := range s.last {
		if r != name && s.running[r] == 0 && now.Sub(sp.end) < sp.keep {
			n++
		}
	}
	return n
}

// Delay returns how long to wait before acquiring name's lease at now.
func (s *Spread) Delay(name string, now time.Time) time.Duration {
	load := s.Load(name, now)
	if load == 0 {
		return 0
	}
	d := time.Duration(float64(s.Step) * math.Log2(1+float64(load)))
	return min(d, s.Max)
}

// Started records the start of a run of name and returns the function that
// records its end. keep is how long the run counts as load after it ended:
// about the repository's shortest cycle interval. A run that did no work
// (worked false: it found the cycle done by another replica) is forgotten.
func (s *Spread) Started(name string, start time.Time, keep time.Duration) (finished func(end time.Time, worked bool)) {
	s.mu.Lock()
	s.running[name]++
	s.mu.Unlock()

	var once sync.Once
	return func(end time.Time, worked bool) {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.running[name]--
			if s.running[name] <= 0 {
				delete(s.running, name)
			}
			if worked {
				s.last[name] = span{start: start, end: end, keep: keep}
			}
		})
	}
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
