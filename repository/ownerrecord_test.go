package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kopia/kopia/repo/blob"
)

// ownerBlob returns the ownership record blob of identity and whether it
// exists.
func ownerBlob(st *memStorage, identity string) (ownerState, bool) {
	st.mu.Lock()
	b, ok := st.blobs[ownerRecordID(identity)]
	st.mu.Unlock()

	var rec ownerState
	if ok {
		ok = json.Unmarshal(b.data, &rec) == nil
	}

	return rec, ok
}

func putRaw(t *testing.T, st *memStorage, id blob.ID, data string) {
	t.Helper()

	if err := st.PutBlob(context.Background(), id, byteSlice(data), blob.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestOwnerRecordWriteFailureAfterTakeover: the params name us but the
// record cannot be written. The run goes on (maintenance is ours to do),
// this process still knows the previous owner and counts the takeover for
// the flap guard, and the next run records it with the takeover's time.
func TestOwnerRecordWriteFailureAfterTakeover(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	st := newMemStorage(clk.Now)

	var fail atomic.Bool

	always := Ownership{Policy: PolicyAlways, StaleAfter: 48 * time.Hour}
	velero := ownershipManager(t, clk, "default", "default", Ownership{Policy: PolicyNever}, st)
	us := ownershipManager(t, clk, "maintd", "cluster-a", always, faultyStorage{st, &fail, OwnerRecordPrefix})

	if _, err := velero.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	clk.Advance(time.Hour)
	tookOver := clk.Now()

	fail.Store(true)

	rep, err := us.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick})
	if err != nil || !rep.TookOver || len(rep.Tasks) == 0 {
		t.Fatalf("takeover whose record cannot be written: err = %v, report %+v, want a maintained repository", err, rep)
	}

	if _, ok := ownerBlob(st, "maintd@cluster-a"); ok {
		t.Fatal("ownership record written while its writes fail")
	}

	info, err := us.Owner(ctx, "r")
	if err != nil || info.PreviousOwner != "default@default" || !info.TookOverAt.Equal(tookOver) {
		t.Fatalf("same process after the failed record write: %+v (%v), want previous owner default@default at %s", info, err, tookOver)
	}

	clk.Advance(time.Hour)

	// Still failing: the run is not held back by the record either.
	if _, err := us.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatalf("second run with record writes failing: %v", err)
	}

	fail.Store(false)
	clk.Advance(time.Hour)

	if _, err := us.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	rec, ok := ownerBlob(st, "maintd@cluster-a")
	if !ok || rec.PreviousOwner != "default@default" || !rec.Remembered || !rec.TookOverAt.Equal(tookOver) || rec.Reason != ReasonAlways || rec.Version != ownerRecordVersion {
		t.Fatalf("record after storage recovered: %+v (present %v), want default@default taken over at %s", rec, ok, tookOver)
	}
}

// TestOwnerRecordPerIdentity: two daemon identities keep separate records
// in one repository, and each sees its own after a restart.
func TestOwnerRecordPerIdentity(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	st := newMemStorage(clk.Now)

	always := Ownership{Policy: PolicyAlways, StaleAfter: 48 * time.Hour}

	if _, err := ownershipManager(t, clk, "default", "default", Ownership{Policy: PolicyNever}, st).Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	clk.Advance(time.Hour)

	if _, err := ownershipManager(t, clk, "maintd", "cluster-a", always, st).TakeOwnership(ctx, testLease(t, "r"), "r"); err != nil {
		t.Fatal(err)
	}

	clk.Advance(time.Hour)

	if _, err := ownershipManager(t, clk, "maintd", "cluster-b", always, st).TakeOwnership(ctx, testLease(t, "r"), "r"); err != nil {
		t.Fatal(err)
	}

	a, err := ownershipManager(t, clk, "maintd", "cluster-a", always, st).Owner(ctx, "r")
	if err != nil || a.PreviousOwner != "default@default" || !a.TookOverAt.Equal(clk.Now().Add(-time.Hour)) {
		t.Fatalf("cluster-a's record: %+v (%v)", a, err)
	}

	b, err := ownershipManager(t, clk, "maintd", "cluster-b", always, st).Owner(ctx, "r")
	if err != nil || b.PreviousOwner != "maintd@cluster-a" || !b.TookOverAt.Equal(clk.Now()) {
		t.Fatalf("cluster-b's record: %+v (%v)", b, err)
	}
}

