package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/kopia-maintd/kopia-maintd/lease"
	"github.com/kopia-maintd/kopia-maintd/maintain"
	"github.com/kopia-maintd/kopia-maintd/repository"
	"github.com/kopia-maintd/kopia-maintd/safety"
)

func cmdRunOnce(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("run-once", stderr)
	cfgPath := configFlag(fs)
	name := fs.String("repository", "", "repository to maintain")
	cycle := fs.String("cycle", "", "quick or full")
	level := fs.String("safety", "full", "full, or none for a gated safety=none full cycle")

	if err := parseFlags(fs, args); err != nil {
		return err
	}

	if *cycle != string(repository.Quick) && *cycle != string(repository.Full) {
		return usagef("--cycle must be quick or full, not %q", *cycle)
	}

	lvl, err := safety.ParseLevel(*level)
	if err != nil {
		return usagef("--safety: %v", err)
	}

	if lvl == safety.None && *cycle != string(repository.Full) {
		return usagef("--safety none applies to full cycles only")
	}

	cfg, log, mgr, src, err := setup(*cfgPath, stderr, zapcore.InfoLevel)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck

	applyMemoryLimit(log, "/")

	rc, err := findRepository(cfg, *name)
	if err != nil {
		return err
	}

	req, err := runRequest(rc, repository.Cycle(*cycle), time.Now())
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// As in the daemon: not while Velero's own maintenance Job for the
	// repository runs (it checked the owner when it started and writes to
	// the end).
	d := src[rc.Name]
	if d != nil {
		if err := veleroJobsDone(ctx, d); err != nil {
			return err
		}
	}

	lm, err := newLeases(cfg, mgr, nil, log.Named("lease"))
	if err != nil {
		return err
	}

	var rep *repository.Report

	runErr := lm.With(ctx, rc.Name, func(ctx context.Context, held *lease.Held) error {
		var err error

		if lvl == safety.None {
			u := newUnsafeRunner(cfg, mgr, nil, log.Named("safety"))
			rep, err = u.Run(ctx, held, u.request(cfg, rc, held, requester(), req))
		} else {
			rep, err = mgr.Run(ctx, held, rc.Name, req)
		}

		return err
	})
	if rep != nil {
		printReport(stdout, rep, runErr)

		if d != nil && cfg.Velero.SuppressBuiltinMaintenance && rep.Owner == cfg.Identity.String() {
			suppressVelero(ctx, log.Named("velero"), d)
		}
	}

	var refusal *maintain.GateRefusal
	if errors.As(runErr, &refusal) {
		printDecision(stdout, refusal.Decision)
	}

	if runErr != nil {
		var skip interface{ Skipped() bool }
		if errors.As(runErr, &skip) && skip.Skipped() {
			return fmt.Errorf("%s cycle skipped: %w", *cycle, runErr)
		}

		return runErr
	}

	return nil
}

func printReport(w io.Writer, r *repository.Report, err error) {
	result := "succeeded"
	if err != nil {
		result = "failed"
	}

	fmt.Fprintf(w, "repository %s: %s cycle %s in %s (owner %s", r.Repository, r.Cycle, result, r.End.Sub(r.Start).Round(time.Millisecond), r.Owner)

	if r.TookOver {
		fmt.Fprint(w, ", taken over by this run")
	}

	fmt.Fprintln(w, ")")

	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  TASK\tRESULT\tDURATION\tSTATS")

	for _, t := range r.Tasks {
		res := "ok"
		detail := t.Summary

		if !t.Success {
			res = "FAILED"
			detail = t.Error
		}

		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", t.Task, res, t.Duration().Round(time.Millisecond), detail)
	}

	_ = tw.Flush()
}
