package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/content"
	"github.com/kopia/kopia/repo/format"
	"github.com/kopia/kopia/repo/logging"
	"github.com/kopia/kopia/repo/maintenance"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Identity is the maintenance owner this process acts as (user@host).
type Identity struct {
	Username string
	Hostname string
}

// String returns the identity in kopia's user@host form.
func (i Identity) String() string { return i.Username + "@" + i.Hostname }

// Spec is one repository the manager maintains.
type Spec struct {
	// Name is unique among the manager's repositories and safe in file names.
	Name    string
	Storage Storage
	// Password returns the repository password; it is called on every open so
	// a rotated secret file is picked up.
	Password func() (string, error)
	// Create initialises a repository when the storage holds none.
	Create    bool
	Ownership Ownership
	// Compaction configures the compact-live step of full cycles; the zero
	// value is on with the defaults.
	Compaction Compaction
}

// Options configure a Manager.
type Options struct {
	// StateDirectory holds the private kopia connection files and caches
	// (ownership and audit records live in each repository). It is created
	// with mode 0700.
	StateDirectory string
	Identity       Identity
	Logger         *zap.Logger
	// Now is the clock used for kopia (repo.Options.TimeNowFunc) and for
	// ownership decisions; default time.Now.
	Now func() time.Time
	// NoCache connects without kopia's local cache (contents, metadata,
	// indexes, own writes): every open reads what it needs from the
	// storage. It applies when a connection is made (the first open of a
	// repository in this state directory, or after its storage changed).
	NoCache bool
	// ListParallelism, when > 0, caps how many blob listings and deletions
	// kopia's delete-unreferenced-blobs tasks run at once (kopia's
	// maintenance param listParallelism, default 16). It applies to this
	// process's runs only; the repository's stored params are not changed.
	ListParallelism int
}

// Manager opens and maintains a set of repositories. It is safe for
// concurrent use; callers make sure one repository is not run twice at once
// (the scheduler does, and kopia's local lock is a second guard).
type Manager struct {
	opts Options
	log  *zap.Logger

	mu    sync.Mutex
	specs map[string]Spec
	// trackers holds, per repository, the run in flight that the storage
	// wrapper reports to (nil between runs).
	trackers map[string]*atomic.Pointer[runTracker]
	// health keeps the last listing so quick cycles need not list packs.
	health map[string]*Health
	// books remembers this daemon's write sessions per repository.
	books map[string]*sessionBook
	// fences counts what the fences of each repository refused.
	fences map[string]*fenceStats
	// owners holds takeovers not yet recorded in their repository.
	owners ownerMemory
}

var validName = regexp.MustCompile(`^[a-z0-9-]{1,63}$`)

// NewManager returns a manager for specs. It creates the state directory.
func NewManager(opts Options, specs []Spec) (*Manager, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}

	if opts.Now == nil {
		opts.Now = time.Now
	}

	if opts.Identity.Username == "" || opts.Identity.Hostname == "" {
		return nil, errors.New("identity needs a username and a hostname")
	}

	if err := os.MkdirAll(opts.StateDirectory, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}

	// MkdirAll leaves an existing directory's mode alone; the connection files
	// and caches must not be readable by others.
	if err := os.Chmod(opts.StateDirectory, 0o700); err != nil {
		return nil, fmt.Errorf("restrict state directory: %w", err)
	}

	registerHandleType()

	m := &Manager{opts: opts, log: opts.Logger, specs: map[string]Spec{}, trackers: map[string]*atomic.Pointer[runTracker]{}, health: map[string]*Health{}, books: map[string]*sessionBook{}, fences: map[string]*fenceStats{}}
	if err := m.Update(specs); err != nil {
		return nil, err
	}

	return m, nil
}

// Update replaces the set of repositories (a config reload). Runs in flight
// keep the spec they started with.
func (m *Manager) Update(specs []Spec) error {
	next := make(map[string]Spec, len(specs))

	for _, s := range specs {
		if !validName.MatchString(s.Name) {
			return fmt.Errorf("invalid repository name %q", s.Name)
		}

		if _, dup := next[s.Name]; dup {
			return fmt.Errorf("duplicate repository name %q", s.Name)
		}

		if s.Password == nil {
			return fmt.Errorf("repository %q: no password source", s.Name)
		}

		next[s.Name] = s
	}

	m.mu.Lock()
	defer m.mu.Unlock()

	now := m.opts.Now

	for name, s := range next {
		book := m.books[name]
		if book == nil {
			book = &sessionBook{file: filepath.Join(m.opts.StateDirectory, "sessions", name+".json"), sessions: map[string]time.Time{}}
			m.books[name] = book
		}

		fc := m.fences[name]
		if fc == nil {
			fc = &fenceStats{log: m.log.With(zap.String("repository", name))}
			m.fences[name] = fc
		}

		tracker := m.trackers[name]
		if tracker == nil {
			tracker = &atomic.Pointer[runTracker]{}
			m.trackers[name] = tracker
		}

		storage := s.Storage
		handles.Store(m.handle(name), func(ctx context.Context) (blob.Storage, error) {
			st, err := storage.openBlobStorage(ctx, false)
			if err != nil {
				return nil, err
			}

			// The open's context says which lease, if any, guards it.
			return &trackingStorage{fencedStorage: &fencedStorage{Storage: st, fence: fenceFrom(ctx), stats: fc}, tracker: tracker, book: book, now: now}, nil
		})
	}

	for name := range m.specs {
		if _, keep := next[name]; !keep {
			handles.Delete(m.handle(name))
		}
	}

	m.specs = next

	return nil
}

