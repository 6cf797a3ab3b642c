// Package crash kills the kopia-maintd binary with SIGKILL at random points
// of full maintenance cycles on MinIO repositories made by the kopia CLI,
// while another kopia client writes and deletes snapshots, and checks what a
// user would check after each kill: the restarted daemon's next full cycle
// succeeds and the snapshots verify.
package crash

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

var (
	killsFlag = flag.Int("crash.kills", 30, "SIGKILLs that must land inside full cycles (a longer run is a larger number)")
	seedFlag  = flag.Uint64("crash.seed", 0, "seed of the kill points and of the writer; 0 takes one from the clock")
)

const (
	password = "crash-password-not-secret"
	repoName = "r1"
)

// TestSIGKILLDuringFullCycles: a repository made by the kopia CLI v0.22.3
// (what Velero writes with) on MinIO, a kopia CLI client snapshotting a
// changing directory and deleting some of its snapshots for the whole test,
// and the daemon binary with full cycles back to back and a short lease. It
// is killed with SIGKILL inside a full cycle -crash.kills times, half of the
// kills a random delay after the cycle started, drawn over the measured
// duration of a cycle, and half right after a random one of kopia's tasks
// finished, so that the short tasks are hit too; it is restarted after each.
// While the restarted daemon waits for the dead process's lease to go stale,
// the newest snapshot and a random other one must verify with `kopia
// snapshot verify --verify-files-percent=100`; then its first full cycle
// that runs must succeed (log and runs_total). At the end every snapshot the
// writer made and did not delete is listed and verifies, `kopia content
// verify` passes, and the writer saw no error.
func TestSIGKILLDuringFullCycles(t *testing.T) {
	began := time.Now()

	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}

	t.Logf("seed %d (rerun with -crash.seed=%d), %d kills", seed, seed, *killsFlag)

	rng := rand.New(rand.NewPCG(seed, 1))
	bin := harness.BuildBinary(t, "./cmd/kopia-maintd")

	e := newEnv(t)
	w := newWriter(e.writer, e.src, seed)

	// A few snapshots before the daemon starts, so that its first cycles
	// have something to measure; the CLI owns maintenance until the
	// daemon's first cycle takes it over.
	for range 3 {
		if err := w.change(); err != nil {
			t.Fatal(err)
		}

		id, err := w.snapshot()
		if err != nil {
			t.Fatal(err)
		}

		w.created = append(w.created, id)
	}

	d := startDaemon(t, bin, e.cfg, e.addr)
	daemons := []*daemon{d}

	cal, off := waitFullCycle(t, d, 0)

	go w.run()

	writerStopped := false

	defer func() {
		if !writerStopped {
			w.stop()
		}
	}()

	// Calibration: a full cycle beside the writer, the longest of two.
	for range 2 {
		var c cycle

		c, off = waitFullCycle(t, d, off)
		if c.dur > cal.dur {
			cal = c
		}
	}

	t.Logf("calibration: a full cycle beside the writer takes %s; kopia's tasks: %s", cal.dur.Round(time.Millisecond), cal)

	var (
		landed    = map[string]int{}
		missed    int
		killNo    int
		restarts  []time.Duration
		verTime   time.Duration
		nVerified int
	)

	for counted := 0; counted < *killsFlag; {
		killNo++

		if missed > *killsFlag {
			t.Fatalf("%d of %d kills landed outside a full cycle", missed, killNo-1)
		}

		started, from := d.waitLine(t, off, 2*time.Minute, "a full cycle to start", func(l logLine) bool {
			return l.isFull(repoName, "maintenance run started")
		})

		var how string

		if killNo%2 == 1 {
			delay := time.Duration(rng.Int64N(int64(cal.dur)))
			how = fmt.Sprintf("%s after the start", delay.Round(time.Millisecond))

			time.Sleep(time.Until(started.time().Add(delay)))
		} else {
			// Up to the time the next task took to finish in the
			// calibration cycle: the kill lands in the next task or soon
			// after it.
			i := rng.IntN(len(cal.tasks))
			delay := time.Duration(rng.Int64N(int64(cal.gap(i)) + 1))
			how = fmt.Sprintf("%s after %s finished", delay.Round(time.Millisecond), cal.tasks[i].name)

			d.waitLine(t, from, 2*time.Minute, "task "+cal.tasks[i].name+" to finish", func(l logLine) bool {
				return l.Repository == repoName && strings.HasPrefix(l.Msg, "maintenance task ") && l.Task == cal.tasks[i].name ||
					l.isFull(repoName, "maintenance run finished")
			})
			time.Sleep(delay)
		}

		pid := d.cmd.Process.Pid
		d.kill(t)

		into := time.Since(started.time())

		where, inside := e.landing(d, from, pid)
		if !inside {
			missed++
			t.Logf("kill %d (%s): after the cycle ended, not counted", killNo, how)
		} else {
			counted++
			landed[where]++
			t.Logf("kill %d, %d inside a cycle (%s, %s into it): %s", killNo, counted, how, into.Round(time.Millisecond), where)
		}

		if bad := d.defects(); bad != "" {
			t.Fatalf("daemon %d printed:\n%s", pid, bad)
		}

		// The restarted daemon first waits for the dead process's lease
		// to go stale; the sample verifies meanwhile.
		d = startDaemon(t, bin, e.cfg, e.addr)
		daemons = append(daemons, d)

		ids := w.sample(rng)
		type verified struct {
			took time.Duration
			err  error
		}

		verr := make(chan verified, 1)

		go func() {
			took, err := verify(e.verifier, ids...)
			verr <- verified{took, err}
		}()

		res, next := d.waitLine(t, 0, 2*time.Minute, "the first full cycle after the kill", func(l logLine) bool {
			return l.isFull(repoName, "maintenance run finished") && l.Result != "skipped"
		})

		v := <-verr
		if v.err != nil {
			t.Fatalf("kill %d (%s): %v\nthe writer's history:\n%s", killNo, where, v.err, w.history())
		}

		verTime += v.took

		w.unpin(ids...)
		nVerified += len(ids)

		if res.Result != "success" {
			t.Fatalf("kill %d (%s): the next full cycle ended %s: %s\n%s", killNo, where, res.Result, res.Error, d.logs())
		}

		restarts = append(restarts, res.time().Sub(d.started))

		if got := d.metric(t, fmt.Sprintf(`kopia_maintenance_runs_total{cycle="full",repository=%q,result="success"}`, repoName)); got != 1 {
			t.Fatalf("kill %d: the log has the restarted daemon's first successful full cycle, runs_total of successes is %v", killNo, got)
		}

		if got := d.metric(t, fmt.Sprintf(`kopia_maintenance_runs_total{cycle="full",repository=%q,result="failure"}`, repoName)); got > 0 {
			t.Fatalf("kill %d: runs_total of failed full cycles is %v\n%s", killNo, got, d.logs())
		}

		off = next
	}

	w.stop()
	writerStopped = true

	// One more full cycle after the writer's last snapshot, then a clean
	// stop.
	waitFullCycle(t, d, off)

	d.stop(t)

	for _, d := range daemons {
		if bad := d.defects(); bad != "" {
			t.Fatalf("daemon %d printed:\n%s", d.cmd.Process.Pid, bad)
		}
	}

	if errs := w.errors(); len(errs) > 0 {
		t.Errorf("the writer failed %d times:\n%s", len(errs), strings.Join(errs, "\n"))
	}

	have, err := listed(e.verifier)
	if err != nil {
		t.Fatal(err)
	}

	live := w.live()
	for _, id := range live {
		if !have[id] {
			t.Errorf("snapshot %s, made by the writer and not deleted, is missing", id)
		}
	}

	if len(have) != len(live) {
		t.Errorf("%d snapshots listed, the writer has %d live ones", len(have), len(live))
	}

	if t.Failed() {
		t.Logf("the writer's history:\n%s", w.history())
	}

	created, deleted := w.counts()

	took, err := verify(e.verifier)
	if err != nil {
		t.Fatal(err)
	}

	if out, err := e.verifier.RunErr("content", "verify"); err != nil {
		t.Fatalf("content verify: %v\n%s", err, out)
	}

	var where []string
	for k, n := range landed {
		where = append(where, fmt.Sprintf("%s: %d", k, n))
	}

	sort.Strings(where)
	slices.Sort(restarts)

	t.Logf("%d kills inside full cycles, %d after a cycle ended (not counted); where they landed:\n\t%s", *killsFlag, missed, strings.Join(where, "\n\t"))
	t.Logf("restart to the first successful full cycle: median %s, max %s", restarts[len(restarts)/2].Round(time.Millisecond), restarts[len(restarts)-1].Round(time.Millisecond))
	t.Logf("writer: %d snapshots made, %d deleted; %d sampled ones verified in %s; at the end all %d live ones listed and verified in %s",
		created, deleted, nVerified, verTime.Round(time.Millisecond), len(live), took.Round(time.Millisecond))
	t.Logf("total %s", time.Since(began).Round(time.Second))
}

