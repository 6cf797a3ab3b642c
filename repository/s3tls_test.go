package repository

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// tlsSpec is s3Spec for a MinIO that serves HTTPS: the endpoint verified
// with ca (nil: the system's roots), or not verified with skipVerify.
func tlsSpec(name string, mc *harness.MinIO, prefix string, create bool, ca []byte, skipVerify bool) Spec {
	s := s3Spec(name, mc, "backups", prefix, create)
	s.Storage.S3.Insecure = false
	s.Storage.S3.CACert = ca
	s.Storage.S3.SkipTLSVerify = skipVerify

	return s
}

// isCertificateError tells whether an error message says that the server's
// certificate was not trusted, in the words Go's crypto/x509 uses, so that a
// person reading it knows to look at the CA bundle.
func isCertificateError(msg string) bool {
	return strings.Contains(msg, "x509: certificate signed by unknown authority") ||
		strings.Contains(msg, "tls: failed to verify certificate")
}

// checkLeaseRecord writes, refuses and reads the lease record of name: the
// conditional writes work through the lease record's own S3 client.
func checkLeaseRecord(t *testing.T, m *Manager, name string) {
	t.Helper()

	ctx := context.Background()
	rec := m.LeaseRecord(name)

	_, v0, _, err := rec.Read(ctx)
	if err != nil {
		t.Fatalf("read lease record: %v", err)
	}

	// Unique contents: an S3 version is the ETag, the MD5 of the contents,
	// so rewriting the bytes of an earlier write would bring its version
	// back (the lease package's records carry their write time).
	want := fmt.Sprintf(`{"holder":%q,"n":%d}`, name, time.Now().UnixNano())

	v1, err := rec.Swap(ctx, v0, []byte(want))
	if err != nil {
		t.Fatalf("write lease record: %v", err)
	}

	if _, err := rec.Swap(ctx, v0, []byte(`{"holder":"other"}`)); !errors.Is(err, ErrLeaseRecordConflict) {
		t.Fatalf("write naming a stale version: %v, want ErrLeaseRecordConflict", err)
	}

	if data, v, _, err := rec.Read(ctx); err != nil || v != v1 || string(data) != want {
		t.Fatalf("read lease record = %q, %q, %v; want %s, version %q", data, v, err, want, v1)
	}
}

