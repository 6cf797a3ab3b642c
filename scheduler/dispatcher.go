package scheduler

import (
	"context"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

// repoState is the dispatcher's view of one repository. Only the dispatcher goroutine touches it.
type repoState struct {
	name   string
	c      compiled
	cycles [2]cycleState
	// failures counts consecutive failed runs of any cycle of this repository.
	failures int
	// lookingUp is true until LastSuccess has answered; the repository is not scheduled before,
	// because the answer decides whether its first run is a prompt catch-up.
	lookingUp bool
	// running is the job in flight, nil when idle.
	running *Job
	// removed is set when Update dropped the repository while a run was in flight; the state is
	// deleted when that run returns.
	removed bool
	// unsafe is the schedule of the repository's unsafe windows.
	unsafe unsafeState
	// covered holds, while an unsafe run is in flight, what it did to each regular cycle it
	// covered (nil for one it did not), so that they are owed again if it does not succeed.
	covered [2]*coverage
	log     *zap.Logger
}

// unsafeState is the schedule of the unsafe windows of one repository.
type unsafeState struct {
	// next is the next window slot plus jitter; zero without windows.
	next time.Time
	// pending is set when next came while the dispatcher was watching: the unsafe run starts as
	// soon as the repository is free.
	pending bool
}

// coverage records a regular cycle covered by an unsafe run.
type coverage struct {
	was cycleState // the cycle's schedule before the run started
	set time.Time  // the next time the run's start gave it
}

// cycleState is the schedule of one cycle of one repository.
type cycleState struct {
	next    time.Time
	catchUp bool // the run at next is a catch-up
	// due, when set, makes the run at next a follow-up of a skipped run that was due then.
	due time.Time
}

// runDone reports a returned run to the dispatcher.
type runDone struct {
	st                *repoState
	job               Job
	started, finished time.Time
	err               error
}

// lookupDone reports a returned LastSuccess call to the dispatcher.
type lookupDone struct {
	st          *repoState
	quick, full time.Time
	err         error
}

// idleState is what the test hook sees each time the dispatcher waits.
type idleState struct {
	seq               uint64
	wake              time.Time // earliest next run time, zero if none
	timer             time.Time // when the dispatcher's timer fires, zero if none
	inflight, lookups int
	started, finished uint64
}

// dispatcher owns the scheduling state of one Run.
type dispatcher struct {
	s        *Scheduler
	ctx      context.Context
	repos    map[string]*repoState
	inflight int
	queue    []*repoState // repositories waiting for a LastSuccess call
	lookups  int          // LastSuccess calls in flight
	answered int          // LastSuccess calls answered since the queue last drained

	seq, started, finished uint64
}

// states returns the repositories in name order.
func (d *dispatcher) states() []*repoState {
	out := make([]*repoState, 0, len(d.repos))
	for _, st := range d.repos {
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b *repoState) int { return strings.Compare(a.name, b.name) })
	return out
}

// apply makes the dispatcher's repository set match cs.
func (d *dispatcher) apply(cs []compiled, now time.Time) {
	want := make(map[string]bool, len(cs))
	for _, c := range cs {
		want[c.repo.Name] = true
	}
	for name, st := range d.repos {
		if want[name] {
			continue
		}
		if st.running != nil {
			st.removed = true
		} else {
			delete(d.repos, name)
		}
		d.unpublish(name)
		st.log.Info("repository removed from schedule")
	}
	for _, c := range cs {
		name := c.repo.Name
		st, ok := d.repos[name]
		if !ok {
			st = &repoState{name: name, c: c, lookingUp: true, log: d.s.log.With(zap.String("repository", name))}
			d.repos[name] = st
			// Until LastSuccess answers, Next reports the plain cron slots.
			for i := range cycles {
				d.setNext(st, i, nextSlot(c.scheds[i], c.jitter, now), false)
			}
			// Slots before now are never caught up, at start as after an Update.
			d.setUnsafe(st, c.nextWindow(now))
			d.queue = append(d.queue, st)
			continue
		}
		st.removed = false
		old := st.c
		st.c = c
		for i := range cycles {
			changed := old.jitter != c.jitter || specOf(old.repo, i) != specOf(c.repo, i)
			if changed && !st.cycles[i].catchUp {
				d.setNext(st, i, nextSlot(c.scheds[i], c.jitter, now), false)
			}
		}
		if old.jitter != c.jitter || !slices.Equal(old.repo.UnsafeWindows, c.repo.UnsafeWindows) {
			// A pending slot of the old windows is dropped too: the operator changed them.
			d.setUnsafe(st, c.nextWindow(now))
		}
		d.publish(st)
	}
}

