package repository

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// keyFiles holds an S3 key pair in two files, as a mounted Secret does,
// and reads them the way the daemon's configuration does.
type keyFiles struct {
	t          *testing.T
	id, secret string
}

func newKeyFiles(t *testing.T) *keyFiles {
	dir := t.TempDir()
	return &keyFiles{t: t, id: filepath.Join(dir, "access-key-id"), secret: filepath.Join(dir, "secret-access-key")}
}

// rotate replaces the contents of both files.
func (k *keyFiles) rotate(id, secret string) {
	k.t.Helper()

	for file, v := range map[string]string{k.id: id, k.secret: secret} {
		if err := os.WriteFile(file, []byte(v+"\n"), 0o600); err != nil {
			k.t.Fatal(err)
		}
	}
}

func (k *keyFiles) read() (string, string, error) {
	id, err := os.ReadFile(k.id)
	if err != nil {
		return "", "", err
	}

	secret, err := os.ReadFile(k.secret)
	if err != nil {
		return "", "", err
	}

	return strings.TrimSpace(string(id)), strings.TrimSpace(string(secret)), nil
}

// TestS3OptionsReadCredentialsAtOpen: the options kopia's S3 backend gets
// are built at each open, from the key source as it is at that moment;
// without a source the static keys are used.
func TestS3OptionsReadCredentialsAtOpen(t *testing.T) {
	keys := newKeyFiles(t)
	st := &S3Storage{Bucket: "b", Endpoint: "s3.example:9000", AccessKeyID: "static-id", SecretAccessKey: "static-secret", Credentials: keys.read}

	keys.rotate("id-1", "secret-1")

	o, err := st.options()
	if err != nil || o.AccessKeyID != "id-1" || o.SecretAccessKey != "secret-1" || o.BucketName != "b" || o.Endpoint != "s3.example:9000" {
		t.Fatalf("first open: %+v, %v", o, err)
	}

	keys.rotate("id-2", "secret-2")

	if o, err = st.options(); err != nil || o.AccessKeyID != "id-2" || o.SecretAccessKey != "secret-2" {
		t.Fatalf("open after rotation: key id %q, %v; want the rotated key", o.AccessKeyID, err)
	}

	st.Credentials = nil
	if o, err = st.options(); err != nil || o.AccessKeyID != "static-id" || o.SecretAccessKey != "static-secret" {
		t.Fatalf("static keys: key id %q, %v", o.AccessKeyID, err)
	}

	// A key file that went away fails the open, naming the file only.
	st.Credentials = keys.read
	if err := os.Remove(keys.secret); err != nil {
		t.Fatal(err)
	}

	_, err = Storage{S3: st}.openBlobStorage(context.Background(), false)
	if err == nil || !strings.Contains(err.Error(), keys.secret) || strings.Contains(err.Error(), "secret-2") {
		t.Fatalf("open with a missing key file: %v", err)
	}
}

// TestS3RotatedKeyFileUsedByNextRun: one manager, no restart and no
// Update: a repository connected with a good key fails its next run once
// the key file holds a wrong secret (the error names neither secret), and
// succeeds again on the run after the right secret is written back.
func TestS3RotatedKeyFileUsedByNextRun(t *testing.T) {
	ctx := context.Background()
	mc := harness.StartMinIO(t)
	mc.MakeBucket(t, "backups")

	keys := newKeyFiles(t)
	keys.rotate(mc.AccessKey, mc.SecretKey)

	spec := s3Spec("s3", mc, "backups", "rotate/", true)
	spec.Storage.S3.AccessKeyID, spec.Storage.S3.SecretAccessKey = "", ""
	spec.Storage.S3.Credentials = keys.read

	m := newTestManager(t, Identity{Username: "maintd", Hostname: "c"}, spec)

	if _, err := m.Run(ctx, testLease(t, "s3"), "s3", RunRequest{Cycle: Quick}); err != nil {
		t.Fatalf("first run with the right key: %v", err)
	}

	const wrong = "rotated-to-a-wrong-secret"

	keys.rotate(mc.AccessKey, wrong)

	_, err := m.Run(ctx, testLease(t, "s3"), "s3", RunRequest{Cycle: Quick})
	if err == nil {
		t.Fatal("run after the key file got a wrong secret succeeded: the old key is still in use")
	}

	if msg := err.Error(); !strings.HasPrefix(msg, `repository "s3": `) || strings.Contains(msg, wrong) || strings.Contains(msg, mc.SecretKey) {
		t.Fatalf("wrong-key error: %s", msg)
	}

	keys.rotate(mc.AccessKey, mc.SecretKey)

	if _, err := m.Run(ctx, testLease(t, "s3"), "s3", RunRequest{Cycle: Full}); err != nil {
		t.Fatalf("run after the right key was written back: %v", err)
	}
}

// TestS3SessionCredentialsAndCACert: a session-credentials source wins over
// the key pair and its token reaches kopia's options; the CA bundle does
// too; and none of the secrets show in the credentials' printed forms.
func TestS3SessionCredentialsAndCACert(t *testing.T) {
	creds := S3Credentials{AccessKeyID: "AKIDSESSION", SecretAccessKey: "secret-xyz", SessionToken: "token-xyz"}
	ca := []byte("-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n")
	st := &S3Storage{
		Bucket: "b", Endpoint: "s3.example:9000", CACert: ca,
		Credentials:        func() (string, string, error) { return "other", "other", nil },
		SessionCredentials: func() (S3Credentials, error) { return creds, nil },
	}

	o, err := st.options()
	if err != nil {
		t.Fatal(err)
	}
	if o.AccessKeyID != creds.AccessKeyID || o.SecretAccessKey != creds.SecretAccessKey || o.SessionToken != creds.SessionToken || string(o.RootCA) != string(ca) {
		t.Errorf("options = id %q token set %t CA %d bytes", o.AccessKeyID, o.SessionToken != "", len(o.RootCA))
	}

	for _, s := range []string{creds.String(), fmt.Sprintf("%v %+v %#v", creds, creds, creds)} {
		if strings.Contains(s, "secret-xyz") || strings.Contains(s, "token-xyz") {
			t.Errorf("printed credentials show a secret: %s", s)
		}
	}

	// The lease record's own client trusts the same bundle, and a bundle
	// that holds no certificate is an error, not the system pool.
	if _, err := newMinioClient(st); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("lease client with a bundle of no certificate: %v", err)
	}
}