// Names returns the names of the managed repositories.
func (m *Manager) Names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()

	names := make([]string, 0, len(m.specs))
	for n := range m.specs {
		names = append(names, n)
	}

	return names
}

// Identity returns the identity the manager acts as.
func (m *Manager) Identity() Identity { return m.opts.Identity }

func (m *Manager) spec(name string) (Spec, error) {
	m.mu.Lock()
	defer m.mu.Unlock()

	s, ok := m.specs[name]
	if !ok {
		return Spec{}, fmt.Errorf("%w: %q", ErrUnknownRepository, name)
	}

	return s, nil
}

func (m *Manager) repoDir(name string) string {
	return filepath.Join(m.opts.StateDirectory, "repositories", name)
}

func (m *Manager) configFile(name string) string {
	return filepath.Join(m.repoDir(name), "kopia.config")
}

// handle keys the in-process storage registry. It includes the state
// directory so two managers in one process (tests, run-once beside a daemon
// library user) never share an entry.
func (m *Manager) handle(name string) string {
	return m.configFile(name)
}

// session is an open repository bound to one operation.
type session struct {
	spec Spec
	rep  repo.DirectRepository
	ctx  context.Context // carries kopia's logger; cancelled on a kopia fatal error
	log  *zap.Logger
	stop context.CancelFunc
}

func (s *session) Close() {
	if err := s.rep.Close(context.WithoutCancel(s.ctx)); err != nil {
		s.log.Warn("close repository", zap.Error(err))
	}

	s.stop()
}

// params reads the repository's maintenance params.
func (s *session) params() (*maintenance.Params, error) {
	p, err := maintenance.GetParams(s.ctx, s.rep)
	if err != nil {
		return nil, fmt.Errorf("repository %q: read maintenance params: %w", s.spec.Name, err)
	}

	return p, nil
}

// schedule reads the repository's maintenance schedule and run history.
func (s *session) schedule() (*maintenance.Schedule, error) {
	sched, err := maintenance.GetSchedule(s.ctx, s.rep)
	if err != nil {
		return nil, fmt.Errorf("repository %q: read maintenance schedule: %w", s.spec.Name, err)
	}

	return sched, nil
}

// kopiaContext routes kopia's logs into zap. kopia narrates its work at Info;
// those lines are demoted to Debug so the daemon's own per-run and per-task
// lines stay the Info-level story. Once run is cancelled (a shutdown, a lost
// lease, a backup that stops a safety=none cycle), kopia's warnings and errors
// are demoted to Debug as well: they are the cancellation's echo ("unable to
// report run: context canceled"), and the daemon reports the cancellation
// itself.
func (m *Manager) kopiaContext(ctx, run context.Context, log *zap.Logger) context.Context {
	kl := log.Named("kopia").WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return kopiaCore{Core: c, run: run}
	}))

	return logging.WithLogger(ctx, func(module string) logging.Logger {
		return kl.Named(module).Sugar()
	})
}

// open connects (once per storage, creating the repository when the spec asks
// for it) and opens the repository.
func (m *Manager) open(ctx context.Context, name string) (*session, error) {
	return m.openWith(ctx, name, nil, false)
}

// tracker returns the slot for the run in flight of a repository.
func (m *Manager) tracker(name string) *atomic.Pointer[runTracker] {
	m.mu.Lock()
	defer m.mu.Unlock()

	return m.trackers[name]
}

