package crash

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// daemon is a running kopia-maintd process whose output (JSON log lines)
// is kept in memory.
type daemon struct {
	cmd     *exec.Cmd
	addr    string
	started time.Time
	done    chan struct{}
	err     error
	// wrote gets a token after each write, so that waitLine reacts to a
	// log line at once: kopia's tasks follow each other within
	// milliseconds.
	wrote chan struct{}

	mu  sync.Mutex
	out []byte
}

func (d *daemon) Write(p []byte) (int, error) {
	d.mu.Lock()
	d.out = append(d.out, p...)
	d.mu.Unlock()

	select {
	case d.wrote <- struct{}{}:
	default:
	}

	return len(p), nil
}

func (d *daemon) logs() string {
	d.mu.Lock()
	defer d.mu.Unlock()

	return string(d.out)
}

// startDaemon runs `bin run --config cfg`; addr is its /metrics address. The
// process is killed in t.Cleanup if it still runs.
func startDaemon(t *testing.T, bin, cfg, addr string) *daemon {
	t.Helper()

	d := &daemon{addr: addr, done: make(chan struct{}), wrote: make(chan struct{}, 1)}
	d.cmd = exec.Command(bin, "run", "--config", cfg)
	d.cmd.Stdout, d.cmd.Stderr = d, d

	d.started = time.Now()
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}

	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()

	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = d.cmd.Process.Kill()
			<-d.done
		}
	})

	return d
}

// kill sends SIGKILL and waits until the process is gone.
func (d *daemon) kill(t *testing.T) {
	t.Helper()

	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL daemon %d: %v", d.cmd.Process.Pid, err)
	}

	<-d.done
}

// stop sends SIGTERM and waits up to 40s for a clean exit.
func (d *daemon) stop(t *testing.T) {
	t.Helper()

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	select {
	case <-d.done:
	case <-time.After(40 * time.Second):
		t.Fatalf("daemon did not exit within 40s of SIGTERM\n%s", d.logs())
	}

	if d.err != nil {
		t.Fatalf("daemon exit after SIGTERM: %v\n%s", d.err, d.logs())
	}
}

// logLine is the part of the daemon's JSON log lines the test reads.
type logLine struct {
	TS         string  `json:"ts"`
	Level      string  `json:"level"`
	Msg        string  `json:"msg"`
	Repository string  `json:"repository"`
	Lease      string  `json:"lease"`
	Cycle      string  `json:"cycle"`
	Result     string  `json:"result"`
	Task       string  `json:"task"`
	Error      string  `json:"error"`
	Duration   float64 `json:"duration_seconds"`

	raw string
}

func (l logLine) time() time.Time {
	ts, _ := time.Parse("2006-01-02T15:04:05.000Z0700", l.TS)
	return ts
}

// isFull reports whether l is message msg of a full cycle of repository.
func (l logLine) isFull(repository, msg string) bool {
	return l.Msg == msg && l.Cycle == "full" && l.Repository == repository
}

// lines returns the complete log lines from byte offset from on and the
// offset just past the last of them. Lines that are not JSON (a panic, a
// race report) come back with only raw set.
func (d *daemon) lines(from int) ([]logLine, int) {
	logs := d.logs()
	if from >= len(logs) {
		return nil, from
	}

	var out []logLine

	pos := from
	for pos < len(logs) {
		n := strings.IndexByte(logs[pos:], '\n')
		if n < 0 {
			break
		}

		raw := logs[pos : pos+n]
		pos += n + 1

		var l logLine
		_ = json.Unmarshal([]byte(raw), &l)
		l.raw = raw
		out = append(out, l)
	}

	return out, pos
}

// waitLine waits until a log line after offset from matches, and returns it
// and the offset just past it. It fails the test when the process exits or
// timeout passes first.
func (d *daemon) waitLine(t *testing.T, from int, timeout time.Duration, what string, match func(logLine) bool) (logLine, int) {
	t.Helper()

	deadline := time.Now().Add(timeout)

	for {
		lines, _ := d.lines(from)
		pos := from

		for _, l := range lines {
			pos += len(l.raw) + 1
			if match(l) {
				return l, pos
			}
		}

		select {
		case <-d.done:
			t.Fatalf("daemon exited (%v) while waiting for %s\n%s", d.err, what, d.logs()[from:])
		default:
		}

		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s\n%s", timeout, what, d.logs()[from:])
		}

		select {
		case <-d.wrote:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// metric returns the value of the sample whose line starts with series, or
// -1 when it is absent or /metrics does not answer.
func (d *daemon) metric(t *testing.T, series string) float64 {
	t.Helper()

	return harness.MetricValue(t, d.addr, series)
}

// defects returns the lines of the output that show a defect of the
// process whatever the test does: a panic, a race report, a fatal error.
func (d *daemon) defects() string {
	var out bytes.Buffer

	for _, l := range strings.Split(d.logs(), "\n") {
		if strings.HasPrefix(l, "panic:") || strings.Contains(l, "DATA RACE") || strings.HasPrefix(l, "fatal error:") || l != "" && l[0] != '{' {
			out.WriteString(l + "\n")
		}
	}

	return out.String()
}
