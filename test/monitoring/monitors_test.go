package monitoring

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

type objectMeta struct {
	Name   string            `yaml:"name"`
	Labels map[string]string `yaml:"labels"`
}

type monitor struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	Spec       struct {
		JobLabel string `yaml:"jobLabel"`
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Endpoints           []endpoint `yaml:"endpoints"`
		PodMetricsEndpoints []endpoint `yaml:"podMetricsEndpoints"`
	} `yaml:"spec"`
}

type endpoint struct {
	Port     string `yaml:"port"`
	Path     string `yaml:"path"`
	Interval string `yaml:"interval"`
}

// TestServiceMonitor checks that the ServiceMonitor selects the Service of
// deploy/base, scrapes its metrics port every 30s and names the job as the
// alert rules expect.
func TestServiceMonitor(t *testing.T) {
	var svc struct {
		Metadata objectMeta `yaml:"metadata"`
		Spec     struct {
			Ports []struct {
				Name string `yaml:"name"`
			} `yaml:"ports"`
		} `yaml:"spec"`
	}
	readYAML(t, filepath.Join(harness.RepoRoot(t), "deploy", "base", "service.yaml"), &svc)
	var sm monitor
	readYAML(t, filepath.Join(monitoringDir(t), "servicemonitor.yaml"), &sm)
	if sm.APIVersion != "monitoring.coreos.com/v1" || sm.Kind != "ServiceMonitor" {
		t.Errorf("servicemonitor.yaml: %s %s, want monitoring.coreos.com/v1 ServiceMonitor", sm.APIVersion, sm.Kind)
	}
	checkSelector(t, "ServiceMonitor", sm.Spec.Selector.MatchLabels, svc.Metadata.Labels)
	checkJobLabel(t, "ServiceMonitor", sm.Spec.JobLabel, svc.Metadata.Labels)
	var ports []string
	for _, p := range svc.Spec.Ports {
		ports = append(ports, p.Name)
	}
	checkEndpoints(t, "ServiceMonitor", sm.Spec.Endpoints, ports)
}

// TestPodMonitor checks the PodMonitor alternative against the pods of the
// Deployment in deploy/base.
func TestPodMonitor(t *testing.T) {
	var dep struct {
		Spec struct {
			Template struct {
				Metadata objectMeta `yaml:"metadata"`
				Spec     struct {
					Containers []struct {
						Name  string `yaml:"name"`
						Ports []struct {
							Name string `yaml:"name"`
						} `yaml:"ports"`
					} `yaml:"containers"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	readYAML(t, filepath.Join(harness.RepoRoot(t), "deploy", "base", "deployment.yaml"), &dep)
	var pm monitor
	readYAML(t, filepath.Join(monitoringDir(t), "podmonitor.yaml"), &pm)
	if pm.APIVersion != "monitoring.coreos.com/v1" || pm.Kind != "PodMonitor" {
		t.Errorf("podmonitor.yaml: %s %s, want monitoring.coreos.com/v1 PodMonitor", pm.APIVersion, pm.Kind)
	}
	pod := dep.Spec.Template
	checkSelector(t, "PodMonitor", pm.Spec.Selector.MatchLabels, pod.Metadata.Labels)
	checkJobLabel(t, "PodMonitor", pm.Spec.JobLabel, pod.Metadata.Labels)
	var ports []string
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			ports = append(ports, p.Name)
		}
	}
	checkEndpoints(t, "PodMonitor", pm.Spec.PodMetricsEndpoints, ports)
}

func checkSelector(t *testing.T, what string, selector, labels map[string]string) {
	t.Helper()
	if len(selector) == 0 {
		t.Errorf("%s: empty selector", what)
	}
	for k, v := range selector {
		if labels[k] != v {
			t.Errorf("%s selects %s=%s, but the target has %s=%q", what, k, v, k, labels[k])
		}
	}
}

func checkJobLabel(t *testing.T, what, jobLabel string, labels map[string]string) {
	t.Helper()
	if jobLabel == "" {
		t.Errorf("%s: no jobLabel; the job would not be %q, which the alert rules select", what, job)
		return
	}
	if got := labels[jobLabel]; got != job {
		t.Errorf("%s: jobLabel %s gives job %q, want %q (the job the alert rules select)", what, jobLabel, got, job)
	}
}

func checkEndpoints(t *testing.T, what string, eps []endpoint, ports []string) {
	t.Helper()
	if len(eps) != 1 {
		t.Fatalf("%s: %d endpoints, want 1", what, len(eps))
	}
	ep := eps[0]
	if ep.Port != "metrics" || !contains(ports, ep.Port) {
		t.Errorf("%s: port %q, want \"metrics\" (the target's ports: %v)", what, ep.Port, ports)
	}
	if ep.Path != "" && ep.Path != "/metrics" {
		t.Errorf("%s: path %q, want /metrics", what, ep.Path)
	}
	if ep.Interval != "30s" {
		t.Errorf("%s: interval %q, want 30s", what, ep.Interval)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestKustomization checks deploy/monitoring/kustomization.yaml: the
// ServiceMonitor and the rules as resources, the PodMonitor explained as the
// alternative, and the dashboard in a ConfigMap for Grafana's sidecar.
func TestKustomization(t *testing.T) {
	path := filepath.Join(monitoringDir(t), "kustomization.yaml")
	var k struct {
		Kind               string   `yaml:"kind"`
		Resources          []string `yaml:"resources"`
		ConfigMapGenerator []struct {
			Name    string   `yaml:"name"`
			Files   []string `yaml:"files"`
			Options struct {
				Labels                map[string]string `yaml:"labels"`
				DisableNameSuffixHash bool              `yaml:"disableNameSuffixHash"`
			} `yaml:"options"`
		} `yaml:"configMapGenerator"`
	}
	readYAML(t, path, &k)
	if k.Kind != "Kustomization" {
		t.Errorf("kind %q", k.Kind)
	}
	for _, want := range []string{"servicemonitor.yaml", "prometheusrule.yaml"} {
		if !contains(k.Resources, want) {
			t.Errorf("resources %v lack %s", k.Resources, want)
		}
	}
	if contains(k.Resources, "podmonitor.yaml") {
		t.Errorf("resources list podmonitor.yaml beside servicemonitor.yaml: the daemon would be scraped twice")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), "podmonitor.yaml") {
		t.Errorf("kustomization.yaml does not say how to switch to podmonitor.yaml")
	}
	found := false
	for _, g := range k.ConfigMapGenerator {
		for _, f := range g.Files {
			if _, src, ok := strings.Cut(f, "="); ok {
				f = src
			}
			if f != "dashboard.json" {
				continue
			}
			found = true
			if g.Options.Labels["grafana_dashboard"] != "1" {
				t.Errorf("ConfigMap %s: labels %v, want grafana_dashboard: \"1\" for Grafana's sidecar", g.Name, g.Options.Labels)
			}
			if !g.Options.DisableNameSuffixHash {
				t.Errorf("ConfigMap %s: a hash suffix would leave old dashboards behind for the sidecar", g.Name)
			}
		}
	}
	if !found {
		t.Errorf("no configMapGenerator wraps dashboard.json")
	}
}
