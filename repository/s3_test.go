package repository

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kopia/kopia/repo/blob/s3"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

func s3Spec(name string, mc *harness.MinIO, bucket, prefix string, create bool) Spec {
	return Spec{
		Name: name,
		Storage: Storage{S3: &S3Storage{
			Bucket: bucket, Prefix: prefix, Endpoint: mc.Endpoint, Insecure: true,
			AccessKeyID: mc.AccessKey, SecretAccessKey: mc.SecretKey,
		}},
		Password:  staticPassword(testPassword),
		Create:    create,
		Ownership: Ownership{Policy: PolicyIfUnowned, StaleAfter: 48 * time.Hour},
	}
}

// TestS3RepositoryOnMinIO maintains a repository in a real MinIO bucket,
// with a second client writing snapshots, and checks that an S3 outage
// fails only that repository with a clear error and that it recovers.
func TestS3RepositoryOnMinIO(t *testing.T) {
	ctx := context.Background()
	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, "backups")

	me := Identity{Username: "maintd", Hostname: "cluster-a"}
	local := fsSpec("local", filepath.Join(t.TempDir(), "repo"), true, PolicyNever)
	m := newTestManager(t, me, s3Spec("s3", mc, "backups", "kopia/ns1/", true), local)

	if _, err := m.Run(ctx, testLease(t, "s3"), "s3", RunRequest{Cycle: Quick}); err != nil {
		t.Fatalf("create and maintain s3 repository: %v", err)
	}

	// A backup client writes a snapshot through its own S3 connection.
	st, err := s3.New(ctx, &s3.Options{
		BucketName: "backups", Prefix: "kopia/ns1/", Endpoint: mc.Endpoint, DoNotUseTLS: true,
		AccessKeyID: mc.AccessKey, SecretAccessKey: mc.SecretKey,
	}, false)
	if err != nil {
		t.Fatal(err)
	}

	writer := newTestClient(t, st, testPassword, "velero", "cluster-a", nil)
	writer.snapshot("/data", map[string][]byte{"a": randomBytes(1, 3<<20), "b": randomBytes(2, 100<<10)})

	rep, err := m.Run(ctx, testLease(t, "s3"), "s3", RunRequest{Cycle: Full})
	if err != nil {
		t.Fatalf("full cycle on s3: %v", err)
	}

	if !hasTask(rep, "snapshot-gc") || rep.Owner != me.String() {
		t.Fatalf("full cycle: owner %q tasks %v", rep.Owner, taskNames(rep))
	}

	// MinIO goes away: the S3 repository fails with an error naming it and
	// its endpoint, never the secret key; the filesystem repository runs.
	mc.Stop(t)

	runCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()

	start := time.Now()
	_, err = m.Run(runCtx, testLease(t, "s3"), "s3", RunRequest{Cycle: Quick})

	if err == nil {
		t.Fatal("run with MinIO stopped succeeded")
	}

	t.Logf("s3 outage detected after %s: %v", time.Since(start).Round(time.Millisecond), err)

	msg := err.Error()
	if !strings.HasPrefix(msg, `repository "s3": `) || !strings.Contains(msg, mc.Endpoint) {
		t.Fatalf("outage error does not name the repository and endpoint: %s", msg)
	}

	if strings.Contains(msg, mc.SecretKey) {
		t.Fatal("outage error contains the secret key")
	}

	if _, err := m.Run(ctx, testLease(t, "local"), "local", RunRequest{Cycle: Quick}); err != nil {
		t.Fatalf("filesystem repository failed during the S3 outage: %v", err)
	}

	mc.Start(t)

	if _, err := m.Run(ctx, testLease(t, "s3"), "s3", RunRequest{Cycle: Quick}); err != nil {
		t.Fatalf("s3 repository after MinIO came back: %v", err)
	}

	writer.verifyAll()
}

func TestS3WrongCredentialsAndMissingRepository(t *testing.T) {
	ctx := context.Background()
	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, "backups")

	bad := s3Spec("badkey", mc, "backups", "x/", false)
	bad.Storage.S3.SecretAccessKey = "definitely-not-the-secret"

	m := newTestManager(t, Identity{Username: "maintd", Hostname: "c"}, bad, s3Spec("empty", mc, "backups", "nothing-here/", false))

	_, err := m.Run(ctx, testLease(t, "badkey"), "badkey", RunRequest{Cycle: Quick})
	if err == nil || !strings.HasPrefix(err.Error(), `repository "badkey": `) {
		t.Fatalf("wrong secret key: err = %v", err)
	}

	if strings.Contains(err.Error(), "definitely-not-the-secret") {
		t.Fatal("error contains the secret key")
	}

	t.Logf("wrong secret key: %v", err)

	_, err = m.Run(ctx, testLease(t, "empty"), "empty", RunRequest{Cycle: Quick})
	want := `repository "empty": no kopia repository at s3:http://` + mc.Endpoint + `/backups/nothing-here/ (set create: true to create one)`

	if err == nil || err.Error() != want {
		t.Fatalf("missing repository:\n got %v\nwant %s", err, want)
	}
}
