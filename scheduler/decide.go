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

// skipper is implemented by errors that mark a run as skipped rather than failed.
type skipper interface{ Skipped() bool }

// isSkipped reports whether any error in err's chain (including joined errors) says Skipped.
func isSkipped(err error) bool {
	if err == nil {
		return false
	}
	if s, ok := err.(skipper); ok && s.Skipped() {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return isSkipped(u.Unwrap())
	case interface{ Unwrap() []error }:
		return slices.ContainsFunc(u.Unwrap(), isSkipped)
	}
	return false
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

// dueCycle returns the cycle st should run at now, preferring full because it covers quick.
func (st *repoState) dueCycle(now time.Time) (idx int, due bool) {
	switch {
	case !now.Before(st.cycles[fullIdx].next):
		return fullIdx, true
	case !now.Before(st.cycles[quickIdx].next):
		return quickIdx, true
	}
	return 0, false
}

// dueSince returns the earliest next time among the cycles of st that are due at now.
func (st *repoState) dueSince(now time.Time) time.Time {
	var t time.Time
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
		if _, ok := st.dueCycle(now); ok {
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
// not the timer, frees the slot they wait for.
func wakeAt(now time.Time, states []*repoState) time.Time {
	var t time.Time
	for _, st := range states {
		if !st.schedulable() {
			continue
		}
		for _, c := range st.cycles {
			if c.next.After(now) && (t.IsZero() || c.next.Before(t)) {
				t = c.next
			}
		}
	}
	return t
}
