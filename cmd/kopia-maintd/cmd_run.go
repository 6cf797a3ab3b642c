package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kopia-maintd/kopia-maintd/metrics"
	"github.com/kopia-maintd/kopia-maintd/scheduler"
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

	cfg, log, mgr, err := setup(*cfgPath, stderr, zapcore.DebugLevel)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck

	met := metrics.New(metrics.BuildInfo{Version: version, KopiaVersion: kopiaVersion()})

	sched, err := scheduler.New(scheduler.Options{
		Logger:      log.Named("scheduler"),
		Concurrency: cfg.Concurrency,
		Maintainer:  maintainer{m: mgr},
		Recorder:    met,
	}, schedules(cfg))
	if err != nil {
		return err
	}

	srv, err := metrics.NewServer(cfg.Server.ListenAddress, met, func() error {
		if !sched.Started() {
			return errors.New("scheduler not running")
		}

		return nil
	}, log.Named("http"))
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	log.Info("kopia-maintd starting",
		zap.String("version", version), zap.String("kopia", kopiaVersion()),
		zap.String("identity", cfg.Identity.String()), zap.Int("repositories", len(cfg.Repositories)),
		zap.String("listen_address", srv.Addr()), zap.Int("pid", os.Getpid()))

	var wg sync.WaitGroup

	srvCtx, stopServer := context.WithCancel(context.WithoutCancel(ctx))
	srvErr := make(chan error, 1)

	wg.Go(func() { srvErr <- srv.Run(srvCtx) })

	schedErr := sched.Run(ctx)

	log.Info("scheduler stopped; shutting down", zap.NamedError("cause", context.Cause(ctx)))

	cleanupCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()

	mgr.HandBackOnExit(cleanupCtx)

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
