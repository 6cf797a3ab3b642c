package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// Lease timings of the kl tests: a lease not renewed for 4s is stale, and is
// renewed every second.
const (
	klDuration      = 4 * time.Second
	klRenewInterval = time.Second
	// klMargin is the daemon's drift margin (duration/5): a holder stops
	// at duration - margin after its last renewal, others wait duration.
	klMargin = klDuration / 5
	// klReleaseSlack: a "lease released" line is written after the release
	// reached the backend, so the next holder may log its acquisition a
	// few milliseconds before it. Only an interval ended by a release is
	// given this much; an overlap that long is the order of the log lines,
	// not two holders (those overlap by seconds).
	klReleaseSlack = 250 * time.Millisecond
)

// klLogTime is the layout of the daemon's JSON "ts" (zap's ISO8601 encoder).
const klLogTime = "2006-01-02T15:04:05.000Z0700"

// klLine is one JSON log line of a daemon.
type klLine struct {
	TS     string `json:"ts"`
	Level  string `json:"level"`
	Logger string `json:"logger"`
	Msg    string `json:"msg"`
	Holder string `json:"holder"`
	Lease  string `json:"lease"`
	Error  string `json:"error"`
	Cause  string `json:"cause"`
	Reason string `json:"reason"`
	Cycle  string `json:"cycle"`
	Result string `json:"result"`
	Repo   string `json:"repository"`
	// Seconds is a finished run's duration_seconds.
	Seconds float64 `json:"duration_seconds"`
	CatchUp bool    `json:"catch_up"`

	at  time.Time
	raw string
}

func (l klLine) isLease(msg string) bool { return l.Logger == "lease" && l.Msg == msg }

// klParse parses the complete JSON lines of logs from byte offset from on,
// and returns them with the offset just past the last complete line.
// Lines that are not JSON (a panic, the race detector) are kept with only
// raw set.
func klParse(logs string, from int) ([]klLine, int) {
	var out []klLine

	for from < len(logs) {
		n := strings.IndexByte(logs[from:], '\n')
		if n < 0 {
			break
		}

		raw := logs[from : from+n]
		from += n + 1

		l := klLine{raw: raw}
		if err := json.Unmarshal([]byte(raw), &l); err == nil {
			if at, err := time.Parse(klLogTime, l.TS); err == nil {
				l.at = at
			}
		}

		out = append(out, l)
	}

	return out, from
}

// klInterval is a stretch of time in which one process held a
// repository's lease, from its "lease acquired" line to the first of
// "lease lost" (or the deadline that line names, when earlier), "lease
// released", a failed release, or the process' death.
type klInterval struct {
	proc       string
	lease      string
	start, end time.Time
	endedBy    string
}

var klDeadlineRE = regexp.MustCompile(`deadline passed at (\S+?)[\s),"]`)

// klIntervals parses a daemon's log into the intervals it held leases, for
// each lease apart. An interval still open at the end of the log ends at
// dead (the time the process was seen dead after a SIGKILL), or now when
// dead is zero (the process still holds it).
func klIntervals(t *testing.T, proc, logs string, dead time.Time) []klInterval {
	t.Helper()

	lines, _ := klParse(logs, 0)

	var out []klInterval

	opens := map[string]*klInterval{}

	for _, l := range lines {
		if l.Logger != "lease" {
			continue
		}

		if l.Lease == "" {
			l.Lease = l.Repo // the daemon's own "release lease" line
		}

		closeAt := func(at time.Time, by string) {
			if open := opens[l.Lease]; open != nil {
				open.end, open.endedBy = at, by
				out = append(out, *open)
				delete(opens, l.Lease)
			}
		}

		switch l.Msg {
		case "lease acquired":
			if open := opens[l.Lease]; open != nil {
				t.Errorf("%s: lease %s acquired while already held since %s:\n%s", proc, l.Lease, open.start.Format("15:04:05.000"), l.raw)
				closeAt(l.at, "acquired again")
			}

			opens[l.Lease] = &klInterval{proc: proc, lease: l.Lease, start: l.at}
		case "lease lost":
			end := l.at
			// The watchdog notices a passed deadline up to a second late;
			// the fence refused every write from the deadline on.
			if m := klDeadlineRE.FindStringSubmatch(l.Error + " "); m != nil {
				if d, err := time.Parse(time.RFC3339Nano, m[1]); err == nil && d.Before(end) {
					end = d
				}
			}

			closeAt(end, "lost ("+l.Reason+")")
		case "lease released":
			closeAt(l.at, "released")
		case "release lease":
			closeAt(l.at, "release failed")
		}
	}

	for _, open := range opens {
		open.end, open.endedBy = dead, "killed"
		if dead.IsZero() {
			open.end, open.endedBy = time.Now(), "still held"
		}

		out = append(out, *open)
	}

	return out
}

