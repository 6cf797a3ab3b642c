package velero

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

const (
	veleroNS = "velero"
	daemonSA = "kopia-maintd"
	// roleFile and bindingFile are the RBAC under test, deploy/'s own;
	// suppressionComponent adds patch on BackupRepositories to the Role.
	roleFile             = "deploy/base/discovery-role.yaml"
	bindingFile          = "deploy/base/discovery-rolebinding.yaml"
	suppressionComponent = "deploy/components/suppress-builtin-maintenance"
)

var jobsGVR = schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}

// waitTimeout bounds each wait for the API server or an OnChange.
const waitTimeout = 15 * time.Second

// TestKube runs package velero against one real kube-apiserver with
// Velero's CRDs (test/testdata/crds) and, for everything the daemon does,
// the identity of its ServiceAccount bound by exactly the discovery Role of
// deploy/base, and later the suppression Component's addition to it. The subtests run in order and share the
// namespace; each deletes what it made.
func TestKube(t *testing.T) {
	k := harness.StartKube(t)
	k.InstallCRDs(t)
	k.EnsureNamespace(t, veleroNS)
	k.ApplyFile(t, roleFile)
	k.ApplyFile(t, bindingFile)

	sa := k.ServiceAccountConfig(t, veleroNS, daemonSA)
	waitAllowed(t, func(ctx context.Context) error {
		_, err := dynamic.NewForConfigOrDie(sa).Resource(backupRepositoriesGVR).Namespace(veleroNS).List(ctx, metav1.ListOptions{})

		return err
	})

	t.Run("discovery run", func(t *testing.T) { testDiscoveryRun(t, k, sa) })
	t.Run("sync fails without rbac", func(t *testing.T) { testSyncFailsWithoutRBAC(t, k) })
	t.Run("secrets", func(t *testing.T) { testSecrets(t, k, sa) })
	t.Run("maintenance jobs", func(t *testing.T) { testMaintenanceJobs(t, k, sa) })
	t.Run("suppression rbac", func(t *testing.T) { testSuppressionRBAC(t, k, sa) })
	t.Run("suppress restore", func(t *testing.T) { testSuppressRestore(t, k, sa) })
}

func newDiscovery(t testing.TB, cfg *rest.Config, opts Options) *Discovery {
	t.Helper()

	opts.Dynamic = dynamic.NewForConfigOrDie(cfg)
	opts.Client = kubernetes.NewForConfigOrDie(cfg)

	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(t)
	}

	d, err := NewDiscovery(opts)
	if err != nil {
		t.Fatal(err)
	}

	return d
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)

	return ctx
}

// waitAllowed retries call until RBAC, which the API server reads from its
// own informers, lets it through.
func waitAllowed(t testing.TB, call func(ctx context.Context) error) {
	t.Helper()

	deadline := time.Now().Add(waitTimeout)

	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := call(ctx)

		cancel()

		if err == nil {
			return
		}

		if !apierrors.IsForbidden(err) || time.Now().After(deadline) {
			t.Fatalf("call still fails: %v", err)
		}

		time.Sleep(50 * time.Millisecond)
	}
}

func bslYAML(name, extraSpec string) []byte {
	return fmt.Appendf(nil, `
apiVersion: velero.io/v1
kind: BackupStorageLocation
metadata: {name: %s, namespace: velero}
spec:
  provider: aws
  objectStorage: {bucket: backups, prefix: cluster1}
  config: {s3Url: "http://minio.velero.svc:9000", region: minio}
%s
`, name, extraSpec)
}

func brYAML(name, volumeNamespace, bsl, repoType, extraSpec string) []byte {
	return fmt.Appendf(nil, `
apiVersion: velero.io/v1
kind: BackupRepository
metadata: {name: %s, namespace: velero}
spec:
  volumeNamespace: %s
  backupStorageLocation: %s
  repositoryType: %q
%s
`, name, volumeNamespace, bsl, repoType, extraSpec)
}

