package safety

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clienttesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
)

// passingRepository is a repository checker that found the repository quiet.
var passingRepository = checks(Check{Name: CheckRepositoryActivity, Verdict: Pass, Reason: "quiet for 30m"})

// TestGateWrongNamespaceRefuses: Velero is busy in velero, and the gate is
// configured with openshift-adp (an OADP configuration on a cluster running
// upstream Velero). Every activity check in openshift-adp passes, as the
// namespace is empty; the installation check must refuse.
func TestGateWrongNamespaceRefuses(t *testing.T) {
	f := newFakeCluster(t,
		&appsv1.Deployment{ObjectMeta: meta("velero", testNow), Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](1)}},
		pod("velero-abc", corev1.PodRunning, map[string]string{"component": "velero"}),
		velero(veleroV1, "Backup", "nightly-1", "InProgress", nil),
	)
	f.checks.Namespaces = []string{"openshift-adp"}

	g := &Gate{Allow: true, Kubernetes: f.checks, Repository: passingRepository}

	d := g.Check(context.Background())
	if d.Allowed {
		t.Fatalf("allowed with Velero running a backup in a namespace the config does not name: %s", names(d))
	}

	r := d.Refusals()
	if len(r) != 1 || r[0].Name != CheckVeleroInstallation || r[0].Namespace != "openshift-adp" ||
		r[0].Reason != "no Velero installation found in namespace openshift-adp" {
		t.Errorf("refusals %+v, want only velero-installation in openshift-adp", r)
	}
}

func TestKubernetesChecksInstallation(t *testing.T) {
	tests := []struct {
		name string
		// setup adjusts the cluster (every cluster starts with the
		// BackupStorageLocation velero/default and no Deployment).
		setup   func(f *fakeCluster, t *testing.T)
		objs    []runtime.Object
		ns      string
		verdict Verdict
		reason  string
		// evidence is the installation check's evidence.
		evidence string
	}{
		{name: "backup storage location only", ns: "velero", verdict: Pass,
			reason: "velero BackupStorageLocation found", evidence: "BackupStorageLocation velero/default age 10m0s"},
		{name: "deployment at zero replicas only", setup: (*fakeCluster).noInstallation,
			objs: []runtime.Object{&appsv1.Deployment{ObjectMeta: meta("velero", testNow.Add(-24*time.Hour)), Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](0)}}},
			ns:   "velero", verdict: Pass,
			reason: "velero Deployment found", evidence: "Deployment velero/velero replicas desired 0 available 0 ready 0 age 24h0m0s"},
		{name: "empty namespace", setup: (*fakeCluster).noInstallation, ns: "velero", verdict: Refuse,
			reason: "no Velero installation found in namespace velero"},
		{name: "node-agent alone is no installation", setup: (*fakeCluster).noInstallation,
			objs: []runtime.Object{&appsv1.DaemonSet{ObjectMeta: meta("node-agent", testNow)}},
			ns:   "velero", verdict: Refuse, reason: "no Velero installation found in namespace velero"},
		{name: "namespace does not exist", ns: "velero-missing", verdict: Refuse,
			reason: "no Velero installation found in namespace velero-missing: the namespace does not exist"},
		{name: "backup storage location CRD not installed", setup: func(f *fakeCluster, _ *testing.T) {
			f.uninstall(backupStorageLocationsGVR)
		}, ns: "velero", verdict: Refuse, reason: "no Velero installation found in namespace velero"},
		{name: "namespace get forbidden", setup: func(f *fakeCluster, _ *testing.T) {
			f.kube.PrependReactor("get", "namespaces", func(clienttesting.Action) (bool, runtime.Object, error) {
				return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "namespaces"}, "velero", errors.New("no"))
			})
		}, ns: "velero", verdict: Refuse, reason: `get namespace velero: namespaces "velero" is forbidden: no`},
		{name: "backup storage location list fails", setup: func(f *fakeCluster, _ *testing.T) {
			f.dyn.PrependReactor("list", "backupstoragelocations", func(clienttesting.Action) (bool, runtime.Object, error) {
				return true, nil, apierrors.NewInternalError(errors.New("etcd leader changed"))
			})
		}, ns: "velero", verdict: Refuse, reason: "list backupstoragelocations: Internal error occurred: etcd leader changed"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeCluster(t, tt.objs...)
			if tt.setup != nil {
				tt.setup(f, t)
			}

			f.checks.Namespaces = []string{tt.ns}

			checks := f.run(t)
			if len(checks) != 14 {
				t.Fatalf("%d checks, want 14", len(checks))
			}

			c := checks[0]
			if c.Name != CheckVeleroInstallation || c.Namespace != tt.ns || c.Verdict != tt.verdict || c.Reason != tt.reason {
				t.Errorf("first check %+v, want %s %s %q", c, CheckVeleroInstallation, tt.verdict, tt.reason)
			}

			if got := strings.Join(c.Evidence, "\n"); got != tt.evidence {
				t.Errorf("evidence %q, want %q", got, tt.evidence)
			}
		})
	}
}

// TestGateRecheckWhileWatching: the runner's synchronous re-check before the
// first deleting task runs while the watcher runs (both on one Gate, under
// -race), and it sees what appeared after the watcher's last pass: a Backup
// created after admission refuses at once, without waiting for the
// watcher's next tick.
func TestGateRecheckWhileWatching(t *testing.T) {
	f := newFakeCluster(t)
	clk := clocktesting.NewFakeClock(testNow)
	g := &Gate{RepositoryName: "r", Allow: true, Kubernetes: f.checks, Repository: passingRepository, Clock: clk}

	a, _, err := g.Admit(context.Background())
	if err != nil || !a.Valid() {
		t.Fatalf("Admit: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	refused := make(chan Decision, 1)
	done := make(chan struct{})

	go func() {
		defer close(done)
		g.WatchKubernetes(ctx, 5*time.Second, func(d Decision) { refused <- d })
	}()

	var wg sync.WaitGroup

	for range 4 {
		wg.Go(func() {
			for range 10 {
				if d, err := g.RecheckKubernetes(ctx); err != nil || !d.Allowed {
					t.Errorf("re-check on a quiet cluster: %v", err)
				}
			}
		})
	}

	// Drive watcher passes while the re-checks run.
	for range 10 {
		clk.Step(5 * time.Second)
	}

	wg.Wait()

	_, err = f.dyn.Resource(veleroV1.WithResource("backups")).Namespace("velero").
		Create(ctx, velero(veleroV1, "Backup", "late", "New", nil), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	d, err := g.RecheckKubernetes(ctx)

	var re *RefusedError
	if !errors.As(err, &re) || d.Allowed || len(d.Refusals()) != 1 || d.Refusals()[0].Name != CheckBackups ||
		!strings.Contains(err.Error(), "velero/backups: Backups in flight (1)") {
		t.Errorf("re-check after a Backup appeared: %v %+v", err, d.Refusals())
	}

	cancel()
	<-done
}
