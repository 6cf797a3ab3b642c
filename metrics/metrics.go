// Package metrics defines kopia-maintd's Prometheus metrics on a private
// registry and serves them with the health probes.
//
// Every metric is prefixed kopia_maintenance_ and labelled by repository
// (and cycle where it applies); label values come from small fixed sets and
// never carry error text. Counters live as long as the process: a restart
// resets them, as Prometheus' rate() expects.
package metrics

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const namespace = "kopia_maintenance"

// BuildInfo describes the running binary.
type BuildInfo struct {
	Version      string
	KopiaVersion string
}

// Metrics holds the daemon's metrics. Its methods are safe for concurrent use.
type Metrics struct {
	registry *prometheus.Registry

	runs        *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	lastSuccess *prometheus.GaugeVec
	lastRun     *prometheus.GaugeVec
	nextRun     *prometheus.GaugeVec
	inProgress  *prometheus.GaugeVec
}

// New registers the metrics on a new private registry, with the Go runtime
// and process collectors beside them.
func New(info BuildInfo) *Metrics {
	reg := prometheus.NewRegistry()
	repoCycle := []string{"repository", "cycle"}

	m := &Metrics{
		registry: reg,
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "runs_total",
			Help: "Maintenance runs by repository, cycle and result (success, failure, skipped, cancelled).",
		}, []string{"repository", "cycle", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "run_duration_seconds",
			Help: "Duration of maintenance runs that were not skipped.",
			// 1 s to 8 h: quick cycles take seconds, full cycles of large
			// repositories take hours.
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800},
		}, repoCycle),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "last_success_timestamp_seconds",
			Help: "Unix time the last successful run of the cycle finished.",
		}, repoCycle),
		lastRun: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "last_run_timestamp_seconds",
			Help: "Unix time the last run of the cycle finished, whatever its result.",
		}, repoCycle),
		nextRun: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "next_run_timestamp_seconds",
			Help: "Unix time the next run of the cycle is due.",
		}, repoCycle),
		inProgress: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "in_progress",
			Help: "1 while a run of the cycle is in flight.",
		}, repoCycle),
	}

	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help: "Build information of kopia-maintd; the value is always 1.",
		ConstLabels: prometheus.Labels{
			"version":   info.Version,
			"goversion": runtime.Version(),
			"kopia":     info.KopiaVersion,
		},
	})
	buildInfo.Set(1)

	reg.MustRegister(m.runs, m.duration, m.lastSuccess, m.lastRun, m.nextRun, m.inProgress, buildInfo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	return m
}

// Registry returns the private registry to serve.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// RunStarted records that a run began.
func (m *Metrics) RunStarted(repository, cycle string, _ time.Time) {
	m.inProgress.WithLabelValues(repository, cycle).Set(1)
}

// RunFinished records a run's result.
func (m *Metrics) RunFinished(repository, cycle, result string, started, finished time.Time) {
	m.inProgress.WithLabelValues(repository, cycle).Set(0)
	m.runs.WithLabelValues(repository, cycle, result).Inc()

	if result == "skipped" {
		return
	}

	m.duration.WithLabelValues(repository, cycle).Observe(finished.Sub(started).Seconds())
	m.lastRun.WithLabelValues(repository, cycle).Set(unix(finished))

	if result == "success" {
		m.lastSuccess.WithLabelValues(repository, cycle).Set(unix(finished))
	}
}

// NextRun records when a cycle is due next.
func (m *Metrics) NextRun(repository, cycle string, at time.Time) {
	m.nextRun.WithLabelValues(repository, cycle).Set(unix(at))
}

// Forget removes every series of a repository (it left the configuration).
func (m *Metrics) Forget(repository string) {
	l := prometheus.Labels{"repository": repository}
	m.runs.DeletePartialMatch(l)
	m.duration.DeletePartialMatch(l)
	m.lastSuccess.DeletePartialMatch(l)
	m.lastRun.DeletePartialMatch(l)
	m.nextRun.DeletePartialMatch(l)
	m.inProgress.DeletePartialMatch(l)
}

func unix(t time.Time) float64 {
	return float64(t.UnixNano()) / 1e9
}