func deleteObject(t testing.TB, k *harness.Kube, gvr schema.GroupVersionResource, name string) {
	t.Helper()

	err := k.Dynamic(t).Resource(gvr).Namespace(veleroNS).Delete(ctxT(t), name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete %s %s: %v", gvr.Resource, name, err)
	}
}

// changes collects OnChange calls and checks that none overlaps another.
type changes struct {
	ch      chan []Repository
	running atomic.Int32
	calls   atomic.Int32
	overlap atomic.Bool
}

func newChanges() *changes { return &changes{ch: make(chan []Repository, 1000)} }

func (c *changes) onChange(rs []Repository) {
	if c.running.Add(1) != 1 {
		c.overlap.Store(true)
	}

	c.calls.Add(1)
	c.ch <- rs
	c.running.Add(-1)
}

// waitFor returns the first set delivered within waitTimeout for which ok
// holds, and how long it took.
func (c *changes) waitFor(t testing.TB, what string, ok func([]Repository) bool) ([]Repository, time.Duration) {
	t.Helper()

	start := time.Now()
	timeout := time.After(waitTimeout)

	var last []Repository

	for {
		select {
		case rs := <-c.ch:
			last = rs
			if ok(rs) {
				return rs, time.Since(start)
			}
		case <-timeout:
			t.Fatalf("no OnChange with %s within %v; last set: %+v", what, waitTimeout, last)
		}
	}
}

func names(rs []Repository) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Name
	}

	return out
}

func byName(rs []Repository, name string) (Repository, bool) {
	for _, r := range rs {
		if r.Name == name {
			return r, true
		}
	}

	return Repository{}, false
}

