package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/format"
	"github.com/kopia/kopia/repo/maintenance"
	"go.uber.org/zap"

	"github.com/kopia-maintd/kopia-maintd/lease"
)

// Policy says when the daemon takes maintenance ownership of a repository.
type Policy string

// Ownership policies.
const (
	// PolicyNever runs maintenance only when already the owner.
	PolicyNever Policy = "never"
	// PolicyIfUnowned takes ownership when nobody owns maintenance.
	PolicyIfUnowned Policy = "if-unowned"
	// PolicyStale also takes over from an owner that completed no maintenance
	// for StaleAfter, at most once per StaleAfter.
	PolicyStale Policy = "stale"
	// PolicyAlways takes ownership whenever another identity holds it.
	PolicyAlways Policy = "always"
)

// Ownership is a repository's ownership policy.
type Ownership struct {
	Policy         Policy
	StaleAfter     time.Duration
	HandBackOnExit bool
}

// Takeover reasons, as logged and exported.
const (
	ReasonUnowned = "unowned"
	ReasonStale   = "stale"
	ReasonAlways  = "always"
	ReasonManual  = "manual"
)

// ownershipFacts is what an ownership decision looks at.
type ownershipFacts struct {
	Owner string
	Self  string
	// LastActivity is when the owner last showed it maintains the
	// repository: the end of the newest completed maintenance task, or the
	// repository's creation when no task ever completed.
	LastActivity time.Time
	// LastTakeover is when this daemon last took ownership (zero: never).
	LastTakeover time.Time
	Now          time.Time
}

// decideOwnership returns whether to take ownership and why; an error means
// the run must be skipped. It is pure so it can be table-tested.
func decideOwnership(o Ownership, f ownershipFacts) (take bool, reason string, skip string) {
	if f.Owner == f.Self {
		return false, "", ""
	}

	switch o.Policy {
	case PolicyAlways:
		return true, ReasonAlways, ""

	case PolicyIfUnowned, PolicyStale:
		if f.Owner == "" {
			return true, ReasonUnowned, ""
		}

		if o.Policy == PolicyIfUnowned {
			return false, "", "policy if-unowned does not take over from another owner"
		}

		idle := f.Now.Sub(f.LastActivity)
		if idle < o.StaleAfter {
			return false, "", fmt.Sprintf("owner completed maintenance %s ago, not stale before %s", idle.Round(time.Second), o.StaleAfter)
		}

		// The owner may have taken ownership back from us; taking it again
		// right away would make two daemons flap. One takeover per
		// StaleAfter leaves the other side a full period to prove it is alive.
		if !f.LastTakeover.IsZero() && f.Now.Sub(f.LastTakeover) < o.StaleAfter {
			return false, "", fmt.Sprintf("took over %s ago; at most one takeover per %s", f.Now.Sub(f.LastTakeover).Round(time.Second), o.StaleAfter)
		}

		return true, ReasonStale, ""

	default:
		return false, "", "policy never takes ownership"
	}
}

// ownerState is what the daemon remembers about a repository's ownership in
// the state directory.
type ownerState struct {
	// PreviousOwner is the owner we took ownership from; Remembered tells an
	// unowned repository ("") from no memory at all.
	PreviousOwner string    `json:"previousOwner"`
	Remembered    bool      `json:"remembered"`
	TookOverAt    time.Time `json:"tookOverAt,omitzero"`
	Reason        string    `json:"reason,omitempty"`
}

func (m *Manager) ownerStateFile(name string) string {
	return filepath.Join(m.opts.StateDirectory, "owners", name+".json")
}

func (m *Manager) loadOwnerState(name string) (ownerState, error) {
	var st ownerState

	b, err := os.ReadFile(m.ownerStateFile(name))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}

	if err != nil {
		return st, fmt.Errorf("repository %q: read remembered owner: %w", name, err)
	}

	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("repository %q: parse remembered owner %s: %w", name, m.ownerStateFile(name), err)
	}

	return st, nil
}

func (m *Manager) saveOwnerState(name string, st ownerState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}

	file := m.ownerStateFile(name)
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return fmt.Errorf("repository %q: save remembered owner: %w", name, err)
	}

	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("repository %q: save remembered owner: %w", name, err)
	}

	if err := os.Rename(tmp, file); err != nil {
		return fmt.Errorf("repository %q: save remembered owner: %w", name, err)
	}

	return nil
}