// klAssertDisjoint fails when intervals of different processes overlap, and
// returns how many pairs it compared and how many overlapped.
func klAssertDisjoint(t *testing.T, all []klInterval) (pairs, overlaps int) {
	t.Helper()

	sort.Slice(all, func(i, j int) bool { return all[i].start.Before(all[j].start) })

	closest := time.Duration(1<<63 - 1)

	for i := range all {
		for j := i + 1; j < len(all); j++ {
			a, b := all[i], all[j]
			if a.proc == b.proc || a.lease != b.lease {
				continue
			}

			pairs++

			if !b.start.Before(a.end) {
				closest = min(closest, b.start.Sub(a.end))
				continue
			}

			overlap := a.end.Sub(b.start)
			if a.endedBy == "released" && overlap <= klReleaseSlack {
				t.Logf("%s's acquisition at %s was logged %s before %s's release line (log order)",
					b.proc, b.start.Format("15:04:05.000"), overlap, a.proc)

				continue
			}

			overlaps++
			t.Errorf("overlap of %s on lease %s: %s held it %s .. %s (%s), %s %s .. %s (%s)", overlap, a.lease,
				a.proc, a.start.Format("15:04:05.000"), a.end.Format("15:04:05.000"), a.endedBy,
				b.proc, b.start.Format("15:04:05.000"), b.end.Format("15:04:05.000"), b.endedBy)
		}
	}

	if pairs > 0 && closest != time.Duration(1<<63-1) {
		t.Logf("closest handover between processes: %s", closest)
	}

	return pairs, overlaps
}

// klProc is a daemon process under a name, and when it was killed.
type klProc struct {
	name   string
	d      *daemon
	killed bool
	dead   time.Time // when it was seen dead after kill
	pos    int       // log offset consumed by klWatch
}

// kill sends SIGKILL, returns the time it was sent, and records when the
// process was seen dead.
func (p *klProc) kill(t *testing.T) time.Time {
	t.Helper()

	p.killed = true
	at := time.Now()

	if err := p.d.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill %s: %v", p.name, err)
	}

	select {
	case <-p.d.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not die within 30s of SIGKILL", p.name)
	}

	p.dead = time.Now()

	return at
}

func (p *klProc) intervals(t *testing.T) []klInterval {
	t.Helper()

	return klIntervals(t, p.name, p.d.logs(), p.dead)
}

// klWatch follows the new log lines of several processes until match
// accepts one, which it returns with its process. Every line looked at is
// consumed. It fails the test when a process not killed by the test exits
// or when timeout passes.
func klWatch(t *testing.T, procs []*klProc, what string, timeout time.Duration, match func(p *klProc, l klLine) bool) (*klProc, klLine) {
	t.Helper()

	deadline := time.Now().Add(timeout)

	for {
		for _, p := range procs {
			if p.killed {
				continue
			}

			lines, next := klParse(p.d.logs(), p.pos)

			for i, l := range lines {
				if match(p, l) {
					// Consume up to and including this line only.
					for _, rest := range lines[i+1:] {
						next -= len(rest.raw) + 1
					}

					p.pos = next

					return p, l
				}
			}

			p.pos = next

			select {
			case <-p.d.done:
				t.Fatalf("%s exited (%v) while waiting for %s", p.name, p.d.err, what)
			default:
			}
		}

		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}

		time.Sleep(10 * time.Millisecond)
	}
}

// klSkipTo marks every line logged so far by procs as consumed.
func klSkipTo(procs []*klProc) {
	for _, p := range procs {
		p.pos = len(p.d.logs())
	}
}

