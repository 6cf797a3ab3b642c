package metrics

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

var leaseNames = []string{
	"kopia_maintenance_lease_held", "kopia_maintenance_lease_acquisitions_total",
	"kopia_maintenance_lease_losses_total", "kopia_maintenance_lease_skips_total",
}

const (
	helpLeaseHeld = `# HELP kopia_maintenance_lease_held 1 while this process holds the repository's lease.
# TYPE kopia_maintenance_lease_held gauge
`
	helpLeaseAcquisitions = `# HELP kopia_maintenance_lease_acquisitions_total Leases on the repository acquired by this process.
# TYPE kopia_maintenance_lease_acquisitions_total counter
`
	helpLeaseLosses = `# HELP kopia_maintenance_lease_losses_total Leases on the repository lost while held, by reason (expired, renew-failed, taken).
# TYPE kopia_maintenance_lease_losses_total counter
`
	helpLeaseSkips = `# HELP kopia_maintenance_lease_skips_total Maintenance runs skipped because another process holds the repository's lease.
# TYPE kopia_maintenance_lease_skips_total counter
`
)

// leaseState is one repository's lease series.
type leaseState struct {
	name                  string
	held                  int
	acquisitions, skips   int
	expired, failed, take int
}

// leaseExposition is the exact exposition of the lease metrics of repos, in
// the order given (sorted by name).
func leaseExposition(repos ...leaseState) string {
	var held, acq, losses, skips strings.Builder

	for _, r := range repos {
		fmt.Fprintf(&held, "kopia_maintenance_lease_held{repository=%q} %d\n", r.name, r.held)
		fmt.Fprintf(&acq, "kopia_maintenance_lease_acquisitions_total{repository=%q} %d\n", r.name, r.acquisitions)
		fmt.Fprintf(&losses, "kopia_maintenance_lease_losses_total{reason=\"expired\",repository=%q} %d\n", r.name, r.expired)
		fmt.Fprintf(&losses, "kopia_maintenance_lease_losses_total{reason=\"renew-failed\",repository=%q} %d\n", r.name, r.failed)
		fmt.Fprintf(&losses, "kopia_maintenance_lease_losses_total{reason=\"taken\",repository=%q} %d\n", r.name, r.take)
		fmt.Fprintf(&skips, "kopia_maintenance_lease_skips_total{repository=%q} %d\n", r.name, r.skips)
	}

	return helpLeaseAcquisitions + acq.String() + helpLeaseHeld + held.String() +
		helpLeaseLosses + losses.String() + helpLeaseSkips + skips.String()
}

// TestLeaseMetrics checks the exact exposition of the lease metrics: every
// series at 0 for each configured repository from the start, how the events
// move them, events about unconfigured repositories dropped, and what a
// reload keeps and drops.
func TestLeaseMetrics(t *testing.T) {
	m := New(BuildInfo{})
	check := func(want string) {
		t.Helper()

		if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), leaseNames...); err != nil {
			t.Fatal(err)
		}
	}

	m.SetRepositories([]string{"b", "a"})
	check(leaseExposition(leaseState{name: "a"}, leaseState{name: "b"}))

	// a: acquired, renewals fail, acquired again, held now.
	m.LeaseAcquired("a")
	check(leaseExposition(leaseState{name: "a", held: 1, acquisitions: 1}, leaseState{name: "b"}))
	m.LeaseLost("a", "renew-failed")
	m.LeaseAcquired("a")
	// b: another process holds it; then b's holder vanishes and this one
	// takes over, is paused past its deadline, and finds the lease taken.
	m.LeaseSkipped("b")
	m.LeaseSkipped("b")
	m.LeaseAcquired("b")
	m.LeaseLost("b", "expired")
	m.LeaseAcquired("b")
	m.LeaseLost("b", "taken")
	m.LeaseLost("b", "")   // ignored
	m.LeaseSkipped("gone") // not configured: dropped
	m.LeaseAcquired("gone")
	m.LeaseLost("gone", "taken")
	m.LeaseHeld("gone", true)

	a := leaseState{name: "a", held: 1, acquisitions: 2, failed: 1}
	check(leaseExposition(a, leaseState{name: "b", acquisitions: 2, skips: 2, expired: 1, take: 1}))

	// LeaseHeld sets the gauge either way; a release is not a loss.
	m.LeaseHeld("b", true)
	m.LeaseHeld("a", false)
	a.held = 0
	check(leaseExposition(a, leaseState{name: "b", held: 1, acquisitions: 2, skips: 2, expired: 1, take: 1}))

	// A reload drops b's series (held or not), keeps a's, brings c at 0.
	m.SetRepositories([]string{"a", "c"})
	check(leaseExposition(a, leaseState{name: "c"}))

	// Late events about b do not bring it back; b added back starts at 0.
	m.LeaseHeld("b", true)
	m.LeaseLost("b", "taken")
	check(leaseExposition(a, leaseState{name: "c"}))
	m.SetRepositories([]string{"a", "b", "c"})
	check(leaseExposition(a, leaseState{name: "b"}, leaseState{name: "c"}))
}
