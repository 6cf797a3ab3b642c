package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kopia-maintd/kopia-maintd/config"
	"github.com/kopia-maintd/kopia-maintd/metrics"
	"github.com/kopia-maintd/kopia-maintd/repository"
	"github.com/kopia-maintd/kopia-maintd/scheduler"
)

// reloader reloads the configuration file into the running daemon, on
// SIGHUP and on POST /-/reload.
type reloader struct {
	path  string
	log   *zap.Logger
	level zap.AtomicLevel
	mgr   *repository.Manager
	sched *scheduler.Scheduler
	met   *metrics.Metrics
	now   func() time.Time

	// mu serialises reloads: a SIGHUP and a POST at once must not
	// interleave their updates.
	mu  sync.Mutex
	cfg *config.Config
}

// current returns the configuration in force.
func (r *reloader) current() *config.Config {
	r.mu.Lock()
	defer r.mu.Unlock()

	return r.cfg
}

// reload loads and validates the file and, only when all of it is valid and
// changes nothing that takes a restart (config.CheckReload), applies it:
// repository specs, schedules, the exported repository set and the log
// level. On error the old configuration stays in force, the problems are
// logged at Error, config_last_reload_successful turns 0, and the error is
// returned (its text is the answer to POST /-/reload: no secret is in it).
// Runs in flight are not disturbed: they keep the spec they started with
// (repository.Manager.Update) and the scheduler lets them finish
// (scheduler.Scheduler.Update).
func (r *reloader) reload(_ context.Context, trigger string) error {
	r.mu.Lock()
	defer r.mu.Unlock()

	log := r.log.With(zap.String("trigger", trigger), zap.String("config", r.path))

	old := names(r.cfg)

	if err := r.apply(); err != nil {
		r.met.ConfigReloaded(false, time.Time{})

		var cfgErr *config.Error
		if errors.As(err, &cfgErr) {
			problems := make([]string, len(cfgErr.Problems))
			for i, p := range cfgErr.Problems {
				problems[i] = p.String()
			}

			log.Error("configuration reload failed; keeping the running configuration", zap.Strings("problems", problems))

			return fmt.Errorf("invalid configuration, kept the running one:\n%w", err)
		}

		log.Error("configuration reload failed; keeping the running configuration", zap.Error(err))

		return err
	}

	r.met.ConfigReloaded(true, r.now())

	now := names(r.cfg)
	log.Info("configuration reloaded",
		zap.Int("repositories", len(now)),
		zap.Strings("added", without(now, old)),
		zap.Strings("removed", without(old, now)))

	return nil
}

// apply does the work of reload; r.mu is held.
func (r *reloader) apply() error {
	next, err := loadConfig(r.path)
	if err != nil {
		return err
	}

	if err := config.CheckReload(r.cfg, next); err != nil {
		return err
	}

	// Parse generated a fresh lease holder identity for next; the leases
	// this process holds are under the running one, which must stay.
	next.InheritRuntime(r.cfg)

	level, err := logLevel(next.Log, zapcore.DebugLevel)
	if err != nil {
		return err
	}

	sp, err := specs(next)
	if err != nil {
		return err
	}

	oldSpecs, err := specs(r.cfg)
	if err != nil {
		// The running specs were built at start or at the last reload
		// from a validated configuration; not reached today.
		return fmt.Errorf("rebuild running repository specs for rollback: %w", err)
	}

	// The manager first: the scheduler may start a run of an added
	// repository as soon as it learns of it, and the metrics before the
	// scheduler, so that the added repository's first events are kept.
	if err := r.mgr.Update(sp); err != nil {
		return fmt.Errorf("update repositories: %w", err)
	}

	r.met.SetRepositories(names(next))

	if err := r.sched.Update(schedules(next)); err != nil {
		// Not reached with a validated config; undo so the three agree.
		_ = r.mgr.Update(oldSpecs)
		r.met.SetRepositories(names(r.cfg))

		return fmt.Errorf("update schedules: %w", err)
	}

	r.level.SetLevel(level)
	r.cfg = next

	return nil
}

// names returns the repository names of cfg in file order.
func names(cfg *config.Config) []string {
	out := make([]string, len(cfg.Repositories))
	for i, r := range cfg.Repositories {
		out[i] = r.Name
	}

	return out
}

// without returns the elements of a that are not in b.
func without(a, b []string) []string {
	out := []string{}

	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, s)
		}
	}

	return out
}
