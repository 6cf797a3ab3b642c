package safety

import (
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // CRON_TZ specs must not depend on the host's zoneinfo
)

func TestNextScheduleTime(t *testing.T) {
	after := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) // a Sunday

	tests := []struct {
		spec    string
		want    time.Time
		wantErr string
	}{
		{"0 4 * * *", time.Date(2026, 3, 2, 4, 0, 0, 0, time.UTC), ""},
		{"*/15 * * * *", time.Date(2026, 3, 1, 12, 15, 0, 0, time.UTC), ""},
		{"CRON_TZ=UTC 0 4 * * 0", time.Date(2026, 3, 8, 4, 0, 0, 0, time.UTC), ""},
		// 13:00 in Berlin (CET, UTC+1 before the end of March) is 12:00 UTC,
		// not after `after`: the next is a day later.
		{"CRON_TZ=Europe/Berlin 0 13 * * *", time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC), ""},
		{"TZ=America/New_York 30 7 * * *", time.Date(2026, 3, 1, 12, 30, 0, 0, time.UTC), ""},
		{"@every 90m", time.Date(2026, 3, 1, 13, 30, 0, 0, time.UTC), ""},
		{"@daily", time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), ""},
		{"@hourly", time.Date(2026, 3, 1, 13, 0, 0, 0, time.UTC), ""},
		{"@weekly", time.Date(2026, 3, 8, 0, 0, 0, 0, time.UTC), ""},
		{"0 0 30 2 *", time.Time{}, ""}, // never fires
		{"", time.Time{}, "empty schedule"},
		{"TZ=UTC", time.Time{}, "invalid schedule"}, // cron panics on it; Velero recovers too
		{"0 4 * *", time.Time{}, "expected exactly 5 fields"},
		{"CRON_TZ=Mars/Olympus 0 4 * * *", time.Time{}, "provided bad location"},
		{"0 0 0 4 * *", time.Time{}, "expected exactly 5 fields"}, // seconds are not Velero's syntax
	}

	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := NextScheduleTime(tt.spec, after)

			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case !got.Equal(tt.want):
				t.Errorf("next %s, want %s", got.UTC(), tt.want)
			}
		})
	}
}

func TestScheduleDue(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	margin := 2 * time.Hour

	tests := []struct {
		name    string
		spec    string
		lastRun time.Time
		margin  time.Duration
		next    time.Time
		due     bool
	}{
		{"due inside margin", "0 13 * * *", now.Add(-23 * time.Hour), margin, now.Add(time.Hour), true},
		{"due exactly at the margin", "0 14 * * *", now.Add(-22 * time.Hour), margin, now.Add(2 * time.Hour), true},
		{"due after the margin", "1 14 * * *", now.Add(-22 * time.Hour), margin, now.Add(2*time.Hour + time.Minute), false},
		{"missed 1h ago, no backup since", "0 11 * * *", now.Add(-25 * time.Hour), margin, now.Add(-time.Hour), true},
		{"ran 1h ago", "0 11 * * *", now.Add(-time.Hour + 5*time.Second), margin, now.Add(23 * time.Hour), false},
		{"missed 3h ago (outside margin) does not block", "0 9 * * *", now.Add(-27 * time.Hour), margin, now.Add(21 * time.Hour), false},
		{"missed for days does not block", "0 9 * * *", now.Add(-240 * time.Hour), margin, now.Add(21 * time.Hour), false},
		{"created recently, never ran, next in 30m", "30 12 * * *", now.Add(-time.Minute), margin, now.Add(30 * time.Minute), true},
		{"every hour always due", "@every 1h", now.Add(-30 * time.Minute), margin, now.Add(30 * time.Minute), true},
		{"zero margin, due now", "0 12 * * *", now.Add(-24 * time.Hour), 0, now, true},
		{"zero margin, next in a minute", "1 12 * * *", now.Add(-24 * time.Hour), 0, now.Add(time.Minute), false},
		{"never fires", "0 0 30 2 *", now.Add(-time.Hour), margin, time.Time{}, false},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next, due, err := scheduleDue(tt.spec, tt.lastRun, now, tt.margin)
			if err != nil {
				t.Fatal(err)
			}

			if !next.Equal(tt.next) || due != tt.due {
				t.Errorf("next %s due %v, want %s %v", next, due, tt.next, tt.due)
			}
		})
	}

	if _, _, err := scheduleDue("nonsense", now, now, margin); err == nil {
		t.Error("no error for a spec that does not parse")
	}
}

// inZone runs the rest of the test with time.Local set to a zone five hours
// west of UTC, as on a daemon whose host or container sets TZ.
func inZone(t *testing.T) {
	t.Helper()

	saved := time.Local
	time.Local = time.FixedZone("UTC-5", -5*3600)

	t.Cleanup(func() { time.Local = saved })
}

