package velero

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Defaults of Options.
const (
	DefaultNamespace              = "velero"
	DefaultCredentialsSecret      = "velero-repo-credentials"
	DefaultCloudCredentialsSecret = "cloud-credentials"
	DefaultTimeout                = 10 * time.Second
	DefaultSyncTimeout            = time.Minute
	// DefaultMaintenanceFrequency is Velero's own default for kopia
	// repositories when its server flag --default-repo-maintain-frequency is
	// not set (pkg/repository/udmrepo/kopialib/lib_repo.go,
	// defaultMaintainCheckPeriod).
	DefaultMaintenanceFrequency = time.Hour
)

// passwordKey is the key of the repository password in CredentialsSecret
// (pkg/repository/keys/keys.go).
const passwordKey = "repository-password"

// coalesceInterval is the least time between two OnChange calls: a burst of
// events (Velero creating BackupRepositories for many namespaces at once,
// or the initial list) is delivered as one set.
const coalesceInterval = 200 * time.Millisecond

// Velero's resources (velero.io/v1).
var (
	backupRepositoriesGVR     = schema.GroupVersionResource{Group: "velero.io", Version: "v1", Resource: "backuprepositories"}
	backupStorageLocationsGVR = schema.GroupVersionResource{Group: "velero.io", Version: "v1", Resource: "backupstoragelocations"}
)

// Options configures Discovery (and Translate, which reads only the
// credential defaults).
type Options struct {
	// Dynamic reads (and, for Suppress and Restore, patches) Velero's
	// objects.
	Dynamic dynamic.Interface
	// Client gets Secrets and lists Jobs.
	Client kubernetes.Interface
	// Namespace is Velero's namespace; default "velero" (OADP:
	// openshift-adp).
	Namespace string
	// CredentialsSecret holds the repository password under key
	// repository-password; default "velero-repo-credentials".
	CredentialsSecret string
	// CloudCredentialsSecret is the Secret (key "cloud") of locations
	// without spec.credential; default "cloud-credentials", Velero's.
	CloudCredentialsSecret string
	// CloudCredentialsFile, when set, is read instead of
	// CloudCredentialsSecret for locations without spec.credential: a
	// sidecar shares Velero's volume /credentials/cloud.
	CloudCredentialsFile string
	// DefaultMaintenanceFrequency is what Restore writes for a repository
	// whose frequency was unset or zero when it was suppressed and that
	// Velero has initialised since (see Restore); set it to Velero's
	// --default-repo-maintain-frequency when that is set. Default 1h,
	// Velero's own default for kopia.
	DefaultMaintenanceFrequency time.Duration
	// Logger; nil means no logs.
	Logger *zap.Logger
	// OnChange is called with the full sorted set after the initial sync
	// and then whenever the set changes, at most once per 200ms (bursts of
	// events are merged), never concurrently. It runs on Run's goroutine:
	// while it runs, changes are merged into the next call.
	OnChange func([]Repository)
	// Timeout bounds each API call (get, list, patch); default 10s. The
	// informers' own list and watch requests are bounded by the clients'
	// configuration.
	Timeout time.Duration
	// SyncTimeout bounds the informers' initial sync in Run; default 1m.
	SyncTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}

	if o.CredentialsSecret == "" {
		o.CredentialsSecret = DefaultCredentialsSecret
	}

	if o.CloudCredentialsSecret == "" {
		o.CloudCredentialsSecret = DefaultCloudCredentialsSecret
	}

	if o.DefaultMaintenanceFrequency <= 0 {
		o.DefaultMaintenanceFrequency = DefaultMaintenanceFrequency
	}

	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}

	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}

	if o.SyncTimeout <= 0 {
		o.SyncTimeout = DefaultSyncTimeout
	}

	return o
}

func (o Options) validate() error {
	var errs []error

	if o.Dynamic == nil {
		errs = append(errs, errors.New("no dynamic client"))
	}

	if o.Client == nil {
		errs = append(errs, errors.New("no kubernetes client"))
	}

	return errors.Join(errs...)
}

// Discovery keeps the set of Velero's kopia repositories in one namespace
// current (Run), and reads and writes what the daemon needs of Velero's
// objects for them: the password and cloud credentials, Velero's running
// maintenance Jobs, and its maintenance schedule (Suppress, Restore).
type Discovery struct {
	opts Options
	log  *zap.Logger

	trigger chan struct{} // buffer of one: repeated triggers merge

	runOnce sync.Once

	mu        sync.Mutex
	current   []Repository // nil until the first sync
	lastWarns map[string]string
}

