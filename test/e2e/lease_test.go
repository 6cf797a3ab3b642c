package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// leaseTestConfig writes the configuration of daemon process name of a
// lease test: what every lease test shares (the identity, a state directory
// per process, JSON logs at info, which the tests parse, and a listen
// address when addr is set) followed by body, the test's own lease,
// schedule and repositories.
func leaseTestConfig(t *testing.T, dir, name, addr, body string) string {
	t.Helper()

	listen := ""
	if addr != "" {
		listen = fmt.Sprintf("server: {listenAddress: %q}\n", addr)
	}

	return writeFile(t, dir, name+".yaml", fmt.Sprintf(`
identity: {username: maintd, hostname: e2e}
stateDirectory: %s/state-%s
%slog: {level: info, format: json}
`, dir, name, listen)+body)
}

// leaseConfig is a daemon config for one repository with a repository-kind
// lease of 4s renewed every second and cycles every second or three.
func leaseConfig(t *testing.T, dir, name, storage string, create bool) string {
	t.Helper()

	return leaseTestConfig(t, dir, name, harness.FreeAddr(t), fmt.Sprintf(`lease: {kind: repository, duration: 4s, renewInterval: 1s}
defaults:
  schedule: {quick: "@every 1s", full: "@every 3s", jitter: 0s}
  ownership: {takeover: always}
repositories:
  - name: ns1
    create: %[2]v
    storage: %[1]s
    passwordFile: password
`, storage, create))
}

// waitLog waits until the daemon's log, from byte offset after on, has a
// complete line containing all of parts, and returns the offset just past it.
func waitLog(t *testing.T, d *daemon, after int, timeout time.Duration, parts ...string) int {
	t.Helper()

	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		logs := d.logs()
		pos := after

		for pos < len(logs) {
			n := strings.IndexByte(logs[pos:], '\n')
			if n < 0 {
				break
			}

			line := logs[pos : pos+n]
			pos += n + 1

			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}

			if ok {
				return pos
			}
		}
	}

	t.Fatalf("no log line with %q within %s", parts, timeout)

	return 0
}

