package scheduler

import (
	"testing"
	"time"
)

// FuzzNextTimes: for any repository name, cron specs, jitter and moment,
// NextTimes either refuses the specs or returns, for each cycle, a time
// strictly after now and no later than the schedule's next slot after now
// plus the jitter; the jitter itself lies in [0, max) and depends only on
// the name.
func FuzzNextTimes(f *testing.F) {
	f.Add("app1", "@hourly", "0 0 * * *", int64(5*time.Minute), int64(1_700_000_000))
	f.Add("app2-default", "@every 90m", "CRON_TZ=Europe/Paris 30 2 * * *", int64(0), int64(1_711_846_800))
	f.Add("x", "*/7 * * * *", "0 0 29 2 *", int64(time.Hour), int64(0))
	f.Add("y", "61 * * * *", "@daily", int64(-1), int64(1_800_000_000))
	f.Add("z", "@every 1s", "@every 24h", int64(48*time.Hour), int64(1_700_000_123))
	f.Add("", "@hourly", "@daily", int64(0), int64(1))

	f.Fuzz(func(t *testing.T, name, quick, full string, jitter, unix int64) {
		if len(quick) > 200 || len(full) > 200 {
			return
		}

		// Moments from 1970 to about 2540, and jitters up to a year: the
		// configuration's range of plausible values and far beyond.
		now := time.Unix(unix&(1<<34-1), 0).UTC()
		j := time.Duration(jitter % int64(365*24*time.Hour))

		got := JitterFor(name, j)
		if j <= 0 && got != 0 || j > 0 && (got < 0 || got >= j) {
			t.Fatalf("JitterFor(%q, %v) = %v, want in [0, %v)", name, j, got, j)
		}

		if again := JitterFor(name, j); again != got {
			t.Fatalf("JitterFor(%q, %v) changed: %v then %v", name, j, got, again)
		}

		r := Repository{Name: name, Quick: quick, Full: full, Jitter: j}

		q, fl, err := NextTimes(r, now)
		if err != nil {
			return
		}

		for i, at := range []time.Time{q, fl} {
			sched, perr := parseSpec([]string{quick, full}[i])
			if perr != nil {
				t.Fatalf("NextTimes accepted %q, parseSpec refuses it: %v", []string{quick, full}[i], perr)
			}

			bound := sched.Next(now).Add(got)
			if !at.After(now) || at.After(bound) {
				t.Fatalf("%s of %+v at %v: %v, want in (now, %v]", cycles[i], r, now, at, bound)
			}
		}
	})
}
