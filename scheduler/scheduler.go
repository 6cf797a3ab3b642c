// Package scheduler decides when to run which kopia maintenance cycle on which repository: cron
// slots with a deterministic per-repository jitter, one catch-up run after downtime, a limit on
// concurrent runs, exponential backoff after failures and the lifecycle of each run. It also
// starts the full cycles of unsafe windows (Repository.UnsafeWindows, Job.Unsafe), which are
// never caught up nor retried. The work itself, and the proof that an unsafe run may go ahead,
// is the Maintainer's; this package never touches a repository.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"k8s.io/utils/clock"
)

// Result is the outcome of one maintenance run, as passed to the Recorder.
type Result string

// The results of a run.
const (
	// Success means the Maintainer returned nil.
	Success Result = "success"
	// Failure means the Maintainer returned any other error; the cycle is retried with backoff.
	Failure Result = "failure"
	// Skipped means the error's chain holds an error whose Skipped method returns true (e.g. this
	// daemon is not the maintenance owner); the cycle waits for its next cron slot.
	Skipped Result = "skipped"
	// Cancelled means the run returned context.Canceled or returned after the scheduler's context
	// was done.
	Cancelled Result = "cancelled"
)

// Job is one run request handed to the Maintainer.
type Job struct {
	// Repository is the Repository.Name to maintain.
	Repository string
	// Cycle is the cycle to run.
	Cycle Cycle
	// NextQuick and NextFull are when this scheduler will next run each cycle of this repository
	// if this run succeeds (cron next after the run's start, plus jitter). The maintainer writes
	// them into the repository's own kopia schedule so `kopia maintenance info` tells the truth.
	NextQuick, NextFull time.Time
	// QuickInterval and FullInterval are the nominal cron intervals (see Interval).
	QuickInterval, FullInterval time.Duration
	// CatchUp is true when this run was started because the last success is older than the
	// interval (or unknown), rather than by a cron slot.
	CatchUp bool
	// Due is when this run became due: its cron slot plus jitter, or the catch-up time. A
	// follow-up of a skipped run (see Maintainer) keeps the Due of the run it follows, so that
	// the Maintainer can tell whether another process did the work meanwhile.
	Due time.Time
	// Unsafe is true for a full cycle (Cycle is Full) started by an unsafe window slot: the
	// Maintainer is to run it with safety=none if, and only if, its gate allows it now; this
	// package proves nothing. The Recorder sees it as a full cycle.
	//
	// An unsafe run starts at its slot, or, when the slot comes while the repository is busy
	// (a run in flight, the concurrency limit), as soon as it is free, once however many slots
	// passed meanwhile. A slot the scheduler did not see come, because the daemon was down or
	// the machine asleep, is skipped and logged at Info: an unsafe cycle never runs late by
	// surprise. It covers a due regular full and quick cycle, as a full cycle covers quick.
	//
	// Whatever its result, the next attempt is the next window slot: no backoff, no retry, and
	// the failure count of the regular cycles is left alone. If it does not succeed, the regular
	// cycles it covered are due again at once, so a refused or failed unsafe run never delays
	// them. A refusal by the gate is best returned as a skipped error (see Maintainer): it is
	// then logged at Warn rather than Error.
	Unsafe bool
}

// Maintainer does the maintenance work the scheduler decides on.
//
// A Run error whose chain contains an error with a method `Skipped() bool` returning true is a
// skipped run (e.g. not the maintenance owner): result Skipped, no backoff, logged at Warn. If the
// chain also holds an error with a method `RetryAfter() time.Duration` returning d > 0 (e.g. the
// repository's lease is held by another process), the cycle is tried again d after the run
// returned, or at its next slot if that comes first, as a follow-up carrying the same Job.Due. A Run
// error that is context.Canceled, or any error returned after the scheduler's context is done, is
// Cancelled. The scheduler logs every Run error itself; the Maintainer should not log it again.
type Maintainer interface {
	// Run runs job and returns when it is done. ctx is cancelled when the scheduler shuts down.
	Run(ctx context.Context, job Job) error
	// LastSuccess returns the end time of the last successful quick and full cycle recorded in
	// the repository's own history (zero time = never). It is called once per repository when
	// Run starts (and when Update adds a repository).
	LastSuccess(ctx context.Context, repository string) (quick, full time.Time, err error)
}