// TestScheduleEvaluatedInUTC: Velero evaluates a spec without CRON_TZ= or
// TZ= in its own process's zone, UTC; the daemon's zone must not matter.
// robfig/cron evaluates such a spec in the zone of the time it is given, and
// the daemon's clock gives local times (time.Now, and metav1.Time, which
// decodes to time.Local): the times here are local too.
func TestScheduleEvaluatedInUTC(t *testing.T) {
	inZone(t)

	after := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).In(time.Local)

	for spec, want := range map[string]time.Time{
		"0 4 * * *":                        time.Date(2026, 3, 2, 4, 0, 0, 0, time.UTC),
		"@daily":                           time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC),
		"30 12 * * *":                      time.Date(2026, 3, 1, 12, 30, 0, 0, time.UTC),
		"CRON_TZ=Etc/GMT+5 0 4 * * *":      time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC),
		"TZ=UTC 0 4 * * *":                 time.Date(2026, 3, 2, 4, 0, 0, 0, time.UTC),
		"CRON_TZ=Europe/Berlin 0 13 * * *": time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC),
	} {
		got, err := NextScheduleTime(spec, after)
		if err != nil {
			t.Errorf("%s: %v", spec, err)
		} else if !got.Equal(want) {
			t.Errorf("%s: next %s, want %s", spec, got.UTC(), want)
		}
	}

	// Through the check: a daily 13:00 schedule is due in one hour (UTC),
	// not in six (13:00 in the daemon's zone): the gate must refuse.
	f := newFakeCluster(t, velero(veleroV1, "Schedule", "daily", "Enabled", map[string]any{
		"spec.schedule": "0 13 * * *", "status.lastBackup": "2026-02-28T13:00:04Z",
	}))
	f.checks.Now = func() time.Time { return testNow.In(time.Local) }
	expectOnly(t, f.run(t), CheckSchedules, Refuse, `Schedule velero/daily spec "0 13 * * *" next 2026-03-01T13:00:00Z (in 1h0m0s)`)

	// And one at 08:00, which ran four hours ago, is twenty hours away; at
	// 08:00 in the daemon's zone it would be 13:00 UTC, in one hour: it
	// passes.
	f = newFakeCluster(t, velero(veleroV1, "Schedule", "morning", "Enabled", map[string]any{
		"spec.schedule": "0 8 * * *", "status.lastBackup": "2026-03-01T08:00:02Z",
	}))
	f.checks.Now = func() time.Time { return testNow.In(time.Local) }

	if c := byName(f.run(t), CheckSchedules); c.Verdict != Pass {
		t.Errorf("schedules: %+v, want pass", c)
	}
}

// TestScheduleLastSkipped: Velero computes the next run from
// status.lastSkipped when it is later than the last backup (a run skipped
// by spec.skipImmediately), and from the creation time before any backup.
func TestScheduleLastSkipped(t *testing.T) {
	tests := []struct {
		name   string
		fields map[string]any
		want   Verdict
		text   string
	}{
		// Missed at 11:00 (1h ago, no backup since): refuses.
		{"missed run", map[string]any{"spec.schedule": "0 11 * * *", "status.lastBackup": "2026-02-28T11:00:05Z"},
			Refuse, "next 2026-03-01T11:00:00Z (due 1h0m0s ago, no backup since)"},
		// The same run skipped at 11:30 by skipImmediately: next is tomorrow.
		{"skipped since", map[string]any{"spec.schedule": "0 11 * * *", "status.lastBackup": "2026-02-28T11:00:05Z",
			"status.lastSkipped": "2026-03-01T11:30:00Z"}, Pass, "no unpaused velero schedule due"},
		// A skip older than the last backup does not count.
		{"skipped before the last backup", map[string]any{"spec.schedule": "0 11 * * *", "status.lastBackup": "2026-02-28T11:00:05Z",
			"status.lastSkipped": "2026-02-27T11:30:00Z"}, Refuse, "due 1h0m0s ago"},
		{"lastSkipped does not parse", map[string]any{"spec.schedule": "0 4 * * *", "status.lastSkipped": "yesterday"},
			Refuse, `status.lastSkipped "yesterday" does not parse (fail closed)`},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeCluster(t, velero(veleroV1, "Schedule", "s", "Enabled", tt.fields))
			c := byName(f.run(t), CheckSchedules)

			text := c.Reason + "\n" + strings.Join(c.Evidence, "\n")
			if c.Verdict != tt.want || !strings.Contains(text, tt.text) {
				t.Errorf("schedules: %s %q, want %s with %q", c.Verdict, text, tt.want, tt.text)
			}
		})
	}
}

// TestScheduleSpecThatPanicsCron: robfig/cron panics on a zone prefix with
// nothing after it; Velero recovers and marks the Schedule
// FailedValidation. The gate must refuse, not crash the daemon.
func TestScheduleSpecThatPanicsCron(t *testing.T) {
	f := newFakeCluster(t, velero(veleroV1, "Schedule", "s", "FailedValidation", map[string]any{"spec.schedule": "TZ=UTC"}))
	expectOnly(t, f.run(t), CheckSchedules, Refuse,
		`Schedule velero/s spec "TZ=UTC" does not parse (fail closed): parse schedule "TZ=UTC": invalid schedule: runtime error: slice bounds out of range [:-1]`)
}
