package repository

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// The lease record of a repository: one object per repository, written only
// by compare-and-swap, outside kopia (kopia's blob.Storage has no
// conditional write: PutOptions.DoNotRecreate is unsupported on S3 and
// filesystem storage).
const (
	// LeaseRecordBlob is the S3 object of the lease record, under the
	// repository's prefix. It starts with LeaseBlobPrefix so that daemons
	// of the older list-based protocol see it as a live holder while it is
	// renewed; the '_' can never appear in an old-format holder name.
	LeaseRecordBlob = LeaseBlobPrefix + "_cas"
	// leaseProbeBlob, with a random suffix, is written once per process
	// and storage to prove the storage honours conditional writes.
	leaseProbeBlob = LeaseBlobPrefix + "_probe"
	// LeaseRecordDir is the directory of the lease record in a filesystem
	// repository. kopia lists only files ending in ".f" and never walks a
	// directory for a blob prefix it does not start.
	LeaseRecordDir = "kopia-maintd-lease.d"
)

// leaseRecordError is what a conditional write reports when it cannot be
// done: the record changed, or the storage cannot write conditionally. The
// lease package tells them apart by the Conflict and Unsupported methods.
type leaseRecordError struct {
	msg         string
	conflict    bool
	unsupported bool
}

func (e *leaseRecordError) Error() string     { return e.msg }
func (e *leaseRecordError) Conflict() bool    { return e.conflict }
func (e *leaseRecordError) Unsupported() bool { return e.unsupported }

var (
	// ErrLeaseRecordConflict reports a conditional write of the lease
	// record refused because the record changed since the version named.
	ErrLeaseRecordConflict error = &leaseRecordError{msg: "lease record changed by another writer", conflict: true}
	// ErrLeaseRecordUnsupported reports a storage that cannot write the
	// lease record conditionally.
	ErrLeaseRecordUnsupported error = &leaseRecordError{msg: "storage cannot write the lease record conditionally", unsupported: true}
)

// LeaseRecord is the lease record of one configured repository. Its methods
// open the storage for each call, like the lease blob methods.
type LeaseRecord struct {
	m    *Manager
	name string
}

// LeaseRecord returns the lease record of the named repository.
func (m *Manager) LeaseRecord(name string) *LeaseRecord {
	return &LeaseRecord{m: m, name: name}
}

// recordStore is a lease record in one storage.
type recordStore interface {
	read(ctx context.Context) ([]byte, string, time.Time, error)
	swap(ctx context.Context, version string, data []byte) (string, error)
}

func (r *LeaseRecord) store() (recordStore, error) {
	spec, err := r.m.spec(r.name)
	if err != nil {
		return nil, err
	}

	switch s := spec.Storage; {
	case s.Filesystem != nil:
		return &fileRecord{dir: filepath.Join(s.Filesystem.Path, LeaseRecordDir), create: spec.Create}, nil
	case s.S3 != nil:
		cli, err := newMinioClient(s.S3)
		if err != nil {
			return nil, err
		}

		return &s3Record{cli: cli, bucket: s.S3.Bucket, key: s.S3.Prefix + LeaseRecordBlob, probe: s.S3.Prefix + leaseProbeBlob, location: s.Location()}, nil
	default:
		return nil, ErrLeaseRecordUnsupported
	}
}

// Read returns the record's contents, its version and the storage's
// timestamp of its last write; version "" when there is none.
func (r *LeaseRecord) Read(ctx context.Context) ([]byte, string, time.Time, error) {
	st, err := r.store()
	if err != nil {
		return nil, "", time.Time{}, fmt.Errorf("repository %q: lease record: %w", r.name, err)
	}

	data, version, modified, err := st.read(ctx)
	if err != nil {
		return nil, "", time.Time{}, fmt.Errorf("repository %q: read lease record: %w", r.name, err)
	}

	return data, version, modified, nil
}

// Swap writes data as the record if its version is still version ("": only
// if there is none) and returns the new version; otherwise it returns an
// error wrapping ErrLeaseRecordConflict.
func (r *LeaseRecord) Swap(ctx context.Context, version string, data []byte) (string, error) {
	st, err := r.store()
	if err != nil {
		return "", fmt.Errorf("repository %q: lease record: %w", r.name, err)
	}

	next, err := st.swap(ctx, version, data)
	if err != nil {
		return "", fmt.Errorf("repository %q: write lease record: %w", r.name, err)
	}

	return next, nil
}

