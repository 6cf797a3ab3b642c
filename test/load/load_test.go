package load

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/scheduler"
	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

var (
	flagRepos   = flag.Int("load.repos", defaultRepos, "repositories the daemon maintains")
	flagHours   = flag.Float64("load.hours", 1, "virtual hours of schedules to run")
	flagSpeedup = flag.Float64("load.speedup", defaultSpeedup, "virtual seconds per real second: the schedules are divided by it")
)

// The schedules in virtual time: a quick cycle every 10 minutes and a full
// cycle every hour (6 and 24 times the defaults), each repository's slots
// moved by its own jitter of up to a quick interval, so that the slots of
// all the repositories are spread evenly over each interval.
const (
	virtualQuick = 10 * time.Minute
	quicksPerFul = 6
)

const (
	concurrency = 4
	password    = "load-password-not-secret"
	bucket      = "load"
)

// TestLoad runs the kopia-maintd binary on -load.repos repositories in one
// MinIO bucket with concurrency 4, for -load.hours of virtual time passing
// -load.speedup times faster than real time, and then checks from the
// daemon's log and from the run history kopia keeps in every repository:
// every cycle that came due in the window (which begins once the catch-up
// runs of the first start have ended) ran, within one quick interval of
// its slot; no run was without a due slot (none ran twice); no two runs
// of one repository overlapped; never more than 4 ran at once; none failed.
//
// Time is compressed by dividing the schedules, not by faking a clock:
// the daemon, kopia and MinIO all run on the real clock, as in production,
// and `@every` schedules of a few seconds stand for the virtual minutes.
func TestLoad(t *testing.T) {
	n, speedup := *flagRepos, *flagSpeedup
	quick := time.Duration(float64(virtualQuick) / speedup).Round(time.Second)
	if quick < 2*time.Second {
		t.Fatalf("-load.speedup %v leaves a quick interval of %v; at most %v", speedup, quick, float64(virtualQuick/(2*time.Second)))
	}
	full := quicksPerFul * quick
	window := time.Duration(*flagHours * float64(full))
	// A slot counts as run when a run started within one quick interval of
	// it: later, the scheduler would fold the next slot into the same run.
	allowed := quick

	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, bucket)

	dir := t.TempDir()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("r-%03d", i)
	}
	cfgPath := writeConfig(t, dir, mc, names, quick, full)

	// Built with kopia's testing tag, so that creating and opening the
	// repositories uses its fast key derivation rather than scrypt (0.2 s of
	// a core at every open, which would bound the test, not the daemon).
	bin := harness.BuildBinaryTags(t, "./cmd/kopia-maintd", "testing")

	logPath := filepath.Join(dir, "daemon.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()

	cmd := exec.Command(bin, "run", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	wallStart := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("daemon log (tail):\n%s", tail(logPath))
		}
	})

	started := waitLog(t, logPath, done, 2*time.Minute, "scheduler start", 1, func(l logLine) bool {
		return l.Logger == "scheduler" && l.Msg == "scheduler started"
	})
	// Every repository is new, so each one's first run is a catch-up, due
	// at start: a burst of n full cycles, each creating its repository,
	// that concurrency 4 works through in n/4 run times. Runs do not go
	// faster with the schedules, so for hundreds of repositories the burst
	// outlasts a compressed quick interval; the slots it overlaps are
	// folded into the catch-ups, as after any downtime. The hour begins
	// when the last catch-up has ended.
	t0 := waitLog(t, logPath, done, 30*time.Minute, "catch-up of every repository", n, func(l logLine) bool {
		return l.Logger == "scheduler" && l.Msg == "maintenance run finished" && l.CatchUp && l.Result == "success"
	})
	end := t0.Add(window)
	stopAt := end.Add(allowed + time.Second)
	t.Logf("%d repositories, concurrency %d, quick @every %v, full @every %v, jitter < %v: %v of virtual time in %v (speedup %v)",
		n, concurrency, quick, full, quick, time.Duration(float64(window)*speedup), window, speedup)

	select {
	case err := <-done:
		exited = true
		t.Fatalf("daemon exited before the window ended: %v\n%s", err, tail(logPath))
	case <-time.After(time.Until(stopAt)):
	}
	stopped := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err = <-done:
		exited = true
	case <-time.After(60 * time.Second):
		t.Fatal("daemon did not exit within 60s of SIGTERM")
	}
	if err != nil {
		t.Fatalf("daemon exit after SIGTERM: %v\n%s", err, tail(logPath))
	}
	wall := time.Since(wallStart)

	lg := readLog(t, logPath)
	// Not even at the shutdown: a run it cancels is reported at Info, and
	// kopia's echo of the cancellation is kept at Debug.
	for _, e := range lg.errors {
		t.Errorf("daemon logged an error: %s", e)
	}
	if len(lg.warnings) > 0 {
		t.Logf("daemon logged %d warnings, the first: %s", len(lg.warnings), lg.warnings[0])
	}

	jitters := make(map[string]time.Duration, n)
	for _, name := range names {
		jitters[name] = scheduler.JitterFor(name, quick)
	}
	rep, problems := check(lg, checkParams{
		names: names, jitters: jitters, quick: quick, full: full,
		started: started, t0: t0, end: end, stopped: stopped, allowed: allowed,
	})
	hist := readHistories(t, mc, names)
	problems = append(append(problems, lg.problems...), crossCheck(lg.runs, hist)...)
	if lg.maxInflight > concurrency {
		problems = append(problems, fmt.Sprintf("the daemon's log shows %d runs at once, more than the concurrency %d", lg.maxInflight, concurrency))
	}
	for i, p := range problems {
		if i == 50 {
			t.Errorf("... and %d more problems", len(problems)-i)
			break
		}
		t.Error(p)
	}

	ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	var cpu time.Duration
	var rss int64
	if ru != nil {
		cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		rss = ru.Maxrss >> 10
	}
	t.Logf("runs: %d (%d full, %d quick; %d catch-up), %d due slots in the window, %d kopia task records %v",
		rep.runs, rep.fulls, rep.quicks, rep.catchUps, rep.slots, hist.records, hist.tasks)
	t.Logf("start-up: the catch-ups of %d repositories took %v (%d slots due meanwhile, served up to %v late)",
		n, t0.Sub(started).Round(time.Millisecond), rep.startupSlots, rep.maxStartup.Round(time.Millisecond))
	t.Logf("max concurrent runs: %d by the log, %d by kopia's records; lateness in the window: max %v, p99 %v (allowed %v)",
		lg.maxInflight, hist.maxConcurrent, rep.maxLate.Round(time.Millisecond), rep.p99.Round(time.Millisecond), allowed)
	t.Logf("run duration: median %v, max %v; daemon CPU %v, peak RSS %d MiB; wall %v",
		rep.medianRun.Round(time.Millisecond), rep.maxRun.Round(time.Millisecond), cpu.Round(time.Second), rss, wall.Round(time.Second))
}

