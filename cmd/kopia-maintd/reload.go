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
	"github.com/kopia-maintd/kopia-maintd/velero"
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

	// disc is Velero discovery, nil when it is off.
	disc *velero.Discovery

	// mu serialises reloads and discovery updates: a SIGHUP, a POST and a
	// change in Velero's objects at once must not interleave their updates.
	mu sync.Mutex
	// cfg is the configuration file in force; eff is cfg with the
	// discovered repositories (found) merged in, src their secret sources.
	cfg   *config.Config
	eff   *config.Config
	found []velero.Repository
	src   repoSources
}

// current returns the configuration in force, discovered repositories
// included.
func (r *reloader) current() *config.Config {
	r.mu.Lock()
	defer r.mu.Unlock()

	if r.eff == nil {
		return r.cfg
	}

	return r.eff
}

// discovered applies a new set of discovered repositories: added ones are
// scheduled, removed ones stop being scheduled and leave /metrics, and a
// run in flight finishes with the spec it started with. A discovered
// repository that clashes with a configured name, or that cannot be
// maintained, is reported at Error or Warn and left out; the others are
// not affected.
func (r *reloader) discovered(found []velero.Repository) {
	r.mu.Lock()
	defer r.mu.Unlock()

	log := r.log.Named("velero")

	if err := r.install(r.cfg, found); err != nil {
		// Not reached with valid discovered names; the running set stays.
		log.Error("apply discovered repositories", zap.Error(err))

		return
	}

	log.Info("discovered repositories applied", zap.Int("discovered", len(r.src)), zap.Int("repositories", len(r.eff.Repositories)))
}

// install builds the effective configuration from cfg and found and hands
// it to the manager, the metrics and the scheduler; r.mu is held. On error
// nothing changed.
func (r *reloader) install(cfg *config.Config, found []velero.Repository) error {
	eff, src, clashes, skipped := merge(cfg, found, r.disc)

	log := r.log.Named("velero")
	for _, c := range clashes {
		log.Error("discovered repository not maintained: its name is a configured repository's",
			zap.String("repository", c.Name), zap.String("backup_repository", c.Source.BackupRepository),
			zap.String("backup_storage_location", c.Source.BackupStorageLocation))
	}

	for _, s := range skipped {
		log.Warn("discovered repository not maintained", zap.String("repository", s.Name),
			zap.String("backup_repository", s.Source.BackupRepository), zap.String("reason", s.NotMaintained))
	}

	sp, err := specs(eff, src)
	if err != nil {
		return err
	}

	prev := r.eff
	if prev == nil {
		prev = r.cfg
	}

	oldSpecs, err := specs(prev, r.src)
	if err != nil {
		return fmt.Errorf("rebuild running repository specs for rollback: %w", err)
	}

	// The manager first: the scheduler may start a run of an added
	// repository as soon as it learns of it, and the metrics before the
	// scheduler, so that the added repository's first events are kept.
	if err := r.mgr.Update(sp); err != nil {
		return fmt.Errorf("update repositories: %w", err)
	}

	r.met.SetRepositories(names(eff))

	if err := r.sched.Update(schedules(eff)); err != nil {
		// Not reached with a validated config; undo so the three agree.
		_ = r.mgr.Update(oldSpecs)
		r.met.SetRepositories(names(prev))

		return fmt.Errorf("update schedules: %w", err)
	}

	r.met.SetNotMaintained(notMaintained(clashes, skipped))

	r.eff, r.src, r.found = eff, src, found

	return nil
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

	old := names(r.current0())

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

	now := names(r.current0())
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

	if err := r.install(next, r.found); err != nil {
		return err
	}

	r.level.SetLevel(level)
	r.cfg = next

	return nil
}

// source returns the discovery source of a discovered repository, nil for
// a configured one.
func (r *reloader) source(name string) *discoveredRepo {
	r.mu.Lock()
	defer r.mu.Unlock()

	return r.src[name]
}

// restoreVelero gives Velero its own maintenance back on shutdown, for the
// discovered repositories whose ownership is handed back on exit: each
// BackupRepository's original maintenanceFrequency is restored (the
// ownership itself, default@default, was handed back just before by the
// repository manager). Repositories the daemon keeps stay suppressed.
func (r *reloader) restoreVelero(ctx context.Context) {
	r.mu.Lock()
	src, eff := r.src, r.current0()
	r.mu.Unlock()

	log := r.log.Named("velero")

	for _, cr := range eff.Repositories {
		d := src[cr.Name]
		if d == nil || !cr.Ownership.HandBackOnExit {
			continue
		}

		changed, err := d.disc.Restore(ctx, d.repo.Source)
		switch {
		case err != nil:
			log.Error("restore Velero's maintenance frequency", zap.String("repository", cr.Name), zap.Error(err))
		case changed:
			log.Info("restored Velero's maintenance frequency", zap.String("repository", cr.Name),
				zap.String("backup_repository", d.repo.Source.BackupRepository))
		}
	}
}

// current0 is current with r.mu held.
func (r *reloader) current0() *config.Config {
	if r.eff == nil {
		return r.cfg
	}

	return r.eff
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