// s3Record is the lease record as one S3 object whose ETag is its version:
// created with If-None-Match: * and replaced with If-Match: <etag>, which
// AWS S3 and MinIO evaluate atomically against the current object. The ETag
// of a simple upload is the MD5 of its contents, so writing the same bytes
// again brings the same version back: every write must differ (the lease
// package's records carry their write time and a token per acquisition).
type s3Record struct {
	cli      *minio.Client
	bucket   string
	key      string
	probe    string
	location string
}

// minioClients keeps one client per S3 settings, so that renewals reuse
// connections (and the bucket's region lookup) instead of opening new ones.
// Keyed by value, with the keys as read at this open: changed settings or
// rotated credentials get a new client.
var minioClients sync.Map // minioClientKey -> *minio.Client

// minioClientKey is what a client is built from.
type minioClientKey struct {
	endpoint, region        string
	insecure, skipTLSVerify bool
	accessKeyID, secret     string
	token, caCert           string
}

// newMinioClient returns a client built from the same settings, credential
// chain and TLS options as kopia's S3 storage. The keys and the CA bundle
// are read now, as kopia's storage reads them at every open, so a rotated
// key file or CA is used by the next lease operation.
func newMinioClient(s *S3Storage) (*minio.Client, error) {
	opts, err := s.options()
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", s.Endpoint, err)
	}

	key := minioClientKey{
		endpoint: s.Endpoint, region: s.Region, insecure: s.Insecure, skipTLSVerify: s.SkipTLSVerify,
		accessKeyID: opts.AccessKeyID, secret: opts.SecretAccessKey,
		token: opts.SessionToken, caCert: string(opts.RootCA),
	}

	if c, ok := minioClients.Load(key); ok {
		return c.(*minio.Client), nil //nolint:forcetypeassert
	}

	creds := credentials.NewChainCredentials([]credentials.Provider{
		&credentials.Static{Value: credentials.Value{
			AccessKeyID: opts.AccessKeyID, SecretAccessKey: opts.SecretAccessKey, SessionToken: opts.SessionToken,
			SignerType: credentials.SignatureV4,
		}},
		&credentials.EnvAWS{},
		&credentials.IAM{Client: &http.Client{Transport: http.DefaultTransport}},
	})

	transport := http.DefaultTransport.(*http.Transport).Clone() //nolint:forcetypeassert
	switch {
	case s.SkipTLSVerify:
		transport.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // configured by the user
	case len(opts.RootCA) > 0:
		// As kopia's S3 storage does with RootCA: only these authorities.
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(opts.RootCA) {
			return nil, fmt.Errorf("s3 client for %s: the CA bundle holds no PEM certificate", s.Endpoint)
		}

		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}

	// One attempt per request: the lease's renewal loop retries on its own
	// schedule within the deadline, and a release or takeover must not sit
	// in backoff through a partition. A retried conditional write whose
	// first attempt landed would be refused anyway (the record's token
	// tells the holder it was its own).
	cli, err := minio.New(s.Endpoint, &minio.Options{Creds: creds, Secure: !s.Insecure, Region: s.Region, Transport: transport, MaxRetries: 1})
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", s.Endpoint, err)
	}

	c, _ := minioClients.LoadOrStore(key, cli)

	return c.(*minio.Client), nil //nolint:forcetypeassert
}

func (r *s3Record) read(ctx context.Context) ([]byte, string, time.Time, error) {
	// One GET returns the body together with the ETag and time of the
	// version it carries. minio.Client.GetObject would stat first and then
	// fetch with If-Match on that ETag, so a swap landing between the two
	// requests fails the read with 412 although nothing is wrong.
	body, info, _, err := minio.Core{Client: r.cli}.GetObject(ctx, r.bucket, r.key, minio.GetObjectOptions{})
	if err != nil {
		if minio.ToErrorResponse(err).Code == "NoSuchKey" {
			return nil, "", time.Time{}, nil
		}

		return nil, "", time.Time{}, fmt.Errorf("get %s: %w", r.key, err)
	}
	defer body.Close() //nolint:errcheck

	data, err := io.ReadAll(body)
	if err != nil {
		return nil, "", time.Time{}, fmt.Errorf("get %s: %w", r.key, err)
	}

	return data, info.ETag, info.LastModified, nil
}