// writeConfig writes the daemon's configuration: one S3 repository per name,
// each under its own prefix of one bucket, created by the daemon's first run.
func writeConfig(t *testing.T, dir string, mc *harness.MinIO, names []string, quick, full time.Duration) string {
	t.Helper()
	files := map[string]string{"password": password, "access-key": mc.AccessKey, "secret-key": mc.SecretKey}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `identity: {username: maintd, hostname: load}
stateDirectory: %s/state
concurrency: %d
server: {listenAddress: "%s"}
log: {level: info, format: json}
# One daemon alone: no replica to leave repositories to, so no spread wait.
lease: {spreadStep: 0s}
defaults:
  schedule: {quick: "@every %s", full: "@every %s", jitter: %s}
  ownership: {takeover: if-unowned}
repositories:
`, dir, concurrency, harness.FreeAddr(t), quick, full, quick)
	for _, name := range names {
		fmt.Fprintf(&b, `  - name: %s
    create: true
    passwordFile: %s/password
    storage:
      s3: {bucket: %s, prefix: %s/, endpoint: "%s", insecure: true, accessKeyIDFile: %s/access-key, secretAccessKeyFile: %s/secret-key}
`, name, dir, bucket, name, mc.Endpoint, dir, dir)
	}
	p := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitLog polls the daemon's log until lines matching match have named count
// distinct repositories (or, for lines without one, count lines), and
// returns the time of the line that made it.
func waitLog(t *testing.T, logPath string, done <-chan error, timeout time.Duration, what string, count int, match func(logLine) bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		f, err := os.Open(logPath)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		lines := 0
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var l logLine
			if json.Unmarshal(sc.Bytes(), &l) != nil || !match(l) {
				continue
			}
			lines++
			seen[l.Repository] = true
			if (l.Repository == "" && lines >= count) || (l.Repository != "" && len(seen) >= count) {
				f.Close()
				at, err := l.time()
				if err != nil {
					t.Fatal(err)
				}
				return at
			}
		}
		f.Close()
		select {
		case err := <-done:
			t.Fatalf("daemon exited while waiting for %s: %v\n%s", what, err, tail(logPath))
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %v:\n%s", what, timeout, tail(logPath))
		}
	}
}