// cycle is a successful full cycle as the daemon logged it.
type cycle struct {
	dur   time.Duration
	start time.Time
	// tasks are kopia's tasks in the order they finished; end is when the
	// cycle finished.
	tasks []taskEnd
	end   time.Time
}

type taskEnd struct {
	name string
	at   time.Time
}

// gap is the time from the end of task i to the next task's end, or to the
// end of the cycle.
func (c cycle) gap(i int) time.Duration {
	if i+1 < len(c.tasks) {
		return c.tasks[i+1].at.Sub(c.tasks[i].at)
	}

	return c.end.Sub(c.tasks[i].at)
}

func (c cycle) String() string {
	var b strings.Builder

	prev := c.start
	for _, t := range c.tasks {
		fmt.Fprintf(&b, "%s (+%s) ", t.name, t.at.Sub(prev).Round(time.Millisecond))
		prev = t.at
	}

	fmt.Fprintf(&b, "end (+%s)", c.end.Sub(prev).Round(time.Millisecond))

	return b.String()
}

// waitFullCycle waits for the next full cycle of d after offset off that is
// not skipped, requires it to succeed, and returns it and the offset past
// its end.
func waitFullCycle(t *testing.T, d *daemon, off int) (cycle, int) {
	t.Helper()

	for {
		started, from := d.waitLine(t, off, 2*time.Minute, "a full cycle to start", func(l logLine) bool {
			return l.isFull(repoName, "maintenance run started")
		})

		end, next := d.waitLine(t, from, 2*time.Minute, "the full cycle to finish", func(l logLine) bool {
			return l.isFull(repoName, "maintenance run finished")
		})

		off = next

		if end.Result == "skipped" {
			continue
		}

		if end.Result != "success" {
			t.Fatalf("full cycle: %s: %s\n%s", end.Result, end.Error, d.logs())
		}

		c := cycle{start: started.time(), end: end.time(), dur: end.time().Sub(started.time())}

		lines, _ := d.lines(from)
		for _, l := range lines {
			if l.raw == end.raw {
				break
			}

			if l.Repository == repoName && l.Msg == "maintenance task finished" {
				c.tasks = append(c.tasks, taskEnd{l.Task, l.time()})
			}
		}

		if len(c.tasks) == 0 {
			t.Fatalf("a full cycle logged no kopia task:\n%s", d.logs()[from:next])
		}

		return c, off
	}
}