// NewDiscovery checks opts and sets its defaults.
func NewDiscovery(opts Options) (*Discovery, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("velero discovery: %w", err)
	}

	opts = opts.withDefaults()

	return &Discovery{
		opts:    opts,
		log:     opts.Logger.Named("velero").With(zap.String("namespace", opts.Namespace)),
		trigger: make(chan struct{}, 1),
	}, nil
}

// Run watches Velero's BackupRepositories and BackupStorageLocations in the
// namespace with informers and keeps the repository set current, calling
// OnChange (see Options). It returns nil when ctx ends, and an error when
// the informers have not synced within SyncTimeout (the CRDs are missing or
// RBAC does not allow list and watch), or when Run was called before.
func (d *Discovery) Run(ctx context.Context) error {
	first := false

	d.runOnce.Do(func() { first = true })

	if !first {
		return errors.New("velero discovery: Run called twice")
	}

	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(d.opts.Dynamic, 0, d.opts.Namespace, nil)
	watchErrs := &lastErrors{}

	var informers []cache.SharedIndexInformer

	for _, gvr := range []schema.GroupVersionResource{backupRepositoriesGVR, backupStorageLocationsGVR} {
		inf := factory.ForResource(gvr).Informer()

		// Only the fields Translate reads matter; managed fields and
		// kubectl's last-applied copy would double the cache's size.
		if err := inf.SetTransform(stripObject); err != nil {
			return fmt.Errorf("velero discovery: set transform of %s informer: %w", gvr.Resource, err)
		}

		resource := gvr.Resource
		if err := inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
			// The reflector retries with backoff: log each new error once.
			if watchErrs.set(resource, err) {
				d.log.Warn("velero list or watch failed", zap.String("resource", resource), zap.Error(err))
			}
		}); err != nil {
			return fmt.Errorf("velero discovery: set watch error handler of %s informer: %w", gvr.Resource, err)
		}

		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { d.kick() },
			UpdateFunc: func(any, any) { d.kick() },
			DeleteFunc: func(any) { d.kick() },
		}); err != nil {
			return fmt.Errorf("velero discovery: add event handler to %s informer: %w", gvr.Resource, err)
		}

		informers = append(informers, inf)
	}

	// The informers stop when Run returns, whatever the reason: Shutdown
	// waits for their goroutines, which end only once runCtx does.
	runCtx, stop := context.WithCancel(ctx)
	factory.Start(runCtx.Done())

	defer func() {
		stop()
		factory.Shutdown()
	}()

	syncCtx, cancel := context.WithTimeout(ctx, d.opts.SyncTimeout)
	synced := cache.WaitForCacheSync(syncCtx.Done(), informers[0].HasSynced, informers[1].HasSynced)

	cancel()

	if !synced {
		if ctx.Err() != nil {
			return nil
		}

		return fmt.Errorf("velero discovery: backuprepositories and backupstoragelocations in namespace %s not synced within %v: "+
			"are Velero's CRDs installed, and may the daemon list and watch them? (%s)",
			d.opts.Namespace, d.opts.SyncTimeout, watchErrs.String())
	}

	d.log.Info("velero discovery synced")

	brs, bsls := informers[0].GetStore(), informers[1].GetStore()

	d.update(brs, bsls, true)

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.trigger:
		}

		// Let the rest of a burst arrive, then compute the set once.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(coalesceInterval):
		}

		// Drop a trigger that arrived while waiting: this update sees it.
		select {
		case <-d.trigger:
		default:
		}

		d.update(brs, bsls, false)
	}
}

// kick asks Run to recompute the set; it never blocks.
func (d *Discovery) kick() {
	select {
	case d.trigger <- struct{}{}:
	default:
	}
}

// update recomputes the set from the informers' stores and calls OnChange
// when it changed (or always, on the first call).
func (d *Discovery) update(brs, bsls cache.Store, first bool) {
	repos := Translate(unstructuredList(brs.List()), unstructuredList(bsls.List()), d.opts)

	d.mu.Lock()
	changed := first || !reflect.DeepEqual(repos, d.current)
	if changed {
		d.current = repos
	}
	d.mu.Unlock()

	if !changed {
		return
	}

	d.logChanges(repos)

	if d.opts.OnChange != nil {
		d.opts.OnChange(cloneRepositories(repos))
	}
}