// tail returns the last lines of a file, for failure messages.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

// logLine holds the fields of the daemon's JSON log lines that the test reads.
type logLine struct {
	Level      string  `json:"level"`
	TS         string  `json:"ts"`
	Logger     string  `json:"logger"`
	Msg        string  `json:"msg"`
	Repository string  `json:"repository"`
	Cycle      string  `json:"cycle"`
	CatchUp    bool    `json:"catch_up"`
	Result     string  `json:"result"`
	Duration   float64 `json:"duration_seconds"`
	Error      string  `json:"error"`
}

// tsLayout is zap's ISO8601 time encoding, the daemon's.
const tsLayout = "2006-01-02T15:04:05.000Z0700"

func (l logLine) time() (time.Time, error) {
	ts, err := time.Parse(tsLayout, l.TS)
	if err != nil {
		return time.Time{}, fmt.Errorf("log line time %q: %w", l.TS, err)
	}
	return ts, nil
}

// run is one maintenance run as the daemon's scheduler logged it.
type run struct {
	repository, cycle string
	catchUp           bool
	start, end        time.Time
	result, err       string
}

// daemonLog is what the test reads from the daemon's log.
type daemonLog struct {
	runs             []run // in start order
	maxInflight      int
	errors, warnings []string
	// problems are start and finish lines that do not pair up: a run
	// started while its repository's previous one was in flight, a finish
	// without a start, a start without a finish.
	problems []string
}

// readLog reads the runs from the scheduler's start and finish lines, which
// the dispatcher writes in the order it starts and ends runs, and counts
// the runs in flight line by line.
func readLog(t *testing.T, path string) daemonLog {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lg, err := parseLog(f)
	if err != nil {
		t.Fatal(err)
	}
	return lg
}

// parseLog reads a daemon log (see readLog).
func parseLog(r io.Reader) (daemonLog, error) {
	var lg daemonLog
	open := map[string]int{} // repository -> index in lg.runs of its run in flight
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l logLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			lg.problems = append(lg.problems, fmt.Sprintf("daemon log line is not JSON: %s", sc.Text()))
			continue
		}
		switch l.Level {
		case "error", "dpanic", "panic", "fatal":
			lg.errors = append(lg.errors, sc.Text())
		case "warn":
			lg.warnings = append(lg.warnings, sc.Text())
		}
		if l.Logger != "scheduler" {
			continue
		}
		switch l.Msg {
		case "maintenance run started":
			at, err := l.time()
			if err != nil {
				return lg, err
			}
			if i, ok := open[l.Repository]; ok {
				lg.problems = append(lg.problems, fmt.Sprintf("repository %s: a %s run started at %s while its %s run of %s was in flight",
					l.Repository, l.Cycle, l.TS, lg.runs[i].cycle, lg.runs[i].start.Format(tsLayout)))
			}
			open[l.Repository] = len(lg.runs)
			lg.runs = append(lg.runs, run{repository: l.Repository, cycle: l.Cycle, catchUp: l.CatchUp, start: at})
			lg.maxInflight = max(lg.maxInflight, len(open))
		case "maintenance run finished":
			at, err := l.time()
			if err != nil {
				return lg, err
			}
			i, ok := open[l.Repository]
			if !ok || lg.runs[i].cycle != l.Cycle {
				lg.problems = append(lg.problems, fmt.Sprintf("repository %s: a %s run finished at %s that the log did not start", l.Repository, l.Cycle, l.TS))
				continue
			}
			delete(open, l.Repository)
			lg.runs[i].end, lg.runs[i].result, lg.runs[i].err = at, l.Result, l.Error
		}
	}
	if err := sc.Err(); err != nil {
		return lg, err
	}
	for _, i := range open {
		r := lg.runs[i]
		lg.problems = append(lg.problems, fmt.Sprintf("repository %s: the %s run started at %s never finished", r.repository, r.cycle, r.start.Format(tsLayout)))
	}
	slices.Sort(lg.problems)
	return lg, nil
}

type checkParams struct {
	names       []string
	jitters     map[string]time.Duration
	quick, full time.Duration
	// started is when the scheduler started, t0 when the catch-ups at
	// start had all ended and the window began, end when it ended.
	started, t0, end time.Time
	stopped          time.Time
	allowed          time.Duration
}

type checkReport struct {
	runs, fulls, quicks, catchUps, slots int
	startupSlots                         int
	maxLate, maxStartup, p99             time.Duration
	medianRun, maxRun                    time.Duration
}

// slop covers the log's millisecond timestamps (zap truncates): a run
// logged 0.9 ms before its slot started at or after it.
const slop = 5 * time.Millisecond

