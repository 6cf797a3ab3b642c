package safety

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// DefaultKubernetesTimeout bounds each Kubernetes API call of the checks
// when KubernetesOptions.Timeout is zero.
const DefaultKubernetesTimeout = 10 * time.Second

// maxEvidence caps the evidence lines of one check, so that a namespace with
// thousands of finished objects cannot bloat a decision or an audit record.
const maxEvidence = 10

// KubernetesOptions configures KubernetesChecks.
type KubernetesOptions struct {
	// Namespaces where Velero runs (velero; OADP: openshift-adp). At least
	// one is required, and each must hold a Velero installation (the
	// velero Deployment or a BackupStorageLocation) or the checks refuse.
	Namespaces []string
	// IgnorePods names pods that never count as Velero activity, e.g. the
	// daemon's own pod when it runs as a sidecar.
	IgnorePods []string
	// ScheduleMargin: a Velero Schedule due within this long of now (or due
	// within this long before now and not run since) refuses.
	ScheduleMargin time.Duration
	// Timeout bounds each API call (discovery, list, get); zero means
	// DefaultKubernetesTimeout. A call that runs out refuses.
	Timeout time.Duration
	// Now is the clock for ages and schedules; nil means time.Now.
	Now func() time.Time
}

// KubernetesChecks is the Checker for Velero activity seen through the
// Kubernetes API: per namespace, one Check per signal (velero-installation,
// velero-server, node-agent, data-path-pods, maintenance-jobs, then one per
// Velero kind and schedules). It fails closed: an API error, a timeout or a
// missing permission refuses that signal; only a Velero kind whose CRD is
// not installed is Absent. A namespace without positive evidence of a
// Velero installation refuses (velero-installation), as every other signal
// passes on an empty or missing namespace.
type KubernetesChecks struct {
	KubernetesOptions

	// Client reads Deployments, DaemonSets, Pods and Jobs.
	Client kubernetes.Interface
	// Dynamic reads Velero's custom resources (the project does not import
	// Velero's module).
	Dynamic dynamic.Interface
	// Discovery tells a CRD that is not installed (Absent) from a kind that
	// cannot be listed (Refuse).
	Discovery discovery.ServerResourcesInterface
}

var _ Checker = (*KubernetesChecks)(nil)

// NewKubernetesChecksFromConfig builds KubernetesChecks from a kubeconfig
// path, or from the in-cluster service account when kubeconfig is empty.
func NewKubernetesChecksFromConfig(kubeconfig string, opts KubernetesOptions) (*KubernetesChecks, error) {
	var (
		cfg *rest.Config
		err error
	)

	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("load in-cluster kubernetes config: %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig %q: %w", kubeconfig, err)
		}
	}

	return NewKubernetesChecksForConfig(cfg, opts)
}

// NewKubernetesChecksForConfig builds KubernetesChecks from a REST config.
// The config is copied; its per-request timeout is set to the checks'
// timeout and its rate limits raised so that a watcher re-checking every few
// seconds is not throttled on the client side.
func NewKubernetesChecksForConfig(cfg *rest.Config, opts KubernetesOptions) (*KubernetesChecks, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.Timeout = opts.timeout()
	cfg.QPS = 50
	cfg.Burst = 100

	if cfg.UserAgent == "" {
		cfg.UserAgent = "kopia-maintd-safety"
	}

	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create kubernetes client: %w", err)
	}

	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create kubernetes dynamic client: %w", err)
	}

	return &KubernetesChecks{
		KubernetesOptions: opts,
		Client:            client,
		Dynamic:           dyn,
		Discovery:         client.Discovery(),
	}, nil
}

func (o KubernetesOptions) timeout() time.Duration {
	if o.Timeout > 0 {
		return o.Timeout
	}

	return DefaultKubernetesTimeout
}

func (o KubernetesOptions) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}

	return time.Now()
}

// Check runs every signal in every namespace. It is safe for concurrent
// use: it keeps no state between calls. It returns an error only when
// the checks are not set up (no namespace, a nil client); the gate turns
// that into a refusal.
func (k *KubernetesChecks) Check(ctx context.Context) ([]Check, error) {
	if len(k.Namespaces) == 0 {
		return nil, errors.New("no velero namespaces configured")
	}

	if k.Client == nil || k.Dynamic == nil || k.Discovery == nil {
		return nil, errors.New("kubernetes clients not configured")
	}

	// Discovery is cluster-wide: ask once per Check, never cache, so a CRD
	// installed since the last check is seen.
	avail := k.discover(ctx)

	var out []Check

	for _, ns := range k.Namespaces {
		out = append(out, k.checkNamespace(ctx, ns, avail)...)
	}

	return out, nil
}

func (k *KubernetesChecks) checkNamespace(ctx context.Context, ns string, avail availability) []Check {
	now := k.now()

	// One get of the velero Deployment serves both the installation and
	// the velero-server checks, so that they cannot disagree.
	deploy, depErr := k.getVeleroDeployment(ctx, ns)

	out := []Check{k.checkInstallation(ctx, ns, deploy, depErr, avail, now)}

	out = append(out, k.checkPods(ctx, ns, deploy, depErr, now)...)
	out = append(out, k.checkMaintenanceJobs(ctx, ns, now))

	for _, s := range phaseSignals {
		out = append(out, k.checkPhases(ctx, ns, s, avail, now))
	}

	out = append(out, k.checkSchedules(ctx, ns, avail, now))

	return out
}

// callCtx bounds one API call.
func (k *KubernetesChecks) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, k.timeout())
}

// refuseErr builds a refusing check for a failed API call.
func refuseErr(name, ns, op string, err error) Check {
	return Check{Name: name, Namespace: ns, Verdict: Refuse, Reason: fmt.Sprintf("%s: %v", op, err)}
}

// verdictFrom builds a check from the evidence of activity found: Pass when
// none, Refuse otherwise.
func verdictFrom(name, ns string, found []string, refuseReason, passReason string) Check {
	if len(found) == 0 {
		return Check{Name: name, Namespace: ns, Verdict: Pass, Reason: passReason}
	}

	return Check{
		Name:      name,
		Namespace: ns,
		Verdict:   Refuse,
		Reason:    fmt.Sprintf("%s (%d)", refuseReason, len(found)),
		Evidence:  capEvidence(found),
	}
}

func capEvidence(found []string) []string {
	if len(found) <= maxEvidence {
		return found
	}

	out := append([]string(nil), found[:maxEvidence]...)

	return append(out, fmt.Sprintf("and %d more", len(found)-maxEvidence))
}

// age formats how long ago t was, to the second; "age unknown" for a zero t.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "age unknown"
	}

	return "age " + now.Sub(t).Truncate(time.Second).String()
}

// isNotFound reports an API NotFound, the answer for a resource the server
// does not serve (a CRD that is not installed, or was just removed).
func isNotFound(err error) bool {
	return apierrors.IsNotFound(err)
}
