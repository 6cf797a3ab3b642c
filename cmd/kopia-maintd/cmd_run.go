package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kopia-maintd/kopia-maintd/config"
	"github.com/kopia-maintd/kopia-maintd/maintain"
	"github.com/kopia-maintd/kopia-maintd/metrics"
	"github.com/kopia-maintd/kopia-maintd/scheduler"
	"github.com/kopia-maintd/kopia-maintd/velero"
)

// shutdownGrace bounds the work done after SIGTERM (hand-back, flushing):
// Kubernetes' default grace period is 30 s.
const shutdownGrace = 20 * time.Second

func cmdRun(args []string, stderr io.Writer) error {
	fs := newFlagSet("run", stderr)
	cfgPath := configFlag(fs)

	if err := parseFlags(fs, args); err != nil {
		return err
	}

	// SIGHUP's default action ends the process; take it over before the
	// slow start-up so an early reload request cannot kill the daemon.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}

	log, level, err := newLogger(cfg.Log, stderr, zapcore.DebugLevel)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck

	applyMemoryLimit(log, "/")

	mgr, err := newManager(cfg, nil, log.Named("repository"))
	if err != nil {
		return err
	}

	met := metrics.New(metrics.BuildInfo{Version: version, KopiaVersion: kopiaVersion()})
	met.SetRepositories(names(cfg))
	met.ConfigReloaded(true, time.Now())

	lm, err := newLeases(cfg, mgr, met, log.Named("lease"))
	if err != nil {
		return err
	}

	// The reloader owns the configuration in force; runs read it through
	// current, so a reload applies to the next run.
	var rl *reloader

	current := func() *config.Config { return rl.current() }

	var disc *velero.Discovery

	if cfg.Velero.Discover {
		opts, err := veleroOptions(cfg, log.Named("velero"))
		if err != nil {
			return err
		}

		opts.OnChange = func(found []velero.Repository) { rl.discovered(found) }

		if disc, err = velero.NewDiscovery(opts); err != nil {
			return fmt.Errorf("velero discovery: %w", err)
		}
	}

	sched, err := scheduler.New(scheduler.Options{
		Logger:      log.Named("scheduler"),
		Concurrency: cfg.Concurrency,
		Maintainer: maintainer{
			m: mgr, met: met, self: cfg.Identity.String(), owners: &maintain.Owners{},
			unsafe: newUnsafeRunner(cfg, mgr, met, log.Named("safety")), current: current, leases: lm,
			source:   func(name string) *discoveredRepo { return rl.source(name) },
			suppress: cfg.Velero.SuppressBuiltinMaintenance, log: log.Named("velero"),
		},
		Recorder: met,
		// Reading each repository's run history opens it, and each open
		// derives its keys with scrypt (64 MiB apiece). Once those reads
		// are done, the memory goes back to the kernel at once instead of
		// over the runtime's next minutes of scavenging.
		LookupsDone: func(n int) {
			go func() {
				debug.FreeOSMemory()
				log.Debug("run histories read; freed memory returned to the OS", zap.Int("repositories", n))
			}()
		},
	}, schedules(cfg))
	if err != nil {
		return err
	}

	rl = &reloader{
		path: *cfgPath, log: log.Named("config"), level: level,
		mgr: mgr, sched: sched, met: met, now: time.Now, cfg: cfg, disc: disc,
	}

	srv, err := metrics.NewServer(met, metrics.ServerOptions{
		ListenAddress: cfg.Server.ListenAddress,
		ProbeAddress:  cfg.Server.ProbeAddress,
		WebConfigFile: cfg.Server.WebConfigFile,
		Ready: func() error {
			if !sched.Started() {
				return errors.New("scheduler not running")
			}

			return nil
		},
		Reload: func(ctx context.Context) error { return rl.reload(ctx, "http") },
		Logger: log.Named("http"),
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	log.Info("kopia-maintd starting",
		zap.String("version", version), zap.String("kopia", kopiaVersion()),
		zap.String("identity", cfg.Identity.String()), zap.Int("repositories", len(cfg.Repositories)),
		zap.String("listen_address", srv.Addr()), zap.String("probe_address", srv.ProbeAddr()),
		zap.Bool("web_config", cfg.Server.WebConfigFile != ""), zap.Int("pid", os.Getpid()))

	var wg sync.WaitGroup

	srvCtx, stopServer := context.WithCancel(context.WithoutCancel(ctx))
	srvErr := make(chan error, 1)

	wg.Go(func() { srvErr <- srv.Run(srvCtx) })
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_ = rl.reload(ctx, "SIGHUP") // logged by reload
			}
		}
	})

	if disc != nil {
		wg.Go(func() {
			// Discovery ends with ctx; an error before that (the cache
			// never synced: a missing CRD or permission) leaves the
			// configured repositories maintained and says why.
			if err := disc.Run(ctx); err != nil && ctx.Err() == nil {
				log.Error("velero discovery stopped; discovered repositories are no longer updated", zap.Error(err))
			}
		})
	}

	schedErr := sched.Run(ctx)

	log.Info("scheduler stopped; shutting down", zap.NamedError("cause", context.Cause(ctx)))

	cleanupCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()

	mgr.HandBackOnExit(cleanupCtx, lm.With)

	if disc != nil && cfg.Velero.SuppressBuiltinMaintenance {
		rl.restoreVelero(cleanupCtx)
	}

	stopServer()
	wg.Wait()

	if err := <-srvErr; err != nil {
		log.Error("http server", zap.Error(err))
	}

	if schedErr != nil && !errors.Is(schedErr, context.Canceled) {
		return fmt.Errorf("scheduler: %w", schedErr)
	}

	log.Info("kopia-maintd stopped")

	return nil
}
