package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// gatePodLabels are the label keys the safety gate takes for Velero's pods
// (REFERENCE.md, "Velero and OADP"): the Job's pod must carry none of them,
// or the gate would refuse the Job's own run.
var gatePodLabels = []string{"component", "deploy", "name"}

// oadpJobKustomization is the kustomization deploy/jobs/safety-none-once's
// comments give OADP users, with PATH for the path to that directory.
const oadpJobKustomization = `namespace: openshift-adp
resources: [PATH]
configMapGenerator:
  - {name: kopia-maintd-safety-none-config, behavior: replace, files: [config.yaml]}
patches:
  - target: {kind: Job, name: kopia-maintd-safety-none-once}
    patch: |-
      - op: remove
        path: /spec/template/spec/securityContext/runAsUser
      - op: remove
        path: /spec/template/spec/securityContext/runAsGroup
`

// TestSafetyNoneJob checks the one-shot safety=none Job of
// deploy/jobs/safety-none-once: it runs as the daemon of
// deploy/overlays/velero (its ServiceAccount, identity, Velero namespace and
// Secrets), allows safety=none in its own config only, changes no
// BackupRepository, and carries no label the gate takes
// for Velero; the documented command (the repository name put in with sed)
// gives objects the API server admits; and the OADP variant its
// kustomization describes renders into openshift-adp and is admitted too.
func TestSafetyNoneJob(t *testing.T) {
	t.Parallel()
	yaml, objs := render(t, "jobs/safety-none-once")
	job := find(objs, "Job", "kopia-maintd-safety-none-once")
	if job == nil || job.GetNamespace() != "velero" {
		t.Fatalf("no Job kopia-maintd-safety-none-once in velero: %v", job)
	}
	pod, _, _ := unstructured.NestedMap(job.Object, "spec", "template", "spec")
	labels, _, _ := unstructured.NestedStringMap(job.Object, "spec", "template", "metadata", "labels")
	for key := range labels {
		if strings.HasPrefix(key, "velero.io/") || slices.Contains(gatePodLabels, key) {
			t.Errorf("the Job's pod has label %s, which the gate takes for Velero", key)
		}
	}
	if got, _, _ := unstructured.NestedInt64(job.Object, "spec", "backoffLimit"); got != 0 {
		t.Errorf("backoffLimit = %d, want 0: a refusal is not retried", got)
	}

	// It runs as the daemon of deploy/overlays/velero.
	_, daemon := render(t, "overlays/velero")
	if pod["serviceAccountName"] != "kopia-maintd" || find(daemon, "ServiceAccount", "kopia-maintd") == nil {
		t.Errorf("serviceAccountName = %v, want the daemon's kopia-maintd", pod["serviceAccountName"])
	}
	dep := find(daemon, "Deployment", "kopia-maintd")
	daemonCM := ""
	for _, v := range list(lookup(dep.Object, "spec", "template", "spec", "volumes")) {
		if v["name"] == "config" {
			daemonCM, _ = lookup(v, "configMap", "name").(string)
		}
	}
	daemonCfg := configOf(t, daemon, daemonCM)
	jobCM := ""
	for _, v := range list(pod["volumes"]) {
		if v["name"] == "config" {
			jobCM, _ = lookup(v, "configMap", "name").(string)
		}
	}
	cfg := configOf(t, objs, jobCM)
	for _, key := range [][]string{
		{"identity"}, {"velero", "namespace"}, {"velero", "credentialsSecret"},
		{"velero", "cloudCredentialsSecret"}, {"safetyNone", "veleroNamespaces"},
	} {
		if got, want := lookup(cfg, key...), lookup(daemonCfg, key...); !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %v, want the daemon's %v", strings.Join(key, "."), got, want)
		}
	}
	for _, c := range []struct {
		key  []string
		want any
	}{
		{[]string{"safetyNone", "allow"}, true},
		{[]string{"velero", "discover"}, true},
		{[]string{"velero", "suppressBuiltinMaintenance"}, false},
		{[]string{"velero", "repositoryDefaults", "ownership", "takeover"}, "always"},
		{[]string{"velero", "repositoryDefaults", "ownership", "handBackOnExit"}, false},
		{[]string{"velero", "repositoryDefaults", "safetyNone"}, nil},
		{[]string{"defaults", "ownership", "handBackOnExit"}, false},
	} {
		if got := lookup(cfg, c.key...); got != c.want {
			t.Errorf("%s = %v, want %v", strings.Join(c.key, "."), got, c.want)
		}
	}
	if got := lookup(daemonCfg, "safetyNone", "allow"); got != false {
		t.Errorf("the daemon's safetyNone.allow = %v, want false: only the Job allows safety=none", got)
	}

	// The documented command: the repository name put in with sed.
	named := bytes.ReplaceAll(yaml, []byte(safetyNoneRepositoryPlaceholder), []byte("velero-app1"))
	namedObjs, err := harness.DecodeObjects(named)
	if err != nil {
		t.Fatal(err)
	}
	c := list(lookup(find(namedObjs, "Job", job.GetName()).Object, "spec", "template", "spec", "containers"))[0]
	if got := envValue(c, "REPOSITORY"); got != "velero-app1" {
		t.Errorf("REPOSITORY after the sed = %v, want velero-app1", got)
	}

	// The OADP variant, exactly as the kustomization's comment writes it.
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, filepath.Join(deployDir(t), "jobs", "safety-none-once"))
	if err != nil {
		t.Fatal(err)
	}
	oadpCfg := readFile(t, filepath.Join(deployDir(t), "jobs", "safety-none-once", "config.yaml"))
	oadpCfg = strings.Replace(oadpCfg, "\n  namespace: velero\n", "\n  namespace: openshift-adp\n", 1)
	oadpCfg = strings.Replace(oadpCfg, "veleroNamespaces: [velero]", "veleroNamespaces: [openshift-adp]", 1)
	writeFile(t, filepath.Join(dir, "config.yaml"), oadpCfg)
	writeFile(t, filepath.Join(dir, "kustomization.yaml"), strings.Replace(oadpJobKustomization, "PATH", filepath.ToSlash(rel), 1))
	oadpYAML, oadpObjs := harness.Kustomize(t, dir)
	for _, o := range oadpObjs {
		if o.GetNamespace() != "openshift-adp" {
			t.Errorf("OADP variant: %s %s in %q, want openshift-adp", o.GetKind(), o.GetName(), o.GetNamespace())
		}
	}
	oadpJob := find(oadpObjs, "Job", job.GetName())
	if sc, _, _ := unstructured.NestedMap(oadpJob.Object, "spec", "template", "spec", "securityContext"); sc["runAsUser"] != nil || sc["runAsGroup"] != nil || sc["runAsNonRoot"] != true {
		t.Errorf("OADP variant: pod securityContext %v, want runAsNonRoot without a fixed user (the SCC assigns one)", sc)
	}
	for _, v := range list(lookup(oadpJob.Object, "spec", "template", "spec", "volumes")) {
		if v["name"] == "config" {
			name, _ := lookup(v, "configMap", "name").(string)
			if got := lookup(configOf(t, oadpObjs, name), "velero", "namespace"); got != "openshift-adp" {
				t.Errorf("OADP variant: velero.namespace = %v, want openshift-adp", got)
			}
		}
	}
	if !bytes.Contains(readFileBytes(t, filepath.Join(deployDir(t), "jobs", "safety-none-once", "kustomization.yaml")), []byte("behavior: replace, files: [config.yaml]")) {
		t.Errorf("deploy/jobs/safety-none-once/kustomization.yaml no longer shows the OADP variant this test builds")
	}

	_, kubeconfig := startKube(t)
	if names := dryRun(t, kubeconfig, named); len(names) != len(objs) {
		t.Errorf("admitted %v, want %d objects", names, len(objs))
	}
	oadpNamed := bytes.ReplaceAll(oadpYAML, []byte(safetyNoneRepositoryPlaceholder), []byte("velero-app1"))
	if names := dryRun(t, kubeconfig, oadpNamed); len(names) != len(oadpObjs) {
		t.Errorf("OADP variant: admitted %v, want %d objects", names, len(oadpObjs))
	}
}

func readFileBytes(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	return string(readFileBytes(t, path))
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