// Recorder receives the scheduler's events, e.g. to export them as metrics. All calls come from
// one goroutine. Cycle and result are plain strings so that implementations need not import this
// package.
type Recorder interface {
	// RunStarted is called when a run of cycle on repository starts.
	RunStarted(repository, cycle string, at time.Time)
	// RunFinished is called when that run returns, with its Result.
	RunFinished(repository, cycle, result string, started, finished time.Time)
	// NextRun is called whenever the next run time of a cycle changes.
	NextRun(repository, cycle string, at time.Time)
}

// Options configure a Scheduler.
type Options struct {
	// Clock is used for every time reading and timer; default clock.RealClock{}.
	Clock clock.WithTicker
	// Logger receives the scheduler's logs; default no logging.
	Logger *zap.Logger
	// Concurrency is the most runs at once across all repositories; it must be at least 1. It
	// also bounds the concurrent LastSuccess calls at start.
	Concurrency int
	// Maintainer does the work; required.
	Maintainer Maintainer
	// Recorder receives run and next-run events; may be nil.
	Recorder Recorder
	// BackoffBase is the delay before the first retry after a failure; default 1m.
	BackoffBase time.Duration
	// LookupsDone, when set, is called from the dispatcher each time the queue of LastSuccess
	// calls drains, with the number of calls answered since the last time: at the end of the
	// start-up's reads, and after a reload added repositories. It must return quickly.
	LookupsDone func(n int)
}

// DefaultBackoffBase is the BackoffBase used when Options leaves it zero.
const DefaultBackoffBase = time.Minute

// maxSleep bounds one wait of the dispatcher. Cron slots are wall-clock times but timers run on
// the monotonic clock, which stops while a machine is suspended and ignores clock steps; waking
// at least this often bounds how late such a jump can make a run.
const maxSleep = time.Minute

// Scheduler runs maintenance cycles of a set of repositories on their schedules. Create it with
// New and start it with Run.
type Scheduler struct {
	clock       clock.WithTicker
	log         *zap.Logger
	concurrency int
	maintainer  Maintainer
	recorder    Recorder
	backoffBase time.Duration

	runCalled atomic.Bool
	started   atomic.Bool

	mu      sync.Mutex
	desired []compiled              // the latest repository set from New or Update
	active  bool                    // Run owns the repository set
	nexts   map[string][2]time.Time // what Next reports
	unsafes map[string]time.Time    // what NextUnsafe reports; only repositories with windows
	updated chan struct{}           // buffer of one: repeated Updates merge into one

	done   chan runDone
	looked chan lookupDone
	// lookupsDone is Options.LookupsDone.
	lookupsDone func(n int)

	// onIdle, when set by a test, is called each time the dispatcher is about to wait.
	onIdle func(idleState)
}

