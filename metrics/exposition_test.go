package metrics

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/proto"
)

// busyMetrics returns Metrics with every family populated for names, one
// repository in flight, and an owner string that needs escaping.
func busyMetrics(names []string) *Metrics {
	m := New(BuildInfo{Version: "v1.2.3", KopiaVersion: "v0.23.1"})
	m.SetRepositories(names)
	m.ConfigReloaded(true, t0)
	m.SetNotMaintained(map[string]string{"azure-1": "unsupported"})
	m.GateCheck("backups", "refuse")
	m.GateCheck("velero-server", "pass")

	for i, name := range names {
		at := t0.Add(time.Duration(i) * time.Second)
		m.NextRun(name, "quick", at.Add(time.Hour))
		m.NextRun(name, "full", at.Add(24*time.Hour))

		for j, cycle := range []string{"quick", "full"} {
			m.RunStarted(name, cycle, at)
			m.TaskStarted(name, "snapshot-gc")
			m.TaskFinished(name, Task{Name: "snapshot-gc", Start: at, End: at.Add(1500 * time.Millisecond), Success: true, ContentsGC: 7, BlobsDeleted: 3, BytesDeleted: 1 << 20})
			m.RunFinished(name, cycle, "success", at, at.Add(time.Duration(40*(j+1)+i)*time.Second))
		}

		m.RunFinished(name, "quick", "failure", at, at.Add(2*time.Second))
		m.Health(name, Health{IndexBlobs: 12, SessionMarkers: 1, SizeBytes: map[string]int64{"p": 1e9, "q": 1e6, "xn0": 5e4, "kopia.repository": 700}})
		m.Reclaim(name, Reclaim{UnreferencedBytes: 3e6, RetainedBytes: 2.5e6, EligibleAt: at.Add(48 * time.Hour)})
		m.Compaction(name, Compaction{Enabled: true, RewrittenBytes: 4e6, PacksBelowThreshold: 2, DeadBytes: 1.25e7})
		m.Owner(name, `maintd@"host"\x`+"\n", true)
		m.OwnershipChanged(name, "unowned")
		m.UnsafeRun(name, "refused")
		m.LeaseAcquired(name)
		m.LeaseHeld(name, i%2 == 0)
		m.LeaseLost(name, "renew-failed")
		m.LeaseSkipped(name)
	}

	m.RunStarted(names[0], "full", t0)
	m.TaskStarted(names[0], "full-delete-blobs")
	m.Progress(names[0], Progress{Task: "full-delete-blobs", BlobsDeleted: 2, BytesDeleted: 100, ContentsScanned: 50})

	return m
}

// normalized returns the families sorted by name, each metric's labels by
// name and the metrics by their labels, as text for comparison.
func normalized(t *testing.T, mfs []*dto.MetricFamily) string {
	t.Helper()

	var out bytes.Buffer

	slices.SortFunc(mfs, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })

	for _, mf := range mfs {
		mf = proto.Clone(mf).(*dto.MetricFamily)

		for _, mt := range mf.Metric {
			slices.SortFunc(mt.Label, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
		}

		slices.SortFunc(mf.Metric, func(a, b *dto.Metric) int { return strings.Compare(fmt.Sprint(a.Label), fmt.Sprint(b.Label)) })

		if _, err := expfmt.MetricFamilyToText(&out, mf); err != nil {
			t.Fatal(err)
		}
	}

	return out.String()
}

// TestTextExpositionMatchesRegistry: what /metrics serves (the text
// emitter) parses to exactly the families client_golang's registry gathers
// from the same state, HELP, TYPE, labels, escaping and histograms
// included; the Go runtime's and the process's families follow.
func TestTextExpositionMatchesRegistry(t *testing.T) {
	m := busyMetrics([]string{"a", "b-2", "c"})

	body, err := m.exposition()
	if err != nil {
		t.Fatal(err)
	}

	parser := expfmt.NewTextParser(model.UTF8Validation)

	parsed, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v\n%s", err, body)
	}

	var served []*dto.MetricFamily

	for name, mf := range parsed {
		if strings.HasPrefix(name, namespace+"_") {
			served = append(served, mf)
		}
	}

	gathered, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}

	var own []*dto.MetricFamily

	for _, mf := range gathered {
		if strings.HasPrefix(mf.GetName(), namespace+"_") {
			own = append(own, mf)
		}
	}

	if len(own) < 35 {
		t.Fatalf("the registry gathered only %d families: the state is not busy enough for the comparison", len(own))
	}

	if got, want := normalized(t, served), normalized(t, own); got != want {
		t.Fatalf("served families differ from the registry's\nserved:\n%s\nregistry:\n%s", got, want)
	}

	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if parsed[name] == nil {
			t.Errorf("%s missing from the exposition", name)
		}
	}
}

