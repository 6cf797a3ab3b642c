package velero

import (
	"slices"
)

// Source names the Velero objects a discovered repository comes from.
type Source struct {
	Namespace             string // Velero's namespace (where BackupRepository and BSL live)
	BackupRepository      string // BackupRepository object name
	BackupStorageLocation string // spec.backupStorageLocation
	VolumeNamespace       string // spec.volumeNamespace
	// Duplicates names the other kopia BackupRepositories for the same
	// (volume namespace, location), oldest first. Velero makes one per pair
	// (pkg/repository/backup_repo_op.go, GetBackupRepository refuses more
	// than one), so this is empty unless someone copied an object; the
	// oldest is the Source and Discovery logs the others at Warn.
	Duplicates []string
}

// SecretKey names one key of a Secret in Velero's namespace.
type SecretKey struct{ Name, Key string }

// Location is the repository's storage as Velero opens it
// (pkg/repository/provider/unified_repo.go, getStorageVariables). Only
// S3-compatible locations are translated.
type Location struct {
	// Provider is the BackupStorageLocation's spec.provider as written.
	Provider string
	// Bucket is spec.objectStorage.bucket trimmed of "/".
	Bucket string
	// Prefix is path.Join(location prefix, "kopia", volume namespace) + "/":
	// the kopia repository's own prefix in the bucket.
	Prefix string
	// Endpoint is host[:port] of config s3Url. Without s3Url it is
	// "s3-<region>.amazonaws.com", as Velero builds it; when the region is
	// empty too, Velero looks the bucket's region up through AWS
	// (pkg/repository/config/aws.go, GetAWSBucketRegion): here Endpoint is
	// "s3.amazonaws.com" and Region "", and the S3 client finds the bucket's
	// region itself.
	Endpoint string
	// Region is config region trimmed of "/".
	Region string
	// Insecure is true when s3Url's scheme is http (plain HTTP, no TLS).
	Insecure bool
	// SkipTLSVerify is config insecureSkipTLSVerify (strconv.ParseBool).
	SkipTLSVerify bool
	// ForcePathStyle is config s3ForcePathStyle (strconv.ParseBool). It is
	// kept for display only: Velero does not pass it to kopia either, and
	// kopia's S3 client picks path-style or virtual-host lookups itself.
	ForcePathStyle bool
	// CACert is spec.objectStorage.caCert (decoded bytes). When CACertRef
	// is set it wins, as in Velero, and CACert is nil: the Secret is read
	// by Discovery.CACert when the repository is opened, so a rotated
	// certificate is picked up without a change to the location.
	CACert []byte
	// CACertRef is spec.objectStorage.caCertRef, a Secret in Velero's
	// namespace holding the CA bundle.
	CACertRef *SecretKey
	// Profile is config profile, "default" when unset.
	Profile string
	// Credential is spec.credential, or the default Secret
	// (Options.CloudCredentialsSecret, key "cloud") when the location has
	// none; empty when CredentialsFile is used instead.
	Credential SecretKey
	// CredentialsFile is Options.CloudCredentialsFile for a location
	// without spec.credential: the daemon, as Velero's sidecar, reads the
	// same file as Velero (/credentials/cloud).
	CredentialsFile string
}

// Repository is one discovered repository.
type Repository struct {
	// Name is the daemon's repository name: "<volumeNamespace>-<bsl>"
	// sanitised to ^[a-z0-9-]{1,63}$ (see Translate).
	Name   string
	Source Source
	// Location is meaningful only when NotMaintained == "".
	Location Location
	// NotMaintained, when not empty, says why this repository is not
	// maintained: an unsupported provider, a ReadOnly location, a missing
	// BackupStorageLocation, a bad s3Url, ... Such a repository is listed,
	// never silently dropped.
	NotMaintained string
	// Why classifies NotMaintained for metrics: one of the Why* values.
	Why string
}

// Classes of repositories that are not maintained (Repository.Why).
const (
	// WhyReadOnly: the location is ReadOnly.
	WhyReadOnly = "read-only"
	// WhyUnsupported: the location's provider is not S3-compatible
	// (Azure, GCS, a filesystem), or it names a credentials file inside
	// Velero's pod.
	WhyUnsupported = "unsupported"
	// WhyNoLocation: the BackupStorageLocation does not exist (yet).
	WhyNoLocation = "location-not-found"
	// WhyInvalid: the BackupRepository or its location lacks or
	// misspells a field the repository needs.
	WhyInvalid = "invalid"
)

// clone returns a copy that shares no slice with r.
func (r Repository) clone() Repository {
	r.Source.Duplicates = slices.Clone(r.Source.Duplicates)
	r.Location.CACert = slices.Clone(r.Location.CACert)

	if r.Location.CACertRef != nil {
		ref := *r.Location.CACertRef
		r.Location.CACertRef = &ref
	}

	return r
}

func cloneRepositories(rs []Repository) []Repository {
	if rs == nil {
		return nil
	}

	out := make([]Repository, len(rs))
	for i, r := range rs {
		out[i] = r.clone()
	}

	return out
}
