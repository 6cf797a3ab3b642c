package monitoring

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// TestPromtoolCheckRules checks the PrometheusRule's spec as a rule file.
func TestPromtoolCheckRules(t *testing.T) {
	dir := t.TempDir()
	writeRuleFile(t, dir)
	out := promtool(t, dir, "check", "rules", "rules.yml")
	t.Logf("%s", out)
}

// TestPromtoolTestRules runs the alert unit tests in testdata/ against the
// PrometheusRule's spec.
func TestPromtoolTestRules(t *testing.T) {
	dir := t.TempDir()
	writeRuleFile(t, dir)
	files := unitTestFiles(t)
	var names []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(f)
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	out := promtool(t, dir, append([]string{"test", "rules"}, names...)...)
	t.Logf("%s", out)
}

func unitTestFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no unit tests in testdata/*.yml")
	}
	sort.Strings(files)
	return files
}

// unitTestFile is the part of a promtool unit test file the coverage check
// reads.
type unitTestFile struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		AlertRuleTests []struct {
			EvalTime  string           `yaml:"eval_time"`
			Alertname string           `yaml:"alertname"`
			ExpAlerts []map[string]any `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// TestEveryAlertHasFiringAndQuietCases makes sure that each alert of the
// PrometheusRule has a unit test case in which it fires and one in which it
// does not, so that a new alert without tests fails here.
func TestEveryAlertHasFiringAndQuietCases(t *testing.T) {
	firing := map[string][]string{}
	quiet := map[string][]string{}
	for _, f := range unitTestFiles(t) {
		var u unitTestFile
		readYAML(t, f, &u)
		if !slices.Equal(u.RuleFiles, []string{"rules.yml"}) {
			t.Errorf("%s: rule_files = %v, want [rules.yml] (the spec of prometheusrule.yaml)", f, u.RuleFiles)
		}
		for _, tc := range u.Tests {
			for _, a := range tc.AlertRuleTests {
				where := filepath.Base(f) + "@" + a.EvalTime
				if len(a.ExpAlerts) > 0 {
					firing[a.Alertname] = append(firing[a.Alertname], where)
				} else {
					quiet[a.Alertname] = append(quiet[a.Alertname], where)
				}
			}
		}
	}
	names := map[string]bool{}
	for _, a := range alerts(t) {
		names[a.Alert] = true
		if len(firing[a.Alert]) == 0 {
			t.Errorf("alert %s has no unit test case in which it fires (exp_alerts not empty)", a.Alert)
		}
		if len(quiet[a.Alert]) == 0 {
			t.Errorf("alert %s has no unit test case in which it does not fire (exp_alerts: [])", a.Alert)
		}
		t.Logf("%s: fires in %v, quiet in %v", a.Alert, firing[a.Alert], quiet[a.Alert])
	}
	for n := range firing {
		if !names[n] {
			t.Errorf("unit tests expect alert %s, which prometheusrule.yaml does not define", n)
		}
	}
	for n := range quiet {
		if !names[n] {
			t.Errorf("unit tests name alert %s, which prometheusrule.yaml does not define", n)
		}
	}
}

var (
	reJobMatcher    = regexp.MustCompile(`\bjob\s*(=~|=)\s*"([^"]*)"`)
	reForbiddenRule = regexp.MustCompile(`\bkeep_firing_for\b`)
)

// TestAlertMetadata checks what every alert must carry: a unique name, a
// severity, a summary and a description, the repository named in both when
// the alert is about one, a job selector matching the monitors, and only
// metrics of the contract.
func TestAlertMetadata(t *testing.T) {
	c := contract(t)
	seen := map[string]bool{}
	for _, a := range alerts(t) {
		t.Run(a.Alert, func(t *testing.T) {
			if seen[a.Alert] {
				t.Errorf("duplicate alert name")
			}
			seen[a.Alert] = true
			if !regexp.MustCompile(`^Kopia[A-Z][A-Za-z]+$`).MatchString(a.Alert) {
				t.Errorf("alert name %q: want CamelCase starting with Kopia", a.Alert)
			}
			switch a.Labels["severity"] {
			case "critical", "warning", "info":
			default:
				t.Errorf("severity = %q, want critical, warning or info", a.Labels["severity"])
			}
			for _, k := range []string{"summary", "description"} {
				if strings.TrimSpace(a.Annotations[k]) == "" {
					t.Errorf("no %s annotation", k)
				}
			}
			if reForbiddenRule.MatchString(a.Expr) {
				t.Errorf("uses a rule feature newer than Prometheus 2.42")
			}
			metrics := checkExpr(t, a.Alert, a.Expr, c)
			// An alert on a per-repository metric names the repository.
			perRepository := slices.ContainsFunc(metrics, func(m string) bool { return c[m].labels["repository"] })
			if perRepository {
				for _, k := range []string{"summary", "description"} {
					if !strings.Contains(a.Annotations[k], "$labels.repository") {
						t.Errorf("%s does not name the repository ({{ $labels.repository }})", k)
					}
				}
			}
			for _, m := range reJobMatcher.FindAllStringSubmatch(a.Expr, -1) {
				if m[1] != "=" || m[2] != job {
					t.Errorf("job matcher job%s%q, want job=%q (the jobLabel of the ServiceMonitor and PodMonitor)", m[1], m[2], job)
				}
			}
			if !perRepository && !reJobMatcher.MatchString(a.Expr) {
				t.Errorf("a daemon-level alert must select job=%q", job)
			}
		})
	}
}

// TestParsePromQL pins the lexical scan the metric-name checks rely on.
func TestParsePromQL(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`up{job="kopia-maintd"} == 0 or absent(kopia_maintenance_build_info{job="kopia-maintd"})`,
			[]string{"up", "kopia_maintenance_build_info"}},
		{`histogram_quantile(0.95, sum by (le, repository) (increase(kopia_maintenance_run_duration_seconds_bucket{repository=~"$repository"}[$__range])))`,
			[]string{"kopia_maintenance_run_duration_seconds_bucket"}},
		{`time() - max by (repository) (x_seconds offset 48h) > 48 * 3600 and on (repository) y_total unless z`,
			[]string{"x_seconds", "y_total", "z"}},
		{`label_values(kopia_maintenance_next_run_timestamp_seconds{job=~"$job"}, repository)`,
			[]string{"kopia_maintenance_next_run_timestamp_seconds"}},
		{`sum(rate(a_total[5m])) / 1e9 + b`, []string{"a_total", "b"}},
	} {
		got, _ := parsePromQL(tc.expr)
		if !slices.Equal(got, tc.want) {
			t.Errorf("parsePromQL(%q) = %v, want %v", tc.expr, got, tc.want)
		}
	}
	_, sel := parsePromQL(`kopia_maintenance_in_progress{job=~"$job", repository=~"$repository"}`)
	if len(sel) != 1 || sel[0].matchers["repository"] != `=~"$repository"` || sel[0].matchers["job"] != `=~"$job"` {
		t.Errorf("selectors = %+v", sel)
	}
}
