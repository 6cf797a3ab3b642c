package velero

import (
	"encoding/base64"
	"reflect"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// br is a BackupRepository in velero created at t0 + age.
func br(name, volumeNamespace, bsl, repoType string, age time.Duration) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "velero.io/v1",
		"kind":       "BackupRepository",
		"metadata":   map[string]any{"name": name, "namespace": "velero"},
		"spec": map[string]any{
			"volumeNamespace":       volumeNamespace,
			"backupStorageLocation": bsl,
			"repositoryType":        repoType,
			"maintenanceFrequency":  "1h0m0s",
		},
	}}
	u.SetCreationTimestamp(metav1.NewTime(t0.Add(age)))

	return u
}

// bsl is a BackupStorageLocation in velero with spec.
func bsl(name string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "velero.io/v1",
		"kind":       "BackupStorageLocation",
		"metadata":   map[string]any{"name": name, "namespace": "velero"},
		"spec":       spec,
	}}
}

func awsSpec(config map[string]any, extra map[string]any) map[string]any {
	spec := map[string]any{
		"provider":      "aws",
		"objectStorage": map[string]any{"bucket": "backups", "prefix": "cluster1"},
	}

	if config != nil {
		spec["config"] = config
	}

	for k, v := range extra {
		spec[k] = v
	}

	return spec
}

// s3Loc is the Location of namespace app in awsSpec with s3Url
// https://minio.example:9000.
func s3Loc() Location {
	return Location{
		Provider:   "aws",
		Bucket:     "backups",
		Prefix:     "cluster1/kopia/app/",
		Endpoint:   "minio.example:9000",
		Region:     "minio",
		Profile:    "default",
		Credential: SecretKey{Name: "cloud-credentials", Key: "cloud"},
	}
}

