package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/robfig/cron/v3"

	"github.com/kopia-maintd/kopia-maintd/config"
	"github.com/kopia-maintd/kopia-maintd/lease"
	"github.com/kopia-maintd/kopia-maintd/maintain"
	"github.com/kopia-maintd/kopia-maintd/metrics"
	"github.com/kopia-maintd/kopia-maintd/repository"
	"github.com/kopia-maintd/kopia-maintd/scheduler"
	"github.com/kopia-maintd/kopia-maintd/velero"
)

// configFlag registers --config with the KOPIA_MAINTD_CONFIG fallback.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", os.Getenv("KOPIA_MAINTD_CONFIG"), "configuration file (env KOPIA_MAINTD_CONFIG)")
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("kopia-maintd "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)

	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}

	if fs.NArg() > 0 {
		return usagef("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}

	return nil
}

func loadConfig(path string) (*config.Config, error) {
	if path == "" {
		return nil, usagef("no configuration file: pass --config FILE or set KOPIA_MAINTD_CONFIG")
	}

	return config.Load(path)
}

// newLogger builds the zap logger the configuration asks for. minLevel raises
// the level for short commands whose output is on stdout. The returned level
// changes the logger's level later (a reload of log.level).
func newLogger(c config.Log, stderr io.Writer, minLevel zapcore.Level) (*zap.Logger, zap.AtomicLevel, error) {
	level, err := logLevel(c, minLevel)
	if err != nil {
		return nil, zap.AtomicLevel{}, err
	}

	atomic := zap.NewAtomicLevelAt(level)

	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder

	var enc zapcore.Encoder
	if c.Format == "console" {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}

	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(stderr)), atomic)), atomic, nil
}

// logLevel is the configured level, raised to at least minLevel.
func logLevel(c config.Log, minLevel zapcore.Level) (zapcore.Level, error) {
	level, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return level, fmt.Errorf("log level: %w", err)
	}

	return max(level, minLevel), nil
}

// specs turns the configuration's repositories into repository specs. The
// secrets of a discovered repository (in src) come from Velero's Secrets.
func specs(cfg *config.Config, src repoSources) ([]repository.Spec, error) {
	out := make([]repository.Spec, 0, len(cfg.Repositories))

	for _, r := range cfg.Repositories {
		st := repository.Storage{}
		password := r.Password

		switch {
		case r.Storage.Filesystem != nil:
			st.Filesystem = &repository.FilesystemStorage{Path: r.Storage.Filesystem.Path}
		case r.Storage.S3 != nil:
			s := *r.Storage.S3

			// The key files are read at every open of the storage, not
			// here, so that rotated keys are used by the next run.
			st.S3 = &repository.S3Storage{
				Bucket: s.Bucket, Prefix: s.Prefix, Endpoint: s.Endpoint, Region: s.Region,
				Insecure: s.Insecure, SkipTLSVerify: s.SkipTLSVerify,
				Credentials: s.Credentials,
			}

			// Velero's Secrets are read at every open of the storage
			// too, never here: building the specs (at each discovery
			// change, twice) makes no API call, and a Secret that was
			// forbidden, missing or rotated is used as it is now by the
			// next run.
			if d := src[r.Name]; d != nil {
				st.S3.Credentials = nil
				st.S3.SessionCredentials = d.credentials
				st.S3.CACertSource = d.caCert
				password = d.password
			}
		}

		out = append(out, repository.Spec{
			Name:     r.Name,
			Storage:  st,
			Password: password,
			Create:   r.Create,
			Ownership: repository.Ownership{
				Policy:         repository.Policy(r.Ownership.Takeover),
				StaleAfter:     r.Ownership.StaleAfter,
				HandBackOnExit: r.Ownership.HandBackOnExit,
			},
			Compaction: repository.Compaction{
				Disabled:           !r.Compaction.Enabled,
				LiveRatioThreshold: r.Compaction.LiveRatioThreshold,
				MaxBytesPerCycle:   r.Compaction.MaxBytesPerCycle,
			},
		})
	}

	return out, nil
}

func newManager(cfg *config.Config, src repoSources, log *zap.Logger) (*repository.Manager, error) {
	// kopia's snapshot GC spills memory-mapped segments to TMPDIR. In the
	// container image TMPDIR lies inside the state volume, which starts
	// empty in Kubernetes; a missing TMPDIR would fail every full cycle.
	if err := os.MkdirAll(os.TempDir(), 0o700); err != nil {
		return nil, fmt.Errorf("create temporary directory %s: %w", os.TempDir(), err)
	}

	sp, err := specs(cfg, src)
	if err != nil {
		return nil, err
	}

	return repository.NewManager(repository.Options{
		StateDirectory:  cfg.StateDirectory,
		Identity:        repository.Identity{Username: cfg.Identity.Username, Hostname: cfg.Identity.Hostname},
		ListParallelism: cfg.Maintenance.ListParallelism,
		Logger:          log,
	}, sp)
}

