package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/kopia-maintd/kopia-maintd/config"
	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// container is the name of the daemon's container in every manifest.
const container = "kopia-maintd"

// manifest is one YAML file under deploy/ with its decoded documents.
type manifest struct {
	rel  string // path relative to deploy/, with forward slashes
	docs []map[string]any
}

// loadManifests decodes every .yaml and .yml file under dir.
func loadManifests(t *testing.T, dir string) map[string]*manifest {
	t.Helper()
	out := map[string]*manifest{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if ext := filepath.Ext(p); ext != ".yaml" && ext != ".yml" {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		m := &manifest{rel: filepath.ToSlash(rel)}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var doc map[string]any
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Errorf("%s: %v", m.rel, err)
				break
			}
			if doc != nil {
				m.docs = append(m.docs, doc)
			}
		}
		if len(m.docs) == 0 {
			t.Errorf("%s: no YAML documents", m.rel)
		}
		out[m.rel] = m
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	if len(out) == 0 {
		t.Fatalf("no YAML files under %s", dir)
	}
	return out
}

// alternatives are files that no kustomization lists but whose kustomization
// explains, in a comment, how to use them instead of a file it does list. They
// are checked as that file is.
var alternatives = map[string]string{
	"monitoring/podmonitor.yaml": "monitoring/servicemonitor.yaml",
}

// kubectlPatches are patches that no kustomization lists because their target
// is not in any kustomization's output (Velero's own Deployment): the user
// applies them with `kubectl patch`, as the named kustomization explains in
// its comments. TestVeleroSidecarPatch applies them to a Deployment shaped
// like Velero's.
var kubectlPatches = map[string]string{
	"overlays/velero-sidecar/velero-deployment-patch.yaml":        "overlays/velero-sidecar/kustomization.yaml",
	"overlays/velero-sidecar/velero-deployment-remove-patch.yaml": "overlays/velero-sidecar/kustomization.yaml",
}

// wantKustomizations are the kustomizations deploy/ must have.
var wantKustomizations = []string{
	"base/kustomization.yaml",
	"components/suppress-builtin-maintenance/kustomization.yaml",
	"jobs/safety-none-once/kustomization.yaml",
	"monitoring/kustomization.yaml",
	"overlays/oadp/kustomization.yaml",
	"overlays/sidecar/kustomization.yaml",
	"overlays/velero/kustomization.yaml",
	"overlays/velero-sidecar/kustomization.yaml",
}

func deployDir(t *testing.T) string {
	return filepath.Join(harness.RepoRoot(t), "deploy")
}