// specOf returns the cron spec of cycle i of r.
func specOf(r Repository, i int) string {
	if i == quickIdx {
		return r.Quick
	}
	return r.Full
}

// startLookups starts queued LastSuccess calls while fewer than Concurrency are in flight.
func (d *dispatcher) startLookups() {
	for d.lookups < d.s.concurrency && len(d.queue) > 0 && d.ctx.Err() == nil {
		st := d.queue[0]
		d.queue = d.queue[1:]
		if d.repos[st.name] != st {
			continue
		}
		d.lookups++
		go func() {
			q, f, err := d.s.maintainer.LastSuccess(d.ctx, st.name)
			d.s.looked <- lookupDone{st: st, quick: q, full: f, err: err}
		}()
	}
}

// lookedUp schedules the first runs of a repository from its last successes.
func (d *dispatcher) lookedUp(l lookupDone) {
	d.lookups--
	d.answered++
	if d.lookups == 0 && len(d.queue) == 0 {
		if f := d.s.lookupsDone; f != nil {
			f(d.answered)
		}
		d.answered = 0
	}
	st := l.st
	if d.repos[st.name] != st || !st.lookingUp {
		return
	}
	st.lookingUp = false
	now := d.s.clock.Now()
	if l.err != nil {
		st.log.Warn("read last maintenance success failed; running catch-up", zap.Error(l.err))
	}
	for i, last := range [2]time.Time{l.quick, l.full} {
		if needsCatchUp(now, last, l.err, Interval(st.c.scheds[i], now)) {
			d.setNext(st, i, now, true)
		}
		// Otherwise the cron slot set by apply stands, even if it passed during the lookup.
	}
}

// dispatch starts the due runs that fit under the concurrency limit.
func (d *dispatcher) dispatch(now time.Time) {
	if d.ctx.Err() != nil {
		return
	}
	d.noticeWindows(now)
	for _, st := range pickDue(now, d.states(), d.s.concurrency-d.inflight) {
		d.start(st, now)
	}
}

// noticeWindows marks the unsafe window slots that have come as pending, or skips them when they
// came while the dispatcher was not watching (windowMissed).
func (d *dispatcher) noticeWindows(now time.Time) {
	for _, st := range d.states() {
		u := st.unsafe
		if st.removed || u.pending || u.next.IsZero() || now.Before(u.next) {
			continue
		}
		if windowMissed(now, u.next) {
			d.setUnsafe(st, st.c.nextWindow(now))
			st.log.Info("unsafe window missed; skipped", zap.Time("window_at", u.next), zap.Time("next_window", st.unsafe.next))
			continue
		}
		st.unsafe.pending = true
		if !st.schedulable() {
			st.log.Debug("unsafe window due; waiting for the repository", zap.Time("window_at", u.next))
		}
	}
}

