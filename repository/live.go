package repository

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// LiveRun is a run in flight, as the daemon publishes it for `status`.
type LiveRun struct {
	PID      int       `json:"pid"`
	Cycle    Cycle     `json:"cycle"`
	Started  time.Time `json:"started"`
	Updated  time.Time `json:"updated"`
	Progress Progress  `json:"progress"`
}

// Inspection is what the last run found out about the repository.
type Inspection struct {
	Health  *Health  `json:"health,omitempty"`
	Reclaim *Reclaim `json:"reclaim,omitempty"`
	// Compaction is the last full cycle's compact-live step.
	Compaction *CompactionResult `json:"compaction,omitempty"`
}

func (m *Manager) statusFile(name, kind string) string {
	return filepath.Join(m.opts.StateDirectory, "status", name+"."+kind+".json")
}

// writeJSON replaces file atomically (writeFileAtomic, durable or not),
// creating its directory with mode 0700.
func writeJSON(file string, v any, durable bool) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}

	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}

	return writeFileAtomic(file, b, durable)
}

func readJSON(file string, v any) (bool, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}

	if err != nil {
		return false, err
	}

	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("parse %s: %w", file, err)
	}

	return true, nil
}

// publishLive records the run in flight; errors only cost the status view.
func (m *Manager) publishLive(name string, lr LiveRun) {
	// Not durable: the record is removed when the run ends and ignored once
	// its process is gone, and it is rewritten at every progress report.
	if err := writeJSON(m.statusFile(name, "live"), lr, false); err != nil {
		m.log.Debug("publish live run", zap.String("repository", name), zap.Error(err))
	}
}

func (m *Manager) clearLive(name string) {
	_ = os.Remove(m.statusFile(name, "live"))
}

// saveInspection keeps the newest health and reclaim explanation; a quick
// cycle keeps the reclaim explanation of the last full cycle.
func (m *Manager) saveInspection(name string, r *Report) {
	var in Inspection

	_, _ = readJSON(m.statusFile(name, "inspection"), &in)

	if r.Health != nil {
		in.Health = r.Health
	}

	if r.Reclaim != nil {
		in.Reclaim = r.Reclaim
	}

	if r.Compaction != nil {
		in.Compaction = r.Compaction
	}

	if err := writeJSON(m.statusFile(name, "inspection"), in, true); err != nil {
		m.log.Warn("save inspection", zap.String("repository", name), zap.Error(err))
	}
}

// liveStale is how old a live record may be before it is taken for the
// leftover of a process that died mid-run.
const liveStale = time.Minute

// live returns the run in flight published by a daemon on this state
// directory, or nil.
func (m *Manager) live(name string, now time.Time) (*LiveRun, error) {
	var lr LiveRun

	ok, err := readJSON(m.statusFile(name, "live"), &lr)
	if err != nil || !ok {
		return nil, err
	}

	if now.Sub(lr.Updated) > liveStale || !processAlive(lr.PID) {
		return nil, nil
	}

	return &lr, nil
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}

	err := syscall.Kill(pid, 0)

	return err == nil || errors.Is(err, syscall.EPERM)
}