func testDiscoveryRun(t *testing.T, k *harness.Kube, sa *rest.Config) {
	k.Apply(t,
		bslYAML("default", ""),
		bslYAML("second.example.com", ""),
		brYAML("app1-default-kopia-aaaa", "app1", "default", "kopia", ""),
		brYAML("app2-second-kopia-bbbb", "app2", "second.example.com", "kopia", ""),
		brYAML("app1-default-restic-cccc", "app1", "default", "restic", ""),
	)
	t.Cleanup(func() {
		for _, n := range []string{"app1-default-kopia-aaaa", "app2-second-kopia-bbbb", "app1-default-restic-cccc", "app3-default-kopia-dddd", "app4-later-kopia-eeee"} {
			deleteObject(t, k, backupRepositoriesGVR, n)
		}

		for _, n := range []string{"default", "second.example.com", "later"} {
			deleteObject(t, k, backupStorageLocationsGVR, n)
		}
	})

	c := newChanges()
	d := newDiscovery(t, sa, Options{OnChange: c.onChange})

	if rs := d.Repositories(); rs != nil {
		t.Errorf("Repositories before Run = %v, want nil", rs)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)

	go func() { done <- d.Run(ctx) }()

	defer func() {
		cancel()

		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v, want nil after the context ended", err)
			}
		case <-time.After(waitTimeout):
			t.Error("Run did not return after the context ended")
		}
	}()

	first, took := c.waitFor(t, "the initial set", func([]Repository) bool { return true })
	t.Logf("initial OnChange after %v", took)

	if got, want := names(first), []string{"app1-default", "app2-second-example-com"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("initial set %v, want %v (restic ignored)", got, want)
	}

	app1, _ := byName(first, "app1-default")
	wantLoc := Location{Provider: "aws", Bucket: "backups", Prefix: "cluster1/kopia/app1/", Endpoint: "minio.velero.svc:9000",
		Region: "minio", Insecure: true, Profile: "default", Credential: SecretKey{Name: "cloud-credentials", Key: "cloud"}}

	if app1.NotMaintained != "" || !reflect.DeepEqual(app1.Location, wantLoc) ||
		!reflect.DeepEqual(app1.Source, Source{Namespace: veleroNS, BackupRepository: "app1-default-kopia-aaaa", BackupStorageLocation: "default", VolumeNamespace: "app1"}) {
		t.Errorf("app1-default = %+v", app1)
	}

	// One-shot discovery agrees.
	if got, err := Discover(ctxT(t), Options{Dynamic: dynamic.NewForConfigOrDie(sa)}); err != nil || !reflect.DeepEqual(got, first) {
		t.Errorf("Discover = %+v, %v; want %+v", got, err, first)
	}

	// A third repository, added later.
	k.Apply(t, brYAML("app3-default-kopia-dddd", "app3", "default", "kopia", ""))

	rs, took := c.waitFor(t, "app3-default", func(rs []Repository) bool { _, ok := byName(rs, "app3-default"); return ok })
	t.Logf("OnChange with an added BackupRepository after %v", took)

	if len(rs) != 3 {
		t.Errorf("set after adding app3 = %v, want 3 repositories", names(rs))
	}

	// One deleted.
	deleteObject(t, k, backupRepositoriesGVR, "app2-second-kopia-bbbb")
	c.waitFor(t, "app2 gone", func(rs []Repository) bool {
		return reflect.DeepEqual(names(rs), []string{"app1-default", "app3-default"})
	})

	// A location switched to ReadOnly: its repositories are not maintained.
	k.Apply(t, bslYAML("default", "  accessMode: ReadOnly"))

	rs, _ = c.waitFor(t, "ReadOnly", func(rs []Repository) bool {
		r, _ := byName(rs, "app1-default")
		return strings.Contains(r.NotMaintained, "ReadOnly")
	})
	if r, _ := byName(rs, "app3-default"); !strings.Contains(r.NotMaintained, "is ReadOnly") || !reflect.DeepEqual(r.Location, Location{}) {
		t.Errorf("app3-default on a ReadOnly location = %+v", r)
	}

	// The location changed: the next set has the new prefix.
	k.Apply(t, []byte(`
apiVersion: velero.io/v1
kind: BackupStorageLocation
metadata: {name: default, namespace: velero}
spec:
  provider: aws
  accessMode: ReadWrite
  objectStorage: {bucket: backups, prefix: moved/here}
  config: {s3Url: "http://minio.velero.svc:9000", region: minio}
`))
	c.waitFor(t, "the new prefix", func(rs []Repository) bool {
		r1, _ := byName(rs, "app1-default")
		r3, _ := byName(rs, "app3-default")

		return r1.NotMaintained == "" && r1.Location.Prefix == "moved/here/kopia/app1/" && r3.Location.Prefix == "moved/here/kopia/app3/"
	})

	// A BackupRepository whose location does not exist yet, then does.
	k.Apply(t, brYAML("app4-later-kopia-eeee", "app4", "later", "kopia", ""))
	c.waitFor(t, "app4-later not found", func(rs []Repository) bool {
		r, _ := byName(rs, "app4-later")
		return r.NotMaintained == "BackupStorageLocation velero/later not found"
	})
	k.Apply(t, bslYAML("later", ""))

	rs, _ = c.waitFor(t, "app4-later maintained", func(rs []Repository) bool {
		r, ok := byName(rs, "app4-later")
		return ok && r.NotMaintained == ""
	})

	if got := d.Repositories(); !reflect.DeepEqual(got, rs) {
		t.Errorf("Repositories = %+v, want the last set delivered %+v", got, rs)
	}

	// A status update changes no repository: no call.
	calls := c.calls.Load()
	k.SetStatus(t, backupRepositoriesGVR, veleroNS, "app1-default-kopia-aaaa", map[string]any{"phase": "Ready", "lastMaintenanceTime": time.Now().UTC().Format(time.RFC3339)})
	time.Sleep(time.Second)

	if got := c.calls.Load(); got != calls {
		t.Errorf("OnChange called %d times for a status update, want none", got-calls)
	}

	if c.overlap.Load() {
		t.Error("OnChange calls overlapped")
	}

	if err := d.Run(context.Background()); err == nil {
		t.Error("a second Run returned nil, want an error")
	}
}

