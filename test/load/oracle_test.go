package load

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// The checks of TestLoad find what they are meant to find: these tests feed
// them made-up runs, logs and records.

// oracleParams: one repository without jitter, quick every 10 s and full
// every minute, a window of a minute starting 5 s after a quick slot.
func oracleParams() checkParams {
	t0 := time.Unix(1_000_000_025, 0)
	end := t0.Add(time.Minute)
	return checkParams{
		names: []string{"r"}, jitters: map[string]time.Duration{"r": 0},
		quick: 10 * time.Second, full: time.Minute,
		started: t0, t0: t0, end: end, stopped: end.Add(11 * time.Second), allowed: 10 * time.Second,
	}
}

// goodRuns are the runs a correct scheduler makes for oracleParams: the
// catch-up full at start, a quick run 100 ms after each slot, the full run
// at the full slot (standing for that quick slot too).
func goodRuns() []run {
	at := func(sec int64, cycle string) run {
		start := time.Unix(sec, 100_000_000)
		return run{repository: "r", cycle: cycle, start: start, end: start.Add(200 * time.Millisecond), result: "success"}
	}
	runs := []run{at(1_000_000_025, "full")}
	runs[0].catchUp = true
	for s := int64(1_000_000_030); s <= 1_000_000_090; s += 10 {
		c := "quick"
		if s == 1_000_000_080 {
			c = "full"
		}
		runs = append(runs, at(s, c))
	}
	return runs
}

func TestCheckFindsWhatWentWrong(t *testing.T) {
	tests := []struct {
		name   string
		mutate func([]run) []run
		want   []string
	}{
		{"correct", func(r []run) []run { return r }, nil},
		{"ran twice", func(r []run) []run {
			extra := r[2]
			extra.start, extra.end = extra.start.Add(time.Second), extra.end.Add(time.Second)
			return slices.Insert(r, 3, extra)
		}, []string{"quick run at 2001-09-09T01:47:21.100Z had no due slot: it ran twice"}},
		{"slot missed", func(r []run) []run { return slices.Delete(r, 3, 4) },
			[]string{"quick slot 2001-09-09T01:47:30.000Z (catch-up false) ran only at 2001-09-09T01:47:40.100Z, 10.1s late"}},
		{"failed", func(r []run) []run { r[4].result, r[4].err = "failure", "boom"; return r },
			[]string{"quick run started at 2001-09-09T01:47:40.100Z ended failure: boom"}},
		{"never ran", func(r []run) []run { return r[:len(r)-2] }, []string{
			"quick slot 2001-09-09T01:48:00.000Z (catch-up false) never ran",
			"full slot 2001-09-09T01:48:00.000Z (catch-up false) never ran",
		}},
		{"cancelled by the shutdown", func(r []run) []run {
			r[len(r)-1].result, r[len(r)-1].end = "cancelled", oracleParams().stopped
			return r
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, problems := check(daemonLog{runs: tt.mutate(goodRuns())}, oracleParams())
			if len(problems) != len(tt.want) {
				t.Fatalf("problems = %q, want %d like %q", problems, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.Contains(problems[i], w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, problems[i], w)
				}
			}
			if tt.name == "correct" && (rep.slots != 7 || rep.startupSlots != 2 || rep.maxLate != 100*time.Millisecond) {
				t.Errorf("report = %+v, want 7 slots in the window (6 quick, 1 full) and 2 catch-ups and 100ms late", rep)
			}
		})
	}
}

func TestParseLogPairsRuns(t *testing.T) {
	line := func(ms int, msg, repo string) string {
		return fmt.Sprintf(`{"level":"info","ts":"2026-12-03T10:00:00.%03dZ","logger":"scheduler","msg":%q,"repository":%q,"cycle":"quick","result":"success"}`, ms, msg, repo)
	}
	var lines []string
	for i := range 5 {
		lines = append(lines, line(i, "maintenance run started", fmt.Sprint("r", i)))
	}
	lines = append(lines,
		line(10, "maintenance run started", "r0"),
		line(11, "maintenance run finished", "r0"),
		line(12, "maintenance run finished", "r9"),
		`{"level":"error","ts":"2026-12-03T10:00:00.013Z","logger":"repository","msg":"x"}`,
	)
	lg, err := parseLog(strings.NewReader(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"repository r0: a quick run started at 2026-12-03T10:00:00.010Z while its quick run of 2026-12-03T10:00:00.000Z was in flight",
		"repository r1: the quick run started at 2026-12-03T10:00:00.001Z never finished",
		"repository r2: the quick run started at 2026-12-03T10:00:00.002Z never finished",
		"repository r3: the quick run started at 2026-12-03T10:00:00.003Z never finished",
		"repository r4: the quick run started at 2026-12-03T10:00:00.004Z never finished",
		"repository r9: a quick run finished at 2026-12-03T10:00:00.012Z that the log did not start",
	}
	if !slices.Equal(lg.problems, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(lg.problems, "\n"), strings.Join(want, "\n"))
	}
	// The second start of r0 hides the first from the finish check; the
	// first problem reports it.
	if lg.maxInflight != 5 || len(lg.errors) != 1 || len(lg.runs) != 6 {
		t.Errorf("max in flight %d, %d errors, %d runs; want 5, 1, 6", lg.maxInflight, len(lg.errors), len(lg.runs))
	}
}

func TestCrossCheckHoldsRecordsToTheLog(t *testing.T) {
	runs := goodRuns()
	rec := func(r run, task string) taskRun {
		return taskRun{task: task, start: r.start.Add(time.Millisecond), end: r.end.Add(-time.Millisecond), success: true}
	}
	var recs []taskRun
	for _, r := range runs {
		recs = append(recs, rec(r, "advance-epoch"))
		if r.cycle == "full" {
			recs = append(recs, rec(r, "snapshot-gc"))
		}
	}
	if p := crossCheck(runs, &histories{byRepo: map[string][]taskRun{"r": recs}}); p != nil {
		t.Fatalf("correct records: %q", p)
	}

	bad := slices.Clone(recs)
	bad[0].success, bad[0].err = false, "boom"     // a failed task
	bad[1].start = runs[0].start.Add(-time.Second) // the catch-up's gc outside its run
	bad = slices.DeleteFunc(bad, func(r taskRun) bool { return r.start.Equal(runs[3].start.Add(time.Millisecond)) })
	// Five repositories whose recorded work overlaps.
	h := &histories{byRepo: map[string][]taskRun{"r": bad}}
	var all []run
	all = append(all, runs...)
	for i := range 4 {
		name := fmt.Sprint("o", i)
		r := runs[5]
		r.repository = name
		all = append(all, r)
		h.byRepo[name] = []taskRun{rec(r, "advance-epoch")}
	}
	got := crossCheck(all, h)
	want := []string{
		"kopia records a failed advance-epoch",
		"kopia records a snapshot-gc from",
		"the quick run the daemon logged at 2001-09-09T01:47:30.100Z left no record",
		"the full run the daemon logged at 2001-09-09T01:47:05.100Z left no snapshot-gc",
		"kopia's records show 5 runs at once",
	}
	if len(got) != len(want) {
		t.Fatalf("problems = %q, want %d", got, len(want))
	}
	for _, w := range want {
		if !slices.ContainsFunc(got, func(p string) bool { return strings.Contains(p, w) }) {
			t.Errorf("no problem contains %q in %q", w, got)
		}
	}
}
