package lease

// Why this backend and not client-go's leader election
// (k8s.io/client-go/tools/leaderelection and its resourcelock.LeaseLock):
//
//   - leaderelection.LeaderElector runs one long-lived election per
//     process, with its own acquire/renew loop, retry period and renew
//     deadline, and reports through OnStartedLeading/OnStoppedLeading
//     callbacks. Here there is one Lease per repository, taken for one run
//     and released at its end, with the caller's context and deadline on
//     every request (the Backend interface's TryAcquire, Renew and Release),
//     while Held does the renewing, the wall-clock watchdog and the
//     storage fencing for both backends alike. An elector per run would
//     duplicate that loop and hide its deadline from the fence.
//   - resourcelock.LeaseLock alone (its Get/Create/Update, without the
//     elector) keeps the Lease last read in an unexported field, one lock
//     value per Lease and not safe for concurrent use, and its Get returns
//     a LeaderElectionRecord without the resourceVersion. This backend
//     judges staleness by the resourceVersion it observed, unchanged, for
//     the lease's duration on its own clock. leaderelection itself compares
//     the record's JSON, whose times have whole seconds only, so two
//     renewals within one second look like none to an observer using it.
//   - What is left to share is three API calls and the conversion of a
//     record to a LeaseSpec; this file does them in a few lines, with the
//     renewTime forced forward on every write (see setHolder) so that each
//     write changes the resourceVersion.
//
// The Lease objects are ordinary coordination.k8s.io/v1 Leases with
// holderIdentity, leaseDurationSeconds, acquireTime, renewTime and
// leaseTransitions set as leaderelection sets them, so kubectl and other
// tools read them as usual.

import (
	"context"
	"fmt"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationclient "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/utils/clock"
)

// kubeAttempts bounds the re-reads after write conflicts in one call.
const kubeAttempts = 5

// kubernetesBackend keeps each lease as a coordination.k8s.io/v1 Lease.
// Every write is a Create or an Update checked against the resourceVersion
// last read, so a conflict means someone else wrote: the object is read
// again, never overwritten.
//
// Like client-go's leaderelection, it does not trust the holder's clock
// (spec.renewTime): a lease of another holder is stale only once this
// backend has seen the same resourceVersion, unchanged, for at least the
// lease's duration on its own clock. A holder that renews changes the
// resourceVersion, so a live lease is never taken.
type kubernetesBackend struct {
	leases    coordinationclient.LeasesGetter
	namespace string
	prefix    string
	clock     clock.PassiveClock

	mu sync.Mutex
	// seen is, per Lease object, the resourceVersion last read and when
	// this backend first saw it.
	seen map[string]observation
	// mine is, per Lease object, the object as our last write left it, so
	// that a renewal needs one request, not two.
	mine map[string]*coordinationv1.Lease
}

type observation struct {
	resourceVersion string
	since           time.Time
}

// NewKubernetes returns a Backend keeping the lease of each name as the
// Lease <namePrefix><name> in namespace. leases is typically
// clientset.CoordinationV1(). clk measures how long a resourceVersion stays
// unchanged and gives the time TryAcquire and Renew return.
func NewKubernetes(leases coordinationclient.LeasesGetter, namespace, namePrefix string, clk clock.PassiveClock) Backend {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &kubernetesBackend{
		leases:    leases,
		namespace: namespace,
		prefix:    namePrefix,
		clock:     clk,
		seen:      map[string]observation{},
		mine:      map[string]*coordinationv1.Lease{},
	}
}

// TryAcquire implements Backend.
func (k *kubernetesBackend) TryAcquire(ctx context.Context, name, holder string, duration time.Duration) (time.Time, error) {
	obj := k.prefix + name
	client := k.leases.Leases(k.namespace)
	for range kubeAttempts {
		cur, err := client.Get(ctx, obj, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			now := k.clock.Now()
			l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: obj, Namespace: k.namespace}}
			setHolder(l, holder, duration, now, true)
			created, err := client.Create(ctx, l, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				continue // created in between: read it
			}
			if err != nil {
				return time.Time{}, fmt.Errorf("create lease %s/%s: %w", k.namespace, obj, err)
			}
			k.wrote(obj, created, now)
			return now, nil
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("get lease %s/%s: %w", k.namespace, obj, err)
		}
		now := k.clock.Now()
		since := k.observe(obj, cur.ResourceVersion, now)
		other := holderOf(cur)
		if other != "" && other != holder {
			// The longer of ours and the holder's duration: a holder
			// configured with a longer one renews less often.
			d := duration
			if s := cur.Spec.LeaseDurationSeconds; s != nil {
				d = max(d, time.Duration(*s)*time.Second)
			}
			if age := now.Sub(since); age < d {
				return time.Time{}, &HeldError{Name: name, Holder: other, Age: age}
			}
		}
		l := cur.DeepCopy()
		start := k.clock.Now()
		setHolder(l, holder, duration, start, other != holder)
		updated, err := client.Update(ctx, l, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			continue // someone else wrote: read again
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("update lease %s/%s: %w", k.namespace, obj, err)
		}
		k.wrote(obj, updated, start)
		return start, nil
	}
	return time.Time{}, fmt.Errorf("acquire lease %s/%s: still changing after %d attempts", k.namespace, obj, kubeAttempts)
}

