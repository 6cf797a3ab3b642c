package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// Pair holds the samples of a comparison, side A (kopia-maintd) and side B
// (the kopia CLI), in the order they ran: A B A B ...
type Pair struct {
	Name  string
	Note  string
	A, B  []Sample
	Wants string // the target
}

// IdleResult is comparison 3 and 4.
type IdleResult struct {
	Repositories int
	StartUp      time.Duration // until CPU settled
	StartUpCPU   time.Duration
	Window       time.Duration
	CPU          time.Duration // used in the window
	RSSMean      int64
	RSSMax       int64
	HWM          int64
	Scrapes      []time.Duration
	ScrapeBytes  int
	ScrapeSeries int
	FirstScrape  time.Duration
	ScrapeDuring []time.Duration
}

// Results is everything one bench run measured.
type Results struct {
	Started time.Time
	Machine string
	Params  Params
	Pairs   []*Pair
	Idle    *IdleResult
}

func bench(ctx context.Context, p Params, tools Tools, logf func(string, ...any)) (*Results, error) {
	res := &Results{Started: time.Now().UTC(), Params: p, Machine: machine()}
	if err := os.RemoveAll(p.Work); err != nil {
		return res, err
	}
	if err := os.MkdirAll(p.Work, 0o700); err != nil {
		return res, err
	}
	ref, err := ensureReference(ctx, p, tools, logf)
	if err != nil {
		return res, err
	}
	logf("reference state in %s", ref.Dir)
	logw, err := os.Create(filepath.Join(p.Work, "bench.log"))
	if err != nil {
		return res, err
	}
	defer logw.Close()

	if p.Only["large-fs"] {
		pr, err := compareLarge(ctx, p, tools, ref, false, logw, logf)
		res.Pairs = append(res.Pairs, pr)
		if err != nil {
			return res, err
		}
	}
	if p.Only["large-s3"] {
		pr, err := compareLarge(ctx, p, tools, ref, true, logw, logf)
		res.Pairs = append(res.Pairs, pr)
		if err != nil {
			return res, err
		}
	}
	for _, c := range []string{"quick", "full", "quick-steady"} {
		if !p.Only["many-"+c] {
			continue
		}
		pr, err := compareMany(ctx, p, tools, ref, c, logw, logf)
		res.Pairs = append(res.Pairs, pr)
		if err != nil {
			return res, err
		}
	}
	if p.Only["idle"] {
		res.Idle, err = measureIdle(ctx, p, tools, ref, logw, logf)
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

func machine() string {
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range splitLines(string(b)) {
			if len(l) > 10 && l[:10] == "model name" {
				model = l[13:]
				break
			}
		}
	}
	return fmt.Sprintf("%d CPUs (%s), %s/%s, %s", runtime.NumCPU(), model, runtime.GOOS, runtime.GOARCH, runtime.Version())
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		out = append(out, s[:i])
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}

// compareLarge is comparison 1: run-once --cycle full against kopia
// maintenance run --full, each on a fresh copy of the large repository.
func compareLarge(ctx context.Context, p Params, tools Tools, ref *Reference, s3 bool, logw io.Writer, logf func(string, ...any)) (*Pair, error) {
	name := "large-fs"
	if s3 {
		name = "large-s3"
	}
	pr := &Pair{Name: name, Wants: "A wall <= 1.05 x B wall, A peak RSS <= B peak RSS",
		Note: fmt.Sprintf("one full cycle: `kopia-maintd run-once --cycle full` (A) vs `kopia maintenance run --full` (B); %d files in the first of %d snapshots, %d deleted", p.Large.Files, p.Large.Snapshots, p.Large.Deleted)}
	work := filepath.Join(p.Work, name)
	for i := 0; i < p.Pairs; i++ {
		for _, side := range []string{"A", "B"} {
			if err := ctx.Err(); err != nil {
				return pr, err
			}
			if err := os.RemoveAll(work); err != nil {
				return pr, err
			}
			var m *minioServer
			repo := filepath.Join(work, "repo")
			if s3 {
				data := filepath.Join(work, "minio")
				if err := copyTree(ctx, ref.LargeMinIO, data); err != nil {
					return pr, err
				}
				home := filepath.Join(work, "minio-home")
				if err := os.MkdirAll(home, 0o700); err != nil {
					return pr, err
				}
				mlog, err := os.Create(filepath.Join(p.Work, "minio-"+name+".log"))
				if err != nil {
					return pr, err
				}
				m, err = startMinIO(tools.MinIO, data, home, mlog)
				mlog.Close()
				if err != nil {
					return pr, err
				}
			} else if err := copyTree(ctx, ref.Large, repo); err != nil {
				return pr, err
			}
			s, err := func() (Sample, error) {
				if m != nil {
					defer m.stop()
				}
				if side == "A" {
					listen, err := freeAddr()
					if err != nil {
						return Sample{}, err
					}
					cfg, err := writeDaemonConfig(filepath.Join(work, "daemon"), listen, "@hourly", "@daily", 1,
						[]daemonRepo{{name: "large", path: repo, minio: m}}, "")
					if err != nil {
						return Sample{}, err
					}
					return measure(daemonCommand(tools.Daemon, "run-once", "--config", cfg, "--repository", "large", "--cycle", "full"), logw)
				}
				cli, err := newCLI(tools.Kopia, filepath.Join(work, "cli"))
				if err != nil {
					return Sample{}, err
				}
				if m != nil {
					err = cli.connectS3(ctx, m)
				} else {
					err = cli.connectFS(ctx, repo)
				}
				if err == nil {
					err = cli.dropCache()
				}
				if err != nil {
					return Sample{}, err
				}
				return measure(cli.command("maintenance", "run", "--full"), logw)
			}()
			if err != nil {
				return pr, fmt.Errorf("%s side %s: %w", name, side, err)
			}
			logf("%s %s #%d: wall %s cpu %s peak %s", name, side, i+1, s.Wall.Round(time.Millisecond), s.CPU.Round(time.Millisecond), mib(s.PeakRSS))
			if side == "A" {
				pr.A = append(pr.A, s)
			} else {
				pr.B = append(pr.B, s)
			}
		}
	}
	return pr, os.RemoveAll(work)
}

// manyRepos lays out n fresh copies of the small templates under dir at
// fixed paths, so that connections made once stay valid for every copy.
func manyRepos(ctx context.Context, ref *Reference, dir string, n int) ([]daemonRepo, error) {
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var repos []daemonRepo
	for i := 0; i < n; i++ {
		r := daemonRepo{name: fmt.Sprintf("r%04d", i), path: filepath.Join(dir, fmt.Sprintf("r%04d", i))}
		if err := copyTree(ctx, ref.Small[i%len(ref.Small)], r.path); err != nil {
			return nil, err
		}
		repos = append(repos, r)
	}
	return repos, nil
}

// The schedules of comparison 2. The measured cycle must be due at once and
// must not come due again while the batch runs, or the daemon's side would
// pay for second runs: dueNow returns a cron spec that fires every two
// minutes during one hour twelve hours away (UTC), so its interval is two
// minutes (the reference run history is older: a catch-up at start) and its
// next slot hours off. The other cycle is not due for a year.
func dueNow(now time.Time) string {
	return fmt.Sprintf("CRON_TZ=UTC */2 %d * * *", (now.UTC().Hour()+12)%24)
}

const (
	notSoon  = "@every 8760h"
	dueAfter = 2*time.Minute + 10*time.Second
)

// compareMany is comparison 2: the daemon maintaining Many repositories in
// one process against one kopia process per repository.
//
// cycle quick-steady is the steady state of both models: quick cycles, the
// daemon starting with the connections of an earlier start in its state
// directory (kopia's caches removed), against a Velero-like Job per
// repository that must connect first (a new pod has no connection), both
// processes measured.
func compareMany(ctx context.Context, p Params, tools Tools, ref *Reference, cycle string, logw io.Writer, logf func(string, ...any)) (*Pair, error) {
	name := "many-" + cycle
	steady := cycle == "quick-steady"
	if steady {
		cycle = "quick"
	}
	pr := &Pair{Name: name, Wants: "A total wall and CPU <= B / 5",
		Note: fmt.Sprintf("%s cycles over %d repositories: one `kopia-maintd run` process, concurrency 1, lease.spreadStep %s (A) vs %d sequential `kopia maintenance run` processes (B); totals, peak = largest process", cycle, p.Many, p.SpreadStep, p.Many)}
	if steady {
		pr.Note = fmt.Sprintf("steady state, quick cycles over %d repositories: one `kopia-maintd run` process, concurrency 1, lease.spreadStep %s, started with the connections of an earlier start (A) vs %d sequential `kopia repository connect` + `kopia maintenance run` pairs, as a new Job pod does (B); totals", p.Many, p.SpreadStep, p.Many)
	}
	if wait := time.Until(ref.SmallMaintained.Add(dueAfter)); wait > 0 {
		logf("%s: waiting %s until the reference run history is older than the schedule", name, wait.Round(time.Second))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return pr, ctx.Err()
		}
	}
	quick, full := dueNow(time.Now()), notSoon
	cliArgs := []string{"maintenance", "run"}
	if cycle == "full" {
		quick, full = notSoon, dueNow(time.Now())
		cliArgs = append(cliArgs, "--full")
	}
	work := filepath.Join(p.Work, name)
	dir := filepath.Join(work, "repos")
	var clis []*kopiaCLI
	savedState := ""
	if steady {
		// One unmeasured start makes the connections that the measured
		// starts inherit.
		repos, err := manyRepos(ctx, ref, dir, p.Many)
		if err != nil {
			return pr, err
		}
		listen, err := freeAddr()
		if err != nil {
			return pr, err
		}
		// The measured starts use the same paths: a connection names its
		// state directory.
		prep := filepath.Join(work, "daemon")
		cfg, err := writeDaemonConfig(prep, listen, quick, full, 1, repos, p.SpreadStep)
		if err != nil {
			return pr, err
		}
		logf("%s: one unmeasured start of the daemon to make its connections", name)
		if _, err := runDaemonUntil(ctx, tools.Daemon, cfg, len(repos), 60*time.Minute, logw); err != nil {
			return pr, fmt.Errorf("%s preparation: %w", name, err)
		}
		savedState = filepath.Join(work, "saved-state")
		if err := os.Rename(filepath.Join(prep, "state"), savedState); err != nil {
			return pr, err
		}
		caches, _ := filepath.Glob(filepath.Join(savedState, "repositories", "*", "cache"))
		for _, c := range caches {
			if err := os.RemoveAll(c); err != nil {
				return pr, err
			}
		}
	}
	for i := 0; i < p.Pairs; i++ {
		for _, side := range []string{"A", "B"} {
			repos, err := manyRepos(ctx, ref, dir, p.Many)
			if err != nil {
				return pr, err
			}
			var s Sample
			if side == "A" {
				listen, err := freeAddr()
				if err != nil {
					return pr, err
				}
				ddir := filepath.Join(work, "daemon")
				if err := os.RemoveAll(ddir); err != nil {
					return pr, err
				}
				cfg, err := writeDaemonConfig(ddir, listen, quick, full, 1, repos, p.SpreadStep)
				if err != nil {
					return pr, err
				}
				if savedState != "" {
					if err := copyTree(ctx, savedState, filepath.Join(ddir, "state")); err != nil {
						return pr, err
					}
				}
				s, err = runDaemonUntil(ctx, tools.Daemon, cfg, len(repos), 60*time.Minute, logw)
				if err != nil {
					return pr, fmt.Errorf("%s side A: %w", name, err)
				}
			} else if steady {
				for _, r := range repos {
					// A new pod: no connection, no cache.
					dir := filepath.Join(work, "cli", r.name)
					if err := os.RemoveAll(dir); err != nil {
						return pr, err
					}
					cli, err := newCLI(tools.Kopia, dir)
					if err != nil {
						return pr, err
					}
					connect, err := measure(cli.command(append([]string{"repository", "connect", "filesystem", "--path=" + r.path, "--cache-directory=" + cli.cacheDir()}, identityFlags()...)...), logw)
					if err != nil {
						return pr, fmt.Errorf("%s side B: %w", name, err)
					}
					one, err := measure(cli.command(cliArgs...), logw)
					if err != nil {
						return pr, fmt.Errorf("%s side B: %w", name, err)
					}
					s.add(connect)
					s.add(one)
				}
			} else {
				if clis == nil {
					logf("%s: connecting the CLI to %d repositories (not measured)", name, len(repos))
					for _, r := range repos {
						cli, err := newCLI(tools.Kopia, filepath.Join(work, "cli", r.name))
						if err == nil {
							err = cli.connectFS(ctx, r.path)
						}
						if err != nil {
							return pr, err
						}
						clis = append(clis, cli)
					}
				}
				for _, cli := range clis {
					if err := cli.dropCache(); err != nil {
						return pr, err
					}
				}
				for _, cli := range clis {
					one, err := measure(cli.command(cliArgs...), logw)
					if err != nil {
						return pr, fmt.Errorf("%s side B: %w", name, err)
					}
					s.add(one)
				}
			}
			logf("%s %s #%d: wall %s cpu %s peak %s", name, side, i+1, s.Wall.Round(time.Millisecond), s.CPU.Round(time.Millisecond), mib(s.PeakRSS))
			if side == "A" {
				pr.A = append(pr.A, s)
			} else {
				pr.B = append(pr.B, s)
			}
		}
	}
	return pr, os.RemoveAll(work)
}

