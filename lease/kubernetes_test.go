package lease

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationclient "k8s.io/client-go/kubernetes/typed/coordination/v1"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// The daemon's ServiceAccount and namespace when deploy/base is applied as
// it is (namespace-less objects go to default).
const (
	kubeNS       = "default"
	kubeSA       = "kopia-maintd"
	kubePrefix   = "kopia-maintd-"
	leaseRole    = "deploy/base/lease-role.yaml"
	leaseBinding = "deploy/base/lease-rolebinding.yaml"
)

// startKube starts an API server with deploy/base's Lease RBAC and returns
// it and a Lease client acting as the daemon's ServiceAccount.
func startKube(t *testing.T) (*harness.Kube, coordinationclient.LeasesGetter) {
	t.Helper()
	k := harness.StartKube(t)
	k.ApplyFile(t, leaseRole)
	k.ApplyFile(t, leaseBinding)
	client, err := coordinationclient.NewForConfig(k.ServiceAccountConfig(t, kubeNS, kubeSA))
	if err != nil {
		t.Fatal(err)
	}
	return k, client
}

func kctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestKubernetesBackend drives two backends (two processes) on fake clocks
// against the real API server: staleness is measured on the taker's clock
// from when it first saw the lease's resourceVersion, whatever the lease's
// renewTime says.
func TestKubernetesBackend(t *testing.T) {
	t.Parallel()
	_, client := startKube(t)
	const d = time.Minute
	// The holder's clock is a day behind: its renewTime means nothing.
	clkA := testclock.NewFakeClock(t0.Add(-24 * time.Hour))
	clkB := testclock.NewFakeClock(t0)
	a := NewKubernetes(client, kubeNS, kubePrefix, clkA)
	b := NewKubernetes(client, kubeNS, kubePrefix, clkB)

	at, err := a.TryAcquire(kctx(t), "repo", "a", d)
	if err != nil {
		t.Fatalf("TryAcquire of a new lease: %v", err)
	}
	if !at.Equal(clkA.Now()) {
		t.Errorf("TryAcquire = %v, want %v", at, clkA.Now())
	}
	l, err := client.Leases(kubeNS).Get(kctx(t), "kopia-maintd-repo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if holderOf(l) != "a" || *l.Spec.LeaseDurationSeconds != 60 || l.Spec.AcquireTime == nil || l.Spec.RenewTime == nil || *l.Spec.LeaseTransitions != 0 {
		t.Errorf("lease spec = %+v", l.Spec)
	}

	// b first sees the lease now, and waits duration on its own clock.
	_, err = b.TryAcquire(kctx(t), "repo", "b", d)
	heldBy(t, err, "a")
	clkB.Step(d - time.Nanosecond)
	_, err = b.TryAcquire(kctx(t), "repo", "b", d)
	heldBy(t, err, "a")

	// a renews: a new resourceVersion, and b starts counting again.
	if _, err := a.Renew(kctx(t), "repo", "a", d); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	clkB.Step(time.Nanosecond)
	_, err = b.TryAcquire(kctx(t), "repo", "b", d)
	heldBy(t, err, "a")
	clkB.Step(d - time.Nanosecond)
	_, err = b.TryAcquire(kctx(t), "repo", "b", d)
	heldBy(t, err, "a")

	// a stops renewing: duration after b saw its last write, b takes it.
	clkB.Step(time.Nanosecond)
	if _, err := b.TryAcquire(kctx(t), "repo", "b", d); err != nil {
		t.Fatalf("TryAcquire of a stale lease: %v", err)
	}
	l, err = client.Leases(kubeNS).Get(kctx(t), "kopia-maintd-repo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if holderOf(l) != "b" || *l.Spec.LeaseTransitions != 1 {
		t.Errorf("after the takeover: holder %q, transitions %d", holderOf(l), *l.Spec.LeaseTransitions)
	}
	// a's next renewal (its cached object is out of date: a conflict, then
	// a read) finds it lost; its release leaves b's lease alone.
	if _, err := a.Renew(kctx(t), "repo", "a", d); !errors.Is(err, ErrLost) {
		t.Fatalf("Renew of a taken lease: %v, want ErrLost", err)
	}
	if err := a.Release(kctx(t), "repo", "a"); err != nil {
		t.Fatalf("Release of a lost lease: %v", err)
	}
	if _, err := b.Renew(kctx(t), "repo", "b", d); err != nil {
		t.Fatalf("Renew by the new holder: %v", err)
	}
	if hs, err := a.(Inspector).Inspect(kctx(t), "repo"); err != nil || len(hs) != 1 || hs[0].Holder != "b" || hs[0].Renewed.IsZero() {
		t.Errorf("Inspect of b's lease: %+v, %v; want b with its renewTime", hs, err)
	}

	// Released: free at once for anyone.
	if err := b.Release(kctx(t), "repo", "b"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if hs, err := a.(Inspector).Inspect(kctx(t), "repo"); err != nil || len(hs) != 0 {
		t.Errorf("Inspect of a released lease: %+v, %v; want no holder", hs, err)
	}
	if hs, err := a.(Inspector).Inspect(kctx(t), "never-created"); err != nil || len(hs) != 0 {
		t.Errorf("Inspect of a lease never created: %+v, %v; want no holder", hs, err)
	}
	if _, err := a.TryAcquire(kctx(t), "repo", "a", d); err != nil {
		t.Fatalf("TryAcquire of a released lease: %v", err)
	}

	// A holder with a longer duration than ours is judged by its own.
	if _, err := b.TryAcquire(kctx(t), "long", "b", 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	_, err = a.TryAcquire(kctx(t), "long", "a", d)
	heldBy(t, err, "b")
	clkA.Step(2 * d)
	_, err = a.TryAcquire(kctx(t), "long", "a", d)
	heldBy(t, err, "b")
	clkA.Step(3 * d)
	if _, err := a.TryAcquire(kctx(t), "long", "a", d); err != nil {
		t.Fatalf("TryAcquire after the holder's duration: %v", err)
	}
}

// TestKubernetesRBAC: the daemon's ServiceAccount, with deploy/base's Lease
// RBAC, can do what the backend does and cannot list, delete or patch
// Leases.
func TestKubernetesRBAC(t *testing.T) {
	t.Parallel()
	_, client := startKube(t)
	leases := client.Leases(kubeNS)
	if _, err := leases.List(kctx(t), metav1.ListOptions{}); err == nil {
		t.Error("list leases: allowed, want forbidden")
	}
	b := NewKubernetes(client, kubeNS, kubePrefix, nil)
	if _, err := b.TryAcquire(kctx(t), "repo", "a", time.Minute); err != nil {
		t.Fatalf("TryAcquire as the daemon: %v", err)
	}
	if err := leases.Delete(kctx(t), "kopia-maintd-repo", metav1.DeleteOptions{}); err == nil {
		t.Error("delete lease: allowed, want forbidden")
	}
	if _, err := client.Leases("velero").Get(kctx(t), "kopia-maintd-repo", metav1.GetOptions{}); err == nil {
		t.Error("get lease in another namespace: allowed, want forbidden")
	}
}

// kubeManager returns a Manager for holder on the real clock with a short
// duration.
func kubeManager(t *testing.T, client coordinationclient.LeasesGetter, holder string) *Manager {
	t.Helper()
	m, err := New(Options{
		Backend:       NewKubernetes(client, kubeNS, kubePrefix, nil),
		Holder:        holder,
		Duration:      kubeDuration,
		RenewInterval: kubeRenew,
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

const (
	kubeDuration = 4 * time.Second
	kubeRenew    = 500 * time.Millisecond
	// kubeSlack allows for request latency and scheduling on a loaded
	// machine.
	kubeSlack = time.Second
)

// exclusive samples two holders' leases until stopped and fails the test if
// both are valid at once.
type exclusive struct {
	a, b atomic.Pointer[Held]
	stop chan struct{}
	done sync.WaitGroup
}

func watchExclusive(t *testing.T) *exclusive {
	e := &exclusive{stop: make(chan struct{})}
	e.done.Add(1)
	go func() {
		defer e.done.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-e.stop:
				return
			case <-tick.C:
			}
			a, b := e.a.Load(), e.b.Load()
			if a != nil && b != nil && a.Check() == nil && b.Check() == nil {
				t.Errorf("both holders hold the lease at %v", time.Now())
				return
			}
		}
	}()
	t.Cleanup(func() { close(e.stop); e.done.Wait() })
	return e
}

// acquireWithin polls Acquire every renew interval until it succeeds and
// returns the Held and when it succeeded.
func acquireWithin(t *testing.T, m *Manager, limit time.Duration) (*Held, time.Time) {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(kubeRenew)
	defer tick.Stop()
	for {
		h, err := m.Acquire(context.Background(), "repo")
		if err == nil {
			return h, time.Now()
		}
		if _, ok := errors.AsType[*HeldError](err); !ok {
			t.Fatalf("Acquire: %v", err)
		}
		if time.Since(start) > limit {
			t.Fatalf("not acquired within %v: %v", limit, err)
		}
		<-tick.C
	}
}

// TestKubernetesHandover: two Managers on one Lease against the real API
// server. Never both hold it; the other takes over within duration plus
// renewInterval after the holder crashes, and at once after a release.
func TestKubernetesHandover(t *testing.T) {
	t.Parallel()
	_, client := startKube(t)
	ma, mb := kubeManager(t, client, "a"), kubeManager(t, client, "b")
	ex := watchExclusive(t)

	ctxA, crashA := context.WithCancel(context.Background())
	a, err := ma.Acquire(ctxA, "repo")
	if err != nil {
		t.Fatal(err)
	}
	ex.a.Store(a)
	// b polls (and so watches the lease) while a renews for a while.
	pollStart := time.Now()
	for time.Since(pollStart) < 2*kubeDuration {
		_, err := mb.Acquire(context.Background(), "repo")
		heldBy(t, err, "a")
		time.Sleep(kubeRenew)
	}
	if err := a.Check(); err != nil {
		t.Fatalf("holder's lease after %v of renewals: %v", 2*kubeDuration, err)
	}

	// a crashes: its renewals stop, nothing is released.
	crashA()
	a.wg.Wait()
	crashed := time.Now()
	b, took := acquireWithin(t, mb, kubeDuration+kubeRenew+kubeSlack+5*time.Second)
	ex.b.Store(b)
	if got, limit := took.Sub(crashed), kubeDuration+kubeRenew+kubeSlack; got > limit {
		t.Errorf("taken over %v after the holder stopped renewing, want within %v", got, limit)
	}
	t.Logf("taken over %v after the holder stopped renewing", took.Sub(crashed).Round(time.Millisecond))
	if err := a.Check(); !errors.Is(err, ErrExpired) {
		t.Errorf("crashed holder's Check: %v, want ErrExpired", err)
	}
	if err := a.Release(kctx(t)); err != nil {
		t.Fatalf("release of the crashed holder's lease: %v", err)
	}
	if err := b.Check(); err != nil {
		t.Fatalf("new holder's lease after the old one's release: %v", err)
	}

	// b releases: a takes it at once.
	if err := b.Release(kctx(t)); err != nil {
		t.Fatal(err)
	}
	a2, err := ma.Acquire(context.Background(), "repo")
	if err != nil {
		t.Fatalf("Acquire right after the release: %v", err)
	}
	ex.a.Store(a2)
	if err := a2.Release(kctx(t)); err != nil {
		t.Fatal(err)
	}
}

// TestKubernetesAPIServerStopped: with the API server gone the holder
// cannot renew, and its context is cancelled within duration.
func TestKubernetesAPIServerStopped(t *testing.T) {
	t.Parallel()
	k, client := startKube(t)
	m := kubeManager(t, client, "a")
	h, err := m.Acquire(context.Background(), "repo")
	if err != nil {
		t.Fatal(err)
	}
	k.Stop(t)
	stopped := time.Now()
	select {
	case <-h.Context().Done():
	case <-time.After(kubeDuration + kubeSlack):
		t.Fatalf("lease context not cancelled %v after the API server stopped", kubeDuration+kubeSlack)
	}
	took := time.Since(stopped)
	if took > kubeDuration {
		t.Errorf("cancelled %v after the API server stopped, want within %v", took, kubeDuration)
	}
	t.Logf("cancelled %v after the API server stopped: %v", took.Round(time.Millisecond), context.Cause(h.Context()))
	if cause := context.Cause(h.Context()); !errors.Is(cause, ErrExpired) {
		t.Errorf("cause = %v, want ErrExpired", cause)
	}
	if err := h.Check(); err == nil {
		t.Error("Check succeeds after the deadline")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = h.Release(ctx) // fails: the API server is gone
}
