package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
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

// specs turns the configuration's repositories into repository specs.
func specs(cfg *config.Config) ([]repository.Spec, error) {
	out := make([]repository.Spec, 0, len(cfg.Repositories))

	for _, r := range cfg.Repositories {
		st := repository.Storage{}

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
		}

		out = append(out, repository.Spec{
			Name:     r.Name,
			Storage:  st,
			Password: r.Password,
			Create:   r.Create,
			Ownership: repository.Ownership{
				Policy:         repository.Policy(r.Ownership.Takeover),
				StaleAfter:     r.Ownership.StaleAfter,
				HandBackOnExit: r.Ownership.HandBackOnExit,
			},
		})
	}

	return out, nil
}

func newManager(cfg *config.Config, log *zap.Logger) (*repository.Manager, error) {
	// kopia's snapshot GC spills memory-mapped segments to TMPDIR. In the
	// container image TMPDIR lies inside the state volume, which starts
	// empty in Kubernetes; a missing TMPDIR would fail every full cycle.
	if err := os.MkdirAll(os.TempDir(), 0o700); err != nil {
		return nil, fmt.Errorf("create temporary directory %s: %w", os.TempDir(), err)
	}

	sp, err := specs(cfg)
	if err != nil {
		return nil, err
	}

	return repository.NewManager(repository.Options{
		StateDirectory: cfg.StateDirectory,
		Identity:       repository.Identity{Username: cfg.Identity.Username, Hostname: cfg.Identity.Hostname},
		Logger:         log,
	}, sp)
}

// setup loads the configuration and builds the logger and the repository
// manager, the start of every command that touches repositories.
func setup(cfgPath string, stderr io.Writer, minLevel zapcore.Level) (*config.Config, *zap.Logger, *repository.Manager, error) {
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		return nil, nil, nil, err
	}

	log, _, err := newLogger(cfg.Log, stderr, minLevel)
	if err != nil {
		return nil, nil, nil, err
	}

	mgr, err := newManager(cfg, log.Named("repository"))
	if err != nil {
		return nil, nil, nil, err
	}

	return cfg, log, mgr, nil
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

	maintain.ObserveReport(a.met, a.owners, a.self, job.Repository, report, err)

	return err
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