// TestKustomizations checks each kustomization's references and that every
// YAML file under deploy/ is either a kustomization, a Kubernetes object
// referenced as a resource or patch, or a file read by a generator.
func TestKustomizations(t *testing.T) {
	dir := deployDir(t)
	manifests := loadManifests(t, dir)
	referenced := map[string]string{} // file -> how it is used
	var kustomizations []string
	for rel, m := range manifests {
		if base := filepath.Base(rel); base == "kustomization.yaml" || base == "kustomization.yml" {
			kustomizations = append(kustomizations, rel)
			referenced[rel] = "kustomization"
			checkKustomization(t, dir, m, referenced)
		}
	}
	sort.Strings(kustomizations)
	for _, want := range wantKustomizations {
		if !slices.Contains(kustomizations, want) {
			t.Errorf("missing %s (have %v)", want, kustomizations)
		}
	}
	for alt, of := range alternatives {
		if use, ok := referenced[of]; ok {
			if _, listed := referenced[alt]; !listed {
				referenced[alt] = use
			}
		}
	}
	for patch, k := range kubectlPatches {
		m, ok := manifests[k]
		if !ok {
			t.Errorf("%s: the kustomization %s that explains it is missing", patch, k)
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(k)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(data, []byte(path.Base(patch))) {
			t.Errorf("%s does not say how to apply %s", m.rel, patch)
		}
		referenced[patch] = "patch"
	}
	for rel, m := range manifests {
		use, ok := referenced[rel]
		if !ok {
			t.Errorf("%s: not referenced by any kustomization", rel)
			continue
		}
		if use != "resource" && use != "patch" {
			continue
		}
		for i, doc := range m.docs {
			for _, key := range []string{"apiVersion", "kind"} {
				if s, _ := doc[key].(string); s == "" {
					t.Errorf("%s: document %d has no %s", rel, i, key)
				}
			}
			if name, _ := lookup(doc, "metadata", "name").(string); name == "" {
				t.Errorf("%s: document %d has no metadata.name", rel, i)
			}
		}
	}
}

func checkKustomization(t *testing.T, dir string, m *manifest, referenced map[string]string) {
	t.Helper()
	if len(m.docs) != 1 {
		t.Errorf("%s: %d documents, want 1", m.rel, len(m.docs))
		return
	}
	k := m.docs[0]
	// Components (deploy/components) are included by overlays; everything
	// else is a Kustomization.
	want, wantAPI := "Kustomization", "kustomize.config.k8s.io/v1beta1"
	if strings.HasPrefix(m.rel, "components/") {
		want, wantAPI = "Component", "kustomize.config.k8s.io/v1alpha1"
	}
	if got := k["kind"]; got != want {
		t.Errorf("%s: kind %v, want %s", m.rel, got, want)
	}
	if got := k["apiVersion"]; got != wantAPI {
		t.Errorf("%s: apiVersion %v, want %s", m.rel, got, wantAPI)
	}
	for _, old := range []string{"bases", "patchesStrategicMerge", "patchesJson6902", "commonLabels", "vars"} {
		if _, ok := k[old]; ok {
			t.Errorf("%s: deprecated field %s", m.rel, old)
		}
	}
	here := filepath.Dir(filepath.Join(dir, filepath.FromSlash(m.rel)))
	ref := func(field, p, use string) {
		full := filepath.Join(here, filepath.FromSlash(p))
		fi, err := os.Stat(full)
		if err != nil {
			t.Errorf("%s: %s entry %q: %v", m.rel, field, p, err)
			return
		}
		if fi.IsDir() {
			if use != "resource" {
				t.Errorf("%s: %s entry %q is a directory", m.rel, field, p)
				return
			}
			if _, err := os.Stat(filepath.Join(full, "kustomization.yaml")); err != nil {
				t.Errorf("%s: %s entry %q is a directory without kustomization.yaml", m.rel, field, p)
			}
			return
		}
		rel, err := filepath.Rel(dir, full)
		if err != nil || strings.HasPrefix(rel, "..") {
			t.Errorf("%s: %s entry %q points outside deploy/", m.rel, field, p)
			return
		}
		referenced[filepath.ToSlash(rel)] = use
	}
	for _, r := range stringList(k["resources"]) {
		ref("resources", r, "resource")
	}
	for _, c := range stringList(k["components"]) {
		ref("components", c, "resource")
	}
	for _, p := range list(k["patches"]) {
		if path, _ := lookup(p, "path").(string); path != "" {
			ref("patches", path, "patch")
		} else if _, inline := lookup(p, "patch").(string); !inline {
			t.Errorf("%s: patch without path or patch: %v", m.rel, p)
		}
	}
	for _, gen := range []string{"configMapGenerator", "secretGenerator"} {
		for _, g := range list(k[gen]) {
			for _, f := range stringList(lookup(g, "files")) {
				// "key=path" names the key explicitly.
				if _, p, ok := strings.Cut(f, "="); ok {
					f = p
				}
				ref(gen, f, "generated")
			}
		}
	}
}

// checkContainer checks what every kopia-maintd container under deploy/
// must have, whatever it runs: the restricted security settings, the memory
// limit, TMPDIR, and volumes for everything it writes (the root filesystem
// is read-only), each mount naming a volume of the pod spec pod (whose
// volumes are volumes).
func checkContainer(t *testing.T, pod, c map[string]any, volumes map[string]bool) {
	t.Helper()
	podSec, _ := pod["securityContext"].(map[string]any)
	sec, _ := c["securityContext"].(map[string]any)
	// A setting counts when the container or the pod sets it.
	either := func(path ...string) any {
		if v := lookup(sec, path...); v != nil {
			return v
		}
		return lookup(podSec, path...)
	}
	checks := []struct {
		name string
		got  any
		want any
	}{
		{"runAsNonRoot", either("runAsNonRoot"), true},
		{"seccompProfile.type", either("seccompProfile", "type"), "RuntimeDefault"},
		{"readOnlyRootFilesystem", lookup(sec, "readOnlyRootFilesystem"), true},
		{"allowPrivilegeEscalation", lookup(sec, "allowPrivilegeEscalation"), false},
		{"capabilities.drop", strings.Join(stringList(lookup(sec, "capabilities", "drop")), ","), "ALL"},
		{"memory limit", lookup(c, "resources", "limits", "memory"), "2Gi"},
		{"TMPDIR", envValue(c, "TMPDIR"), "/tmp"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
	mounts := map[string]bool{}
	for _, vm := range list(c["volumeMounts"]) {
		name, _ := vm["name"].(string)
		path, _ := vm["mountPath"].(string)
		mounts[path] = true
		if !volumes[name] {
			t.Errorf("volumeMount %q at %s names no volume of the pod", name, path)
		}
	}
	for _, p := range []string{"/etc/kopia-maintd", "/var/lib/kopia-maintd", "/tmp"} {
		if !mounts[p] {
			t.Errorf("nothing mounted at %s (the root filesystem is read-only)", p)
		}
	}
}

// checkDaemon checks a kopia-maintd container that runs the daemon: its
// arguments, one metrics port 9810 named portName, and the probes on it.
func checkDaemon(t *testing.T, c map[string]any, portName string) {
	t.Helper()
	if got := strings.Join(stringList(c["args"]), " "); got != "run --config /etc/kopia-maintd/config.yaml" {
		t.Errorf("args = %q, want run --config /etc/kopia-maintd/config.yaml", got)
	}
	ports := list(c["ports"])
	// JSON from the API server decodes numbers as float64 or int64, YAML
	// as int.
	if len(ports) != 1 || ports[0]["name"] != portName || fmt.Sprint(ports[0]["containerPort"]) != "9810" {
		t.Errorf("ports = %v, want one port 9810 named %s", ports, portName)
	}
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		if got := lookup(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path = %v, want %s", probe, got, path)
		}
		if got := lookup(c, probe, "httpGet", "port"); got != portName {
			t.Errorf("%s port = %v, want %s", probe, got, portName)
		}
	}
}

// TestConfigFiles checks the config.yaml files that the generators turn into
// ConfigMaps: the keys the daemon needs are there, and every secret file they
// name lies under a directory the kopia-maintd container mounts.
func TestConfigFiles(t *testing.T) {
	manifests := loadManifests(t, deployDir(t))
	configs := 0
	for rel, m := range manifests {
		if filepath.Base(rel) != "config.yaml" {
			continue
		}
		configs++
		t.Run(rel, func(t *testing.T) {
			mountPaths := daemonMountPaths(manifests, path.Dir(rel))
			cfg := m.docs[0]
			for _, path := range [][]string{
				{"identity", "username"}, {"identity", "hostname"}, {"stateDirectory"},
				{"server", "listenAddress"}, {"defaults", "schedule", "quick"}, {"defaults", "schedule", "full"},
				{"defaults", "ownership", "takeover"},
			} {
				if lookup(cfg, path...) == nil {
					t.Errorf("missing %s", strings.Join(path, "."))
				}
			}
			if got := lookup(cfg, "server", "listenAddress"); got != "0.0.0.0:9810" {
				t.Errorf("server.listenAddress = %v, want 0.0.0.0:9810 (the container port)", got)
			}
			repos := list(cfg["repositories"])
			discover, _ := lookup(cfg, "velero", "discover").(bool)
			if len(repos) == 0 && !discover {
				t.Fatalf("no repositories, and velero.discover is not true")
			}
			if discover {
				checkVeleroConfig(t, cfg, mountPaths)
			}
			for _, r := range repos {
				files := []any{r["passwordFile"],
					lookup(r, "storage", "s3", "accessKeyIDFile"),
					lookup(r, "storage", "s3", "secretAccessKeyFile")}
				for _, f := range files {
					p, _ := f.(string)
					if p == "" {
						continue
					}
					if !slices.ContainsFunc(mountPaths, func(mp string) bool { return strings.HasPrefix(p, mp+"/") }) {
						t.Errorf("repository %v: %s is not under a mounted directory %v", r["name"], p, mountPaths)
					}
				}
			}
		})
	}
	// base, the overlays velero, oadp, sidecar and velero-sidecar, and the
	// safety=none Job.
	if configs < 6 {
		t.Errorf("found %d config.yaml files under deploy/, want 6", configs)
	}
}

// checkVeleroConfig checks the velero section of a config that discovers
// Velero's repositories: where to look, which Secrets to read, and that the
// cloud credentials file, when used, is mounted.
func checkVeleroConfig(t *testing.T, cfg map[string]any, mountPaths []string) {
	t.Helper()
	ns, _ := lookup(cfg, "velero", "namespace").(string)
	if ns == "" {
		t.Errorf("velero.namespace is not set")
	}
	if s, _ := lookup(cfg, "velero", "credentialsSecret").(string); s != "velero-repo-credentials" {
		t.Errorf("velero.credentialsSecret = %q, want Velero's velero-repo-credentials", s)
	}
	secret, _ := lookup(cfg, "velero", "cloudCredentialsSecret").(string)
	file, _ := lookup(cfg, "velero", "cloudCredentialsFile").(string)
	switch {
	case secret != "" && file != "":
		t.Errorf("both velero.cloudCredentialsSecret and cloudCredentialsFile are set")
	case secret == "" && file == "":
		t.Errorf("neither velero.cloudCredentialsSecret nor cloudCredentialsFile is set")
	case file != "" && !slices.ContainsFunc(mountPaths, func(mp string) bool { return strings.HasPrefix(file, mp+"/") }):
		t.Errorf("velero.cloudCredentialsFile %s is not under a mounted directory %v", file, mountPaths)
	}
	// The gate must look where the repositories are found.
	if !slices.Contains(stringList(lookup(cfg, "safetyNone", "veleroNamespaces")), ns) {
		t.Errorf("safetyNone.veleroNamespaces = %v, want it to hold velero.namespace %q", lookup(cfg, "safetyNone", "veleroNamespaces"), ns)
	}
}

// secretsDir is where the manifests mount the Secrets the configs refer to.
const secretsDir = "/run/secrets/kopia-maintd/"

// veleroCredentialsDir is where Velero's pod mounts the cloud-credentials
// Secret, which the sidecar's config reads.
const veleroCredentialsDir = "/credentials/"

// TestConfigFilesLoad parses each config.yaml under deploy/ with the daemon's
// own config package, with the secret files it names (which exist only in a
// pod) replaced by files in a temporary directory.
func TestConfigFilesLoad(t *testing.T) {
	dir := deployDir(t)
	for rel := range loadManifests(t, dir) {
		if path.Base(rel) != "config.yaml" {
			continue
		}
		t.Run(rel, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(rel)))
			if err != nil {
				t.Fatal(err)
			}
			secrets := t.TempDir()
			for _, f := range []string{"repository/password", "s3/access-key-id", "s3/secret-access-key"} {
				p := filepath.Join(secrets, filepath.FromSlash(f))
				if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte("not-a-real-secret\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			data = bytes.ReplaceAll(data, []byte(secretsDir), []byte(secrets+"/"))
			// Velero's cloud-credentials volume, as the sidecar mounts it.
			cloud := filepath.Join(secrets, "credentials", "cloud")
			if err := os.MkdirAll(filepath.Dir(cloud), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(cloud, []byte("[default]\naws_access_key_id = not-a-key\naws_secret_access_key = not-a-secret\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			data = bytes.ReplaceAll(data, []byte(veleroCredentialsDir), []byte(filepath.Dir(cloud)+"/"))
			if _, err := config.Parse(data, filepath.Dir(filepath.Join(dir, rel))); err != nil {
				t.Fatalf("config.Parse: %v", err)
			}
		})
	}
}

// daemonMountPaths returns the mount paths of the kopia-maintd containers in
// the Deployments and patches that the kustomization in dir builds from,
// following resources into bases.
func daemonMountPaths(manifests map[string]*manifest, dir string) []string {
	var paths []string
	seen := map[string]bool{}
	var visit func(dir string)
	visit = func(dir string) {
		k, ok := manifests[path.Join(dir, "kustomization.yaml")]
		if !ok || seen[dir] {
			return
		}
		seen[dir] = true
		var files []string
		for _, r := range stringList(k.docs[0]["resources"]) {
			files = append(files, path.Join(dir, r))
		}
		for _, p := range list(k.docs[0]["patches"]) {
			if f, _ := p["path"].(string); f != "" {
				files = append(files, path.Join(dir, f))
			}
		}
		for patch, by := range kubectlPatches {
			if path.Dir(by) == dir {
				files = append(files, patch)
			}
		}
		for _, f := range files {
			m, ok := manifests[f]
			if !ok {
				visit(f) // a directory with its own kustomization
				continue
			}
			for _, doc := range m.docs {
				for _, c := range list(lookup(doc, "spec", "template", "spec", "containers")) {
					if c["name"] != container {
						continue
					}
					for _, vm := range list(c["volumeMounts"]) {
						if p, _ := vm["mountPath"].(string); p != "" {
							paths = append(paths, p)
						}
					}
				}
			}
		}
	}
	visit(dir)
	return paths
}

// envValue returns the value of the environment variable name of container
// c, or nil.
func envValue(c map[string]any, name string) any {
	for _, e := range list(c["env"]) {
		if e["name"] == name {
			return e["value"]
		}
	}
	return nil
}

// lookup follows keys through nested maps and returns nil where one is
// missing.
func lookup(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// list returns the maps of a YAML sequence of mappings.
func list(v any) []map[string]any {
	items, _ := v.([]any)
	var out []map[string]any
	for _, it := range items {
		if m, ok := it.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

// stringList returns the strings of a YAML sequence.
func stringList(v any) []string {
	items, _ := v.([]any)
	var out []string
	for _, it := range items {
		if s, ok := it.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