// env is the MinIO repository, its two kopia CLI clients (the writer and a
// verifier, each its own connection and cache) and the daemon's config.
type env struct {
	mc       *harness.MinIO
	writer   *harness.KopiaCLI
	verifier *harness.KopiaCLI
	src      string
	dir      string
	cfg      string
	addr     string
}

func newEnv(t *testing.T) *env {
	t.Helper()

	e := &env{mc: harness.StartMinIO(t), dir: t.TempDir(), addr: harness.FreeAddr(t)}
	e.mc.MakeBucket(t, "backups")

	prefix := "kopia/" + repoName + "/"

	e.writer = harness.NewKopiaCLIVersion(t, harness.KopiaV0223, password)
	if v := e.writer.Version(t); v != harness.KopiaV0223 {
		t.Fatalf("kopia CLI %s, want %s", v, harness.KopiaV0223)
	}

	e.writer.Run(t, append([]string{"repository", "create", "s3", "--override-username", "default", "--override-hostname", "default"}, e.mc.KopiaS3Flags("backups", prefix)...)...)

	// Kept for the whole test: the writer deletes snapshots itself, and
	// the test knows which.
	e.writer.Run(t, "policy", "set", "--global", "--keep-latest=1000000")

	e.verifier = harness.NewKopiaCLIVersion(t, harness.KopiaV0223, password)
	e.verifier.Run(t, append([]string{"repository", "connect", "s3", "--override-username", "verifier", "--override-hostname", "crash"}, e.mc.KopiaS3Flags("backups", prefix)...)...)

	e.src = filepath.Join(e.dir, "src")
	if err := os.MkdirAll(e.src, 0o700); err != nil {
		t.Fatal(err)
	}

	for name, content := range map[string]string{"password": password, "access-key": e.mc.AccessKey, "secret-key": e.mc.SecretKey} {
		if err := os.WriteFile(filepath.Join(e.dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// Full cycles back to back (a slot every second), quick ones only at
	// start; a lease of 2.5s renewed every 800ms, so that a killed
	// process's lease is stale soon after the restart (a holder stops at
	// 2s after its last renewal, which leaves a late renewal 1.2s on a
	// loaded machine); no spread wait (one process).
	e.cfg = filepath.Join(e.dir, "config.yaml")

	cfg := fmt.Sprintf(`
identity: {username: maintd, hostname: crash}
stateDirectory: %[1]s/state
server: {listenAddress: %[2]q}
log: {level: info, format: json}
lease: {kind: repository, duration: 2.5s, renewInterval: 800ms, spreadStep: 0s}
defaults:
  schedule: {quick: "@every 1h", full: "@every 1s", jitter: 0s}
  ownership: {takeover: always}
repositories:
  - name: %[3]s
    storage:
      s3: {bucket: backups, prefix: %[4]s, endpoint: %[5]q, insecure: true, accessKeyIDFile: access-key, secretAccessKeyFile: secret-key}
    passwordFile: password
`, e.dir, e.addr, repoName, prefix, e.mc.Endpoint)

	if err := os.WriteFile(e.cfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	return e
}

// liveRun is the part of the daemon's live status file (the run in flight,
// as `status` shows it) the test reads.
type liveRun struct {
	PID      int `json:"pid"`
	Progress struct {
		Task string `json:"task"`
	} `json:"progress"`
}

// landing tells where in the full cycle that started at log offset from the
// kill of process pid landed, and whether that was inside the cycle at all:
// the task in flight as the live status file the process left behind shows
// it, and the last task the log shows finished.
func (e *env) landing(d *daemon, from, pid int) (string, bool) {
	lines, _ := d.lines(from)

	var (
		lease    bool
		finished []string
	)

	for _, l := range lines {
		switch {
		case l.isFull(repoName, "maintenance run finished"):
			return "", false
		case l.Msg == "lease acquired" && l.Lease == repoName:
			lease = true
		case l.Repository == repoName && l.Msg == "maintenance task finished":
			finished = append(finished, l.Task)
		}
	}

	var lr liveRun

	b, err := os.ReadFile(filepath.Join(e.dir, "state", "status", repoName+".live.json"))
	if err != nil || json.Unmarshal(b, &lr) != nil || lr.PID != pid {
		lr = liveRun{}
	}

	running := lr.Progress.Task
	if slices.Contains(finished, running) {
		running = ""
	}

	switch {
	case !lease:
		return "taking the lease", true
	case len(finished) == 0 && running == "":
		return "opening the repository", true
	case len(finished) == 0:
		return "in " + running, true
	case running != "":
		return "in " + running + ", after " + finished[len(finished)-1], true
	case finished[len(finished)-1] == "cleanup-logs":
		// kopia's last task: the daemon's own steps follow (the health
		// inspection, the schedule).
		return "after kopia's tasks", true
	default:
		return "after " + finished[len(finished)-1], true
	}
}
