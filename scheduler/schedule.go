package scheduler

import (
	"fmt"
	"hash/fnv"
	"time"

	"github.com/robfig/cron/v3"
)

// Cycle is a kind of kopia maintenance cycle.
type Cycle string

// The maintenance cycles. A full cycle includes the work of a quick cycle.
const (
	Quick Cycle = "quick"
	Full  Cycle = "full"
)

// cycles lists the cycles in index order of repoState.cycles.
var cycles = [...]Cycle{Quick, Full}

const (
	quickIdx = 0
	fullIdx  = 1
)

// Repository is the scheduling configuration of one repository.
type Repository struct {
	// Name identifies the repository; it is passed to the Maintainer and seeds the jitter.
	Name string
	// Quick and Full are cron specs in robfig/cron v3 cron.ParseStandard syntax: five fields,
	// descriptors such as @hourly and @every 90m, and CRON_TZ= or TZ= prefixes. A spec without a
	// prefix is read in the time zone of the clock's times (the process's local zone).
	Quick, Full string
	// Jitter is the maximum delay added to every cron slot of this repository; the actual delay
	// is JitterFor(Name, Jitter), so it is stable across restarts.
	Jitter time.Duration
	// UnsafeWindows are cron specs, in the syntax of Quick and Full, of the slots at which a
	// full cycle with safety=none is to be attempted (Job.Unsafe); the jitter applies to them
	// too. Empty for none. Missed slots are never caught up: see Job.Unsafe.
	UnsafeWindows []string
}

// JitterFor returns the deterministic jitter of the repository called name: the fnv-64a hash of
// name modulo max, so it lies in [0, max). It returns 0 when max <= 0.
func JitterFor(name string, max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(name))
	return time.Duration(h.Sum64() % uint64(max))
}

// Interval returns the nominal interval of sched around now: the distance between the first two
// activations after now. It is 0 for a schedule that never fires.
func Interval(sched cron.Schedule, now time.Time) time.Duration {
	first := sched.Next(now)
	if first.IsZero() {
		return 0
	}
	second := sched.Next(first)
	if second.IsZero() {
		return 0
	}
	return second.Sub(first)
}

// NextTimes returns when each cycle of r would next run after now if nothing failed and no
// catch-up were due: the next cron slot plus the repository's jitter. It serves the status of a
// daemon that is not running.
func NextTimes(r Repository, now time.Time) (quick, full time.Time, err error) {
	c, err := compile(r, now)
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	return nextSlot(c.scheds[quickIdx], c.jitter, now), nextSlot(c.scheds[fullIdx], c.jitter, now), nil
}

// NextUnsafeTime returns when r's next unsafe window slot (plus jitter) after now is; ok is false
// when r has no unsafe window. It serves the status of a daemon that is not running.
func NextUnsafeTime(r Repository, now time.Time) (at time.Time, ok bool, err error) {
	c, err := compile(r, now)
	if err != nil {
		return time.Time{}, false, err
	}
	at = c.nextWindow(now)
	return at, !at.IsZero(), nil
}

// compiled is a validated Repository with its parsed schedules.
type compiled struct {
	repo    Repository
	scheds  [2]cron.Schedule
	windows []cron.Schedule
	jitter  time.Duration
}

// nextWindow returns the earliest unsafe window slot plus jitter strictly after after, or zero
// when c has no window.
func (c compiled) nextWindow(after time.Time) time.Time {
	var t time.Time
	for _, w := range c.windows {
		if n := nextSlot(w, c.jitter, after); t.IsZero() || n.Before(t) {
			t = n
		}
	}
	return t
}

// parseSpec parses a cron spec. An `@every d` spec fires at the multiples of d since the Unix
// epoch rather than d after whenever the process started: replicas sharing a configuration, and
// a daemon before and after a restart, then agree on its slots.
//
// robfig/cron v3.0.1 panics on some specs (a time zone prefix with nothing after it, "TZ="): a
// panic is returned as an error, so no configuration can crash the scheduler.
func parseSpec(spec string) (sched cron.Schedule, err error) {
	defer func() {
		if r := recover(); r != nil {
			sched, err = nil, fmt.Errorf("invalid cron spec: %v", r)
		}
	}()
	sched, err = cron.ParseStandard(spec)
	if err != nil {
		return nil, err
	}
	if every, ok := sched.(cron.ConstantDelaySchedule); ok {
		return alignedEvery(every.Delay), nil
	}
	return sched, nil
}

// alignedEvery fires at the multiples of its duration (whole seconds, as robfig/cron's @every)
// since the Unix epoch.
type alignedEvery time.Duration

// Next returns the first multiple of the duration since the epoch strictly after t.
func (e alignedEvery) Next(t time.Time) time.Time {
	d := time.Duration(e)
	return time.Unix(0, 0).Add(t.Sub(time.Unix(0, 0)).Truncate(d) + d).In(t.Location())
}

// compile parses and validates r; now is only used to check that the schedules ever fire.
func compile(r Repository, now time.Time) (compiled, error) {
	if r.Name == "" {
		return compiled{}, fmt.Errorf("repository with empty name")
	}
	c := compiled{repo: r, jitter: JitterFor(r.Name, r.Jitter)}
	for i, spec := range [...]string{r.Quick, r.Full} {
		sched, err := parseSpec(spec)
		if err != nil {
			return compiled{}, fmt.Errorf("repository %q: parse %s schedule %q: %w", r.Name, cycles[i], spec, err)
		}
		if Interval(sched, now) <= 0 {
			return compiled{}, fmt.Errorf("repository %q: %s schedule %q never fires", r.Name, cycles[i], spec)
		}
		c.scheds[i] = sched
	}
	for _, spec := range r.UnsafeWindows {
		sched, err := parseSpec(spec)
		if err != nil {
			return compiled{}, fmt.Errorf("repository %q: parse unsafe window %q: %w", r.Name, spec, err)
		}
		if Interval(sched, now) <= 0 {
			return compiled{}, fmt.Errorf("repository %q: unsafe window %q never fires", r.Name, spec)
		}
		c.windows = append(c.windows, sched)
	}
	return c, nil
}

// compileAll compiles repos and rejects duplicate names.
func compileAll(repos []Repository, now time.Time) ([]compiled, error) {
	out := make([]compiled, 0, len(repos))
	seen := make(map[string]bool, len(repos))
	for _, r := range repos {
		if seen[r.Name] {
			return nil, fmt.Errorf("repository %q listed twice", r.Name)
		}
		seen[r.Name] = true
		c, err := compile(r, now)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}