func (r *s3Record) swap(ctx context.Context, version string, data []byte) (string, error) {
	if err := r.proveConditional(ctx); err != nil {
		return "", err
	}

	opts := minio.PutObjectOptions{ContentType: "application/json"}
	if version == "" {
		opts.SetMatchETagExcept("*")
	} else {
		opts.SetMatchETag(version)
	}

	info, err := r.cli.PutObject(ctx, r.bucket, r.key, bytes.NewReader(data), int64(len(data)), opts)
	if err != nil {
		if isPreconditionFailed(err) {
			return "", fmt.Errorf("put %s: %w", r.key, ErrLeaseRecordConflict)
		}

		return "", fmt.Errorf("put %s: %w", r.key, err)
	}

	return info.ETag, nil
}

// isPreconditionFailed reports a conditional write refused: 412, 409
// ConditionalRequestConflict (AWS, for a concurrent conditional write) or
// 404 (If-Match naming an object deleted meanwhile).
func isPreconditionFailed(err error) bool {
	resp := minio.ToErrorResponse(err)

	switch {
	case resp.StatusCode == http.StatusPreconditionFailed, resp.Code == "PreconditionFailed":
		return true
	case resp.Code == "ConditionalRequestConflict":
		return true
	case resp.Code == "NoSuchKey":
		return true
	default:
		return false
	}
}

// conditionalWrites caches, per storage location, whether the storage
// honours conditional writes. A store that ignores If-None-Match would let
// two creates both succeed, so this is proven before the record is used.
var conditionalWrites sync.Map // location -> bool

// proveConditional writes a probe object twice under conditions that must
// fail; a storage that accepts either write ignores the conditions.
func (r *s3Record) proveConditional(ctx context.Context) error {
	if ok, known := conditionalWrites.Load(r.location); known {
		if !ok.(bool) { //nolint:forcetypeassert
			return ErrLeaseRecordUnsupported
		}

		return nil
	}

	// A key of its own: probes of other processes (or other leases of
	// this one) running at the same time must not delete or create ours,
	// or an If-None-Match would pass for the wrong reason.
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Errorf("probe name: %w", err)
	}

	probe := r.probe + "-" + hex.EncodeToString(b[:])
	payload := []byte(`{"probe":true}`)

	info, err := r.cli.PutObject(ctx, r.bucket, probe, bytes.NewReader(payload), int64(len(payload)), minio.PutObjectOptions{})
	if err != nil {
		return fmt.Errorf("put %s: %w", probe, err)
	}

	defer r.cli.RemoveObject(context.WithoutCancel(ctx), r.bucket, probe, minio.RemoveObjectOptions{}) //nolint:errcheck

	supported := true

	for _, cond := range []func(*minio.PutObjectOptions){
		func(o *minio.PutObjectOptions) { o.SetMatchETagExcept("*") },
		func(o *minio.PutObjectOptions) { o.SetMatchETag("0" + info.ETag) },
	} {
		var opts minio.PutObjectOptions
		cond(&opts)

		_, err := r.cli.PutObject(ctx, r.bucket, probe, bytes.NewReader(payload), int64(len(payload)), opts)

		switch resp := minio.ToErrorResponse(err); {
		case err == nil:
			supported = false
		case isPreconditionFailed(err):
		case resp.StatusCode == http.StatusNotImplemented || resp.Code == "NotImplemented":
			supported = false
		default:
			return fmt.Errorf("put %s: %w", probe, err)
		}
	}

	conditionalWrites.Store(r.location, supported)

	if !supported {
		return ErrLeaseRecordUnsupported
	}

	return nil
}

// fileRecord is the lease record in a directory of generation files:
// gen-<n> holds version n, the highest present is current. A swap from
// version n writes a temporary file and hard-links it to gen-<n+1>, which
// fails if the file exists: exactly one writer wins each generation. A writer
// whose link succeeds only because an old generation had been cleaned up
// finds a higher one and withdraws. The two newest generations are kept, so
// the current one is never removed.
type fileRecord struct {
	dir    string
	create bool
}

const genPrefix = "gen-"

func genName(n uint64) string { return fmt.Sprintf("%s%020d", genPrefix, n) }

// generations returns the generation numbers present, ascending.
func (r *fileRecord) generations() ([]uint64, []os.DirEntry, error) {
	entries, err := os.ReadDir(r.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}

	if err != nil {
		return nil, nil, fmt.Errorf("list %s: %w", r.dir, err)
	}

	var gens []uint64

	for _, e := range entries {
		if n, ok := strings.CutPrefix(e.Name(), genPrefix); ok {
			if g, err := strconv.ParseUint(n, 10, 64); err == nil {
				gens = append(gens, g)
			}
		}
	}

	sort.Slice(gens, func(i, j int) bool { return gens[i] < gens[j] })

	return gens, entries, nil
}