// openWith opens the repository, sending kopia's content log to contentLog
// when it is not nil. Only maintenance runs pass create: they hold the
// repository's lease, and creating a repository is a write like any other.
func (m *Manager) openWith(ctx context.Context, name string, contentLog io.Writer, create bool) (*session, error) {
	spec, err := m.spec(name)
	if err != nil {
		return nil, err
	}

	log := m.log.With(zap.String("repository", name))

	password, err := spec.Password()
	if err != nil {
		return nil, fmt.Errorf("repository %q: read password: %w", name, err)
	}

	run := ctx
	ctx, cancel := context.WithCancel(ctx)
	kctx := m.kopiaContext(ctx, run, log)

	if !create {
		spec.Create = false
	}

	if err := m.connect(kctx, spec, password, log); err != nil {
		cancel()
		return nil, err
	}

	r, err := repo.Open(kctx, m.configFile(name), password, &repo.Options{
		TimeNowFunc:         m.opts.Now,
		DoNotWaitForUpgrade: true,
		ContentLogWriter:    contentLog,
		OnFatalError: func(err error) {
			// kopia's default exits the process; one repository's fatal
			// error must only end that repository's operation.
			log.Error("kopia reported a fatal repository error", zap.Error(err))
			cancel()
		},
	})
	if err != nil {
		cancel()
		return nil, m.openError(spec, err)
	}

	dr, ok := r.(repo.DirectRepository)
	if !ok {
		_ = r.Close(kctx)

		cancel()

		return nil, fmt.Errorf("repository %q: not a direct repository connection", name)
	}

	return &session{spec: spec, rep: dr, ctx: kctx, log: log, stop: cancel}, nil
}

// connect writes the private connection file when it is missing or was made
// for another storage.
func (m *Manager) connect(ctx context.Context, spec Spec, password string, log *zap.Logger) error {
	dir := m.repoDir(spec.Name)
	stampFile := filepath.Join(dir, "storage.fingerprint")
	fp := spec.Storage.fingerprint()

	if b, err := os.ReadFile(stampFile); err == nil && string(b) == fp {
		if _, err := os.Stat(m.configFile(spec.Name)); err == nil {
			return nil
		}
	}

	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("repository %q: reset connection directory: %w", spec.Name, err)
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("repository %q: create connection directory: %w", spec.Name, err)
	}

	st, err := m.storageForConnect(ctx, spec)
	if err != nil {
		return err
	}
	defer st.Close(ctx) //nolint:errcheck

	opts := &repo.ConnectOptions{
		ClientOptions: repo.ClientOptions{
			Username:    m.opts.Identity.Username,
			Hostname:    m.opts.Identity.Hostname,
			Description: "kopia-maintd " + spec.Name,
		},
		CachingOptions: content.CachingOptions{
			CacheDirectory:         filepath.Join(dir, "cache"),
			ContentCacheSizeBytes:  64 << 20,
			MetadataCacheSizeBytes: 256 << 20,
		},
	}
	if m.opts.NoCache {
		// A zero content cache size turns every cache off (repo.Connect).
		opts.CachingOptions = content.CachingOptions{}
	}

	err = writeConnection(ctx, m.configFile(spec.Name), st, opts)
	if errors.Is(err, repo.ErrRepositoryNotInitialized) && spec.Create {
		if err = m.create(ctx, spec, st, password, log); err == nil {
			err = writeConnection(ctx, m.configFile(spec.Name), st, opts)
		}
	}

	if err != nil {
		return m.openError(spec, err)
	}

	if err := writeFileAtomic(stampFile, []byte(fp), true); err != nil {
		return fmt.Errorf("repository %q: write connection stamp: %w", spec.Name, err)
	}

	return nil
}

// writeConnection writes the kopia connection file that repo.Connect would
// write, without repo.Connect's trial open. That open costs a key derivation
// from the password (scrypt: 64 MiB and about 0.2 s of a core) and is made
// again at once by the operation that asked for the connection, which then
// reports a wrong password as it would. The format blob is read, so that a
// storage without a repository is told apart as before.
func writeConnection(ctx context.Context, configFile string, st blob.Storage, opts *repo.ConnectOptions) error {
	b, found, err := getBlob(ctx, st, format.KopiaRepositoryBlobID)
	if err != nil {
		return fmt.Errorf("read format blob: %w", err)
	}

	if !found {
		return repo.ErrRepositoryNotInitialized
	}

	if _, err := format.ParseKopiaRepositoryJSON(b); err != nil {
		return err
	}

	ci := st.ConnectionInfo()
	lc := repo.LocalConfig{
		Storage:       &ci,
		Caching:       &content.CachingOptions{},
		ClientOptions: opts.ApplyDefaults(ctx, "Repository in "+st.DisplayName()),
	}

	if opts.ContentCacheSizeBytes != 0 {
		// A zero content cache size turns every cache off, as in kopia.
		c := opts.CachingOptions

		dir, err := filepath.Abs(c.CacheDirectory)
		if err != nil {
			return fmt.Errorf("cache directory: %w", err)
		}

		c.CacheDirectory = dir
		lc.Caching = &c
	}

	data, err := json.MarshalIndent(lc, "", "  ")
	if err != nil {
		return fmt.Errorf("encode connection file: %w", err)
	}

	if err := writeFileAtomic(configFile, data, true); err != nil {
		return fmt.Errorf("write connection file: %w", err)
	}

	return nil
}