func testSyncFailsWithoutRBAC(t *testing.T, k *harness.Kube) {
	nobody := k.ServiceAccountConfig(t, veleroNS, "nobody")
	d := newDiscovery(t, nobody, Options{SyncTimeout: 3 * time.Second})

	start := time.Now()
	err := d.Run(ctxT(t))

	if err == nil || !strings.Contains(err.Error(), "not synced within 3s") || !strings.Contains(err.Error(), "list and watch") ||
		!strings.Contains(err.Error(), "forbidden") {
		t.Errorf("Run without RBAC = %v, want a sync error naming RBAC and the forbidden list", err)
	}

	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Run took %v to fail, want about the 3s sync timeout", took)
	}

	if _, err := Discover(ctxT(t), Options{Dynamic: dynamic.NewForConfigOrDie(nobody)}); !apierrors.IsForbidden(err) {
		t.Errorf("Discover without RBAC = %v, want Forbidden", err)
	}
}

const cloudINI = `[default]
aws_access_key_id = AKIADEFAULT
aws_secret_access_key = secretdefault

[profile backup]
aws_access_key_id = AKIABACKUP
aws_secret_access_key = secretbackup
aws_session_token = tokenbackup
`

func secretYAML(name string, data map[string]string) []byte {
	js, _ := json.Marshal(map[string]any{
		"apiVersion": "v1", "kind": "Secret",
		"metadata":   map[string]any{"name": name, "namespace": veleroNS},
		"stringData": data,
	})

	return js
}

// noSecretIn fails when err's text holds any of the secret values.
func noSecretIn(t *testing.T, err error) {
	t.Helper()

	for _, s := range []string{"AKIA", "secretdefault", "secretbackup", "tokenbackup", "static-passw0rd", "BEGIN CERT"} {
		if err != nil && strings.Contains(err.Error(), s) {
			t.Errorf("error %q contains secret data %q", err, s)
		}
	}
}