// TestHandlerContentNegotiation: gzip when accepted (and not with q=0), the
// text format's content type either way, the same body.
func TestHandlerContentNegotiation(t *testing.T) {
	m := busyMetrics([]string{"a"})
	h := m.Handler()

	get := func(enc string) *http.Response {
		r := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		if enc != "" {
			r.Header.Set("Accept-Encoding", enc)
		}

		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)

		return w.Result()
	}

	plain := get("")
	if plain.Header.Get("Content-Encoding") != "" || !strings.HasPrefix(plain.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("plain response headers %v", plain.Header)
	}

	pb, _ := io.ReadAll(plain.Body)

	for _, enc := range []string{"gzip", "deflate, gzip;q=1.0", "br, gzip"} {
		res := get(enc)
		if res.Header.Get("Content-Encoding") != "gzip" {
			t.Fatalf("Accept-Encoding %q: Content-Encoding %q", enc, res.Header.Get("Content-Encoding"))
		}

		zr, err := gzip.NewReader(res.Body)
		if err != nil {
			t.Fatal(err)
		}

		gb, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}

		// The runtime families' values move between scrapes; the daemon's
		// own come first and are the same.
		own := func(b []byte) string { return string(b[:bytes.Index(b, []byte("# HELP go_"))]) }
		if own(gb) != own(pb) {
			t.Fatalf("Accept-Encoding %q: the gzip body differs from the plain one", enc)
		}
	}

	if res := get("gzip;q=0"); res.Header.Get("Content-Encoding") != "" {
		t.Fatalf("gzip;q=0 answered with %q", res.Header.Get("Content-Encoding"))
	}
}

// repoNames returns n repository names.
func repoNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("velero-ns%04d-default-kopia", i)
	}

	return names
}

// BenchmarkScrape1000 compares, at 1,000 busy repositories, the handler
// that serves /metrics against client_golang's promhttp path over the same
// registry (the baseline), each with gzip as Prometheus asks for it.
func BenchmarkScrape1000(b *testing.B) {
	m := busyMetrics(repoNames(1000))

	body, err := m.exposition()
	if err != nil {
		b.Fatal(err)
	}

	series := 0

	for line := range bytes.SplitSeq(body, []byte("\n")) {
		if len(line) > 0 && line[0] != '#' {
			series++
		}
	}

	for _, c := range []struct {
		name string
		h    http.Handler
	}{{"text-emitter", m.Handler()}, {"promhttp-baseline", promHandler(m)}} {
		b.Run(c.name, func(b *testing.B) {
			r := httptest.NewRequest(http.MethodGet, "/metrics", nil)
			r.Header.Set("Accept-Encoding", "gzip")

			for b.Loop() {
				w := httptest.NewRecorder()
				c.h.ServeHTTP(w, r)

				if w.Code != http.StatusOK {
					b.Fatalf("status %d", w.Code)
				}
			}

			b.ReportMetric(float64(series), "series")
		})
	}
}

// promHandler is client_golang's own handler over the full registry.
func promHandler(m *Metrics) http.Handler {
	return promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{})
}

// TestTextExpositionLabelOrder: labels come sorted by name with le last,
// exactly as client_golang wrote them, so that lines users grep for stay
// the same.
func TestTextExpositionLabelOrder(t *testing.T) {
	body, err := busyMetrics([]string{"a"}).exposition()
	if err != nil {
		t.Fatal(err)
	}

	for _, want := range []string{
		`kopia_maintenance_runs_total{cycle="full",repository="a",result="success"} 1` + "\n",
		`kopia_maintenance_run_duration_seconds_bucket{cycle="full",repository="a",le="+Inf"} 1` + "\n",
		`kopia_maintenance_run_duration_seconds_bucket{cycle="quick",repository="a",le="60"} 2` + "\n",
		`kopia_maintenance_task_runs_total{repository="a",result="success",task="snapshot-gc"} 2` + "\n",
		`kopia_maintenance_owner_info{is_self="true",owner="maintd@\"host\"\\x\n",repository="a"} 1` + "\n",
		`kopia_maintenance_build_info{goversion="`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("the exposition lacks %q", want)
		}
	}
}