// klCheckAll parses every process' intervals, fails on overlaps and logs
// the count.
func klCheckAll(t *testing.T, procs []*klProc) []klInterval {
	t.Helper()

	var all []klInterval
	for _, p := range procs {
		all = append(all, p.intervals(t)...)
	}

	pairs, overlaps := klAssertDisjoint(t, all)
	t.Logf("checked %d lease intervals of %d processes (%d pairs of different processes): %d overlaps", len(all), len(procs), pairs, overlaps)

	return all
}

// klApplyInNamespace applies the namespace-less objects of the YAML file at
// path (relative to the repository root) into namespace, with the subjects
// of a RoleBinding moved there too (as an overlay's `namespace:` does).
func klApplyInNamespace(t *testing.T, kube *harness.Kube, path, namespace string) {
	t.Helper()

	data, err := os.ReadFile(filepath.Join(harness.RepoRoot(t), path))
	if err != nil {
		t.Fatal(err)
	}

	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)

	for {
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}

			t.Fatalf("decode %s: %v", path, err)
		}

		if len(obj) == 0 {
			continue
		}

		u := &unstructured.Unstructured{Object: obj}
		if u.GetNamespace() != "" {
			t.Fatalf("%s: %s %s has a namespace (%s); deploy/base is namespace-less", path, u.GetKind(), u.GetName(), u.GetNamespace())
		}

		u.SetNamespace(namespace)

		if subjects, ok := obj["subjects"].([]any); ok {
			for _, s := range subjects {
				if sm, ok := s.(map[string]any); ok && sm["kind"] == "ServiceAccount" {
					sm["namespace"] = namespace
				}
			}
		}

		js, err := json.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}

		for _, got := range kube.Apply(t, js) {
			if got.GetNamespace() != namespace {
				t.Fatalf("%s: %s %s applied into %q, want %q", path, got.GetKind(), got.GetName(), got.GetNamespace(), namespace)
			}
		}
	}
}

