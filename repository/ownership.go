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

// ownerState is what the daemon remembers about a repository's ownership:
// the record kept in the repository (see OwnerRecordPrefix), and the format
// of the state directory file of earlier releases (version 0).
type ownerState struct {
	// Version is the record's format; Identity the daemon identity it
	// belongs to. Both are empty in the state directory file.
	Version  int    `json:"version,omitempty"`
	Identity string `json:"identity,omitempty"`
	// PreviousOwner is the owner we took ownership from; Remembered tells an
	// unowned repository ("") from no memory at all.
	PreviousOwner string    `json:"previousOwner"`
	Remembered    bool      `json:"remembered"`
	TookOverAt    time.Time `json:"tookOverAt,omitzero"`
	Reason        string    `json:"reason,omitempty"`
}

// ownerStateFile is where earlier releases kept the ownership record; it is
// only read, to move it into the repository.
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
// takeover reason when it took ownership: p.Owner is then us, already
// written to kopia's params. It returns a *NotOwnerError when the run must
// be skipped.
//
// A takeover is recorded (the previous owner, and the time the flap guard
// counts from) only after kopia's params name us: a failed params write
// records nothing, so the next attempt decides afresh. When the params were
// written but the record was not, the run goes on (we are the owner, and
// maintenance must not stop for bookkeeping): the takeover is kept in memory,
// counts for the flap guard and hand-back, and is recorded by the next run.
func (m *Manager) ensureOwnership(s *session, p *maintenance.Params, sched *maintenance.Schedule) (reason string, err error) {
	self := m.opts.Identity.String()
	name := s.spec.Name

	m.settleOwnerRecord(s.ctx, name, p.Owner == self, s.log)

	if p.Owner == self {
		return "", nil
	}

	st, _, err := m.loadOwnerRecord(s.ctx, name)
	if err != nil {
		return "", err
	}

	facts := ownershipFacts{Owner: p.Owner, Self: self, LastTakeover: st.TookOverAt, Now: m.opts.Now()}

	if p.Owner != "" && s.spec.Ownership.Policy == PolicyStale {
		if facts.LastActivity, err = lastActivity(s.ctx, s.rep, sched); err != nil {
			return "", fmt.Errorf("repository %q: %w", name, err)
		}
	}

	take, reason, skip := decideOwnership(s.spec.Ownership, facts)
	if !take {
		s.log.Warn("maintenance owned by another identity; not taking over",
			zap.String("owner", p.Owner), zap.String("policy", string(s.spec.Ownership.Policy)), zap.String("reason", skip))

		return "", &NotOwnerError{Repository: name, Owner: p.Owner, Reason: skip}
	}

	if err := m.changeOwner(s, p, reason); err != nil {
		return "", err
	}

	return reason, nil
}

// changeOwner writes us as the owner into kopia's params and then records
// the takeover. An error means the params write failed; a failed record
// write is logged and left to the next run (see ensureOwnership).
func (m *Manager) changeOwner(s *session, p *maintenance.Params, reason string) error {
	self := m.opts.Identity.String()
	name := s.spec.Name
	prev := p.Owner
	rec := ownerState{PreviousOwner: prev, Remembered: true, TookOverAt: m.opts.Now(), Reason: reason}

	// Until the write returns, whether it landed is unknown: remember the
	// attempt so that, if the next run finds us the owner, it is recorded.
	m.owners.set(name, pendingTakeover{state: rec})

	p.Owner = self
	if err := setParams(s.ctx, s.rep, p, "kopia-maintd: take maintenance ownership"); err != nil {
		p.Owner = prev
		return fmt.Errorf("repository %q: write maintenance owner: %w", name, err)
	}

	m.owners.set(name, pendingTakeover{state: rec, confirmed: true})

	s.log.Info("took over maintenance ownership",
		zap.String("previous_owner", prev), zap.String("new_owner", self), zap.String("reason", reason))

	if err := m.writeOwnerRecord(s.ctx, name, rec); err != nil {
		s.log.Error("record ownership takeover; the next run records it", zap.String("previous_owner", prev), zap.Error(err))
		return nil
	}

	m.owners.clear(name)

	if err := os.Remove(m.ownerStateFile(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("remove migrated remembered owner file", zap.Error(err))
	}

	return nil
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

	return m.ownerInfo(s.ctx, name, p.Owner)
}

func (m *Manager) ownerInfo(ctx context.Context, name, owner string) (*OwnerInfo, error) {
	st, _, err := m.loadOwnerRecord(ctx, name)
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
// policy (an explicit operator action) and records the previous owner in
// the repository. When the owner was written but the record could not be,
// the error says so and names the previous owner.
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

	m.settleOwnerRecord(s.ctx, name, p.Owner == self, s.log)

	if p.Owner != self {
		prev := p.Owner
		if err := m.changeOwner(s, p, ReasonManual); err != nil {
			return nil, err
		}

		if _, pending := m.owners.get(name); pending {
			// A one-shot command's memory ends with it: say what was lost.
			return nil, fmt.Errorf("repository %q: took maintenance ownership from %q but could not record it in the repository; hand back with --to %q", name, prev, prev)
		}
	}

	return m.ownerInfo(s.ctx, name, p.Owner)
}

var ownerPattern = regexp.MustCompile(`^[^@\s]+@[^@\s]+$`)

// ErrNothingToHandBack means no previous owner is remembered and none was given.
var ErrNothingToHandBack = errors.New("no previous owner remembered")

// HandBack gives maintenance ownership to `to`, or when it is empty to the
// owner recorded when this identity took it (in the repository, so the
// record survives restarts and is shared by replicas). It only hands back
// what it owns. held must be a valid lease on the repository (see Run).
func (m *Manager) HandBack(ctx context.Context, held *lease.Held, name, to string) (*OwnerInfo, error) {
	ctx, done, err := m.leased(ctx, held, name)
	if err != nil {
		return nil, err
	}
	defer done()

	if to != "" && !ownerPattern.MatchString(to) {
		return nil, fmt.Errorf("hand back to %q: want user@host", to)
	}

	s, err := m.open(ctx, name)
	if err != nil {
		return nil, err
	}
	defer s.Close()

	st, _, err := m.loadOwnerRecord(s.ctx, name)
	if err != nil {
		return nil, err
	}

	if to == "" {
		if !st.Remembered {
			return nil, fmt.Errorf("repository %q: %w; pass --to user@host", name, ErrNothingToHandBack)
		}

		to = st.PreviousOwner
	}

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

	s.log.Info("handed back maintenance ownership", zap.String("previous_owner", self), zap.String("new_owner", to))

	// The hand-back happened; a record left behind only names an owner we
	// no longer hold, and the next takeover replaces it.
	if err := m.forgetOwnerRecord(s.ctx, name); err != nil {
		s.log.Warn("forget previous owner after handing back", zap.Error(err))
	}

	return m.ownerInfo(s.ctx, name, to)
}

// HandBackOnExit hands ownership back for every repository whose spec asks
// for it and that this identity took over (by the record in the
// repository), each inside guard (the repository's lease, which it passes
// to fn). Errors are logged per repository.
func (m *Manager) HandBackOnExit(ctx context.Context, guard func(ctx context.Context, name string, fn func(context.Context, *lease.Held) error) error) {
	for _, name := range m.Names() {
		spec, err := m.spec(name)
		if err != nil || !spec.Ownership.HandBackOnExit {
			continue
		}

		st, _, err := m.loadOwnerRecord(ctx, name)
		if err != nil {
			m.log.Error("hand back ownership on exit", zap.String("repository", name), zap.Error(err))
			continue
		}

		if !st.Remembered {
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
