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
	log     *zap.Logger
}

// cycleState is the schedule of one cycle of one repository.
type cycleState struct {
	next    time.Time
	catchUp bool // the run at next is a catch-up
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
	for _, st := range pickDue(now, d.states(), d.s.concurrency-d.inflight) {
		d.start(st, now)
	}
}

// start starts the due cycle of st.
func (d *dispatcher) start(st *repoState, now time.Time) {
	idx, _ := st.dueCycle(now)
	next := [2]time.Time{st.cycles[quickIdx].next, st.cycles[fullIdx].next}
	next[idx] = nextSlot(st.c.scheds[idx], st.c.jitter, now)
	if idx == fullIdx && !now.Before(next[quickIdx]) {
		// The full cycle does quick's work too; running quick right after it would be waste.
		next[quickIdx] = nextSlot(st.c.scheds[quickIdx], st.c.jitter, now)
	}
	job := Job{
		Repository:    st.name,
		Cycle:         cycles[idx],
		NextQuick:     next[quickIdx],
		NextFull:      next[fullIdx],
		QuickInterval: Interval(st.c.scheds[quickIdx], now),
		FullInterval:  Interval(st.c.scheds[fullIdx], now),
		CatchUp:       st.cycles[idx].catchUp,
	}
	st.running = &job
	d.inflight++
	d.started++
	if d.s.recorder != nil {
		d.s.recorder.RunStarted(st.name, string(job.Cycle), now)
	}
	st.log.Info("maintenance run started", zap.String("cycle", string(job.Cycle)), zap.Bool("catch_up", job.CatchUp))
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
	)
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
		d.setNext(st, idx, nextSlot(sched, st.c.jitter, r.finished), false)
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

// setNext sets when cycle i of st runs next, telling the Recorder and Next when it changed.
func (d *dispatcher) setNext(st *repoState, i int, at time.Time, catchUp bool) {
	st.cycles[i].catchUp = catchUp
	if st.cycles[i].next.Equal(at) {
		return
	}
	st.cycles[i].next = at
	if st.removed {
		return
	}
	if d.s.recorder != nil {
		d.s.recorder.NextRun(st.name, string(cycles[i]), at)
	}
	d.publish(st)
	st.log.Debug("maintenance not due", zap.String("cycle", string(cycles[i])), zap.Time("next_run", at), zap.Bool("catch_up", catchUp))
}

// publish makes Next report the next times of st.
func (d *dispatcher) publish(st *repoState) {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	d.s.nexts[st.name] = [2]time.Time{st.cycles[quickIdx].next, st.cycles[fullIdx].next}
}

// unpublish removes a repository from Next.
func (d *dispatcher) unpublish(name string) {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	delete(d.s.nexts, name)
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
