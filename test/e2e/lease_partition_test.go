package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// klPartitionConfig is the daemon configuration of TestLeasePartition: one
// MinIO repository reached through endpoint, repository-kind leases.
func klPartitionConfig(t *testing.T, dir, name, endpoint, addr string, create bool) string {
	t.Helper()

	return leaseTestConfig(t, dir, name, addr, fmt.Sprintf(`lease: {kind: repository, duration: %[3]s, renewInterval: %[4]s}
defaults:
  schedule: {quick: "@every 1s", full: "@every 3s", jitter: 0s}
repositories:
  - name: ns1
    create: %[2]v
    storage:
      s3: {bucket: backups, prefix: kopia/ns1/, endpoint: "%[1]s", insecure: true, accessKeyIDFile: access-key, secretAccessKeyFile: secret-key}
    passwordFile: password
`, endpoint, create, klDuration, klRenewInterval))
}

// TestLeasePartition: two daemon processes share one MinIO repository with
// repository-kind leases, each through its own toxiproxy link. When the
// holder's link is cut for twice the lease duration, the holder stops (its
// lease is lost and its run ends) and the other takes the lease over during
// the partition, not before the duration; once the link is back the cut-off
// process skips or takes turns again. The intervals in which the processes
// held the lease never overlap.
func TestLeasePartition(t *testing.T) {
	harness.BuildBinary(t, "./cmd/kopia-maintd")

	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, "backups")

	tp := harness.StartToxiproxy(t)
	endpoints := map[string]string{
		"a": tp.Proxy(t, "a", mc.Endpoint),
		"b": tp.Proxy(t, "b", mc.Endpoint),
	}

	dir := t.TempDir()
	writeFile(t, dir, "password", password)
	writeFile(t, dir, "access-key", mc.AccessKey)
	writeFile(t, dir, "secret-key", mc.SecretKey)

	creator := klPartitionConfig(t, dir, "creator", mc.Endpoint, "", true)
	if stdout, stderr, code := runCLI(t, "run-once", "--config", creator, "--repository", "ns1", "--cycle", "quick"); code != 0 {
		t.Fatalf("run-once creating the repository: code %d\n%s%s", code, stdout, stderr)
	}

	var procs []*klProc

	for _, name := range []string{"a", "b"} {
		addr := harness.FreeAddr(t)
		procs = append(procs, &klProc{name: name, d: startDaemon(t, klPartitionConfig(t, dir, name, endpoints[name], addr, false), addr)})
	}

	acquired := func(_ *klProc, l klLine) bool { return l.isLease("lease acquired") }

	klWatch(t, procs, "a first lease acquisition", 2*time.Minute, acquired)
	time.Sleep(10 * time.Second)

	// Cut the holder off MinIO right after it acquired, for twice the
	// lease duration.
	const partition = 2 * klDuration

	klSkipTo(procs)

	cut, acq := klWatch(t, procs, "a lease acquisition to cut off", time.Minute, acquired)
	tp.SetEnabled(t, cut.name, false)
	cutAt := time.Now()

	other := procs[0]
	if other == cut {
		other = procs[1]
	}

	cutLogFrom := len(cut.d.logs())

	t.Logf("cut %s off MinIO %s after its \"lease acquired\" line", cut.name, cutAt.Sub(acq.at).Round(time.Millisecond))

	_, took := klWatch(t, []*klProc{other}, "the other's takeover during the partition", partition, acquired)
	takeover := took.at.Sub(cutAt)
	t.Logf("%s took the lease over %s after %s was cut off (duration %s, renewInterval %s)",
		other.name, takeover.Round(time.Millisecond), cut.name, klDuration, klRenewInterval)

	if takeover < klDuration-time.Second {
		t.Errorf("takeover %s after the cut: a lease renewed %s before the cut was taken before its duration %s",
			takeover, cutAt.Sub(acq.at), klDuration)
	}

	time.Sleep(time.Until(cutAt.Add(partition)))
	tp.SetEnabled(t, cut.name, true)
	healedAt := time.Now()

	// What the cut-off process did during the partition: its lease lost,
	// its run stopped, and no acquisition.
	during, _ := klParse(cut.d.logs()[cutLogFrom:], 0)

	var lost, stopped *klLine

	for i, l := range during {
		if l.at.After(healedAt) {
			break
		}

		switch {
		case l.isLease("lease acquired"):
			t.Errorf("%s, cut off from MinIO, acquired the lease: %s", cut.name, l.raw)
		case l.isLease("lease lost") && lost == nil:
			lost = &during[i]
		case l.Msg == "maintenance run finished" && stopped == nil:
			stopped = &during[i]
		}
	}

	// The run stops on the lost lease (cancelled), or fails on the cut
	// link before its deadline; either way it ends before the takeover.
	switch {
	case stopped == nil:
		t.Errorf("%s's run in flight at the cut did not end during the %s partition", cut.name, partition)
	default:
		if lost != nil {
			t.Logf("%s lost its lease %s after the cut (%s)", cut.name, lost.at.Sub(cutAt).Round(time.Millisecond), lost.Reason)
		} else {
			t.Logf("%s logged no \"lease lost\": its run ended before the lease's deadline", cut.name)
		}

		t.Logf("%s's run ended %s after the cut with result %s", cut.name, stopped.at.Sub(cutAt).Round(time.Millisecond), stopped.Result)

		if stopped.Result == "success" {
			t.Errorf("%s's run in flight at the cut succeeded: %s", cut.name, stopped.raw)
		}

		if stopped.at.After(took.at) {
			t.Errorf("%s's run ended at %s, after %s took over at %s", cut.name,
				stopped.at.Format("15:04:05.000"), other.name, took.at.Format("15:04:05.000"))
		}
	}

	// Back on the network, the cut-off process skips or takes turns.
	klSkipTo(procs)
	klWatch(t, []*klProc{cut}, "the cut-off process back to skipping or acquiring", time.Minute, func(_ *klProc, l klLine) bool {
		return l.isLease("lease acquired") || (l.Logger == "lease" && strings.HasPrefix(l.Msg, "maintenance run skipped"))
	})
	time.Sleep(15 * time.Second)

	all := klCheckAll(t, procs)

	var inPartition int

	for _, iv := range all {
		if iv.proc == other.name && iv.start.After(cutAt) && iv.start.Before(healedAt) {
			inPartition++
		}
	}

	if inPartition == 0 {
		t.Errorf("%s did not acquire the lease during the partition", other.name)
	}
}