// lastActivity is the newest completed maintenance task, or the
// repository's creation time when none completed.
func lastActivity(ctx context.Context, dr repo.DirectRepository, s *maintenance.Schedule) (time.Time, error) {
	var last time.Time

	for _, runs := range s.Runs {
		for _, r := range runs {
			if r.Success && r.End.After(last) {
				last = r.End
			}
		}
	}

	if !last.IsZero() {
		return last, nil
	}

	bm, err := dr.BlobReader().GetMetadata(ctx, format.KopiaRepositoryBlobID)
	if err != nil {
		return time.Time{}, fmt.Errorf("read repository creation time: %w", err)
	}

	return bm.Timestamp, nil
}

// ensureOwnership applies the spec's policy before a run and returns the
// takeover reason when it took ownership (p.Owner is then us). It returns a
// *NotOwnerError when the run must be skipped.
func (m *Manager) ensureOwnership(s *session, p *maintenance.Params, sched *maintenance.Schedule) (reason string, err error) {
	self := m.opts.Identity.String()
	if p.Owner == self {
		return "", nil
	}

	st, err := m.loadOwnerState(s.spec.Name)
	if err != nil {
		return "", err
	}

	facts := ownershipFacts{Owner: p.Owner, Self: self, LastTakeover: st.TookOverAt, Now: m.opts.Now()}

	if p.Owner != "" && s.spec.Ownership.Policy == PolicyStale {
		if facts.LastActivity, err = lastActivity(s.ctx, s.rep, sched); err != nil {
			return "", fmt.Errorf("repository %q: %w", s.spec.Name, err)
		}
	}

	take, reason, skip := decideOwnership(s.spec.Ownership, facts)
	if !take {
		s.log.Warn("maintenance owned by another identity; not taking over",
			zap.String("owner", p.Owner), zap.String("policy", string(s.spec.Ownership.Policy)), zap.String("reason", skip))

		return "", &NotOwnerError{Repository: s.spec.Name, Owner: p.Owner, Reason: skip}
	}

	if err := m.recordTakeover(s.spec.Name, p.Owner, reason); err != nil {
		return "", err
	}

	s.log.Info("taking over maintenance ownership",
		zap.String("previous_owner", p.Owner), zap.String("new_owner", self), zap.String("reason", reason))

	p.Owner = self

	return reason, nil
}

func (m *Manager) recordTakeover(name, from, reason string) error {
	return m.saveOwnerState(name, ownerState{
		PreviousOwner: from,
		Remembered:    true,
		TookOverAt:    m.opts.Now(),
		Reason:        reason,
	})
}

// setParams writes maintenance parameters in a short write session.
func setParams(ctx context.Context, dr repo.DirectRepository, p *maintenance.Params, purpose string) error {
	return repo.WriteSession(ctx, dr, repo.WriteSessionOptions{Purpose: purpose}, func(ctx context.Context, w repo.RepositoryWriter) error {
		return maintenance.SetParams(ctx, w, p)
	})
}

// OwnerInfo is a repository's ownership as seen now.
type OwnerInfo struct {
	Repository string `json:"repository"`
	Owner      string `json:"owner"`
	IsSelf     bool   `json:"isSelf"`
	Self       string `json:"self"`
	// PreviousOwner is the owner this daemon took ownership from, when it
	// remembers one (PreviousOwnerKnown).
	PreviousOwner      string    `json:"previousOwner,omitempty"`
	PreviousOwnerKnown bool      `json:"previousOwnerKnown"`
	TookOverAt         time.Time `json:"tookOverAt,omitzero"`
}

// Owner reads the repository's maintenance owner.
func (m *Manager) Owner(ctx context.Context, name string) (*OwnerInfo, error) {
	s, err := m.open(ctx, name)
	if err != nil {
		return nil, err
	}
	defer s.Close()

	p, err := s.params()
	if err != nil {
		return nil, err
	}

	return m.ownerInfo(name, p.Owner)
}

func (m *Manager) ownerInfo(name, owner string) (*OwnerInfo, error) {
	st, err := m.loadOwnerState(name)
	if err != nil {
		return nil, err
	}

	self := m.opts.Identity.String()

	return &OwnerInfo{
		Repository:         name,
		Owner:              owner,
		IsSelf:             owner == self,
		Self:               self,
		PreviousOwner:      st.PreviousOwner,
		PreviousOwnerKnown: st.Remembered,
		TookOverAt:         st.TookOverAt,
	}, nil
}

