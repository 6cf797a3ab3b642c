package repository

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
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

	var expired atomic.Bool

	remove := f.m.Fence("r", func() error {
		if expired.Load() {
			return errors.New("lease deadline passed")
		}

		return nil
	})
	defer remove()

	// A fenced run that may still write succeeds.
	if _, err := f.run(Full, nil); err != nil {
		t.Fatalf("run under a valid fence: %v", err)
	}

	expired.Store(true)

	f.st.mu.Lock()
	puts, deletes := f.st.puts, f.st.deletes
	f.st.mu.Unlock()

	_, err := f.run(Full, nil)
	if err == nil || !strings.Contains(err.Error(), "refused by the lease fence") {
		t.Fatalf("run after the fence closed: err = %v", err)
	}

	f.st.mu.Lock()
	newPuts, newDeletes := f.st.puts-puts, f.st.deletes-deletes
	f.st.mu.Unlock()

	if newPuts != 0 || newDeletes != 0 {
		t.Fatalf("storage saw %d puts and %d deletes after the fence closed", newPuts, newDeletes)
	}

	if n := f.m.FencedOperations("r"); n == 0 {
		t.Fatal("no refused operation counted")
	}

	t.Logf("refused %d storage operations, none reached storage", f.m.FencedOperations("r"))

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