// TestS3TLS runs against a MinIO that serves HTTPS with a certificate of a
// private CA, as a BackupStorageLocation with caCert points at. With that CA
// (alone or in a bundle), or with verification skipped, a repository is
// created and maintained and its lease record written conditionally. Without
// it, or with another CA, both kopia's storage and the lease record's client
// refuse the server, and say it is the certificate (never showing the secret
// key). A spec update that brings the right CA fixes the repository without
// a restart.
func TestS3TLS(t *testing.T) {
	ctx := context.Background()
	mc := harness.StartMinIOTLS(t)
	mc.MakeBucket(t, "backups")

	other := harness.NewCA(t)
	me := Identity{Username: "maintd", Hostname: "tls"}

	// The repository the refusals are tried on exists: a refusal must come
	// from the handshake, not from an empty prefix.
	setup := newTestManager(t, me, tlsSpec("r", mc, "kopia/existing/", true, mc.CA.PEM, false))
	if _, err := setup.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
		t.Fatalf("create the repository over TLS with its CA: %v", err)
	}

	t.Run("trusted", func(t *testing.T) {
		bundle := slices.Concat(other.PEM, mc.CA.PEM)
		for _, tc := range []struct {
			name       string
			ca         []byte
			skipVerify bool
		}{
			{"the CA", mc.CA.PEM, false},
			// A bundle of several authorities (an internal root and
			// another one) trusts every one of them.
			{"a bundle with the CA second", bundle, false},
			// skipTLSVerify means what it says, even next to a CA
			// that does not sign the server.
			{"skip verify without a CA", nil, true},
			{"skip verify with another CA", other.PEM, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				prefix := "kopia/" + strings.ReplaceAll(tc.name, " ", "-") + "/"
				m := newTestManager(t, me, tlsSpec("new", mc, prefix, true, tc.ca, tc.skipVerify),
					tlsSpec("r", mc, "kopia/existing/", false, tc.ca, tc.skipVerify))

				start := time.Now()
				if _, err := m.Run(ctx, testLease(t, "new"), "new", RunRequest{Cycle: Quick}); err != nil {
					t.Fatalf("create and maintain: %v", err)
				}

				rep, err := m.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick})
				if err != nil {
					t.Fatalf("open and maintain the existing repository: %v", err)
				}

				if rep.Owner != me.String() || len(rep.Tasks) == 0 {
					t.Fatalf("quick cycle: owner %q tasks %v", rep.Owner, taskNames(rep))
				}

				t.Logf("create, maintain twice: %s", time.Since(start).Round(time.Millisecond))
				checkLeaseRecord(t, m, "new")
			})
		}
	})

	// A CA source (Velero's caCertRef Secret) is read at every open by
	// kopia's storage and the lease record's client: while it fails, runs
	// fail with its reason; once it returns the CA, the next run works with
	// the same spec.
	t.Run("CA source", func(t *testing.T) {
		var (
			calls int
			ca    []byte
			err   = errors.New("get secret velero/minio-ca: forbidden")
		)

		spec := tlsSpec("r", mc, "kopia/existing/", false, nil, false)
		spec.Storage.S3.CACert = other.PEM // the source wins
		spec.Storage.S3.CACertSource = func() ([]byte, error) {
			calls++
			return ca, err
		}

		m := newTestManager(t, me, spec)

		_, runErr := m.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick})
		if runErr == nil || !strings.Contains(runErr.Error(), "read CA bundle: get secret velero/minio-ca: forbidden") {
			t.Fatalf("run while the CA source fails: %v", runErr)
		}

		if _, _, _, leaseErr := m.LeaseRecord("r").Read(ctx); leaseErr == nil || !strings.Contains(leaseErr.Error(), "read CA bundle: ") {
			t.Fatalf("lease record read while the CA source fails: %v", leaseErr)
		}

		ca, err = mc.CA.PEM, nil
		before := calls

		if _, err := m.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
			t.Fatalf("run once the CA source returns the CA: %v", err)
		}

		checkLeaseRecord(t, m, "r")

		if calls == before {
			t.Fatal("the CA source was not called again")
		}
	})

	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			ca   []byte
		}{
			{"no CA", nil},
			{"another CA", other.PEM},
		} {
			t.Run(tc.name, func(t *testing.T) {
				m := newTestManager(t, me, tlsSpec("r", mc, "kopia/existing/", false, tc.ca, false))

				runCtx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()

				start := time.Now()
				_, err := m.Run(runCtx, testLease(t, "r"), "r", RunRequest{Cycle: Quick})
				took := time.Since(start)

				if err == nil {
					t.Fatal("run against a server the CA does not sign succeeded")
				}

				t.Logf("refused after %s: %v", took.Round(time.Millisecond), err)

				msg := err.Error()
				if !strings.HasPrefix(msg, `repository "r": `) || !strings.Contains(msg, mc.Endpoint) || !isCertificateError(msg) {
					t.Errorf("error does not name the repository, the endpoint and the certificate problem: %s", msg)
				}

				if strings.Contains(msg, mc.SecretKey) {
					t.Error("error contains the secret key")
				}

				if took > 30*time.Second {
					t.Errorf("refusal took %s: a handshake failure is retried as if it were transient", took)
				}

				// The lease record's own client refuses the server too
				// (it must not fall back to skipping verification).
				_, _, _, err = m.LeaseRecord("r").Read(runCtx)
				if err == nil || !isCertificateError(err.Error()) {
					t.Errorf("lease record read: %v, want a certificate error", err)
				} else if strings.Contains(err.Error(), mc.SecretKey) {
					t.Error("lease record error contains the secret key")
				}

				if _, err := m.LeaseRecord("r").Swap(runCtx, "", []byte(`{}`)); err == nil || !isCertificateError(err.Error()) {
					t.Errorf("lease record write: %v, want a certificate error", err)
				}

				// The CA is fixed in the configuration: the next run
				// uses it, without a new manager.
				if err := m.Update([]Spec{tlsSpec("r", mc, "kopia/existing/", false, mc.CA.PEM, false)}); err != nil {
					t.Fatal(err)
				}

				if _, err := m.Run(ctx, testLease(t, "r"), "r", RunRequest{Cycle: Quick}); err != nil {
					t.Fatalf("run after the CA was fixed: %v", err)
				}

				checkLeaseRecord(t, m, "r")
			})
		}
	})
}