// TestLegacyOwnerFileMovesIntoRepository: the state directory file of an
// earlier release is read when the repository holds no record, moved into
// the repository by the next run, and then serves a restarted daemon.
func TestLegacyOwnerFileMovesIntoRepository(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	st := newMemStorage(clk.Now)

	always := Ownership{Policy: PolicyAlways, StaleAfter: 48 * time.Hour, HandBackOnExit: true}

	if _, err := ownershipManager(t, clk, "default", "default", Ownership{Policy: PolicyNever}, st).Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	// An earlier release took over: the owner is us, and only its state
	// directory remembers whom from.
	clk.Advance(time.Hour)

	old := ownershipManager(t, clk, "maintd", "cluster-a", always, st)
	if _, err := old.TakeOwnership(ctx, testLease(t, "r"), "r"); err != nil {
		t.Fatal(err)
	}

	if err := st.DeleteBlob(ctx, ownerRecordID("maintd@cluster-a")); err != nil {
		t.Fatal(err)
	}

	tookOver := clk.Now().Add(-24 * time.Hour)
	legacy := fmt.Sprintf(`{"previousOwner": "default@default", "remembered": true, "tookOverAt": %q, "reason": "stale"}`, tookOver.Format(time.RFC3339Nano))

	file := old.ownerStateFile("r")
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(file, []byte(legacy), 0o600); err != nil {
		t.Fatal(err)
	}

	info, err := old.Owner(ctx, "r")
	if err != nil || info.PreviousOwner != "default@default" || !info.TookOverAt.Equal(tookOver) {
		t.Fatalf("reading the old file: %+v (%v)", info, err)
	}

	clk.Advance(time.Hour)

	if _, err := old.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	rec, ok := ownerBlob(st, "maintd@cluster-a")
	if !ok || rec.PreviousOwner != "default@default" || !rec.TookOverAt.Equal(tookOver) || rec.Reason != ReasonStale {
		t.Fatalf("record after the run: %+v (present %v), want the old file's content", rec, ok)
	}

	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("old file after moving it: %v, want it removed", err)
	}

	restarted := ownershipManager(t, clk, "maintd", "cluster-a", always, st)
	restarted.HandBackOnExit(ctx, passGuard)

	if info, err := restarted.Owner(ctx, "r"); err != nil || info.Owner != "default@default" {
		t.Fatalf("after hand back by a restarted daemon: %+v (%v)", info, err)
	}
}

// TestOwnerRecordVersionZeroAndDamaged: a record in the old file format
// (no version) is read as it is; one that does not decode is ignored, and
// runs go on.
func TestOwnerRecordVersionZeroAndDamaged(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	st := newMemStorage(clk.Now)

	us := ownershipManager(t, clk, "maintd", "cluster-a", Ownership{Policy: PolicyAlways}, st)
	if _, err := us.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	putRaw(t, st, ownerRecordID("maintd@cluster-a"), `{"previousOwner":"default@default","remembered":true}`)

	info, err := us.Owner(ctx, "r")
	if err != nil || !info.PreviousOwnerKnown || info.PreviousOwner != "default@default" {
		t.Fatalf("version 0 record: %+v (%v)", info, err)
	}

	putRaw(t, st, ownerRecordID("maintd@cluster-a"), `{"version":1,"identity":"maintd@cluster_a","previousOwner":"x@y","remembered":true}`)

	info, err = us.Owner(ctx, "r")
	if err != nil || info.PreviousOwnerKnown {
		t.Fatalf("record of an identity with the same blob name: %+v (%v), want nothing remembered", info, err)
	}

	putRaw(t, st, ownerRecordID("maintd@cluster-a"), `{"previousOwner":`)

	info, err = us.Owner(ctx, "r")
	if err != nil || info.PreviousOwnerKnown {
		t.Fatalf("damaged record: %+v (%v), want nothing remembered", info, err)
	}

	if _, err := us.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatalf("run with a damaged record: %v", err)
	}
}

// TestRecordsPassTheLeaseFence: outside a leased operation, or with the
// lease expired, neither the ownership record nor an audit record reaches
// storage; inside a valid lease they do.
func TestRecordsPassTheLeaseFence(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	st := newMemStorage(clk.Now)

	us := ownershipManager(t, clk, "maintd", "cluster-a", Ownership{Policy: PolicyAlways}, st)
	if _, err := us.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	st.mu.Lock()
	puts, deletes := st.puts, st.deletes
	st.mu.Unlock()

	// No lease in the context: refused.
	if err := us.writeOwnerRecord(ctx, "r", ownerState{PreviousOwner: "x@y", Remembered: true}); !errors.Is(err, ErrNoLease) {
		t.Fatalf("owner record outside a lease: err = %v, want ErrNoLease", err)
	}

	if err := us.forgetOwnerRecord(ctx, "r"); !errors.Is(err, ErrNoLease) {
		t.Fatalf("forget owner record outside a lease: err = %v, want ErrNoLease", err)
	}

	if err := us.AppendAuditRecord(ctx, "r", []byte(`{}`)); !errors.Is(err, ErrNoLease) {
		t.Fatalf("audit record outside a lease: err = %v, want ErrNoLease", err)
	}

	// A lease that expired after the operation started: refused too.
	held, lclk := fakeClockLease(t, "r")

	lctx, done, err := us.Leased(ctx, held, "r")
	if err != nil {
		t.Fatal(err)
	}
	defer done()

	lclk.SetTime(held.Deadline())

	if err := us.AppendAuditRecord(lctx, "r", []byte(`{}`)); !errors.Is(err, ErrNoLease) {
		t.Fatalf("audit record after the lease expired: err = %v, want ErrNoLease", err)
	}

	st.mu.Lock()
	if st.puts != puts || st.deletes != deletes {
		t.Errorf("storage changed without a valid lease: puts %d→%d, deletes %d→%d", puts, st.puts, deletes, st.deletes)
	}
	st.mu.Unlock()

	if _, _, err := us.Leased(ctx, held, "r"); !errors.Is(err, ErrNoLease) {
		t.Fatalf("Leased with an expired lease: %v", err)
	}

	vctx, vdone, err := us.Leased(ctx, testLease(t, "r"), "r")
	if err != nil {
		t.Fatal(err)
	}
	defer vdone()

	if err := us.AppendAuditRecord(vctx, "r", []byte(`{}`)); err != nil {
		t.Fatalf("audit record inside a valid lease: %v", err)
	}
}