// klTree makes a directory tree of dirs directories (in groups of 200),
// each with one small file: enough directory objects that a full cycle's
// snapshot GC takes seconds.
func klTree(t *testing.T, root string, dirs int) {
	t.Helper()

	for i := range dirs {
		d := filepath.Join(root, fmt.Sprintf("g%03d", i/200), fmt.Sprintf("d%05d", i))
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}

		if err := os.WriteFile(filepath.Join(d, "f"), []byte(fmt.Sprintf("file %d\n", i)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// The schedule of klKubeConfig's repository, and the daemon's spread step
// (cmd/kopia-maintd's spreadStep: with one repository the spread wait is
// below one step).
const (
	klQuickEvery = time.Second
	klSpreadStep = time.Second
)

// klKubeConfig is the daemon configuration of TestLeaseKubernetes.
func klKubeConfig(t *testing.T, dir, name, kubeconfig, addr string, create bool) string {
	t.Helper()

	return leaseTestConfig(t, dir, name, addr, fmt.Sprintf(`kubernetes: {kubeconfig: %[2]s}
lease:
  kind: kubernetes
  duration: %[4]s
  renewInterval: %[5]s
  kubernetes: {namespace: velero}
defaults:
  schedule: {quick: "@every %[6]s", full: "@every 3s", jitter: 0s}
repositories:
  - name: main
    create: %[3]v
    storage: {filesystem: {path: %[1]s/repo}}
    passwordFile: password
`, dir, kubeconfig, create, klDuration, klRenewInterval, klQuickEvery))
}

// TestLeaseKubernetes: two daemon processes with one identity and
// Kubernetes leases (a real kube-apiserver, deploy/'s Lease RBAC, the
// daemon's ServiceAccount) share one filesystem repository with cycles
// every second or three. SIGKILL of the holder right after it acquired
// hands the lease over within duration + renewInterval + the quick
// interval + a spread step (and half that again for a loaded machine),
// never before duration - margin; stopping the API server while a full
// cycle runs ends that holder's lease by duration - margin after the stop
// and stops the run; and the intervals in which the processes held the
// lease never overlap.
func TestLeaseKubernetes(t *testing.T) {
	harness.BuildBinary(t, "./cmd/kopia-maintd")

	kube := harness.StartKube(t)
	klApplyInNamespace(t, kube, "deploy/base/lease-role.yaml", "velero")
	klApplyInNamespace(t, kube, "deploy/base/lease-rolebinding.yaml", "velero")
	kubeconfig := kube.ServiceAccountKubeconfig(t, "velero", "kopia-maintd")

	dir := t.TempDir()
	writeFile(t, dir, "password", password)

	// The repository, made by the daemon itself (under a lease too). Its
	// cycles take about a second at first; before the API server is
	// stopped, the kopia CLI adds a snapshot of a tree whose full cycles
	// take seconds.
	creator := klKubeConfig(t, dir, "creator", kubeconfig, "", true)
	if stdout, stderr, code := runCLI(t, "run-once", "--config", creator, "--repository", "main", "--cycle", "quick"); code != 0 {
		t.Fatalf("run-once creating the repository: code %d\n%s%s", code, stdout, stderr)
	}

	k := harness.NewKopiaCLI(t, password)
	k.Run(t, "repository", "connect", "filesystem", "--path", filepath.Join(dir, "repo"), "--override-username", "cli", "--override-hostname", "e2e")
	k.Run(t, "snapshot", "create", filepath.Join(harness.RepoRoot(t), "config"))
	klTree(t, filepath.Join(dir, "tree"), 20000)

	var procs []*klProc

	start := func(name string) *klProc {
		addr := harness.FreeAddr(t)
		p := &klProc{name: name, d: startDaemon(t, klKubeConfig(t, dir, name, kubeconfig, addr, false), addr)}
		procs = append(procs, p)

		return p
	}

	a, b := start("a"), start("b")

	// Both take turns for a while.
	running := time.Now()
	klWatch(t, procs, "a first lease acquisition", 2*time.Minute, func(_ *klProc, l klLine) bool { return l.isLease("lease acquired") })
	time.Sleep(30*time.Second - time.Since(running))

	for _, p := range []*klProc{a, b} {
		t.Logf("%s acquired the lease %d times in the first 30s", p.name, strings.Count(p.d.logs(), `"msg":"lease acquired"`))
	}

	// SIGKILL the holder right after it acquired.
	klSkipTo(procs)

	holder, acq := klWatch(t, procs, "a lease acquisition to kill", time.Minute, func(_ *klProc, l klLine) bool { return l.isLease("lease acquired") })
	killedAt := holder.kill(t)
	survivor := a
	if holder == a {
		survivor = b
	}

	t.Logf("killed %s %s after its \"lease acquired\" line", holder.name, killedAt.Sub(acq.at).Round(time.Millisecond))

	_, took := klWatch(t, []*klProc{survivor}, "the survivor's takeover", time.Minute, func(_ *klProc, l klLine) bool { return l.isLease("lease acquired") })
	handover := took.at.Sub(killedAt)
	t.Logf("handover after SIGKILL of the holder: %s (duration %s, renewInterval %s)", handover.Round(time.Millisecond), klDuration, klRenewInterval)

	// The survivor takes the lease once it is stale (duration after the
	// last renewal it saw), when its skipped run looks again
	// (renewInterval later) or its next quick slot comes, after its spread
	// wait (below a step: one repository); the margin, half of that, is
	// for a loaded machine.
	pickup := klDuration + klRenewInterval + klQuickEvery + klSpreadStep
	if limit := pickup + pickup/2; handover > limit {
		t.Errorf("handover took %s, want within duration + renewInterval + quick interval + spread step + margin = %s", handover, limit)
	}

	// Never before duration after the holder's last write, which was no
	// earlier than its acquisition: the margin (duration/5) lies between
	// the holder's own deadline and that, so the order in which the two
	// processes log cannot make up for it.
	if early := took.at.Sub(acq.at); early < klDuration-klMargin {
		t.Errorf("handover %s after the killed holder acquired the lease, want at least duration - margin = %s", early, klDuration-klMargin)
	}

	// Full cycles that take seconds, then the killed replica comes back as
	// a new process (a new holder).
	k.Run(t, "snapshot", "create", filepath.Join(dir, "tree"))
	k.Run(t, "repository", "disconnect")
	start(holder.name + "2")

	// Stop the API server while a holder runs a full cycle: its lease
	// ends at its deadline, no later than duration - margin after the API
	// server went away, and the run stops. A full cycle takes seconds, but
	// a fast one may end before the API server is gone: then the API server
	// is started again and the next full cycle is tried, a few times.
	const stopAttempts = 3

	var stoppedAt time.Time

	for attempt := 1; ; attempt++ {
		klSkipTo(procs)

		lastStarted := map[*klProc]string{}
		inFull, acquired := klWatch(t, procs, "a lease acquisition for a full cycle", 2*time.Minute, func(p *klProc, l klLine) bool {
			if l.Msg == "maintenance run started" {
				lastStarted[p] = l.Cycle
			}

			return l.isLease("lease acquired") && lastStarted[p] == "full"
		})
		kube.Stop(t)
		stoppedAt = time.Now()

		// The watchdog notices the deadline within a check interval (what
		// is asserted is the deadline the line names; the limit only stops
		// a test that hangs). A hold that ends otherwise (released, or its
		// release failed) ended with a run that was over before the API
		// server was gone.
		_, ended := klWatch(t, []*klProc{inFull}, "the holder to lose its lease without the API server", time.Minute, func(_ *klProc, l klLine) bool {
			return l.Logger == "lease" && (l.Msg == "lease lost" || l.Msg == "lease released" || l.Msg == "release lease") &&
				(l.Lease == acquired.Lease || l.Repo == acquired.Lease)
		})
		if ended.Msg != "lease lost" {
			t.Logf("attempt %d: %s's full cycle ended (%s) before the API server was gone", attempt, inFull.name, ended.Msg)
			if attempt == stopAttempts {
				t.Fatalf("in %d attempts every full cycle ended before the API server was gone", stopAttempts)
			}

			kube.Start(t)

			continue
		}

		lost := ended

		// Its last renewal began before the API server was gone, so its
		// deadline is at most duration - margin after that.
		m := klDeadlineRE.FindStringSubmatch(lost.Error + " ")
		if m == nil {
			t.Fatalf("lease lost line without a deadline: %s", lost.raw)
		}

		deadline, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			t.Fatalf("deadline %q: %v", m[1], err)
		}

		if limit := stoppedAt.Add(klDuration - klMargin); deadline.After(limit) {
			t.Errorf("lease deadline %s, %s after the API server stopped, want at most duration - margin = %s",
				deadline.Format("15:04:05.000"), deadline.Sub(stoppedAt), klDuration-klMargin)
		}

		t.Logf("%s lost its lease %s after the API server stopped (deadline %s after): %s", inFull.name,
			lost.at.Sub(stoppedAt).Round(time.Millisecond), deadline.Sub(stoppedAt).Round(time.Millisecond), lost.raw)

		// The run then stops (kopia returns once it sees its context end;
		// the fence refuses its writes from the deadline on).
		_, stopped := klWatch(t, []*klProc{inFull}, "the full cycle to stop without the API server", time.Minute, func(_ *klProc, l klLine) bool {
			return l.isLease("maintenance run stopped: the lease can no longer be proven") ||
				(l.Msg == "maintenance run finished" && l.Cycle == "full" && l.Result != "")
		})

		t.Logf("%s's full cycle ended %s after the API server stopped: %s", inFull.name, stopped.at.Sub(stoppedAt).Round(time.Millisecond), stopped.raw)

		if stopped.Msg == "maintenance run finished" && stopped.Result != "cancelled" {
			t.Errorf("the full cycle in flight when the API server stopped finished with result %q, want it stopped by the lease", stopped.Result)
		}

		break
	}

	time.Sleep(2 * time.Second)
	kube.Start(t)
	restartedAt := time.Now()

	// Maintenance resumes once the API server is back.
	klSkipTo(procs)
	// (It took almost two minutes with the race detector on a machine
	// loaded twentyfold: the limit only stops a test that hangs.)
	_, again := klWatch(t, procs, "a lease acquisition after the API server restarted", 5*time.Minute, func(_ *klProc, l klLine) bool { return l.isLease("lease acquired") })
	t.Logf("first acquisition %s after the API server restarted", again.at.Sub(restartedAt).Round(time.Millisecond))
	time.Sleep(10 * time.Second)

	// How often each process got the lease depends on how fast the
	// machine runs the cycles; what the check needs is intervals of more
	// than one process to compare (the killed holder's and the
	// survivor's, at least).
	all := klCheckAll(t, procs)
	holders := map[string]bool{}
	for _, iv := range all {
		holders[iv.proc] = true
	}

	if len(holders) < 2 {
		t.Errorf("lease intervals of %d processes in the whole test, want at least 2 (the killed holder's and the survivor's)", len(holders))
	}
}
