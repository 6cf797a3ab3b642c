package lease

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
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

func testKubernetesBackend(t *testing.T, client coordinationclient.LeasesGetter) {
	const d = time.Minute
	// The holder's clock is a day behind: its renewTime means nothing.
	clkA := testclock.NewFakeClock(t0.Add(-24 * time.Hour))
	clkB := testclock.NewFakeClock(t0)
	a := NewKubernetes(client, kubeNS, kubePrefix, clkA)
	b := NewKubernetes(client, kubeNS, kubePrefix, clkB)

	at, err := a.TryAcquire(kctx(t), "backend", "a", d)
	if err != nil {
		t.Fatalf("TryAcquire of a new lease: %v", err)
	}
	if !at.Equal(clkA.Now()) {
		t.Errorf("TryAcquire = %v, want %v", at, clkA.Now())
	}
	l, err := client.Leases(kubeNS).Get(kctx(t), "kopia-maintd-backend", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if holderOf(l) != "a" || *l.Spec.LeaseDurationSeconds != 60 || l.Spec.AcquireTime == nil || l.Spec.RenewTime == nil || *l.Spec.LeaseTransitions != 0 {
		t.Errorf("lease spec = %+v", l.Spec)
	}

	// b first sees the lease now, and waits duration on its own clock.
	_, err = b.TryAcquire(kctx(t), "backend", "b", d)
	heldBy(t, err, "a")
	clkB.Step(d - time.Nanosecond)
	_, err = b.TryAcquire(kctx(t), "backend", "b", d)
	heldBy(t, err, "a")

	// a renews: a new resourceVersion, and b starts counting again.
	if _, err := a.Renew(kctx(t), "backend", "a", d); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	clkB.Step(time.Nanosecond)
	_, err = b.TryAcquire(kctx(t), "backend", "b", d)
	heldBy(t, err, "a")
	clkB.Step(d - time.Nanosecond)
	_, err = b.TryAcquire(kctx(t), "backend", "b", d)
	heldBy(t, err, "a")

	// a stops renewing: duration after b saw its last write, b takes it.
	clkB.Step(time.Nanosecond)
	if _, err := b.TryAcquire(kctx(t), "backend", "b", d); err != nil {
		t.Fatalf("TryAcquire of a stale lease: %v", err)
	}
	l, err = client.Leases(kubeNS).Get(kctx(t), "kopia-maintd-backend", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if holderOf(l) != "b" || *l.Spec.LeaseTransitions != 1 {
		t.Errorf("after the takeover: holder %q, transitions %d", holderOf(l), *l.Spec.LeaseTransitions)
	}
	// a's next renewal (its cached object is out of date: a conflict, then
	// a read) finds it lost; its release leaves b's lease alone.
	if _, err := a.Renew(kctx(t), "backend", "a", d); !errors.Is(err, ErrLost) {
		t.Fatalf("Renew of a taken lease: %v, want ErrLost", err)
	}
	if err := a.Release(kctx(t), "backend", "a"); err != nil {
		t.Fatalf("Release of a lost lease: %v", err)
	}
	if _, err := b.Renew(kctx(t), "backend", "b", d); err != nil {
		t.Fatalf("Renew by the new holder: %v", err)
	}
	if hs, err := a.(Inspector).Inspect(kctx(t), "backend"); err != nil || len(hs) != 1 || hs[0].Holder != "b" || hs[0].Renewed.IsZero() {
		t.Errorf("Inspect of b's lease: %+v, %v; want b with its renewTime", hs, err)
	}

	// Released: free at once for anyone.
	if err := b.Release(kctx(t), "backend", "b"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if hs, err := a.(Inspector).Inspect(kctx(t), "backend"); err != nil || len(hs) != 0 {
		t.Errorf("Inspect of a released lease: %+v, %v; want no holder", hs, err)
	}
	if hs, err := a.(Inspector).Inspect(kctx(t), "never-created"); err != nil || len(hs) != 0 {
		t.Errorf("Inspect of a lease never created: %+v, %v; want no holder", hs, err)
	}
	if _, err := a.TryAcquire(kctx(t), "backend", "a", d); err != nil {
		t.Fatalf("TryAcquire of a released lease: %v", err)
	}

	// A holder with a longer duration than ours is judged by its own.
	if _, err := b.TryAcquire(kctx(t), "backend-long", "b", 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	_, err = a.TryAcquire(kctx(t), "backend-long", "a", d)
	heldBy(t, err, "b")
	clkA.Step(2 * d)
	_, err = a.TryAcquire(kctx(t), "backend-long", "a", d)
	heldBy(t, err, "b")
	clkA.Step(3 * d)
	if _, err := a.TryAcquire(kctx(t), "backend-long", "a", d); err != nil {
		t.Fatalf("TryAcquire after the holder's duration: %v", err)
	}
}

func testKubernetesRBAC(t *testing.T, client coordinationclient.LeasesGetter) {
	leases := client.Leases(kubeNS)
	if _, err := leases.List(kctx(t), metav1.ListOptions{}); err == nil {
		t.Error("list leases: allowed, want forbidden")
	}
	b := NewKubernetes(client, kubeNS, kubePrefix, nil)
	if _, err := b.TryAcquire(kctx(t), "rbac", "a", time.Minute); err != nil {
		t.Fatalf("TryAcquire as the daemon: %v", err)
	}
	if err := leases.Delete(kctx(t), "kopia-maintd-rbac", metav1.DeleteOptions{}); err == nil {
		t.Error("delete lease: allowed, want forbidden")
	}
	if _, err := client.Leases("velero").Get(kctx(t), "kopia-maintd-rbac", metav1.GetOptions{}); err == nil {
		t.Error("get lease in another namespace: allowed, want forbidden")
	}
}

// TestKubernetes runs the Kubernetes backend's tests against one real API
// server (each takes seconds to start): the tests that share it run in
// parallel on Leases of their own names, and the one that stops it runs
// last.
func TestKubernetes(t *testing.T) {
	t.Parallel()
	k, client := startKube(t)
	t.Run("shared", func(t *testing.T) {
		t.Run("Backend", func(t *testing.T) { t.Parallel(); testKubernetesBackend(t, client) })
		t.Run("RBAC", func(t *testing.T) { t.Parallel(); testKubernetesRBAC(t, client) })
		t.Run("Handover", func(t *testing.T) { t.Parallel(); testKubernetesHandover(t, client) })
	})
	t.Run("APIServerStopped", func(t *testing.T) { testKubernetesAPIServerStopped(t, k, client) })
}

// Lease timings of the Manager tests. The clock is fake, so only their
// ratios matter, except that RenewInterval also bounds each renewal request
// in real time: it is long enough for a loaded machine.
const (
	kubeDuration = time.Minute
	kubeRenew    = 10 * time.Second
	// kubeMargin is the Manager's default margin, Duration/5.
	kubeMargin = kubeDuration / 5
)

// kubeManager returns a Manager for holder on clk, with its backend on the
// same clock, and a channel that receives the result of each renewal.
func kubeManager(t *testing.T, client coordinationclient.LeasesGetter, holder string, clk *testclock.FakeClock) (*Manager, chan error) {
	t.Helper()
	m, err := New(Options{
		Backend:       NewKubernetes(client, kubeNS, kubePrefix, clk),
		Holder:        holder,
		Duration:      kubeDuration,
		RenewInterval: kubeRenew,
		Clock:         clk,
		Logger:        zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	renewals := make(chan error, 100)
	m.testHookRenewed = func(_ string, err error) { renewals <- err }
	return m, renewals
}

// renewed waits for the next renewal's result.
func renewed(t *testing.T, what string, renewals chan error) error {
	t.Helper()
	select {
	case err := <-renewals:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no renewal attempt", what)
		return nil
	}
}

// heldFor checks err is a *HeldError of holder with exactly age and retry.
func heldFor(t *testing.T, what string, err error, holder string, age, retry time.Duration) {
	t.Helper()
	he, ok := errors.AsType[*HeldError](err)
	if !ok {
		t.Fatalf("%s: Acquire = %v, want held by %s", what, err, holder)
	}
	if he.Holder != holder || he.Age != age || he.Retry != retry {
		t.Errorf("%s: held by %q, age %v, retry %v; want %q, %v, %v", what, he.Holder, he.Age, he.Retry, holder, age, retry)
	}
}

// onlyOne fails unless exactly the named holder's lease is valid.
func onlyOne(t *testing.T, what string, held map[string]*Held, valid string) {
	t.Helper()
	for name, h := range held {
		if err := h.Check(); (err == nil) != (name == valid) {
			t.Errorf("%s: %s's Check = %v, want only %s's lease valid", what, name, err, valid)
		}
	}
}

// testKubernetesHandover: two Managers (two processes on one machine, one
// fake clock) on one Lease of the real API server. The other takes the
// lease exactly duration after it last saw the holder's write, which is
// margin after the holder's own deadline, so they never both hold it; and
// at once after a release.
func testKubernetesHandover(t *testing.T, client coordinationclient.LeasesGetter) {
	const name = "handover"
	clk := testclock.NewFakeClock(t0)
	ma, renewalsA := kubeManager(t, client, "a", clk)
	mb, renewalsB := kubeManager(t, client, "b", clk)

	ctxA, crashA := context.WithCancel(context.Background())
	defer crashA()
	a, err := ma.Acquire(ctxA, name)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := a.Deadline(), t0.Add(kubeDuration-kubeMargin); !got.Equal(want) {
		t.Errorf("deadline after Acquire: t0+%v, want t0+%v", got.Sub(t0), want.Sub(t0))
	}
	// b first sees a's lease: it is worth trying again one renewal after
	// it would go stale.
	_, err = mb.Acquire(context.Background(), name)
	heldFor(t, "b before a renews", err, "a", 0, kubeDuration+kubeRenew)

	// a renews; every renewal is a new write, so b counts from zero again.
	for i := range 3 {
		clk.Step(kubeRenew)
		if err := renewed(t, "a's renewal", renewalsA); err != nil {
			t.Fatalf("renewal %d: %v", i+1, err)
		}
		if got, want := a.Deadline(), clk.Now().Add(kubeDuration-kubeMargin); !got.Equal(want) {
			t.Errorf("deadline after renewal %d: t0+%v, want t0+%v", i+1, got.Sub(t0), want.Sub(t0))
		}
		_, err = mb.Acquire(context.Background(), name)
		heldFor(t, fmt.Sprintf("b after renewal %d", i+1), err, "a", 0, kubeDuration+kubeRenew)
	}

	// a crashes: its renewals stop, nothing is released.
	crashA()
	a.wg.Wait()
	lastWrite := clk.Now()

	// Until duration after b saw the last write the lease is a's; a's own
	// deadline passed margin before.
	clk.SetTime(lastWrite.Add(kubeDuration - kubeMargin - time.Nanosecond))
	if err := a.Check(); err != nil {
		t.Errorf("crashed holder's Check 1ns before its deadline: %v", err)
	}
	clk.SetTime(lastWrite.Add(kubeDuration - time.Nanosecond))
	_, err = mb.Acquire(context.Background(), name)
	heldFor(t, "b 1ns before the lease is stale", err, "a", kubeDuration-time.Nanosecond, time.Nanosecond+kubeRenew)
	if err := a.Check(); !errors.Is(err, ErrExpired) {
		t.Errorf("crashed holder's Check after its deadline: %v, want ErrExpired", err)
	}

	clk.SetTime(lastWrite.Add(kubeDuration))
	b, err := mb.Acquire(context.Background(), name)
	if err != nil {
		t.Fatalf("b's Acquire duration after a's last write: %v", err)
	}
	held := map[string]*Held{"a": a, "b": b}
	onlyOne(t, "after the takeover", held, "b")

	// The crashed holder's release leaves b's lease alone, and b renews.
	if err := a.Release(kctx(t)); err != nil {
		t.Fatalf("release of the crashed holder's lease: %v", err)
	}
	clk.Step(kubeRenew)
	if err := renewed(t, "b's renewal", renewalsB); err != nil {
		t.Fatalf("b's renewal after a's release: %v", err)
	}
	onlyOne(t, "after a's release", held, "b")
	if hs, err := mb.Inspect(kctx(t), name); err != nil || len(hs) != 1 || hs[0].Holder != "b" {
		t.Errorf("Inspect after the takeover: %+v, %v; want b", hs, err)
	}

	// b releases: a takes it at once, on the same clock reading.
	if err := b.Release(kctx(t)); err != nil {
		t.Fatal(err)
	}
	a2, err := ma.Acquire(context.Background(), name)
	if err != nil {
		t.Fatalf("Acquire right after the release: %v", err)
	}
	held["a"] = a2
	onlyOne(t, "after b's release", held, "a")
	if err := a2.Release(kctx(t)); err != nil {
		t.Fatal(err)
	}
}

// testKubernetesAPIServerStopped: with the API server gone the holder's
// renewals fail (not as a lost lease: nobody took it), and its context is
// cancelled exactly at its deadline, duration minus margin after its last
// successful write.
func testKubernetesAPIServerStopped(t *testing.T, k *harness.Kube, client coordinationclient.LeasesGetter) {
	clk := testclock.NewFakeClock(t0)
	m, renewals := kubeManager(t, client, "a", clk)
	h, err := m.Acquire(context.Background(), "stopped")
	if err != nil {
		t.Fatal(err)
	}
	deadline := t0.Add(kubeDuration - kubeMargin)
	k.Stop(t)

	// Renewals fail from the first one on, and are retried sooner.
	clk.Step(kubeRenew)
	for attempt := 1; clk.Now().Before(deadline); attempt++ {
		err := renewed(t, "renewal without the API server", renewals)
		if err == nil || errors.Is(err, ErrLost) {
			t.Fatalf("renewal %d without the API server: %v, want a failure that is not ErrLost", attempt, err)
		}
		if err := h.Check(); err != nil {
			t.Fatalf("Check at t0+%v, before the deadline t0+%v: %v", clk.Now().Sub(t0), deadline.Sub(t0), err)
		}
		// The next retry, but no further than 1ns before the deadline.
		next := clk.Now().Add(kubeRenew)
		if last := deadline.Add(-time.Nanosecond); next.After(last) {
			next = last
		}
		if !clk.Now().Before(next) {
			break
		}
		clk.SetTime(next)
	}
	if err := h.Context().Err(); err != nil {
		t.Fatalf("lease context ended 1ns before the deadline: %v", context.Cause(h.Context()))
	}

	// At the deadline the watchdog cancels the context.
	clk.SetTime(deadline)
	select {
	case <-h.Context().Done():
	case <-time.After(30 * time.Second):
		t.Fatal("lease context not cancelled at the deadline")
	}
	cause := context.Cause(h.Context())
	if !errors.Is(cause, ErrExpired) || !strings.Contains(cause.Error(), "last renewal failed") {
		t.Errorf("cause = %v, want ErrExpired after failed renewals", cause)
	}
	if err := h.Check(); !errors.Is(err, ErrExpired) {
		t.Errorf("Check after the deadline: %v, want ErrExpired", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Release(ctx); err == nil {
		t.Error("Release without the API server succeeded")
	}
}