func (m *Manager) storageForConnect(ctx context.Context, spec Spec) (*handleStorage, error) {
	st, err := spec.Storage.openBlobStorage(ctx, spec.Create)
	if err != nil {
		return nil, fmt.Errorf("repository %q: open %s: %w", spec.Name, spec.Storage.Location(), err)
	}

	// Connecting only reads; creating a repository writes, and those
	// writes pass the fence of the operation that asked for it (a run
	// inside the repository's lease) like every other write.
	fenced := &fencedStorage{Storage: st, fence: fenceFrom(ctx), stats: m.fenceStats(spec.Name)}

	return &handleStorage{Storage: fenced, handle: m.handle(spec.Name)}, nil
}

// create initialises a new repository and makes this identity its
// maintenance owner, as kopia's CLI does for the user who creates one.
func (m *Manager) create(ctx context.Context, spec Spec, st *handleStorage, password string, log *zap.Logger) error {
	if err := repo.Initialize(ctx, st, &repo.NewRepositoryOptions{}, password); err != nil {
		return fmt.Errorf("repository %q: create repository at %s: %w", spec.Name, spec.Storage.Location(), err)
	}

	cfg := filepath.Join(m.repoDir(spec.Name), "create.config")
	defer os.Remove(cfg) //nolint:errcheck

	if err := repo.Connect(ctx, cfg, st, password, &repo.ConnectOptions{ClientOptions: repo.ClientOptions{
		Username: m.opts.Identity.Username,
		Hostname: m.opts.Identity.Hostname,
	}}); err != nil {
		return fmt.Errorf("repository %q: connect to new repository: %w", spec.Name, err)
	}

	r, err := repo.Open(ctx, cfg, password, &repo.Options{TimeNowFunc: m.opts.Now, DoNotWaitForUpgrade: true, OnFatalError: func(error) {}})
	if err != nil {
		return fmt.Errorf("repository %q: open new repository: %w", spec.Name, err)
	}
	defer r.Close(ctx) //nolint:errcheck

	err = repo.WriteSession(ctx, r, repo.WriteSessionOptions{Purpose: "kopia-maintd: set maintenance owner"}, func(ctx context.Context, w repo.RepositoryWriter) error {
		p := maintenance.DefaultParams()
		p.Owner = m.opts.Identity.String()

		return maintenance.SetParams(ctx, w, &p)
	})
	if err != nil {
		return fmt.Errorf("repository %q: set owner of new repository: %w", spec.Name, err)
	}

	log.Info("created repository", zap.String("location", spec.Storage.Location()), zap.String("owner", m.opts.Identity.String()))

	return nil
}

// openError turns kopia's open and connect errors into messages that name the
// repository and say what to do.
func (m *Manager) openError(spec Spec, err error) error {
	switch {
	case errors.Is(err, repo.ErrRepositoryNotInitialized):
		return fmt.Errorf("repository %q: %w at %s (set create: true to create one)", spec.Name, ErrNoRepository, spec.Storage.Location())
	case errors.Is(err, format.ErrInvalidPassword):
		return fmt.Errorf("repository %q: %w", spec.Name, ErrWrongPassword)
	case errors.Is(err, repo.ErrRepositoryUnavailableDueToUpgradeInProgress):
		return fmt.Errorf("repository %q: %w", spec.Name, err)
	default:
		return fmt.Errorf("repository %q: open %s: %w", spec.Name, spec.Storage.Location(), err)
	}
}

// kopiaCore sets the level of kopia's entries (see kopiaContext).
type kopiaCore struct {
	zapcore.Core
	run context.Context
}

func (k kopiaCore) With(f []zapcore.Field) zapcore.Core {
	return kopiaCore{Core: k.Core.With(f), run: k.run}
}

func (k kopiaCore) level(l zapcore.Level) zapcore.Level {
	switch {
	case l == zapcore.InfoLevel:
		return zapcore.DebugLevel
	case k.run.Err() != nil && (l == zapcore.WarnLevel || l == zapcore.ErrorLevel):
		return zapcore.DebugLevel
	}

	return l
}

func (k kopiaCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	e.Level = k.level(e.Level)
	if k.Enabled(e.Level) {
		return ce.AddCore(e, k)
	}

	return ce
}

func (m *Manager) lastHealth(name string) *Health {
	m.mu.Lock()
	defer m.mu.Unlock()

	return m.health[name]
}

func (m *Manager) setLastHealth(name string, h *Health) {
	m.mu.Lock()
	defer m.mu.Unlock()

	m.health[name] = h
}