// TestAuditRecordsKeepTheNewest: the repository keeps the newest
// AuditRecordsKept records, oldest first, and a new manager reads them.
func TestAuditRecordsKeepTheNewest(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	st := newMemStorage(clk.Now)

	us := ownershipManager(t, clk, "maintd", "cluster-a", Ownership{Policy: PolicyAlways}, st)
	if _, err := us.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	lctx, done, err := us.Leased(ctx, testLease(t, "r"), "r")
	if err != nil {
		t.Fatal(err)
	}
	defer done()

	total := AuditRecordsKept + 3
	for i := range total {
		if err := us.AppendAuditRecord(lctx, "r", fmt.Appendf(nil, `{"n":%d}`, i)); err != nil {
			t.Fatal(err)
		}

		clk.Advance(time.Minute)
	}

	var stored int

	_ = st.ListBlobs(ctx, AuditRecordPrefix, func(blob.Metadata) error { stored++; return nil })

	if stored != AuditRecordsKept {
		t.Fatalf("%d audit blobs stored after %d appends, want %d", stored, total, AuditRecordsKept)
	}

	restarted := ownershipManager(t, clk, "maintd", "cluster-a", Ownership{Policy: PolicyAlways}, st)

	all, err := restarted.AuditRecords(ctx, "r", 0)
	if err != nil || len(all) != AuditRecordsKept {
		t.Fatalf("all records: %d (%v), want %d", len(all), err, AuditRecordsKept)
	}

	if string(all[0]) != `{"n":3}` || string(all[len(all)-1]) != fmt.Sprintf(`{"n":%d}`, total-1) {
		t.Fatalf("records run from %s to %s, want n=3 to n=%d", all[0], all[len(all)-1], total-1)
	}

	last, err := restarted.AuditRecords(ctx, "r", 2)
	if err != nil || len(last) != 2 || !strings.Contains(string(last[0]), fmt.Sprint(total-2)) || !strings.Contains(string(last[1]), fmt.Sprint(total-1)) {
		t.Fatalf("newest 2 records: %q (%v)", last, err)
	}
}

// landsThenFails stores index blobs and then reports an error while armed:
// a write that reached the bucket whose answer was lost (a timeout).
type landsThenFails struct {
	*memStorage
	armed *atomic.Bool
}

func (s landsThenFails) PutBlob(ctx context.Context, id blob.ID, data blob.Bytes, opts blob.PutOptions) error {
	err := s.memStorage.PutBlob(ctx, id, data, opts)
	if err == nil && s.armed.Load() && strings.HasPrefix(string(id), "x") {
		return errors.New("injected: timeout awaiting response headers")
	}

	return err
}

// TestTakeoverWriteThatLandedDespiteAnError: the params write reports an
// error but reached storage. The next run finds us the owner and records
// the takeover the failed-looking run made.
func TestTakeoverWriteThatLandedDespiteAnError(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	st := newMemStorage(clk.Now)

	var armed atomic.Bool

	velero := ownershipManager(t, clk, "default", "default", Ownership{Policy: PolicyNever}, st)
	us := ownershipManager(t, clk, "maintd", "cluster-a", Ownership{Policy: PolicyAlways}, landsThenFails{st, &armed})

	if _, err := velero.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatal(err)
	}

	clk.Advance(time.Hour)
	tookOver := clk.Now()

	armed.Store(true)

	if _, err := us.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err == nil || !strings.Contains(err.Error(), "write maintenance owner") {
		t.Fatalf("takeover whose index write reported an error: err = %v, want the params write's error", err)
	} else {
		t.Logf("takeover run: %v", err)
	}

	armed.Store(false)

	if _, ok := ownerBlob(st, "maintd@cluster-a"); ok {
		t.Fatal("takeover recorded although its params write reported an error")
	}

	clk.Advance(time.Hour)

	rep, err := us.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick})
	if err != nil || rep.TookOver || rep.PreviousOwner != "maintd@cluster-a" {
		t.Fatalf("next run: err = %v, report %+v, want us already the owner", err, rep)
	}

	rec, ok := ownerBlob(st, "maintd@cluster-a")
	if !ok || rec.PreviousOwner != "default@default" || !rec.TookOverAt.Equal(tookOver) {
		t.Fatalf("record after the next run: %+v (present %v), want default@default taken over at %s", rec, ok, tookOver)
	}
}