// setup loads the configuration and builds the logger and the repository
// manager, the start of every command that touches repositories. With
// velero.discover, Velero's objects are listed once and the repositories
// found are part of the returned configuration (src names their sources);
// when the listing fails, the command goes on with the configured
// repositories and says so on stderr.
func setup(cfgPath string, stderr io.Writer, minLevel zapcore.Level) (*config.Config, *zap.Logger, *repository.Manager, repoSources, error) {
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		return nil, nil, nil, nil, err
	}

	log, _, err := newLogger(cfg.Log, stderr, minLevel)
	if err != nil {
		return nil, nil, nil, nil, err
	}

	var src repoSources

	if cfg.Velero.Discover {
		found, disc, derr := discoverOnce(cfg, log.Named("velero"))
		if derr != nil {
			fmt.Fprintf(stderr, "kopia-maintd: velero discovery failed, showing only the configured repositories: %v\n", derr)
		} else {
			var clashes, skipped []velero.Repository

			cfg, src, clashes, skipped = merge(cfg, found, disc)
			for _, r := range append(clashes, skipped...) {
				why := r.NotMaintained
				if why == "" {
					why = "its name is a configured repository's"
				}

				fmt.Fprintf(stderr, "kopia-maintd: discovered repository %s (BackupRepository %s/%s) is not maintained: %s\n",
					r.Name, r.Source.Namespace, r.Source.BackupRepository, why)
			}
		}
	}

	mgr, err := newManager(cfg, src, log.Named("repository"))
	if err != nil {
		return nil, nil, nil, nil, err
	}

	return cfg, log, mgr, src, nil
}

