package harness

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Prometheus is a running Prometheus server (Debian's package) scraping the
// targets it was started with every second.
type Prometheus struct {
	URL string
}

// StartPrometheus starts the real Prometheus on a free port with a job
// "kopia-maintd" scraping targets (host:port) every second.
func StartPrometheus(t testing.TB, targets ...string) *Prometheus {
	t.Helper()

	bin := ToolPath(t, "prometheus")
	dir := t.TempDir()

	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = strconv.Quote(tg)
	}

	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
scrape_configs:
  - job_name: kopia-maintd
    static_configs:
      - targets: [%s]
`, strings.Join(quoted, ", "))

	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	addr := FreeAddr(t)
	cmd := exec.Command(bin,
		"--config.file="+cfgFile,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--web.console.templates="+dir, "--web.console.libraries="+dir,
	)

	p := &Prometheus{URL: "http://" + addr}
	startServer(t, "prometheus", cmd, p.URL+"/-/ready")

	return p
}

// Sample is one element of an instant query's result vector.
type Sample struct {
	Metric map[string]string
	Value  float64
}

// Query runs an instant PromQL query and returns its vector.
func (p *Prometheus) Query(t testing.TB, query string) []Sample {
	t.Helper()

	resp, err := http.Get(p.URL + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		t.Fatalf("query %s: %v", query, err)
	}
	defer resp.Body.Close()

	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}

	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("query %s: decode: %v", query, err)
	}

	if body.Status != "success" {
		t.Fatalf("query %s: %s", query, body.Error)
	}

	if body.Data.ResultType != "vector" {
		t.Fatalf("query %s: result type %s, want vector", query, body.Data.ResultType)
	}

	out := make([]Sample, 0, len(body.Data.Result))

	for _, r := range body.Data.Result {
		s, _ := r.Value[1].(string)

		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatalf("query %s: value %v: %v", query, r.Value[1], err)
		}

		out = append(out, Sample{Metric: r.Metric, Value: v})
	}

	return out
}

// Series returns the label sets of every series matching selector that had
// a sample in the last window.
func (p *Prometheus) Series(t testing.TB, selector string, window time.Duration) []map[string]string {
	t.Helper()

	now := time.Now()
	q := url.Values{
		"match[]": {selector},
		"start":   {strconv.FormatInt(now.Add(-window).Unix(), 10)},
		// Seconds truncate: an end of now would miss the newest samples.
		"end": {strconv.FormatInt(now.Add(time.Minute).Unix(), 10)},
	}

	resp, err := http.Get(p.URL + "/api/v1/series?" + q.Encode())
	if err != nil {
		t.Fatalf("series %s: %v", selector, err)
	}
	defer resp.Body.Close()

	var body struct {
		Status string              `json:"status"`
		Error  string              `json:"error"`
		Data   []map[string]string `json:"data"`
	}

	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("series %s: decode: %v", selector, err)
	}

	if body.Status != "success" {
		t.Fatalf("series %s: %s", selector, body.Error)
	}

	return body.Data
}
