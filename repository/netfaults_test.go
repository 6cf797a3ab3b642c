package repository

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kopia/kopia/repo/blob/s3"
	"go.uber.org/goleak"

	"github.com/kopia-maintd/kopia-maintd/lease"
	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// taskSignal is an Observer that reports the run's first task start.
type taskSignal struct {
	started chan struct{}
	once    atomic.Bool
}

func (o *taskSignal) TaskStarted(string) {
	if o.once.CompareAndSwap(false, true) {
		close(o.started)
	}
}
func (o *taskSignal) TaskFinished(TaskResult) {}
func (o *taskSignal) Progress(Progress)       {}

// TestS3NetworkFaults maintains a MinIO repository through toxiproxy while
// a backup client writes through its own connection: added latency (runs
// finish), every connection reset (runs fail with an error naming the
// repository and its endpoint), and a full outage in the middle of a full
// cycle (the run ends, with an error, as soon as it is cancelled). After each fault
// the next run succeeds, every snapshot reads back, and no goroutine of the
// failed runs is left behind.
func TestS3NetworkFaults(t *testing.T) {
	ctx := context.Background()
	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, "backups")
	tp := harness.StartToxiproxy(t)
	proxied := tp.Proxy(t, "s3", mc.Endpoint)

	// The goroutines of the test framework and of the servers' harness
	// (their output readers) are there before any run.
	before := goleak.IgnoreCurrent()

	spec := s3Spec("s3", mc, "backups", "kopia/ns1/", true)
	spec.Storage.S3.Endpoint = proxied
	m := newTestManager(t, Identity{Username: "maintd", Hostname: "net"}, spec)

	lm, err := lease.New(lease.Options{Backend: freeLeases{}, Holder: "test", Duration: time.Hour, RenewInterval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}

	// run holds the lease for the run only, as the daemon does.
	run := func(ctx context.Context, cycle Cycle, obs Observer) (*Report, error) {
		held, err := lm.Acquire(ctx, "s3")
		if err != nil {
			t.Fatal(err)
		}
		defer held.Release(context.WithoutCancel(ctx)) //nolint:errcheck

		return m.Run(ctx, held, "s3", RunRequest{Cycle: cycle, Observer: obs})
	}

	mustRun := func(what string, cycle Cycle) {
		t.Helper()

		start := time.Now()
		if _, err := run(ctx, cycle, nil); err != nil {
			t.Fatalf("%s: %s cycle: %v", what, cycle, err)
		}

		t.Logf("%s: %s cycle succeeded in %s", what, cycle, time.Since(start).Round(time.Millisecond))
	}

	mustFail := func(what string, cycle Cycle) {
		t.Helper()

		runCtx, cancel := context.WithTimeout(ctx, 4*time.Minute)
		defer cancel()

		start := time.Now()

		_, err := run(runCtx, cycle, nil)
		if err == nil {
			t.Fatalf("%s: %s cycle succeeded", what, cycle)
		}

		if runCtx.Err() != nil {
			t.Fatalf("%s: the run only ended at the test's deadline: %v", what, err)
		}

		msg := err.Error()
		if !strings.HasPrefix(msg, `repository "s3": `) || strings.Contains(msg, mc.SecretKey) {
			t.Fatalf("%s: error does not name the repository, or holds the secret key: %s", what, msg)
		}

		t.Logf("%s: %s cycle failed after %s: %v", what, cycle, time.Since(start).Round(time.Millisecond), err)
	}

	mustRun("first run", Quick)

	st, err := s3.New(ctx, &s3.Options{
		BucketName: "backups", Prefix: "kopia/ns1/", Endpoint: mc.Endpoint, DoNotUseTLS: true,
		AccessKeyID: mc.AccessKey, SecretAccessKey: mc.SecretKey,
	}, false)
	if err != nil {
		t.Fatal(err)
	}

	writer := newTestClient(t, st, testPassword, "velero", "cluster-a", nil)
	kept := writer.snapshot("/data", map[string][]byte{"a": randomBytes(11, 2<<20), "b": randomBytes(12, 300<<10)})
	gone := writer.snapshot("/old", map[string][]byte{"c": randomBytes(13, 1<<20)})
	writer.deleteSnapshot(gone)

	// Latency: slower, not broken.
	tp.Latency(t, "s3", 150)
	mustRun("150 ms latency", Quick)
	mustRun("150 ms latency", Full)
	tp.RemoveToxic(t, "s3", "latency")

	// Every connection reset when it sends.
	tp.ResetPeer(t, "s3", 0)
	mustFail("connections reset", Quick)
	tp.RemoveToxic(t, "s3", "reset")
	mustRun("after the resets", Quick)

	// A full outage once the full cycle's first task has started. kopia
	// retries each storage call with backoff (ten attempts) and would give
	// up after about three and a half minutes here; the daemon's run ends
	// sooner when its lease cannot be renewed or the daemon stops, which
	// both cancel the run's context: 10 s into the outage, here, and the
	// run must end at once, with an error, and leave nothing behind.
	sig := &taskSignal{started: make(chan struct{})}
	runCtx, cancel := context.WithCancel(ctx)

	var cut atomic.Int64

	go func() {
		select {
		case <-sig.started:
		case <-time.After(time.Minute):
		}

		tp.SetEnabled(t, "s3", false)
		cut.Store(time.Now().UnixNano())
		time.Sleep(10 * time.Second)
		cancel()
	}()

	_, err = run(runCtx, Full, sig)
	ended := time.Now()

	cancel()

	switch {
	case err == nil:
		t.Fatal("full cycle succeeded through an outage")
	case cut.Load() == 0:
		t.Fatalf("full cycle ended before the outage: %v", err)
	case !strings.HasPrefix(err.Error(), `repository "s3": `) || strings.Contains(err.Error(), mc.SecretKey):
		t.Fatalf("outage error does not name the repository, or holds the secret key: %v", err)
	}

	if d := ended.Sub(time.Unix(0, cut.Load())); d > 20*time.Second {
		t.Fatalf("the run ended %v after the outage began, %v after it was cancelled", d, d-10*time.Second)
	}

	t.Logf("outage during a full cycle: ended %v after the outage began: %v", ended.Sub(time.Unix(0, cut.Load())).Round(time.Millisecond), err)

	tp.SetEnabled(t, "s3", true)
	mustRun("after the outage", Full)
	mustRun("after the outage", Quick)

	writer.snapshot("/data", map[string][]byte{"a": randomBytes(14, 1<<20)})
	writer.verifyAll()

	reader := newTestClient(t, st, testPassword, "reader", "cluster-a", nil)
	reader.want = writer.want
	reader.verifyAll()

	if _, ok := writer.want[kept]; !ok {
		t.Fatal("the kept snapshot is not tracked")
	}

	// Nothing of the runs is left: connections kept for reuse by HTTP
	// transports are idle, not leaked (they close on their own), and the
	// two clients are closed first.
	for _, c := range []*testClient{writer, reader} {
		if err := c.rep.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}

	goleak.VerifyNone(t, before,
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"))
}