// discoverOnce lists Velero's objects once (no informers) and returns what
// discovery finds, with a Discovery to read the secrets through.
func discoverOnce(cfg *config.Config, log *zap.Logger) ([]velero.Repository, *velero.Discovery, error) {
	opts, err := veleroOptions(cfg, log)
	if err != nil {
		return nil, nil, err
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	found, err := velero.Discover(ctx, opts)
	if err != nil {
		return nil, nil, err
	}

	disc, err := velero.NewDiscovery(opts)
	if err != nil {
		return nil, nil, err
	}

	return found, disc, nil
}

// schedules turns the configuration's repositories into scheduler input.
func schedules(cfg *config.Config) []scheduler.Repository {
	out := make([]scheduler.Repository, 0, len(cfg.Repositories))
	for _, r := range cfg.Repositories {
		out = append(out, schedulerRepo(r))
	}

	return out
}

func schedulerRepo(r config.Repository) scheduler.Repository {
	return scheduler.Repository{
		Name: r.Name, Quick: r.Schedule.Quick, Full: r.Schedule.Full, Jitter: r.Schedule.Jitter,
		UnsafeWindows: r.UnsafeWindows,
	}
}

func findRepository(cfg *config.Config, name string) (config.Repository, error) {
	if name == "" {
		return config.Repository{}, usagef("--repository is required")
	}

	for _, r := range cfg.Repositories {
		if r.Name == name {
			return r, nil
		}
	}

	return config.Repository{}, usagef("no repository %q in the configuration", name)
}

// repositoriesFor returns the configured repositories, or only the one named.
func repositoriesFor(cfg *config.Config, only string) ([]config.Repository, error) {
	if only == "" {
		return cfg.Repositories, nil
	}

	r, err := findRepository(cfg, only)
	if err != nil {
		return nil, err
	}

	return []config.Repository{r}, nil
}

// runRequest is what the scheduler would pass for a run of cycle now.
func runRequest(r config.Repository, cycle repository.Cycle, now time.Time) (repository.RunRequest, error) {
	nq, nf, err := scheduler.NextTimes(schedulerRepo(r), now)
	if err != nil {
		return repository.RunRequest{}, err
	}

	return repository.RunRequest{
		Cycle: cycle, NextQuick: nq, NextFull: nf,
		QuickInterval: scheduleInterval(r.Schedule.Quick, now),
		FullInterval:  scheduleInterval(r.Schedule.Full, now),
	}, nil
}

// maintainer adapts the repository manager to the scheduler and exports
// what each run reports.
type maintainer struct {
	m   *repository.Manager
	met *metrics.Metrics
	// self is this daemon's identity, user@host, to tell owner_info whether
	// the owner is us.
	self   string
	owners *maintain.Owners
	// unsafe runs the gated safety=none cycles of unsafe windows, under the
	// configuration current returns (it follows reloads).
	unsafe  *unsafeRunner
	current func() *config.Config
	// leases makes every run happen inside the repository's lease.
	leases *leases
	// source returns the Velero objects a discovered repository comes
	// from, nil for a configured one (or when discovery is off).
	source func(name string) *discoveredRepo
	// suppress quiets Velero's own maintenance of the discovered
	// repositories the daemon owns (velero.suppressBuiltinMaintenance).
	suppress bool
	log      *zap.Logger
}

func (a maintainer) Run(ctx context.Context, job scheduler.Job) error {
	obs := &maintain.RunObserver{Metrics: a.met, Repository: job.Repository}
	req := repository.RunRequest{
		Cycle:         repository.Cycle(job.Cycle),
		NextQuick:     job.NextQuick,
		NextFull:      job.NextFull,
		QuickInterval: job.QuickInterval,
		FullInterval:  job.FullInterval,
		Observer:      obs,
	}

	var d *discoveredRepo
	if a.source != nil {
		d = a.source(job.Repository)
	}

	if d != nil {
		if err := veleroJobsDone(ctx, d); err != nil {
			a.observe(job.Repository, nil, err)

			return err
		}
	}

	var report *repository.Report

	err := a.leases.Scheduled(ctx, job, func(ctx context.Context, held *lease.Held, covered func(time.Time) bool) error {
		var err error

		if job.Unsafe {
			cfg := a.current()

			r, ferr := findRepository(cfg, job.Repository)
			if ferr != nil {
				return ferr
			}

			report, err = a.unsafe.Run(ctx, held, a.unsafe.request(cfg, r, held, "scheduled safety=none window", req))
		} else {
			req.Covered = covered
			report, err = a.m.Run(ctx, held, job.Repository, req)
		}

		return err
	})

	// Nothing ran: the lease is another process' or the work was done.
	var (
		held *lease.HeldError
		done *repository.DoneError
	)
	if errors.As(err, &held) || errors.As(err, &done) {
		return err
	}

	a.observe(job.Repository, report, err)

	if d != nil && a.suppress && report != nil && report.Owner == a.self {
		suppressVelero(ctx, a.log, d)
	}

	return err
}

// observe exports a finished run's report and logs, at Warn, an ownership
// someone else took from the daemon since its last run; the ownership
// policy has handled it already (this run took the repository back, or was
// skipped).
func (a maintainer) observe(name string, report *repository.Report, err error) {
	lost := maintain.ObserveReport(a.met, a.owners, a.self, name, report, err)
	if lost == nil {
		return
	}

	log := a.log.With(zap.String("repository", name), zap.String("owner", lost.To), zap.String("reason", lost.Reason))

	took := report != nil && report.TookOver
	if lost.Reason == maintain.LostVeleroReset {
		log.Warn("Velero set the repository's maintenance owner back to default@default (it does when it re-initialises a repository)",
			zap.Bool("taken_back", took))

		return
	}

	log.Warn("another identity took the repository's maintenance ownership", zap.Bool("taken_back", took))
}

// veleroJobsDone refuses a run while one of Velero's own maintenance Jobs
// for the repository is active. Such a Job checked kopia's maintenance
// owner when it started, so taking ownership does not stop it: it runs its
// whole cycle and writes (see velero.Discovery.ActiveMaintenanceJobs). Two
// maintenance runs at once are what the lease exists to prevent, so the
// run waits for the next slot, with the scheduler's backoff. Not being
// able to tell refuses too.
func veleroJobsDone(ctx context.Context, d *discoveredRepo) error {
	jobs, err := d.disc.ActiveMaintenanceJobs(ctx, d.repo.Source)
	if err != nil {
		return fmt.Errorf("check Velero maintenance Jobs of BackupRepository %s/%s: %w", d.repo.Source.Namespace, d.repo.Source.BackupRepository, err)
	}

	if len(jobs) > 0 {
		return fmt.Errorf("velero maintenance Job %s of BackupRepository %s/%s is still running: this run waits until it ends",
			strings.Join(jobs, ", "), d.repo.Source.Namespace, d.repo.Source.BackupRepository)
	}

	return nil
}

// suppressVelero raises the BackupRepository's maintenanceFrequency while
// the daemon owns the repository; a failure is logged and tried again after
// the next run.
func suppressVelero(ctx context.Context, log *zap.Logger, d *discoveredRepo) {
	log = log.With(zap.String("repository", d.repo.Name), zap.String("backup_repository", d.repo.Source.BackupRepository))

	changed, err := d.disc.Suppress(ctx, d.repo.Source)
	switch {
	case err != nil:
		log.Error("suppress Velero's maintenance of the repository", zap.Error(err))
	case changed:
		log.Info("suppressed Velero's maintenance of the repository", zap.String("maintenance_frequency", velero.SuppressedFrequency))
	}
}

func (a maintainer) LastSuccess(ctx context.Context, name string) (time.Time, time.Time, error) {
	return a.m.LastSuccess(ctx, name)
}

// kopiaVersion reads the linked kopia module's version.
func kopiaVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/kopia/kopia" {
				return d.Version
			}
		}
	}

	return "unknown"
}

// scheduleInterval is the nominal interval of a validated cron spec.
func scheduleInterval(spec string, now time.Time) time.Duration {
	s, err := cron.ParseStandard(spec)
	if err != nil {
		return 0
	}

	return scheduler.Interval(s, now)
}
