package repository

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// Status is what `kopia-maintd status` shows for one repository.
type Status struct {
	OwnerInfo
	Location string `json:"location"`
	// NextQuick and NextFull are the times recorded in kopia's own schedule,
	// which the daemon keeps equal to its cron.
	NextQuick     time.Time     `json:"nextQuick,omitzero"`
	NextFull      time.Time     `json:"nextFull,omitzero"`
	QuickInterval time.Duration `json:"quickInterval"`
	FullInterval  time.Duration `json:"fullInterval"`
	// LastQuick and LastFull are the last successful cycles.
	LastQuick time.Time `json:"lastQuickSuccess,omitzero"`
	LastFull  time.Time `json:"lastFullSuccess,omitzero"`
	// Tasks holds the newest run of every task in the run history.
	Tasks []TaskResult `json:"tasks"`
	// Running is the run in flight, when a daemon on this state directory
	// is maintaining the repository now.
	Running *LiveRun `json:"running,omitempty"`
	// Health and Reclaim are what the last run found (nil before any).
	Health  *Health  `json:"health,omitempty"`
	Reclaim *Reclaim `json:"reclaim,omitempty"`
	// Compaction is the last full cycle's compact-live step (nil before
	// any).
	Compaction *CompactionResult `json:"compaction,omitempty"`
}

// Status reads a repository's ownership, schedule and the last run of every
// maintenance task. It writes nothing.
func (m *Manager) Status(ctx context.Context, name string) (*Status, error) {
	s, err := m.open(ctx, name)
	if err != nil {
		return nil, err
	}
	defer s.Close()

	p, err := s.params()
	if err != nil {
		return nil, err
	}

	sched, err := s.schedule()
	if err != nil {
		return nil, err
	}

	oi, err := m.ownerInfo(s.ctx, name, p.Owner)
	if err != nil {
		return nil, err
	}

	st := &Status{
		OwnerInfo:     *oi,
		Location:      s.spec.Storage.Location(),
		NextQuick:     sched.NextQuickMaintenanceTime,
		NextFull:      sched.NextFullMaintenanceTime,
		QuickInterval: p.QuickCycle.Interval,
		FullInterval:  p.FullCycle.Interval,
	}

	st.LastQuick, st.LastFull = lastCycleSuccess(sched.Runs)

	if st.Running, err = m.live(name, time.Now()); err != nil {
		return nil, fmt.Errorf("repository %q: %w", name, err)
	}

	var in Inspection
	if _, err := readJSON(m.statusFile(name, "inspection"), &in); err != nil {
		return nil, fmt.Errorf("repository %q: %w", name, err)
	}

	st.Health, st.Reclaim = in.Health, in.Reclaim
	st.Compaction = in.Compaction

	for task, runs := range sched.Runs {
		if len(runs) > 0 {
			// kopia keeps the newest run first.
			st.Tasks = append(st.Tasks, taskResult(string(task), runs[0]))
		}
	}

	sort.Slice(st.Tasks, func(i, j int) bool { return st.Tasks[i].Task < st.Tasks[j].Task })

	return st, nil
}
