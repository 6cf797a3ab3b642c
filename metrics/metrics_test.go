package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
)

func TestRecorderSeries(t *testing.T) {
	m := New(BuildInfo{Version: "v1.2.3", KopiaVersion: "v0.22.3"})
	start := time.Unix(1_700_000_000, 0)

	m.RunStarted("a", "quick", start)

	if got := testutil.ToFloat64(m.inProgress.WithLabelValues("a", "quick")); got != 1 {
		t.Fatalf("in_progress during run = %v", got)
	}

	m.RunFinished("a", "quick", "success", start, start.Add(3*time.Second))
	m.RunFinished("a", "full", "failure", start, start.Add(time.Minute))
	m.RunFinished("b", "quick", "skipped", start, start)
	m.NextRun("a", "quick", start.Add(time.Hour))

	want := `
# HELP kopia_maintenance_last_success_timestamp_seconds Unix time the last successful run of the cycle finished.
# TYPE kopia_maintenance_last_success_timestamp_seconds gauge
kopia_maintenance_last_success_timestamp_seconds{cycle="quick",repository="a"} 1.700000003e+09
# HELP kopia_maintenance_runs_total Maintenance runs by repository, cycle and result (success, failure, skipped, cancelled).
# TYPE kopia_maintenance_runs_total counter
kopia_maintenance_runs_total{cycle="full",repository="a",result="failure"} 1
kopia_maintenance_runs_total{cycle="quick",repository="a",result="success"} 1
kopia_maintenance_runs_total{cycle="quick",repository="b",result="skipped"} 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want),
		"kopia_maintenance_runs_total", "kopia_maintenance_last_success_timestamp_seconds"); err != nil {
		t.Fatal(err)
	}

	m.Forget("a")

	if n := testutil.CollectAndCount(m.runs); n != 1 {
		t.Fatalf("after Forget(a) runs_total has %d series, want only b's", n)
	}
}

func TestServerEndpoints(t *testing.T) {
	m := New(BuildInfo{Version: "test", KopiaVersion: "v0.22.3"})
	ready := errors.New("scheduler not started")

	s, err := NewServer("127.0.0.1:0", m, func() error { return ready }, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)

	go func() { done <- s.Run(ctx) }()

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + s.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()

		b, _ := io.ReadAll(resp.Body)

		return resp.StatusCode, string(b)
	}

	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d", code)
	}

	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "scheduler not started") {
		t.Fatalf("/readyz before ready = %d %q", code, body)
	}

	ready = nil

	if code, _ := get("/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz when ready = %d", code)
	}

	code, body := get("/metrics")
	if code != http.StatusOK || !strings.Contains(body, `kopia_maintenance_build_info{goversion="go`) || !strings.Contains(body, `kopia="v0.22.3"`) {
		t.Fatalf("/metrics = %d, build_info missing:\n%s", code, body)
	}

	cancel()

	if err := <-done; err != nil {
		t.Fatalf("server run: %v", err)
	}
}