func testSecrets(t *testing.T, k *harness.Kube, sa *rest.Config) {
	t.Cleanup(func() {
		for _, n := range []string{"velero-repo-credentials", "cloud-credentials", "bsl-creds", "minio-ca"} {
			deleteObject(t, k, schema.GroupVersionResource{Version: "v1", Resource: "secrets"}, n)
		}
	})

	d := newDiscovery(t, sa, Options{})

	// Password.
	if _, err := d.Password(ctxT(t)); err == nil || err.Error() != "read repository password: secret velero/velero-repo-credentials not found" ||
		!errors.Is(err, ErrSecretNotFound) {
		t.Errorf("Password without the Secret = %v", err)
	}

	k.Apply(t, secretYAML("velero-repo-credentials", map[string]string{"password": "static-passw0rd"}))

	_, err := d.Password(ctxT(t))
	if err == nil || err.Error() != "read repository password: secret velero/velero-repo-credentials has no key repository-password" ||
		!errors.Is(err, ErrSecretKeyNotFound) {
		t.Errorf("Password without the key = %v", err)
	}

	noSecretIn(t, err)

	k.Apply(t, secretYAML("velero-repo-credentials", map[string]string{"repository-password": "static-passw0rd\n"}))

	if p, err := d.Password(ctxT(t)); err != nil || p != "static-passw0rd" {
		t.Errorf("Password = %q, %v; want static-passw0rd (trimmed, as Velero trims it)", p, err)
	}

	// Credentials from the default cloud-credentials Secret.
	repo := Repository{
		Name:     "app-default",
		Source:   Source{Namespace: veleroNS, BackupRepository: "app-default-kopia-x", BackupStorageLocation: "default", VolumeNamespace: "app"},
		Location: Location{Provider: "aws", Bucket: "b", Profile: "default", Credential: SecretKey{Name: "cloud-credentials", Key: "cloud"}},
	}

	_, err = d.Credentials(ctxT(t), repo)
	if err == nil || err.Error() != `credentials of repository "app-default": secret velero/cloud-credentials not found` {
		t.Errorf("Credentials without the Secret = %v", err)
	}

	k.Apply(t, secretYAML("cloud-credentials", map[string]string{"credentials": cloudINI}))

	_, err = d.Credentials(ctxT(t), repo)
	if err == nil || err.Error() != `credentials of repository "app-default": secret velero/cloud-credentials has no key cloud` {
		t.Errorf("Credentials without the key = %v", err)
	}

	noSecretIn(t, err)

	k.Apply(t, secretYAML("cloud-credentials", map[string]string{"cloud": cloudINI}))

	c, err := d.Credentials(ctxT(t), repo)
	if err != nil || c.AccessKeyID != "AKIADEFAULT" || c.SecretAccessKey != "secretdefault" || c.SessionToken != "" {
		t.Errorf("Credentials(default) = %v (%s/%s), %v", c, c.AccessKeyID, c.SecretAccessKey, err)
	}

	backup := repo
	backup.Location.Profile = "backup"

	if c, err := d.Credentials(ctxT(t), backup); err != nil || c.AccessKeyID != "AKIABACKUP" || c.SessionToken != "tokenbackup" {
		t.Errorf("Credentials(profile backup) = %v (%s), %v", c, c.AccessKeyID, err)
	}

	missing := repo
	missing.Location.Profile = "prod"

	_, err = d.Credentials(ctxT(t), missing)
	if want := `credentials of repository "app-default": secret velero/cloud-credentials key cloud: profile "prod" not found (profiles found: "backup", "default")`; err == nil || err.Error() != want || !errors.Is(err, ErrProfileNotFound) {
		t.Errorf("Credentials(profile prod) = %v, want %q", err, want)
	}

	noSecretIn(t, err)

	// A Secret not in the Role's resourceNames is Forbidden, even when it
	// exists (least privilege; the user adds the names of BSL Secrets).
	k.Apply(t, secretYAML("bsl-creds", map[string]string{"cloud": cloudINI}))

	other := repo
	other.Location.Credential = SecretKey{Name: "bsl-creds", Key: "cloud"}

	_, err = d.Credentials(ctxT(t), other)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "get secret velero/bsl-creds") {
		t.Errorf("Credentials from a Secret not granted = %v, want Forbidden", err)
	}

	noSecretIn(t, err)

	// The admin may read it: the reference itself works.
	admin := newDiscovery(t, k.AdminConfig(), Options{})
	if c, err := admin.Credentials(ctxT(t), other); err != nil || c.AccessKeyID != "AKIADEFAULT" {
		t.Errorf("Credentials(bsl-creds) as admin = %v, %v", c, err)
	}

	// The shared file instead of a Secret.
	file := filepath.Join(t.TempDir(), "cloud")
	if err := os.WriteFile(file, []byte(cloudINI), 0o600); err != nil {
		t.Fatal(err)
	}

	fromFile := repo
	fromFile.Location.Credential, fromFile.Location.CredentialsFile = SecretKey{}, file

	if c, err := d.Credentials(ctxT(t), fromFile); err != nil || c.AccessKeyID != "AKIADEFAULT" {
		t.Errorf("Credentials(file) = %v, %v", c, err)
	}

	fromFile.Location.CredentialsFile = file + ".missing"
	if _, err := d.Credentials(ctxT(t), fromFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Credentials(missing file) = %v, want not exist", err)
	}

	notMaintained := repo
	notMaintained.NotMaintained = "provider velero.io/azure: ..."

	if _, err := d.Credentials(ctxT(t), notMaintained); err == nil {
		t.Error("Credentials of a repository not maintained = nil error")
	}

	// caCertRef: read from its Secret at every call (the admin, as the Role
	// names no CA Secret); the inline caCert as it is.
	const pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

	k.Apply(t, secretYAML("minio-ca", map[string]string{"ca.crt": pem}))

	withRef := repo
	withRef.Location.CACertRef = &SecretKey{Name: "minio-ca", Key: "ca.crt"}

	if got, err := admin.CACert(ctxT(t), withRef); err != nil || string(got) != pem {
		t.Errorf("CACert(caCertRef) = %q, %v", got, err)
	}

	_, err = d.CACert(ctxT(t), withRef)
	if !apierrors.IsForbidden(err) {
		t.Errorf("CACert(caCertRef) under the Role = %v, want Forbidden", err)
	}

	noSecretIn(t, err)

	inline := repo
	inline.Location.CACert = []byte(pem)

	if got, err := d.CACert(ctxT(t), inline); err != nil || string(got) != pem {
		t.Errorf("CACert(caCert) = %q, %v", got, err)
	}
}

