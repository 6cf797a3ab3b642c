package repository

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/blob/filesystem"
	"github.com/kopia/kopia/repo/blob/s3"
)

// Storage names where a repository's blobs live. Exactly one backend is set.
type Storage struct {
	Filesystem *FilesystemStorage
	S3         *S3Storage

	// open replaces the real backends in tests (a storage whose timestamps
	// follow a fake clock, fault injection). Set through export_test.go only.
	open func(ctx context.Context) (blob.Storage, error)
}

// FilesystemStorage is a repository in a local directory.
type FilesystemStorage struct {
	Path string
}

// S3Storage is a repository in an S3-compatible bucket.
type S3Storage struct {
	Bucket        string
	Prefix        string
	Endpoint      string
	Region        string
	Insecure      bool // plain http
	SkipTLSVerify bool
	// AccessKeyID and SecretAccessKey may both be empty: kopia then falls back
	// to the AWS_* environment and instance credentials. They are used when
	// Credentials is nil.
	AccessKeyID     string
	SecretAccessKey string
	// Credentials, when set, returns the access key ID and secret access key
	// and takes the place of AccessKeyID and SecretAccessKey. It is called
	// every time the storage is opened (each run opens it), so a rotated key
	// file is used by the next run without a restart. Returning two empty
	// strings falls back to the ambient credentials as above.
	Credentials func() (accessKeyID, secretAccessKey string, err error)
	// SessionCredentials, when set, takes the place of Credentials and also
	// returns a session token (temporary AWS credentials, as an AWS
	// shared-credentials file may hold). It is called at every open too.
	SessionCredentials func() (S3Credentials, error)
	// CACert, when not empty, is a PEM bundle of the certificate
	// authorities that sign the endpoint's certificate (Velero's
	// BackupStorageLocation caCert), trusted instead of the system's. It
	// applies to kopia's storage and to the lease record's client alike.
	CACert []byte
	// CACertSource, when set, takes the place of CACert and returns the
	// bundle (nil: the system's roots). Like the credentials it is called
	// at every open, so a bundle kept in a Secret (Velero's caCertRef) that
	// was unreadable, missing or rotated is used as it is now by the next
	// run, without a restart.
	CACertSource func() ([]byte, error)
}

// S3Credentials are S3 keys with an optional session token.
type S3Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
}

// String never shows the secret key or the token.
func (c S3Credentials) String() string {
	return fmt.Sprintf("S3Credentials{AccessKeyID: %q, SecretAccessKey: <redacted>, SessionToken: <redacted>}", c.AccessKeyID)
}

// GoString never shows the secret key or the token (%#v).
func (c S3Credentials) GoString() string { return c.String() }

// options builds kopia's S3 options, reading the credentials and the CA
// bundle now.
func (s *S3Storage) options() (*s3.Options, error) {
	id, secret, token := s.AccessKeyID, s.SecretAccessKey, ""
	switch {
	case s.SessionCredentials != nil:
		c, err := s.SessionCredentials()
		if err != nil {
			return nil, fmt.Errorf("read s3 credentials: %w", err)
		}

		id, secret, token = c.AccessKeyID, c.SecretAccessKey, c.SessionToken
	case s.Credentials != nil:
		var err error
		if id, secret, err = s.Credentials(); err != nil {
			return nil, fmt.Errorf("read s3 credentials: %w", err)
		}
	}

	ca := s.CACert
	if s.CACertSource != nil {
		var err error
		if ca, err = s.CACertSource(); err != nil {
			return nil, fmt.Errorf("read CA bundle: %w", err)
		}
	}

	return &s3.Options{
		BucketName:      s.Bucket,
		Prefix:          s.Prefix,
		Endpoint:        s.Endpoint,
		Region:          s.Region,
		DoNotUseTLS:     s.Insecure,
		DoNotVerifyTLS:  s.SkipTLSVerify,
		RootCA:          ca,
		AccessKeyID:     id,
		SecretAccessKey: secret,
		SessionToken:    token,
	}, nil
}

// Location describes the storage for people: it never contains a credential.
func (s Storage) Location() string {
	switch {
	case s.Filesystem != nil:
		return "filesystem:" + s.Filesystem.Path
	case s.S3 != nil:
		scheme := "https"
		if s.S3.Insecure {
			scheme = "http"
		}

		return fmt.Sprintf("s3:%s://%s/%s/%s", scheme, s.S3.Endpoint, s.S3.Bucket, s.S3.Prefix)
	case s.open != nil:
		return "custom"
	default:
		return "none"
	}
}

// fingerprint identifies the storage a connection file was made for, so a
// changed storage section is noticed and the repository reconnected. It hashes
// the location only: rotating credentials does not force a reconnect.
func (s Storage) fingerprint() string {
	h := sha256.Sum256([]byte(s.Location()))
	return hex.EncodeToString(h[:8])
}

func (s Storage) openBlobStorage(ctx context.Context, create bool) (blob.Storage, error) {
	switch {
	case s.open != nil:
		return s.open(ctx)
	case s.Filesystem != nil:
		return filesystem.New(ctx, &filesystem.Options{Path: s.Filesystem.Path}, create)
	case s.S3 != nil:
		o, err := s.S3.options()
		if err != nil {
			return nil, err
		}

		return s3.New(ctx, o, create)
	default:
		return nil, errors.New("no storage backend configured")
	}
}

// handleStorageType is the storage type written into the private kopia
// connection files. Instead of the backend's options (which for S3 include the
// secret key in plain JSON) the file holds only a handle; the backend is
// resolved in-process from the handle when kopia opens the repository. This
// keeps credentials off disk and lets the daemon wrap the storage kopia uses.
const handleStorageType = "kopia-maintd"

type handleOptions struct {
	Handle string `json:"handle"`
}

// handles maps a handle to the function that opens its real storage. kopia's
// storage registry is process-global, so this registry is too.
var handles sync.Map // string -> func(context.Context) (blob.Storage, error)

var registerHandleType = sync.OnceFunc(func() {
	blob.AddSupportedStorage(handleStorageType, handleOptions{}, func(ctx context.Context, o *handleOptions, _ bool) (blob.Storage, error) {
		v, ok := handles.Load(o.Handle)
		if !ok {
			return nil, fmt.Errorf("storage handle %q is not registered in this process", o.Handle)
		}

		st, err := v.(func(context.Context) (blob.Storage, error))(ctx)
		if err != nil {
			return nil, err
		}

		return &handleStorage{Storage: st, handle: o.Handle}, nil
	})
})

// handleStorage reports the handle as its connection info, so the connection
// file kopia writes names the handle and not the backend's credentials.
type handleStorage struct {
	blob.Storage
	handle string
}

func (h *handleStorage) ConnectionInfo() blob.ConnectionInfo {
	return blob.ConnectionInfo{Type: handleStorageType, Config: &handleOptions{Handle: h.handle}}
}