// logChanges logs, once per change, each repository that is not maintained
// and each duplicate BackupRepository.
func (d *Discovery) logChanges(repos []Repository) {
	warns := map[string]string{}

	for _, r := range repos {
		if len(r.Source.Duplicates) > 0 {
			warns[r.Name+"/duplicates"] = fmt.Sprint(r.Source.Duplicates)
		}

		if r.NotMaintained != "" {
			warns[r.Name+"/not-maintained"] = r.NotMaintained
		}
	}

	d.mu.Lock()
	last := d.lastWarns
	d.lastWarns = warns
	d.mu.Unlock()

	for _, r := range repos {
		log := d.log.With(zap.String("repository", r.Name), zap.String("backup_repository", r.Source.BackupRepository))

		if k := r.Name + "/duplicates"; warns[k] != "" && warns[k] != last[k] {
			log.Warn("several kopia BackupRepositories for one volume namespace and location: the oldest is used",
				zap.Strings("duplicates", r.Source.Duplicates))
		}

		if k := r.Name + "/not-maintained"; warns[k] != "" && warns[k] != last[k] {
			log.Warn("velero repository not maintained", zap.String("reason", r.NotMaintained))
		}
	}

	d.log.Info("velero repositories discovered", zap.Int("repositories", len(repos)))
}

// Repositories returns the current set, sorted by name; nil until Run has
// synced.
func (d *Discovery) Repositories() []Repository {
	d.mu.Lock()
	defer d.mu.Unlock()

	return cloneRepositories(d.current)
}

// Discover lists Velero's BackupRepositories and BackupStorageLocations in
// opts.Namespace once and translates them; it only reads (for
// check-config). Each list call is bounded by opts.Timeout. Duplicate
// BackupRepositories are logged at Warn; repositories not maintained are
// left to the caller to report.
func Discover(ctx context.Context, opts Options) ([]Repository, error) {
	if opts.Dynamic == nil {
		return nil, errors.New("velero discover: no dynamic client")
	}

	opts = opts.withDefaults()

	brs, err := listAll(ctx, opts, backupRepositoriesGVR)
	if err != nil {
		return nil, err
	}

	bsls, err := listAll(ctx, opts, backupStorageLocationsGVR)
	if err != nil {
		return nil, err
	}

	repos := Translate(brs, bsls, opts)

	for _, r := range repos {
		if len(r.Source.Duplicates) > 0 {
			opts.Logger.Warn("several kopia BackupRepositories for one volume namespace and location: the oldest is used",
				zap.String("namespace", opts.Namespace), zap.String("repository", r.Name),
				zap.String("backup_repository", r.Source.BackupRepository), zap.Strings("duplicates", r.Source.Duplicates))
		}
	}

	return repos, nil
}

// listPageSize is the page size of Discover's lists.
const listPageSize = 500

func listAll(ctx context.Context, opts Options, gvr schema.GroupVersionResource) ([]*unstructured.Unstructured, error) {
	var (
		out  []*unstructured.Unstructured
		cont string
	)

	for {
		cctx, cancel := context.WithTimeout(ctx, opts.Timeout)
		list, err := opts.Dynamic.Resource(gvr).Namespace(opts.Namespace).List(cctx, metav1.ListOptions{Limit: listPageSize, Continue: cont})

		cancel()

		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("list %s in namespace %s: %w (is Velero's CRD installed?)", gvr.Resource, opts.Namespace, err)
		}

		if err != nil {
			return nil, fmt.Errorf("list %s in namespace %s: %w", gvr.Resource, opts.Namespace, err)
		}

		for i := range list.Items {
			out = append(out, &list.Items[i])
		}

		if cont = list.GetContinue(); cont == "" {
			return out, nil
		}
	}
}

func unstructuredList(objs []any) []*unstructured.Unstructured {
	out := make([]*unstructured.Unstructured, 0, len(objs))

	for _, o := range objs {
		if u, ok := o.(*unstructured.Unstructured); ok {
			out = append(out, u)
		}
	}

	return out
}

// stripObject is the informers' transform: it drops what no reader of the
// cache needs.
func stripObject(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}

	u.SetManagedFields(nil)

	if ann := u.GetAnnotations(); ann != nil {
		if _, ok := ann[lastAppliedAnnotation]; ok {
			delete(ann, lastAppliedAnnotation)
			u.SetAnnotations(ann)
		}
	}

	return u, nil
}

const lastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"

// lastErrors keeps the last list/watch error per resource, for the sync
// error.
type lastErrors struct {
	mu   sync.Mutex
	errs map[string]error
}

// set records err and reports whether its message differs from the last.
func (l *lastErrors) set(resource string, err error) bool {
	l.mu.Lock()
	defer l.mu.Unlock()

	if l.errs == nil {
		l.errs = map[string]error{}
	}

	last := l.errs[resource]
	l.errs[resource] = err

	return last == nil || last.Error() != err.Error()
}

func (l *lastErrors) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()

	if len(l.errs) == 0 {
		return "no list or watch error seen"
	}

	resources := make([]string, 0, len(l.errs))
	for r := range l.errs {
		resources = append(resources, r)
	}

	slices.Sort(resources)

	s := "last errors:"
	for _, r := range resources {
		s += fmt.Sprintf(" %s: %v;", r, l.errs[r])
	}

	return s[:len(s)-1]
}