func jobYAML(name, repoLabel string) []byte {
	return fmt.Appendf(nil, `
apiVersion: batch/v1
kind: Job
metadata: {name: %s, namespace: velero, labels: {velero.io/repo-name: %s}}
spec:
  backoffLimit: 0
  template:
    metadata: {labels: {velero.io/repo-name: %s}}
    spec:
      restartPolicy: Never
      containers: [{name: velero-repo-maintenance-container, image: velero/velero, command: [/velero], args: [repo-maintenance]}]
`, name, repoLabel, repoLabel)
}

func testMaintenanceJobs(t *testing.T, k *harness.Kube, sa *rest.Config) {
	const repo = "app-default-kopia-x1y2z"

	longRepo := "a-very-long-volume-namespace-name-for-testing-a-long-storage-location-kopia-abcde"
	jobs := []string{"repo-running", "repo-new", "repo-done", "repo-failed", "other-running", "long-running"}

	t.Cleanup(func() {
		for _, j := range jobs {
			deleteObject(t, k, jobsGVR, j)
		}
	})

	k.Apply(t,
		jobYAML("repo-running", repo), jobYAML("repo-new", repo), jobYAML("repo-done", repo), jobYAML("repo-failed", repo),
		jobYAML("other-running", "other-default-kopia-q"),
		jobYAML("long-running", RepositoryLabelValue(longRepo)),
	)

	now := time.Now().UTC()
	start := now.Add(-time.Minute).Format(time.RFC3339)
	end := now.Format(time.RFC3339)

	k.SetStatus(t, jobsGVR, veleroNS, "repo-running", map[string]any{"active": 1, "startTime": start})
	k.SetStatus(t, jobsGVR, veleroNS, "other-running", map[string]any{"active": 1, "startTime": start})
	k.SetStatus(t, jobsGVR, veleroNS, "long-running", map[string]any{"active": 1, "startTime": start})
	k.SetStatus(t, jobsGVR, veleroNS, "repo-done", map[string]any{
		"startTime": start, "completionTime": end, "succeeded": 1,
		"conditions": []any{
			map[string]any{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": end},
			map[string]any{"type": "Complete", "status": "True", "lastTransitionTime": end},
		},
	})
	k.SetStatus(t, jobsGVR, veleroNS, "repo-failed", map[string]any{
		"startTime": start, "failed": 1,
		"conditions": []any{
			map[string]any{"type": "FailureTarget", "status": "True", "lastTransitionTime": end, "reason": "BackoffLimitExceeded"},
			map[string]any{"type": "Failed", "status": "True", "lastTransitionTime": end, "reason": "BackoffLimitExceeded"},
		},
	})

	d := newDiscovery(t, sa, Options{})

	got, err := d.ActiveMaintenanceJobs(ctxT(t), Source{Namespace: veleroNS, BackupRepository: repo})
	if err != nil || !reflect.DeepEqual(got, []string{"repo-new", "repo-running"}) {
		t.Errorf("ActiveMaintenanceJobs = %v, %v; want [repo-new repo-running]", got, err)
	}

	got, err = d.ActiveMaintenanceJobs(ctxT(t), Source{Namespace: veleroNS, BackupRepository: longRepo})
	if err != nil || !reflect.DeepEqual(got, []string{"long-running"}) {
		t.Errorf("ActiveMaintenanceJobs(long name) = %v, %v; want [long-running] (label by sha3-224)", got, err)
	}

	got, err = d.ActiveMaintenanceJobs(ctxT(t), Source{Namespace: veleroNS, BackupRepository: "none-default-kopia-n"})
	if err != nil || len(got) != 0 {
		t.Errorf("ActiveMaintenanceJobs(no jobs) = %v, %v; want none", got, err)
	}

	// The running Job completes.
	k.SetStatus(t, jobsGVR, veleroNS, "repo-running", map[string]any{
		"active": 0, "completionTime": end, "succeeded": 1,
		"conditions": []any{
			map[string]any{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": end},
			map[string]any{"type": "Complete", "status": "True", "lastTransitionTime": end},
		},
	})

	if got, err := d.ActiveMaintenanceJobs(ctxT(t), Source{Namespace: veleroNS, BackupRepository: repo}); err != nil || !reflect.DeepEqual(got, []string{"repo-new"}) {
		t.Errorf("ActiveMaintenanceJobs after completion = %v, %v; want [repo-new]", got, err)
	}
}

func testSuppressionRBAC(t *testing.T, k *harness.Kube, sa *rest.Config) {
	k.Apply(t, brYAML("rbac-default-kopia-r", "rbac", "default", "kopia", "  maintenanceFrequency: 1h0m0s"))
	t.Cleanup(func() { deleteObject(t, k, backupRepositoriesGVR, "rbac-default-kopia-r") })

	d := newDiscovery(t, sa, Options{})
	src := Source{Namespace: veleroNS, BackupRepository: "rbac-default-kopia-r"}

	// Without the suppression Component: reading works, patching is Forbidden.
	if s, err := d.Suppressed(ctxT(t), src); err != nil || s {
		t.Errorf("Suppressed = %v, %v; want false", s, err)
	}

	if changed, err := d.Suppress(ctxT(t), src); !apierrors.IsForbidden(err) || changed {
		t.Errorf("Suppress without the suppression Component = %v, %v; want Forbidden", changed, err)
	}

	if changed, err := d.Restore(ctxT(t), src); err != nil || changed {
		t.Errorf("Restore of an object never suppressed = %v, %v; want nothing to do", changed, err)
	}

	k.ApplyRoleComponent(t, suppressionComponent, veleroNS)
	waitAllowed(t, func(ctx context.Context) error {
		_, err := d.Suppress(ctx, src)
		return err
	})

	if s, err := d.Suppressed(ctxT(t), src); err != nil || !s {
		t.Errorf("Suppressed after Suppress = %v, %v; want true", s, err)
	}

	if changed, err := d.Restore(ctxT(t), src); err != nil || !changed {
		t.Errorf("Restore = %v, %v", changed, err)
	}

	// The Role grants patch on BackupRepositories only.
	_, err := dynamic.NewForConfigOrDie(sa).Resource(backupStorageLocationsGVR).Namespace(veleroNS).Patch(ctxT(t), "default", "application/merge-patch+json",
		[]byte(`{"spec":{"accessMode":"ReadOnly"}}`), metav1.PatchOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("patch of a BackupStorageLocation = %v, want Forbidden", err)
	}
}

// brState is what Suppress and Restore leave on a BackupRepository.
type brState struct {
	frequency     string
	hasFrequency  bool
	annotation    string
	hasAnnotation bool
}

func getState(t *testing.T, k *harness.Kube, name string) brState {
	t.Helper()

	br, err := k.Dynamic(t).Resource(backupRepositoriesGVR).Namespace(veleroNS).Get(ctxT(t), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	var s brState

	s.frequency, s.hasFrequency, _ = unstructured.NestedString(br.Object, "spec", "maintenanceFrequency")
	s.annotation, s.hasAnnotation = br.GetAnnotations()[AnnotationOriginalFrequency]

	return s
}

func testSuppressRestore(t *testing.T, k *harness.Kube, sa *rest.Config) {
	brs := []string{"set-default-kopia-s", "unset-default-kopia-u", "ready-default-kopia-r", "velero-default-kopia-v", "user-default-kopia-p"}

	t.Cleanup(func() {
		for _, n := range brs {
			deleteObject(t, k, backupRepositoriesGVR, n)
		}
	})

	k.Apply(t,
		brYAML(brs[0], "set", "default", "kopia", "  maintenanceFrequency: 1h0m0s"),
		brYAML(brs[1], "unset", "default", "kopia", ""),
		brYAML(brs[2], "ready", "default", "kopia", ""),
		brYAML(brs[3], "velero", "default", "kopia", "  maintenanceFrequency: 2h"),
		brYAML(brs[4], "user", "default", "kopia", "  maintenanceFrequency: 2h"),
	)
	k.SetStatus(t, backupRepositoriesGVR, veleroNS, brs[0], map[string]any{"phase": "Ready"})
	k.SetStatus(t, backupRepositoriesGVR, veleroNS, brs[1], map[string]any{"phase": "New"})
	k.SetStatus(t, backupRepositoriesGVR, veleroNS, brs[2], map[string]any{"phase": "Ready"})

	d := newDiscovery(t, sa, Options{})
	src := func(name string) Source { return Source{Namespace: veleroNS, BackupRepository: name} }

	step := func(name, what string, f func(context.Context, Source) (bool, error), wantChanged bool, want brState) {
		t.Helper()

		changed, err := f(ctxT(t), src(name))
		if err != nil || changed != wantChanged {
			t.Errorf("%s %s = %v, %v; want changed %v", what, name, changed, err, wantChanged)
		}

		if got := getState(t, k, name); got != want {
			t.Errorf("after %s %s: %+v, want %+v", what, name, got, want)
		}
	}

	suppressed := func(original string) brState {
		return brState{frequency: SuppressedFrequency, hasFrequency: true, annotation: original, hasAnnotation: true}
	}

	// Original value set: round trip, each step idempotent.
	step(brs[0], "Suppress", d.Suppress, true, suppressed("1h0m0s"))
	step(brs[0], "Suppress", d.Suppress, false, suppressed("1h0m0s"))
	step(brs[0], "Restore", d.Restore, true, brState{frequency: "1h0m0s", hasFrequency: true})
	step(brs[0], "Restore", d.Restore, false, brState{frequency: "1h0m0s", hasFrequency: true})

	// Original value unset, phase New: the field goes away again, for
	// Velero's initializeRepo to default.
	step(brs[1], "Suppress", d.Suppress, true, suppressed(""))
	step(brs[1], "Restore", d.Restore, true, brState{})

	// Original value unset, but Ready by now: the default, not "due on
	// every reconcile".
	step(brs[2], "Suppress", d.Suppress, true, suppressed(""))
	step(brs[2], "Restore", d.Restore, true, brState{frequency: "1h0m0s", hasFrequency: true})

	// Velero's initializeRepo races and puts its default back: Suppress
	// sets the field again and keeps the recorded original.
	step(brs[3], "Suppress", d.Suppress, true, suppressed("2h"))
	mergePatch(t, k, brs[3], `{"spec":{"maintenanceFrequency":"1h0m0s"}}`)
	step(brs[3], "Suppress", d.Suppress, true, suppressed("2h"))
	step(brs[3], "Restore", d.Restore, true, brState{frequency: "2h", hasFrequency: true})

	// A person changes the frequency while suppressed: Restore keeps it.
	step(brs[4], "Suppress", d.Suppress, true, suppressed("2h"))
	mergePatch(t, k, brs[4], `{"spec":{"maintenanceFrequency":"6h"}}`)
	step(brs[4], "Restore", d.Restore, true, brState{frequency: "6h", hasFrequency: true})

	// The patch is checked against the resourceVersion read: a write in
	// between makes it a conflict, so a stale read is never recorded.
	br, err := k.Dynamic(t).Resource(backupRepositoriesGVR).Namespace(veleroNS).Get(ctxT(t), brs[0], metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	mergePatch(t, k, brs[0], `{"spec":{"maintenanceFrequency":"3h"}}`)

	if err := d.patchBackupRepository(ctxT(t), src(brs[0]), br.GetResourceVersion(), "1h0m0s", SuppressedFrequency); !apierrors.IsConflict(err) {
		t.Errorf("patch at a stale resourceVersion = %v, want Conflict", err)
	}

	if _, err := d.Suppress(ctxT(t), src("missing-kopia")); !apierrors.IsNotFound(err) {
		t.Errorf("Suppress of a missing BackupRepository = %v, want NotFound", err)
	}
}

func mergePatch(t *testing.T, k *harness.Kube, name, patch string) {
	t.Helper()

	if _, err := k.Dynamic(t).Resource(backupRepositoriesGVR).Namespace(veleroNS).Patch(ctxT(t), name, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}
