package safety

import (
	"context"
	"time"
)

// Verdict is the outcome of one check.
type Verdict string

// Verdicts.
const (
	// Pass: the check found nothing running or writing.
	Pass Verdict = "pass"
	// Refuse: the check found a writer, or could not be carried out (the
	// gate fails closed: an API error, a timeout or a missing permission
	// refuses).
	Refuse Verdict = "refuse"
	// Absent: the kind the check looks at does not exist in the cluster
	// (its CRD is not installed); it cannot hold a writer.
	Absent Verdict = "absent"
)

// Check is one check's verdict with the evidence behind it.
type Check struct {
	// Name identifies the check, from a small fixed set (metric label):
	// velero-server, node-agent, data-path-pods, maintenance-jobs, backups,
	// restores, podvolumebackups, podvolumerestores, datauploads,
	// datadownloads, deletebackuprequests, backuprepositories, schedules,
	// repository-activity, config.
	Name string `json:"name"`
	// Namespace is the Velero namespace checked ("" for the repository).
	Namespace string  `json:"namespace,omitempty"`
	Verdict   Verdict `json:"verdict"`
	// Reason says in one line why the check refused or passed.
	Reason string `json:"reason"`
	// Evidence names what was seen: "Backup velero/nightly-1 phase
	// InProgress", "blob s0a1b2... age 3m10s session velero@node-1".
	Evidence []string `json:"evidence,omitempty"`
}

// Decision is the gate's answer for one repository at one moment.
type Decision struct {
	Repository string    `json:"repository"`
	Allowed    bool      `json:"allowed"`
	At         time.Time `json:"at"`
	Checks     []Check   `json:"checks"`
}

// Refusals returns the checks that refused.
func (d Decision) Refusals() []Check {
	var out []Check

	for _, c := range d.Checks {
		if c.Verdict == Refuse {
			out = append(out, c)
		}
	}

	return out
}

// Checker runs a group of checks. A returned error means the group could not
// be checked; the gate turns it into a refusal.
type Checker interface {
	Check(ctx context.Context) ([]Check, error)
}

// CheckerFunc adapts a function to Checker.
type CheckerFunc func(ctx context.Context) ([]Check, error)

// Check calls f.
func (f CheckerFunc) Check(ctx context.Context) ([]Check, error) { return f(ctx) }