// start starts the due cycle of st.
func (d *dispatcher) start(st *repoState, now time.Time) {
	idx, unsafe, _ := st.dueCycle(now)
	// When the run became due: its slot (the window's for an unsafe run), or the slot of the
	// skipped run this one follows up.
	due := st.cycles[idx].next
	switch {
	case unsafe:
		due = st.unsafe.next
	case !st.cycles[idx].due.IsZero():
		due = st.cycles[idx].due
	}
	if due.IsZero() || due.After(now) {
		due = now
	}
	next := [2]time.Time{st.cycles[quickIdx].next, st.cycles[fullIdx].next}
	st.covered = [2]*coverage{}
	switch {
	case unsafe:
		// The unsafe full cycle does the work of every regular cycle that is due.
		for i := range cycles {
			if !now.Before(next[i]) {
				st.covered[i] = &coverage{was: st.cycles[i]}
				next[i] = nextSlot(st.c.scheds[i], st.c.jitter, now)
				st.covered[i].set = next[i]
			}
		}
		// Slots that passed while the repository was busy collapse into this run.
		d.setUnsafe(st, st.c.nextWindow(now))
	default:
		next[idx] = nextSlot(st.c.scheds[idx], st.c.jitter, now)
		if idx == fullIdx && !now.Before(next[quickIdx]) {
			// The full cycle does quick's work too; running quick right after it would be waste.
			next[quickIdx] = nextSlot(st.c.scheds[quickIdx], st.c.jitter, now)
		}
	}
	job := Job{
		Repository:    st.name,
		Due:           due,
		Cycle:         cycles[idx],
		NextQuick:     next[quickIdx],
		NextFull:      next[fullIdx],
		QuickInterval: Interval(st.c.scheds[quickIdx], now),
		FullInterval:  Interval(st.c.scheds[fullIdx], now),
		CatchUp:       !unsafe && st.cycles[idx].catchUp,
		Unsafe:        unsafe,
	}
	st.running = &job
	d.inflight++
	d.started++
	if d.s.recorder != nil {
		d.s.recorder.RunStarted(st.name, string(job.Cycle), now)
	}
	st.log.Info("maintenance run started", zap.String("cycle", string(job.Cycle)), zap.Bool("catch_up", job.CatchUp), zap.Bool("unsafe", job.Unsafe))
	// The next times assume success; finish corrects them otherwise. Setting them now keeps
	// Next truthful during a long run and makes slots that pass meanwhile due at its end.
	for i := range cycles {
		// This run settles its own catch-up, and a quick catch-up that the full run covers.
		stillOwed := i != idx && next[i].Equal(st.cycles[i].next) && st.cycles[i].catchUp
		d.setNext(st, i, next[i], stillOwed)
	}
	go func() {
		err := d.s.runOne(d.ctx, job)
		d.s.done <- runDone{st: st, job: job, started: now, finished: d.s.clock.Now(), err: err}
	}()
}

// finish records a returned run and schedules what follows from its result.
func (d *dispatcher) finish(r runDone) {
	st := r.st
	st.running = nil
	d.inflight--
	d.finished++
	shuttingDown := d.ctx.Err() != nil
	result := classify(r.err, shuttingDown)
	idx := quickIdx
	if r.job.Cycle == Full {
		idx = fullIdx
	}
	if d.s.recorder != nil {
		d.s.recorder.RunFinished(st.name, string(r.job.Cycle), string(result), r.started, r.finished)
	}
	log := st.log.With(
		zap.String("cycle", string(r.job.Cycle)),
		zap.String("result", string(result)),
		zap.Float64("duration_seconds", r.finished.Sub(r.started).Seconds()),
		zap.Bool("catch_up", r.job.CatchUp),
		zap.Bool("unsafe", r.job.Unsafe),
	)
	if r.job.Unsafe {
		d.finishUnsafe(st, r, result, shuttingDown, log)
		if st.removed {
			delete(d.repos, st.name)
		}
		return
	}
	sched := st.c.scheds[idx]
	switch result {
	case Success:
		st.failures = 0
		// The next slot was set when the run started; if slots passed meanwhile it is already
		// due, so they collapse into the one follow-up run.
		log.Info("maintenance run finished", zap.Time("next_run", st.cycles[idx].next))
	case Failure:
		st.failures++
		retry := r.finished.Add(backoff(d.s.backoffBase, st.failures, Interval(sched, r.finished)))
		// A failed catch-up is still owed, so its retry keeps the flag.
		d.setNext(st, idx, retry, r.job.CatchUp)
		log.Error("maintenance run finished", zap.Error(r.err), zap.Time("retry_at", retry), zap.Int("consecutive_failures", st.failures))
	case Skipped:
		// Counted from the end, not the start, so a slow refusal is not retried at once.
		next := nextSlot(sched, st.c.jitter, r.finished)
		if ra := retryAfter(r.err); ra > 0 && r.finished.Add(ra).Before(next) {
			// A follow-up of the same due run: it keeps the catch-up flag and the Due.
			d.setNext(st, idx, r.finished.Add(ra), r.job.CatchUp)
			st.cycles[idx].due = r.job.Due
			log.Warn("maintenance run finished", zap.Error(r.err), zap.Time("follow_up", st.cycles[idx].next))
			break
		}
		d.setNext(st, idx, next, false)
		log.Warn("maintenance run finished", zap.Error(r.err), zap.Time("next_run", st.cycles[idx].next))
	case Cancelled:
		if shuttingDown {
			log.Info("maintenance run finished")
			break
		}
		// Cancelled from inside the maintainer (e.g. a lost lease): not this repository's fault,
		// so no backoff, but not retried before its next slot either.
		d.setNext(st, idx, nextSlot(sched, st.c.jitter, r.finished), false)
		log.Warn("maintenance run finished", zap.Error(r.err), zap.Time("next_run", st.cycles[idx].next))
	}
	if st.removed {
		delete(d.repos, st.name)
	}
}

