package scheduler

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// The decisions of the dispatcher live here as pure functions of the state and now.

// nextSlot returns the first cron slot plus jitter that lies strictly after after.
func nextSlot(sched cron.Schedule, jitter time.Duration, after time.Time) time.Time {
	// Searching from after-jitter rather than after keeps a slot whose cron time has passed but
	// whose jittered time has not, e.g. when the daemon starts between the two.
	return sched.Next(after.Add(-jitter)).Add(jitter)
}

// backoff returns the delay before retrying after the n-th consecutive failure (n >= 1):
// base*2^(n-1), capped at interval so that a long outage never pushes a cycle further out than
// its own schedule would.
func backoff(base time.Duration, n int, interval time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < interval; i++ {
		d *= 2
	}
	if interval > 0 && d > interval {
		return interval
	}
	return d
}

// needsCatchUp reports whether a cycle whose last success ended at last (zero = never) must run
// promptly at start. A failed lookup counts as "never": running one cycle too many is cheaper than
// letting garbage collection stall unnoticed.
func needsCatchUp(now, last time.Time, lookupErr error, interval time.Duration) bool {
	return lookupErr != nil || last.IsZero() || now.Sub(last) > interval
}

// missedWindowAfter is how late the dispatcher may first see an unsafe window slot and still
// start its run. The dispatcher wakes at every slot (and at least every maxSleep), so a slot seen
// later than this came while the daemon was down, the machine asleep or the wall clock stepped:
// the operator did not expect a safety=none cycle then, so the slot is skipped rather than run
// late by surprise.
const missedWindowAfter = 5 * time.Minute

// windowMissed reports whether an unsafe window slot first seen at now was missed.
func windowMissed(now, slot time.Time) bool {
	return now.Sub(slot) > missedWindowAfter
}

// inChain reports whether match accepts any error in err's chain, joined errors included,
// visiting them depth first.
func inChain(err error, match func(error) bool) bool {
	if err == nil {
		return false
	}
	if match(err) {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return inChain(u.Unwrap(), match)
	case interface{ Unwrap() []error }:
		return slices.ContainsFunc(u.Unwrap(), func(e error) bool { return inChain(e, match) })
	}
	return false
}

// skipper is implemented by errors that mark a run as skipped rather than failed.
type skipper interface{ Skipped() bool }

// isSkipped reports whether any error in err's chain says Skipped.
func isSkipped(err error) bool {
	return inChain(err, func(e error) bool {
		s, ok := e.(skipper)
		return ok && s.Skipped()
	})
}

// retrier is implemented by skipped errors that ask for a follow-up before the next slot.
type retrier interface{ RetryAfter() time.Duration }

// retryAfter returns the first positive RetryAfter in err's chain.
func retryAfter(err error) time.Duration {
	var d time.Duration
	inChain(err, func(e error) bool {
		if r, ok := e.(retrier); ok && r.RetryAfter() > 0 {
			d = r.RetryAfter()
		}
		return d > 0
	})
	return d
}

// classify maps the error of a finished run to its result. shuttingDown is true when the
// scheduler's context was done by the time the run returned.
func classify(err error, shuttingDown bool) Result {
	switch {
	case err == nil:
		return Success
	case shuttingDown || errors.Is(err, context.Canceled):
		return Cancelled
	case isSkipped(err):
		return Skipped
	default:
		return Failure
	}
}

// schedulable reports whether st may start a run: known next times, not running, not removed.
func (st *repoState) schedulable() bool {
	return !st.lookingUp && st.running == nil && !st.removed
}

// dueCycle returns the cycle st should run at now, preferring an unsafe window's full cycle,
// then full, because each covers the ones after it.
func (st *repoState) dueCycle(now time.Time) (idx int, unsafe, due bool) {
	switch {
	case st.unsafe.pending:
		return fullIdx, true, true
	case !now.Before(st.cycles[fullIdx].next):
		return fullIdx, false, true
	case !now.Before(st.cycles[quickIdx].next):
		return quickIdx, false, true
	}
	return 0, false, false
}

// dueSince returns the earliest next time among the cycles of st that are due at now.
func (st *repoState) dueSince(now time.Time) time.Time {
	var t time.Time
	if st.unsafe.pending {
		t = st.unsafe.next
	}
	for _, c := range st.cycles {
		if !now.Before(c.next) && (t.IsZero() || c.next.Before(t)) {
			t = c.next
		}
	}
	return t
}

// pickDue returns up to free schedulable repositories with a due cycle, the longest overdue first
// (ties by name, for a stable order).
func pickDue(now time.Time, states []*repoState, free int) []*repoState {
	if free <= 0 {
		return nil
	}
	var due []*repoState
	for _, st := range states {
		if !st.schedulable() {
			continue
		}
		if _, _, ok := st.dueCycle(now); ok {
			due = append(due, st)
		}
	}
	slices.SortFunc(due, func(a, b *repoState) int {
		if c := a.dueSince(now).Compare(b.dueSince(now)); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	if len(due) > free {
		due = due[:free]
	}
	return due
}

// wakeAt returns the earliest next time after now among schedulable repositories, or zero when
// nothing is scheduled. Due repositories waiting for a free slot are left out: a finishing run,
// not the timer, frees the slot they wait for. Unsafe window slots count for every repository,
// busy or not, because the dispatcher must see each slot come to tell a slot that waits for a
// busy repository from one missed while it was not watching (windowMissed).
func wakeAt(now time.Time, states []*repoState) time.Time {
	var t time.Time
	earliest := func(at time.Time) {
		if at.After(now) && (t.IsZero() || at.Before(t)) {
			t = at
		}
	}
	for _, st := range states {
		if !st.removed && !st.unsafe.pending && !st.unsafe.next.IsZero() {
			earliest(st.unsafe.next)
		}
		if !st.schedulable() {
			continue
		}
		for _, c := range st.cycles {
			earliest(c.next)
		}
	}
	return t
}