// measureIdle is comparisons 3 and 4: the daemon with Idle repositories
// whose cycles are not due, CPU and RSS over IdleWindow after its start-up
// settled, then /metrics scrapes.
func measureIdle(ctx context.Context, p Params, tools Tools, ref *Reference, logw io.Writer, logf func(string, ...any)) (*IdleResult, error) {
	ir := &IdleResult{Repositories: p.Idle, Window: p.IdleWindow}
	work := filepath.Join(p.Work, "idle")
	logf("idle: copying %d repositories", p.Idle)
	repos, err := manyRepos(ctx, ref, filepath.Join(work, "repos"), p.Idle)
	if err != nil {
		return ir, err
	}
	listen, err := freeAddr()
	if err != nil {
		return ir, err
	}
	cfg, err := writeDaemonConfig(filepath.Join(work, "daemon"), listen, notSoon, notSoon, 1, repos, "")
	if err != nil {
		return ir, err
	}
	cmd := daemonCommand(tools.Daemon, "run", "--config", cfg)
	cmd.Stdout, cmd.Stderr = logw, logw
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return ir, err
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}()
	pid := cmd.Process.Pid
	url := "http://" + listen + "/metrics"

	// Start-up: the daemon reads every repository's run history once. It
	// has settled when two consecutive 5 s intervals used < 1 % of a core.
	logf("idle: waiting for the start-up to settle")
	quiet := 0
	last, _ := procCPU(pid)
	for quiet < 2 {
		select {
		case <-time.After(5 * time.Second):
		case <-ctx.Done():
			return ir, ctx.Err()
		}
		c, err := procCPU(pid)
		if err != nil {
			return ir, fmt.Errorf("daemon exited during start-up: %w", err)
		}
		if c-last < 50*time.Millisecond {
			quiet++
		} else {
			quiet = 0
		}
		last = c
		if time.Since(start) > 30*time.Minute {
			return ir, fmt.Errorf("start-up did not settle in 30m")
		}
	}
	ir.StartUp = time.Since(start) - 10*time.Second
	ir.StartUpCPU = last
	logf("idle: settled after %s (%s CPU); measuring %s", ir.StartUp.Round(time.Second), ir.StartUpCPU.Round(time.Millisecond), p.IdleWindow)

	c0, _ := procCPU(pid)
	t0 := time.Now()
	var sum, n int64
	for time.Since(t0) < p.IdleWindow {
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return ir, ctx.Err()
		}
		rss, _, err := procRSS(pid)
		if err != nil {
			return ir, fmt.Errorf("daemon exited while idle: %w", err)
		}
		sum += rss
		n++
		ir.RSSMax = max(ir.RSSMax, rss)
	}
	c1, _ := procCPU(pid)
	ir.Window = time.Since(t0)
	ir.CPU = c1 - c0
	ir.RSSMean = sum / max(n, 1)
	_, ir.HWM, _ = procRSS(pid)
	logf("idle: %.3f %% of a core, RSS mean %s max %s (HWM since start %s)", 100*ir.CPU.Seconds()/ir.Window.Seconds(), mib(ir.RSSMean), mib(ir.RSSMax), mib(ir.HWM))

	client := &http.Client{Timeout: 30 * time.Second}
	for i := 0; i < p.Scrapes; i++ {
		t := time.Now()
		resp, err := client.Get(url)
		if err != nil {
			return ir, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		d := time.Since(t)
		if err != nil {
			return ir, err
		}
		if resp.StatusCode != http.StatusOK {
			return ir, fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		ir.Scrapes = append(ir.Scrapes, d)
		ir.ScrapeBytes = len(b)
		ir.ScrapeSeries = countSeries(b)
	}
	logf("idle: /metrics median %s p95 %s max %s, %d bytes, %d series", median(ir.Scrapes), percentile(ir.Scrapes, 0.95), percentile(ir.Scrapes, 1), ir.ScrapeBytes, ir.ScrapeSeries)
	return ir, nil
}

func countSeries(b []byte) int {
	n := 0
	for _, l := range splitLines(string(b)) {
		if l != "" && l[0] != '#' {
			n++
		}
	}
	return n
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func (r *Results) print(w io.Writer) {
	fmt.Fprintf(w, "\n## kopia-maintd bench, %s\n\nmachine: %s\npairs: %d\n\n", r.Started.Format(time.RFC3339), r.Machine, r.Params.Pairs)
	fmt.Fprintf(w, "| comparison | A wall | B wall | wall B/A | A CPU | B CPU | CPU B/A | A peak RSS | B peak RSS | target |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, p := range r.Pairs {
		if len(p.A) == 0 || len(p.B) == 0 {
			continue
		}
		wa, wb := median(walls(p.A)), median(walls(p.B))
		ca, cb := median(cpus(p.A)), median(cpus(p.B))
		ra, rb := medianInt(rsss(p.A)), medianInt(rsss(p.B))
		fmt.Fprintf(w, "| %s | %s | %s | %.2f | %s | %s | %.2f | %s | %s | %s |\n", p.Name,
			wa.Round(10*time.Millisecond), wb.Round(10*time.Millisecond), wb.Seconds()/wa.Seconds(),
			ca.Round(10*time.Millisecond), cb.Round(10*time.Millisecond), cb.Seconds()/ca.Seconds(), mib(ra), mib(rb), p.Wants)
	}
	fmt.Fprintln(w)
	for _, p := range r.Pairs {
		fmt.Fprintf(w, "- %s: %s. Runs in order (wall/CPU/peak):", p.Name, p.Note)
		for i := range p.A {
			fmt.Fprintf(w, " A %s/%s/%s", p.A[i].Wall.Round(10*time.Millisecond), p.A[i].CPU.Round(10*time.Millisecond), mib(p.A[i].PeakRSS))
			if i < len(p.B) {
				fmt.Fprintf(w, " B %s/%s/%s", p.B[i].Wall.Round(10*time.Millisecond), p.B[i].CPU.Round(10*time.Millisecond), mib(p.B[i].PeakRSS))
			}
		}
		fmt.Fprintln(w)
	}
	if ir := r.Idle; ir != nil && ir.Window > 0 {
		fmt.Fprintf(w, "\nidle, %d repositories: start-up %s (%s CPU); over %s: %.3f %% of a core, RSS mean %s, max %s, VmHWM %s\n",
			ir.Repositories, ir.StartUp.Round(time.Second), ir.StartUpCPU.Round(10*time.Millisecond), ir.Window.Round(time.Second),
			100*ir.CPU.Seconds()/ir.Window.Seconds(), mib(ir.RSSMean), mib(ir.RSSMax), mib(ir.HWM))
		if len(ir.Scrapes) > 0 {
			fmt.Fprintf(w, "/metrics, %d repositories: %d scrapes, median %s, p95 %s, max %s; %d bytes, %d series\n",
				ir.Repositories, len(ir.Scrapes), median(ir.Scrapes).Round(100*time.Microsecond), percentile(ir.Scrapes, 0.95).Round(100*time.Microsecond),
				percentile(ir.Scrapes, 1).Round(100*time.Microsecond), ir.ScrapeBytes, ir.ScrapeSeries)
		}
	}
}

func walls(s []Sample) []time.Duration {
	var d []time.Duration
	for _, x := range s {
		d = append(d, x.Wall)
	}
	return d
}

func cpus(s []Sample) []time.Duration {
	var d []time.Duration
	for _, x := range s {
		d = append(d, x.CPU)
	}
	return d
}

func rsss(s []Sample) []int64 {
	var d []int64
	for _, x := range s {
		d = append(d, x.PeakRSS)
	}
	return d
}