// New validates opts and repos and returns a Scheduler that is not yet running. It returns an
// error for an invalid cron spec, an empty or duplicate repository name, a Concurrency below 1
// or a nil Maintainer.
func New(opts Options, repos []Repository) (*Scheduler, error) {
	if opts.Maintainer == nil {
		return nil, errors.New("scheduler: no maintainer")
	}
	if opts.Concurrency < 1 {
		return nil, fmt.Errorf("scheduler: concurrency %d is below 1", opts.Concurrency)
	}
	s := &Scheduler{
		clock:       opts.Clock,
		lookupsDone: opts.LookupsDone,
		log:         opts.Logger,
		concurrency: opts.Concurrency,
		maintainer:  opts.Maintainer,
		recorder:    opts.Recorder,
		backoffBase: opts.BackoffBase,
		nexts:       make(map[string][2]time.Time),
		unsafes:     make(map[string]time.Time),
		updated:     make(chan struct{}, 1),
		done:        make(chan runDone),
		looked:      make(chan lookupDone),
	}
	if s.clock == nil {
		s.clock = clock.RealClock{}
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.backoffBase <= 0 {
		s.backoffBase = DefaultBackoffBase
	}
	cs, err := compileAll(repos, s.clock.Now())
	if err != nil {
		return nil, err
	}
	s.desired = cs
	s.publishStatic(cs, s.clock.Now())
	return s, nil
}

// Update replaces the set of repositories. Added repositories get the same catch-up check as at
// start; removed ones stop being scheduled, and a run of theirs in flight is left to finish;
// repositories whose schedule or jitter changed get their next cron slot recomputed. Runs in
// flight are never disturbed. Update may be called before, during or after Run; it returns an
// error, and changes nothing, when repos is invalid.
func (s *Scheduler) Update(repos []Repository) error {
	now := s.clock.Now()
	cs, err := compileAll(repos, now)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.desired = cs
	active := s.active
	s.mu.Unlock()
	if !active {
		s.publishStatic(cs, now)
	}
	select {
	case s.updated <- struct{}{}:
	default:
	}
	return nil
}

// Started reports whether Run's loop is running (for readiness probes). It turns false again when
// Run returns.
func (s *Scheduler) Started() bool {
	return s.started.Load()
}

// Next returns the next run time of each cycle of repository; ok is false for an unknown
// repository. Before Run has started, and while the catch-up check of a repository is pending,
// these are the next cron slots plus jitter.
func (s *Scheduler) Next(repository string) (quick, full time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nexts[repository]
	return n[quickIdx], n[fullIdx], ok
}

// NextUnsafe returns when the next unsafe full cycle of repository is due: its next window slot
// plus jitter, or a slot that has come and waits for the repository to be free (then in the
// past). ok is false for an unknown repository or one without unsafe windows.
func (s *Scheduler) NextUnsafe(repository string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.unsafes[repository]
	return at, ok
}

// publishStatic sets what Next and NextUnsafe report from the cron schedules alone.
func (s *Scheduler) publishStatic(cs []compiled, now time.Time) {
	nexts := make(map[string][2]time.Time, len(cs))
	unsafes := make(map[string]time.Time)
	for _, c := range cs {
		nexts[c.repo.Name] = [2]time.Time{
			nextSlot(c.scheds[quickIdx], c.jitter, now),
			nextSlot(c.scheds[fullIdx], c.jitter, now),
		}
		if at := c.nextWindow(now); !at.IsZero() {
			unsafes[c.repo.Name] = at
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.active {
		s.nexts = nexts
		s.unsafes = unsafes
	}
}

// Run schedules and starts maintenance runs until ctx is done. Then it starts no more runs,
// leaves runs in flight to observe the cancelled ctx, and returns nil only after all of them (and
// all LastSuccess calls) have returned. Run may be called once.
func (s *Scheduler) Run(ctx context.Context) error {
	if !s.runCalled.CompareAndSwap(false, true) {
		return errors.New("scheduler: Run called twice")
	}
	d := &dispatcher{s: s, ctx: ctx, repos: make(map[string]*repoState)}
	s.mu.Lock()
	s.active = true
	desired := s.desired
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.active = false
		s.mu.Unlock()
	}()
	// A pending Update is already contained in desired.
	select {
	case <-s.updated:
	default:
	}
	d.apply(desired, s.clock.Now())

	s.log.Info("scheduler started", zap.Int("repositories", len(desired)), zap.Int("concurrency", s.concurrency))
	s.started.Store(true)
	defer s.started.Store(false)
	for {
		now := s.clock.Now()
		d.startLookups()
		d.dispatch(now)
		wake := wakeAt(now, d.states())
		var timer clock.Timer
		var timerC <-chan time.Time
		var timerAt time.Time
		if !wake.IsZero() {
			wait := min(wake.Sub(now), maxSleep)
			timer = s.clock.NewTimer(wait)
			timerC = timer.C()
			timerAt = now.Add(wait)
		}
		d.idle(wake, timerAt)
		select {
		case <-ctx.Done():
		case <-timerC:
		case r := <-s.done:
			d.finish(r)
		case l := <-s.looked:
			d.lookedUp(l)
		case <-s.updated:
			s.mu.Lock()
			desired := s.desired
			s.mu.Unlock()
			d.apply(desired, s.clock.Now())
		}
		if timer != nil {
			timer.Stop()
		}
		if ctx.Err() != nil {
			d.shutdown()
			return nil
		}
	}
}

// runOne calls the Maintainer, turning a panic into a failed run so that one bad repository
// cannot take down the daemon.
func (s *Scheduler) runOne(ctx context.Context, job Job) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("maintenance of repository %q panicked: %v", job.Repository, p)
		}
	}()
	return s.maintainer.Run(ctx, job)
}
