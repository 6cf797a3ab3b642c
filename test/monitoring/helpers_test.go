package monitoring

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// job is the job label the ServiceMonitor and PodMonitor give the daemon's
// targets (their jobLabel) and the daemon-level alerts select.
const job = "kopia-maintd"

func monitoringDir(t *testing.T) string {
	return filepath.Join(harness.RepoRoot(t), "deploy", "monitoring")
}

// readYAML decodes the single YAML document in path into v.
func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// rule is one rule of a Prometheus rule group.
type rule struct {
	Alert       string            `yaml:"alert,omitempty"`
	Record      string            `yaml:"record,omitempty"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty"`
}

type ruleGroup struct {
	Name     string `yaml:"name"`
	Interval string `yaml:"interval,omitempty"`
	Rules    []rule `yaml:"rules"`
}

// ruleFile is a plain Prometheus rule file, and the spec of a PrometheusRule.
type ruleFile struct {
	Groups []ruleGroup `yaml:"groups"`
}

type prometheusRule struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Spec ruleFile `yaml:"spec"`
}

// loadRules reads deploy/monitoring/prometheusrule.yaml.
func loadRules(t *testing.T) prometheusRule {
	t.Helper()
	var pr prometheusRule
	readYAML(t, filepath.Join(monitoringDir(t), "prometheusrule.yaml"), &pr)
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" || pr.Metadata.Name == "" {
		t.Fatalf("prometheusrule.yaml: got %s %s %q, want a named monitoring.coreos.com/v1 PrometheusRule",
			pr.APIVersion, pr.Kind, pr.Metadata.Name)
	}
	if len(pr.Spec.Groups) == 0 {
		t.Fatal("prometheusrule.yaml: no rule groups")
	}
	return pr
}

// alerts returns the alerting rules of the PrometheusRule.
func alerts(t *testing.T) []rule {
	t.Helper()
	var out []rule
	for _, g := range loadRules(t).Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				out = append(out, r)
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("prometheusrule.yaml: no alerts")
	}
	return out
}

// writeRuleFile writes the spec of prometheusrule.yaml into dir as rules.yml,
// the name the unit tests in testdata/ load, and returns its path. The rule
// file promtool checks is thereby always the PrometheusRule's own spec.
func writeRuleFile(t *testing.T, dir string) string {
	t.Helper()
	pr := loadRules(t)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(pr.Spec); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "rules.yml")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// promtool runs promtool with args in dir and fails the test with its output
// when it exits non-zero. The bound is generous: the alert unit tests that
// evaluate days of series take over a minute of CPU, and on a machine shared
// with other suites two minutes were once not enough.
func promtool(t *testing.T, dir string, args ...string) string {
	t.Helper()
	bin := harness.ToolPath(t, "promtool")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// contractMetric is one metric of metrics/CONTRACT.md.
type contractMetric struct {
	typ    string // counter, gauge or histogram
	labels map[string]bool
}

const prefix = "kopia_maintenance_"

var contractLine = regexp.MustCompile(`^- ([a-z][a-z0-9_]*)(?:\{([a-z_,]*)\})?\s+(counter|gauge|histogram)\b`)

// contract parses metrics/CONTRACT.md into the full metric names (with the
// kopia_maintenance_ prefix, and the _bucket, _sum and _count series of
// histograms) and their labels.
func contract(t *testing.T) map[string]contractMetric {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(harness.RepoRoot(t), "metrics", "CONTRACT.md"))
	if err != nil {
		t.Fatalf("read the metrics contract: %v", err)
	}
	out := map[string]contractMetric{}
	for _, line := range strings.Split(string(data), "\n") {
		m := contractLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		cm := contractMetric{typ: m[3], labels: map[string]bool{}}
		for _, l := range strings.Split(m[2], ",") {
			if l != "" {
				cm.labels[l] = true
			}
		}
		name := prefix + m[1]
		if cm.typ == "histogram" {
			withLE := contractMetric{typ: cm.typ, labels: map[string]bool{"le": true}}
			for l := range cm.labels {
				withLE.labels[l] = true
			}
			out[name+"_bucket"] = withLE
			out[name+"_sum"] = cm
			out[name+"_count"] = cm
			continue
		}
		out[name] = cm
	}
	// A sanity check of the parser: the contract lists more than 30 metrics.
	if len(out) < 30 {
		t.Fatalf("parsed only %d metrics from metrics/CONTRACT.md: %v", len(out), sortedKeys(out))
	}
	return out
}