// slot is one time a cycle of a repository was due.
type slot struct {
	at      time.Time
	catchUp bool
}

// slotsOf returns the cron slots of an `@every d` cycle with jitter j in
// (after, until]: the multiples of d since the Unix epoch, plus j.
func slotsOf(d, j time.Duration, after, until time.Time) []slot {
	var out []slot
	first := time.Unix(0, 0).Add(after.Add(-j).Sub(time.Unix(0, 0)).Truncate(d) + d).Add(j)
	for at := first; !at.After(until); at = at.Add(d) {
		out = append(out, slot{at: at})
	}
	return out
}

// check matches the runs of each repository with the slots they were due
// for. Each repository is new, so both its cycles are due once at the start
// (a catch-up), then at every slot. A run serves every slot of its cycle
// that came before it and no earlier run served, and a full run serves the
// quick slots too (the scheduler lets a full cycle stand for a quick one).
// A run that finds nothing to serve ran twice; a slot of the window served
// later than allowed, or never, was missed. The slots before the window
// (the start-up's) must be served too, but with no bound on the delay.
func check(lg daemonLog, p checkParams) (checkReport, []string) {
	var (
		rep      checkReport
		problems []string
	)
	errorf := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	byRepo := map[string][]run{}
	var durations []time.Duration
	for _, r := range lg.runs {
		byRepo[r.repository] = append(byRepo[r.repository], r)
		rep.runs++
		if r.cycle == "full" {
			rep.fulls++
		} else {
			rep.quicks++
		}
		if r.catchUp {
			rep.catchUps++
		}
		switch {
		case r.result == "success":
			durations = append(durations, r.end.Sub(r.start))
		case r.result == "cancelled" && !r.end.Before(p.stopped.Add(-slop)):
			// In flight at SIGTERM, after the window: the shutdown cancelled it.
		default:
			errorf("repository %s: %s run started at %s ended %s: %s", r.repository, r.cycle, r.start.Format(tsLayout), r.result, r.err)
		}
	}
	var lates []time.Duration
	for _, name := range p.names {
		runs := byRepo[name]
		if len(runs) == 0 {
			errorf("repository %s never ran", name)
			continue
		}
		j := p.jitters[name]
		due := map[string][]slot{
			"quick": append([]slot{{at: p.started, catchUp: true}}, slotsOf(p.quick, j, p.started, p.stopped)...),
			"full":  append([]slot{{at: p.started, catchUp: true}}, slotsOf(p.full, j, p.started, p.stopped)...),
		}
		for _, c := range []string{"quick", "full"} {
			for _, s := range due[c] {
				switch {
				case !s.at.After(p.t0):
					rep.startupSlots++
				case !s.at.After(p.end):
					rep.slots++
				}
			}
		}
		serve := func(c string, r run) int {
			k := 0
			for k < len(due[c]) && !due[c][k].at.After(r.start.Add(slop)) {
				s := due[c][k]
				late := max(r.start.Sub(s.at), 0)
				switch {
				case !s.at.After(p.t0):
					// Due before the window: at start, or during the
					// catch-ups, which fold it in.
					rep.maxStartup = max(rep.maxStartup, late)
				case !s.at.After(p.end):
					rep.maxLate = max(rep.maxLate, late)
					lates = append(lates, late)
					if late > p.allowed {
						errorf("repository %s: %s slot %s (catch-up %v) ran only at %s, %v late (allowed %v)",
							name, c, s.at.Format(tsLayout), s.catchUp, r.start.Format(tsLayout), late.Round(time.Millisecond), p.allowed)
					}
				}
				k++
			}
			due[c] = due[c][k:]
			return k
		}
		for _, r := range runs {
			if serve(r.cycle, r) == 0 {
				errorf("repository %s: %s run at %s had no due slot: it ran twice", name, r.cycle, r.start.Format(tsLayout))
			}
			if r.cycle == "full" {
				serve("quick", r)
			}
		}
		for _, c := range []string{"quick", "full"} {
			for _, s := range due[c] {
				if !s.at.After(p.end) {
					errorf("repository %s: %s slot %s (catch-up %v) never ran", name, c, s.at.Format(tsLayout), s.catchUp)
				}
			}
		}
	}
	slices.Sort(lates)
	if len(lates) > 0 {
		rep.p99 = lates[len(lates)*99/100]
	}
	slices.Sort(durations)
	if len(durations) > 0 {
		rep.medianRun, rep.maxRun = durations[len(durations)/2], durations[len(durations)-1]
	}
	return rep, problems
}