func TestTranslate(t *testing.T) {
	minio := map[string]any{"s3Url": "https://minio.example:9000", "region": "minio"}
	pem := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	src := Source{Namespace: "velero", BackupRepository: "app-default-kopia-x1", BackupStorageLocation: "default", VolumeNamespace: "app"}

	with := func(f func(*Location)) Location {
		l := s3Loc()
		f(&l)

		return l
	}

	tests := []struct {
		name string
		brs  []*unstructured.Unstructured
		bsls []*unstructured.Unstructured
		opts Options
		want []Repository
	}{
		{
			name: "aws with region and no s3Url",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(map[string]any{"region": "eu-west-1/"}, nil))},
			want: []Repository{{Name: "app-default", Source: src, Location: Location{
				Provider: "aws", Bucket: "backups", Prefix: "cluster1/kopia/app/",
				Endpoint: "s3-eu-west-1.amazonaws.com", Region: "eu-west-1", Profile: "default",
				Credential: SecretKey{Name: "cloud-credentials", Key: "cloud"},
			}}},
		},
		{
			name: "aws without region: the S3 client finds it",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(nil, nil))},
			want: []Repository{{Name: "app-default", Source: src, Location: Location{
				Provider: "aws", Bucket: "backups", Prefix: "cluster1/kopia/app/",
				Endpoint: "s3.amazonaws.com", Profile: "default",
				Credential: SecretKey{Name: "cloud-credentials", Key: "cloud"},
			}}},
		},
		{
			name: "s3Url https with a port",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(minio, nil))},
			want: []Repository{{Name: "app-default", Source: src, Location: s3Loc()}},
		},
		{
			name: "s3Url http, trailing slash, insecureSkipTLSVerify, s3ForcePathStyle",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(map[string]any{
				"s3Url": "http://minio.example:9000/", "region": "minio", "insecureSkipTLSVerify": "true", "s3ForcePathStyle": "TRUE",
			}, nil))},
			want: []Repository{{Name: "app-default", Source: src, Location: with(func(l *Location) {
				l.Insecure, l.SkipTLSVerify, l.ForcePathStyle = true, true, true
			})}},
		},
		{
			name: "bucket and prefix trimmed of slashes, empty prefix",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0), br("b-default-kopia-x2", "b", "second", "kopia", 0)},
			bsls: []*unstructured.Unstructured{
				bsl("default", map[string]any{"provider": "aws", "config": minio, "objectStorage": map[string]any{"bucket": "/backups/", "prefix": "/cluster1/"}}),
				bsl("second", map[string]any{"provider": "aws", "config": minio, "objectStorage": map[string]any{"bucket": "other"}}),
			},
			want: []Repository{
				{Name: "app-default", Source: src, Location: s3Loc()},
				{Name: "b-second", Source: Source{Namespace: "velero", BackupRepository: "b-default-kopia-x2", BackupStorageLocation: "second", VolumeNamespace: "b"},
					Location: with(func(l *Location) { l.Bucket, l.Prefix = "other", "kopia/b/" })},
			},
		},
		{
			name: "bucket and prefix from config without objectStorage",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", map[string]any{"provider": "aws",
				"config": map[string]any{"s3Url": "https://minio.example:9000", "region": "minio", "bucket": "cfgbucket", "prefix": "p"}})},
			want: []Repository{{Name: "app-default", Source: src, Location: with(func(l *Location) { l.Bucket, l.Prefix = "cfgbucket", "p/kopia/app/" })}},
		},
		{
			name: "caCert",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", map[string]any{"provider": "aws", "config": minio,
				"objectStorage": map[string]any{"bucket": "backups", "prefix": "cluster1", "caCert": base64.StdEncoding.EncodeToString(pem)}})},
			want: []Repository{{Name: "app-default", Source: src, Location: with(func(l *Location) { l.CACert = pem })}},
		},
		{
			name: "caCertRef wins over caCert",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", map[string]any{"provider": "aws", "config": minio,
				"objectStorage": map[string]any{"bucket": "backups", "prefix": "cluster1", "caCert": base64.StdEncoding.EncodeToString(pem),
					"caCertRef": map[string]any{"name": "minio-ca", "key": "ca.crt", "optional": false}}})},
			want: []Repository{{Name: "app-default", Source: src, Location: with(func(l *Location) { l.CACertRef = &SecretKey{Name: "minio-ca", Key: "ca.crt"} })}},
		},
		{
			name: "credential ref and profile",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(map[string]any{"s3Url": "https://minio.example:9000", "region": "minio", "profile": "backup"},
				map[string]any{"credential": map[string]any{"name": "bsl-creds", "key": "aws", "optional": true}}))},
			want: []Repository{{Name: "app-default", Source: src, Location: with(func(l *Location) {
				l.Profile, l.Credential = "backup", SecretKey{Name: "bsl-creds", Key: "aws"}
			})}},
		},
		{
			name: "default credential from options",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(minio, nil))},
			opts: Options{CloudCredentialsSecret: "my-cloud"},
			want: []Repository{{Name: "app-default", Source: src, Location: with(func(l *Location) { l.Credential = SecretKey{Name: "my-cloud", Key: "cloud"} })}},
		},
		{
			name: "default credential from the shared file",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(minio, nil))},
			opts: Options{CloudCredentialsFile: "/credentials/cloud"},
			want: []Repository{{Name: "app-default", Source: src, Location: with(func(l *Location) {
				l.Credential, l.CredentialsFile = SecretKey{}, "/credentials/cloud"
			})}},
		},
		{
			name: "spec.credential wins over the shared file",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(minio, map[string]any{"credential": map[string]any{"name": "bsl-creds", "key": "aws"}}))},
			opts: Options{CloudCredentialsFile: "/credentials/cloud"},
			want: []Repository{{Name: "app-default", Source: src, Location: with(func(l *Location) { l.Credential = SecretKey{Name: "bsl-creds", Key: "aws"} })}},
		},
		{
			name: "unknown provider with s3Url is S3",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", map[string]any{"provider": "community.openstack.org/openstack", "config": minio,
				"objectStorage": map[string]any{"bucket": "backups", "prefix": "cluster1"}})},
			want: []Repository{{Name: "app-default", Source: src, Location: with(func(l *Location) { l.Provider = "community.openstack.org/openstack" })}},
		},
		{
			name: "velero.io/aws written out",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", map[string]any{"provider": "velero.io/aws", "config": minio,
				"objectStorage": map[string]any{"bucket": "backups", "prefix": "cluster1"}})},
			want: []Repository{{Name: "app-default", Source: src, Location: with(func(l *Location) { l.Provider = "velero.io/aws" })}},
		},
		{
			name: "explicit ReadWrite",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(minio, map[string]any{"accessMode": "ReadWrite"}))},
			want: []Repository{{Name: "app-default", Source: src, Location: s3Loc()}},
		},
		{
			name: "ReadOnly",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(minio, map[string]any{"accessMode": "ReadOnly"}))},
			want: []Repository{{Name: "app-default", Source: src,
				NotMaintained: "location velero/default is ReadOnly: Velero writes nothing there and runs no maintenance on it, so it is not maintained", Why: WhyReadOnly}},
		},
		{
			name: "azure",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", map[string]any{"provider": "azure", "objectStorage": map[string]any{"bucket": "c"},
				"config": map[string]any{"storageAccount": "acct"}})},
			want: []Repository{{Name: "app-default", Source: src,
				NotMaintained: "provider velero.io/azure: only S3-compatible locations (aws, or any provider with s3Url) can be maintained", Why: WhyUnsupported}},
		},
		{
			name: "gcp, even with s3Url (Velero keeps its own backend types)",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", map[string]any{"provider": "velero.io/gcp", "objectStorage": map[string]any{"bucket": "c"}, "config": minio})},
			want: []Repository{{Name: "app-default", Source: src,
				NotMaintained: "provider velero.io/gcp: only S3-compatible locations (aws, or any provider with s3Url) can be maintained", Why: WhyUnsupported}},
		},
		{
			name: "filesystem-backed",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", map[string]any{"provider": "fs", "objectStorage": map[string]any{"bucket": "c"}, "config": map[string]any{"fspath": "/data"}})},
			want: []Repository{{Name: "app-default", Source: src,
				NotMaintained: "provider velero.io/fs: the location is filesystem-backed; only S3-compatible locations (aws, or any provider with s3Url) can be maintained", Why: WhyUnsupported}},
		},
		{
			name: "unknown provider without s3Url",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", map[string]any{"provider": "example.com/x", "objectStorage": map[string]any{"bucket": "c"}})},
			want: []Repository{{Name: "app-default", Source: src,
				NotMaintained: "provider example.com/x: only S3-compatible locations (aws, or any provider with s3Url) can be maintained", Why: WhyUnsupported}},
		},
		{
			name: "s3Url with a path",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(map[string]any{"s3Url": "https://user:pw@minio.example/bucket"}, nil))},
			want: []Repository{{Name: "app-default", Source: src,
				NotMaintained: `BackupStorageLocation velero/default: config s3Url "https://user:xxxxx@minio.example/bucket" has a path: Velero refuses it too (path is not expected in s3Url)`, Why: WhyInvalid}},
		},
		{
			name: "s3Url without a scheme has no host",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(map[string]any{"s3Url": "minio:9000"}, nil))},
			want: []Repository{{Name: "app-default", Source: src,
				NotMaintained: `BackupStorageLocation velero/default: config s3Url "minio:9000" has no host: write it as https://host[:port]`, Why: WhyInvalid}},
		},
		{
			name: "s3Url that does not parse",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(map[string]any{"s3Url": "https://secret@[::1"}, nil))},
			want: []Repository{{Name: "app-default", Source: src,
				NotMaintained: "BackupStorageLocation velero/default: config s3Url does not parse as a URL", Why: WhyInvalid}},
		},
		{
			name: "bad insecureSkipTLSVerify",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(map[string]any{"s3Url": "https://minio.example:9000", "insecureSkipTLSVerify": "yes"}, nil))},
			want: []Repository{{Name: "app-default", Source: src,
				NotMaintained: `BackupStorageLocation velero/default: config insecureSkipTLSVerify "yes" is not a boolean`, Why: WhyInvalid}},
		},
		{
			name: "no bucket",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", map[string]any{"provider": "aws", "config": minio, "objectStorage": map[string]any{"bucket": "/"}})},
			want: []Repository{{Name: "app-default", Source: src, NotMaintained: "BackupStorageLocation velero/default: no bucket", Why: WhyInvalid}},
		},
		{
			name: "caCert not base64",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", map[string]any{"provider": "aws", "config": minio, "objectStorage": map[string]any{"bucket": "b", "caCert": "%%%"}})},
			want: []Repository{{Name: "app-default", Source: src, NotMaintained: "BackupStorageLocation velero/default: spec.objectStorage.caCert is not base64", Why: WhyInvalid}},
		},
		{
			name: "credential without a name",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(minio, map[string]any{"credential": map[string]any{"key": "cloud"}}))},
			want: []Repository{{Name: "app-default", Source: src, NotMaintained: "BackupStorageLocation velero/default: spec.credential needs a name and a key", Why: WhyInvalid}},
		},
		{
			name: "config credentialsFile",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(map[string]any{"s3Url": "https://minio.example:9000", "credentialsFile": "/tmp/creds"}, nil))},
			want: []Repository{{Name: "app-default", Source: src,
				NotMaintained: "BackupStorageLocation velero/default: config credentialsFile names a file in Velero's pod: give the location a spec.credential Secret instead", Why: WhyUnsupported}},
		},
		{
			name: "unknown accessMode",
			brs:  []*unstructured.Unstructured{br("app-default-kopia-x1", "app", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(minio, map[string]any{"accessMode": "WriteOnly"}))},
			want: []Repository{{Name: "app-default", Source: src, NotMaintained: `BackupStorageLocation velero/default: unknown spec.accessMode "WriteOnly"`, Why: WhyInvalid}},
		},
		{
			name: "restic and untyped BackupRepositories are ignored",
			brs: []*unstructured.Unstructured{
				br("app-default-restic-x", "app", "default", "restic", 0),
				br("app-default-x", "app", "default", "", 0),
				br("app-default-kopia-x1", "app", "default", "kopia", time.Hour),
			},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(minio, nil))},
			want: []Repository{{Name: "app-default", Source: src, Location: s3Loc()}},
		},
		{
			name: "BackupStorageLocation missing",
			brs:  []*unstructured.Unstructured{br("app-gone-kopia-x", "app", "gone", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(minio, nil))},
			want: []Repository{{Name: "app-gone",
				Source:        Source{Namespace: "velero", BackupRepository: "app-gone-kopia-x", BackupStorageLocation: "gone", VolumeNamespace: "app"},
				NotMaintained: "BackupStorageLocation velero/gone not found", Why: WhyNoLocation}},
		},
		{
			name: "BackupRepository without volumeNamespace",
			brs:  []*unstructured.Unstructured{br("odd", "", "default", "kopia", 0)},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(minio, nil))},
			want: []Repository{{Name: "default",
				Source:        Source{Namespace: "velero", BackupRepository: "odd", BackupStorageLocation: "default"},
				NotMaintained: "BackupRepository velero/odd has no spec.volumeNamespace", Why: WhyInvalid}},
		},
		{
			name: "duplicate kopia BackupRepositories are one repository, the oldest is the source",
			brs: []*unstructured.Unstructured{
				br("app-default-kopia-new", "app", "default", "kopia", 2*time.Hour),
				br("app-default-kopia-x1", "app", "default", "kopia", 0),
				br("app-default-kopia-mid", "app", "default", "kopia", time.Hour),
			},
			bsls: []*unstructured.Unstructured{bsl("default", awsSpec(minio, nil))},
			want: []Repository{{Name: "app-default", Location: s3Loc(), Source: Source{Namespace: "velero", BackupRepository: "app-default-kopia-x1",
				BackupStorageLocation: "default", VolumeNamespace: "app", Duplicates: []string{"app-default-kopia-mid", "app-default-kopia-new"}}}},
		},
		{
			name: "name collision: the older pair keeps the name, sorted by name",
			brs: []*unstructured.Unstructured{
				br("app-s3-kopia-b", "app", "s3-backup", "kopia", time.Hour),
				br("app-s3-kopia-a", "app", "s3.backup", "kopia", 0),
			},
			bsls: []*unstructured.Unstructured{bsl("s3.backup", awsSpec(minio, nil)), bsl("s3-backup", awsSpec(minio, nil))},
			want: []Repository{
				{Name: "app-s3-backup", Location: s3Loc(),
					Source: Source{Namespace: "velero", BackupRepository: "app-s3-kopia-a", BackupStorageLocation: "s3.backup", VolumeNamespace: "app"}},
				{Name: "app-s3-backup-" + hash6("app", "s3-backup"), Location: s3Loc(),
					Source: Source{Namespace: "velero", BackupRepository: "app-s3-kopia-b", BackupStorageLocation: "s3-backup", VolumeNamespace: "app"}},
			},
		},
		{
			name: "name collision with equal ages: ns/bsl order decides",
			brs: []*unstructured.Unstructured{
				br("z", "app", "s3.backup", "kopia", 0),
				br("y", "app", "s3-backup", "kopia", 0),
			},
			bsls: []*unstructured.Unstructured{bsl("s3.backup", awsSpec(minio, nil)), bsl("s3-backup", awsSpec(minio, nil))},
			want: []Repository{
				// "app/s3-backup" < "app/s3.backup"
				{Name: "app-s3-backup", Location: s3Loc(),
					Source: Source{Namespace: "velero", BackupRepository: "y", BackupStorageLocation: "s3-backup", VolumeNamespace: "app"}},
				{Name: "app-s3-backup-" + hash6("app", "s3.backup"), Location: s3Loc(),
					Source: Source{Namespace: "velero", BackupRepository: "z", BackupStorageLocation: "s3.backup", VolumeNamespace: "app"}},
			},
		},
		{
			name: "nothing",
			want: []Repository{},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Translate(tt.brs, tt.bsls, tt.opts)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Translate =\n%#v\nwant\n%#v", got, tt.want)
			}
		})
	}
}

// TestTranslateDoesNotModify checks that Translate leaves the (cached)
// objects alone.
func TestTranslateDoesNotModify(t *testing.T) {
	brs := []*unstructured.Unstructured{br("a", "app", "default", "kopia", 0)}
	bsls := []*unstructured.Unstructured{bsl("default", awsSpec(map[string]any{"s3Url": "https://h"}, map[string]any{
		"credential": map[string]any{"name": "c", "key": "k"},
	}))}
	before := []*unstructured.Unstructured{brs[0].DeepCopy(), bsls[0].DeepCopy()}

	Translate(brs, bsls, Options{})

	if !reflect.DeepEqual(before, []*unstructured.Unstructured{brs[0], bsls[0]}) {
		t.Error("Translate modified its input")
	}
}