// standardMetrics are metrics outside the contract that the rules and the
// dashboard may use: Prometheus' own per-target series and the process
// collector the daemon registers.
var standardMetrics = map[string]bool{
	"up":                         true,
	"process_start_time_seconds": true,
}

// targetLabels are labels Prometheus (and the Operator's monitors) attach to
// every series of a target.
var targetLabels = map[string]bool{
	"job": true, "instance": true, "namespace": true, "pod": true,
	"service": true, "container": true, "endpoint": true,
}

// promqlKeywords are identifiers of PromQL that are not metric names (function
// and aggregation names are recognised by the parenthesis that follows them).
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "by": true, "without": true,
	"on": true, "ignoring": true, "group_left": true, "group_right": true,
	"offset": true, "bool": true, "inf": true, "nan": true, "atan2": true,
}

var (
	reString     = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	reLabelVals  = regexp.MustCompile(`label_values\(([^,()]*(?:\{[^}]*\})?)\s*(?:,\s*[a-zA-Z_][a-zA-Z0-9_]*)?\s*\)`)
	reSelector   = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}`)
	reMatcher    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")`)
	reBraces     = regexp.MustCompile(`\{[^}]*\}`)
	reBrackets   = regexp.MustCompile(`\[[^\]]*\]`)
	reGrouping   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	reVariable   = regexp.MustCompile(`\$\{[^}]*\}|\$[a-zA-Z_][a-zA-Z0-9_]*`)
	reIdentifier = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
)

// selector is a metric name with the label matchers written next to it.
type selector struct {
	metric   string
	matchers map[string]string // label -> operator and quoted value, e.g. `=~"$repository"`
}

// parsePromQL returns the metric names an expression reads and the selectors
// with label matchers it contains. It is a lexical scan, not a parser: good
// enough for the expressions of this kit, which it is only asked to check.
func parsePromQL(expr string) (metrics []string, selectors []selector) {
	// Selectors first, while the quoted matcher values are still there.
	for _, m := range reSelector.FindAllStringSubmatch(expr, -1) {
		s := selector{metric: m[1], matchers: map[string]string{}}
		for _, mm := range reMatcher.FindAllStringSubmatch(m[2], -1) {
			s.matchers[mm[1]] = mm[2] + mm[3]
		}
		selectors = append(selectors, s)
	}
	e := reLabelVals.ReplaceAllString(expr, " $1 ")
	e = reString.ReplaceAllString(e, " ")
	e = reBraces.ReplaceAllString(e, " ")
	e = reBrackets.ReplaceAllString(e, " ")
	e = reGrouping.ReplaceAllString(e, " ")
	e = reVariable.ReplaceAllString(e, " ")
	seen := map[string]bool{}
	for _, loc := range reIdentifier.FindAllStringIndex(e, -1) {
		name := e[loc[0]:loc[1]]
		// Part of a number (1e9) or a duration (48h), or a function call.
		if loc[0] > 0 && strings.ContainsRune("0123456789.", rune(e[loc[0]-1])) {
			continue
		}
		if rest := strings.TrimLeft(e[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") {
			continue
		}
		if promqlKeywords[strings.ToLower(name)] || seen[name] {
			continue
		}
		seen[name] = true
		metrics = append(metrics, name)
	}
	return metrics, selectors
}

// checkExpr reports metrics outside the contract and label matchers on
// contract metrics that name labels the metric does not have.
func checkExpr(t *testing.T, where, expr string, c map[string]contractMetric) (metrics []string) {
	t.Helper()
	names, selectors := parsePromQL(expr)
	if len(names) == 0 {
		t.Errorf("%s: no metric found in %q", where, expr)
	}
	for _, n := range names {
		if _, ok := c[n]; !ok && !standardMetrics[n] {
			t.Errorf("%s: metric %q is neither in metrics/CONTRACT.md nor a standard metric %v", where, n, sortedKeys(standardMetrics))
		}
	}
	for _, s := range selectors {
		cm, ok := c[s.metric]
		if !ok {
			continue
		}
		for l := range s.matchers {
			if !cm.labels[l] && !targetLabels[l] {
				t.Errorf("%s: %s has no label %q (contract labels %v)", where, s.metric, l, sortedKeys(cm.labels))
			}
		}
	}
	return names
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
