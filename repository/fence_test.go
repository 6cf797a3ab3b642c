package repository

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestFenceStopsEveryWriteAndDelete: once the fence's check fails, the run
// touches storage no more: no put, no delete reaches it, and the refusals
// are counted.
func TestFenceStopsEveryWriteAndDelete(t *testing.T) {
	f := newUnsafeFixture(t)
	f.writer.snapshot("/data", map[string][]byte{"a": randomBytes(1, 1<<20)})
	f.clk.Advance(time.Hour)

	held, clk := fakeClockLease(t, "r")

	// A fenced run that may still write succeeds.
	if _, err := f.m.Run(context.Background(), held, "r", RunRequest{Cycle: Full}); err != nil {
		t.Fatalf("run under a valid fence: %v", err)
	}

	clk.SetTime(held.Deadline())

	f.st.mu.Lock()
	puts, deletes := f.st.puts, f.st.deletes
	f.st.mu.Unlock()

	_, err := f.m.Run(context.Background(), held, "r", RunRequest{Cycle: Full})
	if !errors.Is(err, ErrNoLease) {
		t.Fatalf("run after the fence closed: err = %v", err)
	}

	f.st.mu.Lock()
	newPuts, newDeletes := f.st.puts-puts, f.st.deletes-deletes
	f.st.mu.Unlock()

	if newPuts != 0 || newDeletes != 0 {
		t.Fatalf("storage saw %d puts and %d deletes after the fence closed", newPuts, newDeletes)
	}

	t.Logf("expired lease: %v", err)

	// The lease blobs are outside the fence: renewing must still work.
	lb, err := f.m.PutLeaseBlob(context.Background(), "r", "Host-1/abc")
	if err != nil || lb.Holder != "host-1-abc" {
		t.Fatalf("lease blob under a closed fence: %+v, %v", lb, err)
	}

	blobs, err := f.m.LeaseBlobs(context.Background(), "r")
	if err != nil || len(blobs) != 1 || !blobs[0].Written.Equal(lb.Written) {
		t.Fatalf("lease blobs = %+v, %v", blobs, err)
	}

	if err := f.m.DeleteLeaseBlob(context.Background(), "r", "Host-1/abc"); err != nil {
		t.Fatal(err)
	}
}