// TakeOwnership makes this identity the maintenance owner regardless of the
// policy (an explicit operator action) and remembers the previous owner.
//
// held must be a valid lease on the repository (see Run).
func (m *Manager) TakeOwnership(ctx context.Context, held *lease.Held, name string) (*OwnerInfo, error) {
	ctx, done, err := m.leased(ctx, held, name)
	if err != nil {
		return nil, err
	}
	defer done()

	s, err := m.open(ctx, name)
	if err != nil {
		return nil, err
	}
	defer s.Close()

	p, err := s.params()
	if err != nil {
		return nil, err
	}

	self := m.opts.Identity.String()
	if p.Owner != self {
		if err := m.recordTakeover(name, p.Owner, ReasonManual); err != nil {
			return nil, err
		}

		prev := p.Owner
		p.Owner = self

		if err := setParams(s.ctx, s.rep, p, "kopia-maintd: take maintenance ownership"); err != nil {
			return nil, fmt.Errorf("repository %q: write maintenance owner: %w", name, err)
		}

		s.log.Info("taking over maintenance ownership",
			zap.String("previous_owner", prev), zap.String("new_owner", self), zap.String("reason", ReasonManual))
	}

	return m.ownerInfo(name, p.Owner)
}

var ownerPattern = regexp.MustCompile(`^[^@\s]+@[^@\s]+$`)

// ErrNothingToHandBack means no previous owner is remembered and none was given.
var ErrNothingToHandBack = errors.New("no previous owner remembered")

// HandBack gives maintenance ownership to `to`, or when it is empty to the
// owner this daemon took it from. It only hands back what it owns. held
// must be a valid lease on the repository (see Run).
func (m *Manager) HandBack(ctx context.Context, held *lease.Held, name, to string) (*OwnerInfo, error) {
	ctx, done, err := m.leased(ctx, held, name)
	if err != nil {
		return nil, err
	}
	defer done()

	if to != "" && !ownerPattern.MatchString(to) {
		return nil, fmt.Errorf("hand back to %q: want user@host", to)
	}

	st, err := m.loadOwnerState(name)
	if err != nil {
		return nil, err
	}

	if to == "" {
		if !st.Remembered {
			return nil, fmt.Errorf("repository %q: %w; pass --to user@host", name, ErrNothingToHandBack)
		}

		to = st.PreviousOwner
	}

	s, err := m.open(ctx, name)
	if err != nil {
		return nil, err
	}
	defer s.Close()

	p, err := s.params()
	if err != nil {
		return nil, err
	}

	self := m.opts.Identity.String()
	if p.Owner != self {
		return nil, fmt.Errorf("repository %q: not handing back: maintenance is owned by %q, not by us (%s)", name, p.Owner, self)
	}

	p.Owner = to
	if err := setParams(s.ctx, s.rep, p, "kopia-maintd: hand back maintenance ownership"); err != nil {
		return nil, fmt.Errorf("repository %q: write maintenance owner: %w", name, err)
	}

	if err := os.Remove(m.ownerStateFile(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("repository %q: forget previous owner: %w", name, err)
	}

	s.log.Info("handed back maintenance ownership", zap.String("previous_owner", self), zap.String("new_owner", to))

	return m.ownerInfo(name, to)
}

// HandBackOnExit hands ownership back for every repository whose spec asks
// for it and that this daemon took over, each inside guard (the repository's
// lease, which it passes to fn). Errors are logged per repository.
func (m *Manager) HandBackOnExit(ctx context.Context, guard func(ctx context.Context, name string, fn func(context.Context, *lease.Held) error) error) {
	for _, name := range m.Names() {
		spec, err := m.spec(name)
		if err != nil || !spec.Ownership.HandBackOnExit {
			continue
		}

		st, err := m.loadOwnerState(name)
		if err != nil || !st.Remembered {
			continue
		}

		err = guard(ctx, name, func(ctx context.Context, held *lease.Held) error {
			_, err := m.HandBack(ctx, held, name, "")
			return err
		})
		if err != nil {
			m.log.Error("hand back ownership on exit", zap.String("repository", name), zap.Error(err))
		}
	}
}