// Renew implements Backend.
func (k *kubernetesBackend) Renew(ctx context.Context, name, holder string, duration time.Duration) (time.Time, error) {
	obj := k.prefix + name
	client := k.leases.Leases(k.namespace)
	k.mu.Lock()
	cur := k.mine[obj]
	k.mu.Unlock()
	for range kubeAttempts {
		if cur == nil {
			got, err := client.Get(ctx, obj, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return time.Time{}, fmt.Errorf("lease %s/%s deleted: %w", k.namespace, obj, ErrLost)
			}
			if err != nil {
				return time.Time{}, fmt.Errorf("get lease %s/%s: %w", k.namespace, obj, err)
			}
			k.observe(obj, got.ResourceVersion, k.clock.Now())
			cur = got
		}
		if h := holderOf(cur); h != holder {
			k.forget(obj)
			return time.Time{}, fmt.Errorf("lease %s/%s held by %q: %w", k.namespace, obj, h, ErrLost)
		}
		l := cur.DeepCopy()
		start := k.clock.Now()
		setHolder(l, holder, duration, start, false)
		updated, err := client.Update(ctx, l, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			cur = nil // someone else wrote: read again
			continue
		}
		if apierrors.IsNotFound(err) {
			k.forget(obj)
			return time.Time{}, fmt.Errorf("lease %s/%s deleted: %w", k.namespace, obj, ErrLost)
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("update lease %s/%s: %w", k.namespace, obj, err)
		}
		k.wrote(obj, updated, start)
		return start, nil
	}
	return time.Time{}, fmt.Errorf("renew lease %s/%s: still changing after %d attempts", k.namespace, obj, kubeAttempts)
}

// Release implements Backend: it empties holderIdentity if the lease is
// still ours, so the next holder takes it at once.
func (k *kubernetesBackend) Release(ctx context.Context, name, holder string) error {
	obj := k.prefix + name
	client := k.leases.Leases(k.namespace)
	k.mu.Lock()
	cur := k.mine[obj]
	k.mu.Unlock()
	defer k.forget(obj)
	for range kubeAttempts {
		if cur == nil {
			got, err := client.Get(ctx, obj, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("get lease %s/%s: %w", k.namespace, obj, err)
			}
			cur = got
		}
		if holderOf(cur) != holder {
			return nil
		}
		l := cur.DeepCopy()
		empty := ""
		now := metav1.NewMicroTime(k.clock.Now())
		l.Spec.HolderIdentity = &empty
		l.Spec.RenewTime = &now
		_, err := client.Update(ctx, l, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			cur = nil
			continue
		}
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("update lease %s/%s: %w", k.namespace, obj, err)
		}
		return nil
	}
	return fmt.Errorf("release lease %s/%s: still changing after %d attempts", k.namespace, obj, kubeAttempts)
}

// setHolder makes l held by holder, renewed at now; taken marks a change of
// holder.
func setHolder(l *coordinationv1.Lease, holder string, duration time.Duration, now time.Time, taken bool) {
	// renewTime always moves forward, so that every write changes the
	// object: an update that changes nothing keeps its resourceVersion,
	// and observers would go on counting from the previous write. (A
	// holder's clock may stand still or go back; its value means nothing
	// to others anyway.)
	now = now.Truncate(time.Microsecond)
	if r := l.Spec.RenewTime; r != nil && !now.After(r.Time) {
		now = r.Add(time.Microsecond)
	}
	t := metav1.NewMicroTime(now)
	secs := int32(max((duration+time.Second-1)/time.Second, 1))
	l.Spec.HolderIdentity = &holder
	l.Spec.LeaseDurationSeconds = &secs
	l.Spec.RenewTime = &t
	if taken || l.Spec.AcquireTime == nil {
		l.Spec.AcquireTime = &t
	}
	if taken {
		n := int32(0)
		if l.Spec.LeaseTransitions != nil {
			n = *l.Spec.LeaseTransitions + 1
		}
		l.Spec.LeaseTransitions = &n
	}
}

func holderOf(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// observe records resourceVersion as read at now and returns when this
// backend first saw it.
func (k *kubernetesBackend) observe(obj, resourceVersion string, now time.Time) time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	o, ok := k.seen[obj]
	if !ok || o.resourceVersion != resourceVersion {
		o = observation{resourceVersion: resourceVersion, since: now}
		k.seen[obj] = o
	}
	return o.since
}

// wrote records our own write of l, started at start.
func (k *kubernetesBackend) wrote(obj string, l *coordinationv1.Lease, start time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.seen[obj] = observation{resourceVersion: l.ResourceVersion, since: start}
	k.mine[obj] = l
}

func (k *kubernetesBackend) forget(obj string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.mine, obj)
}

// Inspect implements Inspector: the Lease's holder, if any.
func (k *kubernetesBackend) Inspect(ctx context.Context, name string) ([]Holding, error) {
	obj := k.prefix + name
	l, err := k.leases.Leases(k.namespace).Get(ctx, obj, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get lease %s/%s: %w", k.namespace, obj, err)
	}
	h := holderOf(l)
	if h == "" {
		return nil, nil
	}
	var renewed time.Time
	switch {
	case l.Spec.RenewTime != nil:
		renewed = l.Spec.RenewTime.Time
	case l.Spec.AcquireTime != nil:
		renewed = l.Spec.AcquireTime.Time
	}
	return []Holding{{Holder: h, Renewed: renewed}}, nil
}