// TestLeaseTwoDaemonsNeverOverlap: two daemon processes with one identity
// share one repository (on a filesystem and on MinIO) with cycles every
// second for over a minute. Their lease intervals never overlap; when the
// holder is SIGKILLed the other takes over within duration plus
// renewInterval; a restarted process and a clean stop hand over too.
func TestLeaseTwoDaemonsNeverOverlap(t *testing.T) {
	harness.BuildBinary(t, "./cmd/kopia-maintd")

	backends := map[string]func(t *testing.T, dir string) string{
		"filesystem": func(t *testing.T, dir string) string {
			return fmt.Sprintf("{filesystem: {path: %s/repo}}", dir)
		},
		"minio": func(t *testing.T, dir string) string {
			mc := harness.StartMinIO(t)
			mc.MakeBucket(t, "backups")
			writeFile(t, dir, "access-key", mc.AccessKey)
			writeFile(t, dir, "secret-key", mc.SecretKey)

			return fmt.Sprintf(`{s3: {bucket: backups, prefix: kopia/ns1/, endpoint: "%s", insecure: true, accessKeyIDFile: access-key, secretAccessKeyFile: secret-key}}`, mc.Endpoint)
		},
	}

	for _, name := range []string{"filesystem", "minio"} {
		t.Run(name, func(t *testing.T) {
			// Each backend runs over a minute, mostly waiting: side by side.
			t.Parallel()

			dir := t.TempDir()
			writeFile(t, dir, "password", password)
			storage := backends[name](t, dir)

			if stdout, stderr, code := runCLI(t, "run-once", "--config", leaseConfig(t, dir, "init", storage, true), "--repository", "ns1", "--cycle", "quick"); code != 0 {
				t.Fatalf("create the repository: %d\n%s%s", code, stdout, stderr)
			}

			procs := map[string]*daemon{}
			cfgs := map[string]string{}

			for _, p := range []string{"a", "b"} {
				cfgs[p] = leaseConfig(t, dir, p, storage, false)
				procs[p] = startDaemon(t, cfgs[p], "")
			}

			start := time.Now()

			var intervals []klInterval

			// After 20s, SIGKILL whichever process takes the lease next.
			time.Sleep(20 * time.Second)

			offs := map[string]int{"a": len(procs["a"].logs()), "b": len(procs["b"].logs())}
			victim, other := "", ""

			for victim == "" {
				for p, d := range procs {
					if strings.Contains(d.logs()[offs[p]:], `"msg":"lease acquired"`) {
						victim = p
					}
				}

				time.Sleep(10 * time.Millisecond)
			}

			other = map[string]string{"a": "b", "b": "a"}[victim]
			otherOff := len(procs[other].logs())

			if err := procs[victim].cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}

			killed := time.Now()
			<-procs[victim].done

			waitLog(t, procs[other], otherOff, 20*time.Second, `"msg":"lease acquired"`)
			handover := time.Since(killed)
			t.Logf("holder %s SIGKILLed; %s took the lease over %s later", victim, other, handover.Round(10*time.Millisecond))

			// duration (4s) + renewInterval (1s), plus a second of
			// schedule cadence and the settle delay.
			if handover > 6*time.Second+500*time.Millisecond {
				t.Errorf("handover after SIGKILL took %s, want within duration + renewInterval", handover)
			}

			intervals = append(intervals, klIntervals(t, victim+"1", procs[victim].logs(), killed)...)

			// The killed process restarts (a new holder identity, the same
			// state). Then the current holder stops cleanly: it releases
			// its lease and the restarted process takes over.
			procs[victim] = startDaemon(t, cfgs[victim], "")

			for time.Since(start) < 45*time.Second {
				time.Sleep(time.Second)
			}

			// Stop whichever process takes the lease next.
			offs = map[string]int{"a": len(procs["a"].logs()), "b": len(procs["b"].logs())}
			holder := ""

			for holder == "" {
				for p, d := range procs {
					if strings.Contains(d.logs()[offs[p]:], `"msg":"lease acquired"`) {
						holder = p
					}
				}

				time.Sleep(10 * time.Millisecond)
			}

			taker := map[string]string{"a": "b", "b": "a"}[holder]
			takerOff := len(procs[taker].logs())

			if err := procs[holder].cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}

			stopped := time.Now()
			<-procs[holder].done

			if procs[holder].err != nil {
				t.Errorf("%s exit after SIGTERM: %v", holder, procs[holder].err)
			}

			waitLog(t, procs[taker], takerOff, 20*time.Second, `"msg":"lease acquired"`)
			handover = time.Since(stopped)
			t.Logf("holder %s stopped cleanly; %s took the lease %s later", holder, taker, handover.Round(10*time.Millisecond))

			if handover > 6*time.Second+500*time.Millisecond {
				t.Errorf("handover after a clean stop took %s, want within duration + renewInterval", handover)
			}

			for time.Since(start) < 62*time.Second {
				time.Sleep(time.Second)
			}

			if err := procs[taker].cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}

			<-procs[taker].done

			if procs[taker].err != nil {
				t.Errorf("%s exit after SIGTERM: %v", taker, procs[taker].err)
			}

			for p, d := range procs {
				label := p
				if p == victim {
					label += "2"
				}

				intervals = append(intervals, klIntervals(t, label, d.logs(), time.Now())...)
			}

			held := map[string]int{}
			for _, iv := range intervals {
				held[iv.proc]++
			}

			t.Logf("%d lease intervals over %s: %v", len(intervals), time.Since(start).Round(time.Second), held)

			for _, p := range []string{other, victim + "1", victim + "2"} {
				if held[p] == 0 {
					t.Errorf("process %s never held the lease", p)
				}
			}

			if pairs, overlaps := klAssertDisjoint(t, intervals); overlaps > 0 || pairs == 0 {
				t.Errorf("%d overlaps among %d pairs of intervals of different processes", overlaps, pairs)
			}

			if !strings.Contains(procs[other].logs()+procs[victim].logs(), "another process holds the repository's lease") {
				t.Error("no run was skipped with a Warn naming the holder")
			}
		})
	}
}

