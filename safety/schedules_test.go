package safety

import (
	"strings"
	"testing"
	"time"
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