// fileReadAttempts bounds retries of a read whose generation was cleaned up
// between listing and reading (two swaps in between).
const fileReadAttempts = 5

func (r *fileRecord) read(_ context.Context) ([]byte, string, time.Time, error) {
	for range fileReadAttempts {
		gens, _, err := r.generations()
		if err != nil {
			return nil, "", time.Time{}, err
		}

		if len(gens) == 0 {
			return nil, "", time.Time{}, nil
		}

		g := gens[len(gens)-1]
		path := filepath.Join(r.dir, genName(g))

		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}

		if err != nil {
			return nil, "", time.Time{}, fmt.Errorf("read %s: %w", path, err)
		}

		fi, err := os.Stat(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}

		if err != nil {
			return nil, "", time.Time{}, fmt.Errorf("stat %s: %w", path, err)
		}

		return data, strconv.FormatUint(g, 10), fi.ModTime(), nil
	}

	return nil, "", time.Time{}, fmt.Errorf("read lease record in %s: still changing after %d attempts", r.dir, fileReadAttempts)
}

func (r *fileRecord) swap(_ context.Context, version string, data []byte) (string, error) {
	var cur uint64

	if version != "" {
		g, err := strconv.ParseUint(version, 10, 64)
		if err != nil {
			return "", fmt.Errorf("lease record version %q: %w", version, ErrLeaseRecordConflict)
		}

		cur = g
	}

	if err := r.ensureDir(); err != nil {
		return "", err
	}

	tmp, err := r.writeTemp(data)
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp) //nolint:errcheck

	next := cur + 1
	target := filepath.Join(r.dir, genName(next))

	if err := os.Link(tmp, target); err != nil {
		switch {
		case errors.Is(err, fs.ErrExist):
			return "", fmt.Errorf("link %s: %w", target, ErrLeaseRecordConflict)
		case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.ENOTSUP), errors.Is(err, syscall.ENOSYS), errors.Is(err, syscall.EOPNOTSUPP):
			// No hard links here (some FUSE and SMB mounts).
			return "", fmt.Errorf("link %s: %v: %w", target, err, ErrLeaseRecordUnsupported)
		default:
			return "", fmt.Errorf("link %s: %w", target, err)
		}
	}

	gens, entries, err := r.generations()
	if err != nil {
		return "", err
	}

	if len(gens) == 0 || gens[len(gens)-1] != next {
		// Our generation had been written and cleaned up before: the
		// record moved on past the version we named.
		_ = os.Remove(target)
		return "", fmt.Errorf("link %s: a newer generation exists: %w", target, ErrLeaseRecordConflict)
	}

	// Best effort, as for kopia's own filesystem storage: the link is
	// already visible to every reader.
	_ = syncDir(r.dir)
	r.cleanup(gens, entries, target)

	return strconv.FormatUint(next, 10), nil
}

func (r *fileRecord) ensureDir() error {
	mkdir := os.Mkdir
	if r.create {
		mkdir = os.MkdirAll
	}

	// Without create, the repository directory must exist: a lease on a
	// mistyped path must fail, not create it.
	if err := mkdir(r.dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", r.dir, err)
	}

	return nil
}

func (r *fileRecord) writeTemp(data []byte) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("temporary lease record name: %w", err)
	}

	path := filepath.Join(r.dir, "tmp-"+hex.EncodeToString(b[:]))

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("create %s: %w", path, err)
	}

	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()

	if err := errors.Join(werr, serr, cerr); err != nil {
		_ = os.Remove(path)
		return "", fmt.Errorf("write %s: %w", path, err)
	}

	return path, nil
}

// staleTemp is the age, by the file timestamps of this directory, of a
// temporary file left behind by a writer that crashed.
const staleTemp = time.Hour

// cleanup removes generations older than the two newest and temporary files
// a crashed writer left, judged against the timestamp of the file just
// written (the storage's clock).
func (r *fileRecord) cleanup(gens []uint64, entries []os.DirEntry, newest string) {
	for _, g := range gens[:max(len(gens)-2, 0)] {
		_ = os.Remove(filepath.Join(r.dir, genName(g)))
	}

	fi, err := os.Stat(newest)
	if err != nil {
		return
	}

	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "tmp-") {
			continue
		}

		if ti, err := e.Info(); err == nil && fi.ModTime().Sub(ti.ModTime()) > staleTemp {
			_ = os.Remove(filepath.Join(r.dir, e.Name()))
		}
	}
}
