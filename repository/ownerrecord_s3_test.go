package repository

import (
	"context"
	"errors"
	"testing"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// TestOwnerAndAuditRecordsOnMinIO: on a real S3 bucket, the ownership and
// audit records written by one daemon are read by a new manager on a new
// empty state directory (a restarted pod on another node), which hands
// ownership back to default@default.
func TestOwnerAndAuditRecordsOnMinIO(t *testing.T) {
	ctx := context.Background()
	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, "backups")

	veleroSpec := s3Spec("r", mc, "backups", "kopia/ns1/", true)
	veleroSpec.Ownership = Ownership{Policy: PolicyNever}
	velero := newTestManager(t, Identity{Username: "default", Hostname: "default"}, veleroSpec)

	if _, err := velero.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatalf("velero creates the repository: %v", err)
	}

	me := Identity{Username: "maintd", Hostname: "cluster-a"}
	spec := s3Spec("r", mc, "backups", "kopia/ns1/", false)
	spec.Ownership = Ownership{Policy: PolicyAlways, HandBackOnExit: true}

	first := newTestManager(t, me, spec)

	rep, err := first.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick})
	if err != nil || !rep.TookOver || rep.PreviousOwner != "default@default" {
		t.Fatalf("takeover: err = %v, report %+v", err, rep)
	}

	lctx, done, err := first.Leased(ctx, testLease(t, "r"), "r")
	if err != nil {
		t.Fatal(err)
	}
	defer done()

	if err := first.AppendAuditRecord(lctx, "r", []byte(`{"repository":"r","result":"refused"}`)); err != nil {
		t.Fatal(err)
	}

	restarted := newTestManager(t, me, spec)

	records, err := restarted.AuditRecords(ctx, "r", 5)
	if err != nil || len(records) != 1 || string(records[0]) != `{"repository":"r","result":"refused"}` {
		t.Fatalf("audit records read by a new manager: %q (%v)", records, err)
	}

	info, err := restarted.Owner(ctx, "r")
	if err != nil || !info.IsSelf || info.PreviousOwner != "default@default" || info.TookOverAt.Before(rep.Start) || info.TookOverAt.After(rep.End) {
		t.Fatalf("ownership seen by a new manager: %+v (%v)", info, err)
	}

	restarted.HandBackOnExit(ctx, passGuard)

	info, err = velero.Owner(ctx, "r")
	if err != nil || info.Owner != "default@default" {
		t.Fatalf("owner after a new manager handed back: %+v (%v)", info, err)
	}

	if _, err := newTestManager(t, me, spec).HandBack(ctx, testLease(t, "r"), "r", ""); !errors.Is(err, ErrNothingToHandBack) {
		t.Fatalf("hand back again: err = %v, want ErrNothingToHandBack", err)
	}
}