// TestLeaseSIGSTOPFencing: the holder, slowed by toxiproxy so its full
// cycle takes seconds, is SIGSTOPped mid-cycle for longer than the lease
// duration; the other daemon takes over; after SIGCONT the resumed process
// stops, and the bucket proves it wrote nothing after it resumed. Every
// snapshot still verifies.
func TestLeaseSIGSTOPFencing(t *testing.T) {
	harness.BuildBinary(t, "./cmd/kopia-maintd")

	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, "backups")
	tp := harness.StartToxiproxy(t)
	slow := tp.Proxy(t, "a", mc.Endpoint)

	k := harness.NewKopiaCLI(t, password)
	k.Run(t, append([]string{"repository", "create", "s3", "--override-username", "velero", "--override-hostname", "c"}, mc.KopiaS3Flags("backups", "kopia/ns1/")...)...)

	dir := t.TempDir()
	src := filepath.Join(dir, "src")

	if err := os.MkdirAll(src, 0o700); err != nil {
		t.Fatal(err)
	}

	for i := range 400 {
		writeRandomFile(t, filepath.Join(src, fmt.Sprintf("f%03d", i)), 8<<10, int64(i+1))
	}

	k.Run(t, "snapshot", "create", src)

	writeFile(t, dir, "password", password)
	writeFile(t, dir, "access-key", mc.AccessKey)
	writeFile(t, dir, "secret-key", mc.SecretKey)

	s3 := func(endpoint string) string {
		return fmt.Sprintf(`{s3: {bucket: backups, prefix: kopia/ns1/, endpoint: "%s", insecure: true, accessKeyIDFile: access-key, secretAccessKeyFile: secret-key}}`, endpoint)
	}

	cfgA := leaseConfig(t, dir, "a", s3(slow), false)
	cfgB := leaseConfig(t, dir, "b", s3(mc.Endpoint), false)

	tp.Latency(t, "a", 100)

	a := startDaemon(t, cfgA, "")

	// A full cycle of A holds the lease and has written: its first task
	// finished. Pause it right there, mid-cycle.
	off := waitLog(t, a, 0, 2*time.Minute, `"msg":"maintenance run started"`, `"cycle":"full"`)
	off = waitLog(t, a, off, time.Minute, `"msg":"lease acquired"`)
	waitLog(t, a, off, time.Minute, `"msg":"maintenance task finished"`)

	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}

	stopped := time.Now()

	// `status` names the stopped holder: its last renewal is under a
	// second old.
	var holderA string
	lines, _ := klParse(a.logs(), 0)
	for _, l := range lines {
		if l.isLease("lease acquired") {
			holderA = l.Holder
		}
	}

	stdout, stderr, code := runCLI(t, "status", "--config", cfgB, "--json")
	var st []struct {
		Lease struct{ State, Holder string }
	}
	if err := json.Unmarshal([]byte(stdout), &st); err != nil || code != 0 || len(st) != 1 {
		t.Fatalf("status --json: %d, %v\n%s%s", code, err, stdout, stderr)
	}
	if l := st[0].Lease; l.State != "held" || l.Holder != holderA || holderA == "" {
		t.Errorf("status shows the lease %s by %q, want held by A (%s)", l.State, l.Holder, holderA)
	}

	b := startDaemon(t, cfgB, "")

	waitLog(t, b, 0, 30*time.Second, `"msg":"lease acquired"`)
	t.Logf("B took the lease %s after A was stopped", time.Since(stopped).Round(10*time.Millisecond))

	time.Sleep(2 * time.Second)

	resumed := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

	aOff := len(a.logs())
	waitLog(t, a, 0, 20*time.Second, "lease")
	time.Sleep(5 * time.Second)

	aLogs := a.logs()
	if !strings.Contains(aLogs[aOff:], "lease lost") && !strings.Contains(aLogs[aOff:], "the lease can no longer be proven") &&
		!strings.Contains(aLogs[aOff:], "refused by the lease fence") {
		t.Fatalf("A resumed without noticing it lost the lease:\n%s", aLogs[aOff:])
	}

	// The bucket's own word: no blob of A's write sessions is newer than
	// the moment A resumed.
	var sessions map[string]time.Time

	b2, err := os.ReadFile(filepath.Join(dir, "state-a", "sessions", "ns1.json"))
	if err != nil {
		t.Fatalf("A's write sessions: %v", err)
	}

	if err := json.Unmarshal(b2, &sessions); err != nil {
		t.Fatal(err)
	}

	checked := 0

	for obj := range mc.Client(t).ListObjects(context.Background(), "backups", minio.ListObjectsOptions{Prefix: "kopia/ns1/", Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}

		for _, part := range strings.Split(strings.TrimPrefix(obj.Key, "kopia/ns1/"), "-")[1:] {
			if _, ours := sessions[part]; ours {
				checked++

				if obj.LastModified.After(resumed) {
					t.Errorf("A wrote %s at %s, after it resumed at %s", obj.Key, obj.LastModified.Format("15:04:05.000"), resumed.Format("15:04:05.000"))
				}
			}
		}
	}

	if checked == 0 {
		t.Fatal("no blob of A's sessions in the bucket: A was paused before it wrote, the check proves nothing")
	}

	t.Logf("A: %d blobs of its sessions in the bucket, none written after it resumed; A's log after SIGCONT:\n%s",
		checked, grepLines(aLogs[aOff:], "lease", "fence"))

	for _, d := range []*daemon{a, b} {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		<-d.done
	}

	k.Run(t, "snapshot", "verify", "--verify-files-percent=100")
}

// grepLines returns the lines of s containing any of words.
func grepLines(s string, words ...string) string {
	var out []string

	for _, l := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}

	return strings.Join(out, "\n")
}
