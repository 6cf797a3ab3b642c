package harness

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// MetricValue scrapes http://addr/metrics and returns the value of the
// sample whose line starts with series (name and labels as the daemon
// writes them), or -1 when it is absent or /metrics does not answer. A
// sample that does not parse fails the test.
func MetricValue(t testing.TB, addr, series string) float64 {
	t.Helper()

	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()

	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)

	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, series+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, series)), 64)
			if err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}

			return v
		}
	}

	return -1
}