// finishUnsafe schedules what follows an unsafe run: in every case the next window slot, set when
// it started. Nothing is retried and the regular cycles' failure count is left alone, since what
// refuses or breaks an unsafe run (a Velero backup in progress, a writer) says nothing of the
// regular cycles; those it covered are owed again at once unless it succeeded.
func (d *dispatcher) finishUnsafe(st *repoState, r runDone, result Result, shuttingDown bool, log *zap.Logger) {
	covered := st.covered
	st.covered = [2]*coverage{}
	next := zap.Time("next_window", st.unsafe.next)
	switch {
	case result == Success:
		st.failures = 0
		log.Info("maintenance run finished", next)
		return
	case result == Cancelled && shuttingDown:
		log.Info("maintenance run finished")
		return
	}
	for i, c := range covered {
		// An Update may have rescheduled the cycle meanwhile; then its new schedule stands.
		if c != nil && st.cycles[i].next.Equal(c.set) {
			d.setNext(st, i, c.was.next, c.was.catchUp)
		}
	}
	if result == Failure {
		log.Error("maintenance run finished", zap.Error(r.err), next)
		return
	}
	log.Warn("maintenance run finished", zap.Error(r.err), next)
}

// setUnsafe sets the next unsafe window slot of st (zero for none) and clears pending.
func (d *dispatcher) setUnsafe(st *repoState, at time.Time) {
	changed := !st.unsafe.next.Equal(at)
	st.unsafe = unsafeState{next: at}
	if !changed || st.removed {
		return
	}
	d.publish(st)
	if !at.IsZero() {
		st.log.Debug("unsafe window not due", zap.Time("next_window", at))
	}
}

// setNext sets when cycle i of st runs next, telling the Recorder and Next when it changed.
func (d *dispatcher) setNext(st *repoState, i int, at time.Time, catchUp bool) {
	st.cycles[i].catchUp = catchUp
	if st.cycles[i].next.Equal(at) {
		return
	}
	st.cycles[i].next = at
	st.cycles[i].due = time.Time{}
	if st.removed {
		return
	}
	if d.s.recorder != nil {
		d.s.recorder.NextRun(st.name, string(cycles[i]), at)
	}
	d.publish(st)
	st.log.Debug("maintenance not due", zap.String("cycle", string(cycles[i])), zap.Time("next_run", at), zap.Bool("catch_up", catchUp))
}

// publish makes Next and NextUnsafe report the next times of st.
func (d *dispatcher) publish(st *repoState) {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	d.s.nexts[st.name] = [2]time.Time{st.cycles[quickIdx].next, st.cycles[fullIdx].next}
	if st.unsafe.next.IsZero() {
		delete(d.s.unsafes, st.name)
	} else {
		d.s.unsafes[st.name] = st.unsafe.next
	}
}

// unpublish removes a repository from Next and NextUnsafe.
func (d *dispatcher) unpublish(name string) {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	delete(d.s.nexts, name)
	delete(d.s.unsafes, name)
}

// idle tells the test hook that the dispatcher is about to wait.
func (d *dispatcher) idle(wake, timer time.Time) {
	if d.s.onIdle == nil {
		return
	}
	d.seq++
	d.s.onIdle(idleState{
		seq: d.seq, wake: wake, timer: timer,
		inflight: d.inflight, lookups: d.lookups,
		started: d.started, finished: d.finished,
	})
}

// shutdown waits for every run and LastSuccess call in flight to return.
func (d *dispatcher) shutdown() {
	d.s.log.Info("scheduler stopping", zap.Int("runs_in_flight", d.inflight))
	for d.inflight > 0 || d.lookups > 0 {
		d.idle(time.Time{}, time.Time{})
		select {
		case r := <-d.s.done:
			d.finish(r)
		case <-d.s.looked:
			d.lookups--
		}
	}
	d.s.log.Info("scheduler stopped")
}
