package velero

import (
	"cmp"
	"encoding/base64"
	"fmt"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// RepositoryTypeKopia is the BackupRepository spec.repositoryType of kopia
// repositories; Velero's controller reconciles no other type
// (pkg/controller/backup_repository_controller.go, Reconcile), and restic
// repositories are none of the daemon's business.
const RepositoryTypeKopia = "kopia"

// repoBackend is the path element Velero puts between a location's prefix
// and the volume namespace: its unified repository backend, "kopia"
// (getStorageVariables: path.Join(prefix, repoBackend, repoName)).
const repoBackend = "kopia"

// Velero's backend types (pkg/repository/config/config.go).
const (
	backendAWS   = "velero.io/aws"
	backendAzure = "velero.io/azure"
	backendGCP   = "velero.io/gcp"
	backendFS    = "velero.io/fs"
)

// Velero's access modes (pkg/apis/velero/v1/backupstoragelocation_types.go).
const (
	accessModeReadWrite = "ReadWrite"
	accessModeReadOnly  = "ReadOnly"
)

// cloudCredentialsKey is the key of Velero's default cloud credentials
// Secret (pkg/install/resources.go: Secret cloud-credentials, key cloud,
// mounted in Velero's pod at /credentials/cloud).
const cloudCredentialsKey = "cloud"

// backendType is Velero's GetBackendType (pkg/repository/config/config.go):
// a provider without "/" is in velero.io; Velero's own backends (aws, azure,
// gcp, fs) are themselves whatever the config says; any other provider with
// config s3Url is S3-compatible (aws); anything else is returned as is.
func backendType(provider string, config map[string]string) string {
	if !strings.Contains(provider, "/") {
		provider = "velero.io/" + provider
	}

	switch provider {
	case backendAWS, backendAzure, backendGCP, backendFS:
		return provider
	}

	if config["s3Url"] != "" {
		return backendAWS
	}

	return provider
}

// brInfo is what Translate reads of a BackupRepository.
type brInfo struct {
	namespace, name      string
	volumeNamespace, bsl string
	created              time.Time
}

// pairKey identifies one repository: Velero makes one per (volume
// namespace, location) in its namespace.
type pairKey struct {
	namespace, volumeNamespace, bsl string
}

// Translate turns Velero's BackupRepositories and BackupStorageLocations
// into the daemon's repositories, sorted by Name. It is a pure function of
// its arguments (and of opts' defaults); it neither logs nor calls the API.
//
// Only BackupRepositories with spec.repositoryType "kopia" count; restic
// ones are ignored entirely. Several kopia BackupRepositories for one
// (volume namespace, location) are one repository: the oldest
// (creationTimestamp, then name) is its Source, the others are listed in
// Source.Duplicates.
//
// Names: see BaseName. When two different pairs get the same name, the
// pair whose oldest BackupRepository is the oldest (ties broken by
// "<volumeNamespace>/<bsl>") keeps it; each other pair gets
// "-<first 6 hex of sha256(ns/bsl)>" appended (cut to fit 63 characters).
// The names of the daemon's static configuration are not known here: the
// caller resolves clashes with them.
//
// A repository that cannot or must not be maintained is returned with the
// reason in NotMaintained and a zero Location.
func Translate(brs []*unstructured.Unstructured, bsls []*unstructured.Unstructured, opts Options) []Repository {
	opts = opts.withDefaults()

	locations := make(map[[2]string]*unstructured.Unstructured, len(bsls))
	for _, b := range bsls {
		locations[[2]string{b.GetNamespace(), b.GetName()}] = b
	}

	groups := map[pairKey][]brInfo{}

	for _, br := range brs {
		typ, _, _ := unstructured.NestedString(br.Object, "spec", "repositoryType")
		if typ != RepositoryTypeKopia {
			continue
		}

		vns, _, _ := unstructured.NestedString(br.Object, "spec", "volumeNamespace")
		bsl, _, _ := unstructured.NestedString(br.Object, "spec", "backupStorageLocation")
		info := brInfo{
			namespace: br.GetNamespace(), name: br.GetName(),
			volumeNamespace: vns, bsl: bsl,
			created: br.GetCreationTimestamp().Time,
		}
		k := pairKey{info.namespace, vns, bsl}
		groups[k] = append(groups[k], info)
	}

	type group struct {
		key pairKey
		brs []brInfo // oldest first
	}

	ordered := make([]group, 0, len(groups))

	for k, g := range groups {
		slices.SortFunc(g, func(a, b brInfo) int {
			return cmp.Or(a.created.Compare(b.created), cmp.Compare(a.name, b.name))
		})
		ordered = append(ordered, group{k, g})
	}

	slices.SortFunc(ordered, func(a, b group) int {
		return cmp.Or(
			a.brs[0].created.Compare(b.brs[0].created),
			cmp.Compare(a.key.volumeNamespace+"/"+a.key.bsl, b.key.volumeNamespace+"/"+b.key.bsl),
			cmp.Compare(a.key.namespace, b.key.namespace),
		)
	})

	pairs := make([]namedPair, len(ordered))
	for i, g := range ordered {
		pairs[i] = namedPair{g.key.volumeNamespace, g.key.bsl}
	}

	names := assignNames(pairs)
	out := make([]Repository, 0, len(ordered))

	for i, g := range ordered {
		first := g.brs[0]
		r := Repository{
			Name: names[i],
			Source: Source{
				Namespace:             first.namespace,
				BackupRepository:      first.name,
				BackupStorageLocation: first.bsl,
				VolumeNamespace:       first.volumeNamespace,
			},
		}

		for _, d := range g.brs[1:] {
			r.Source.Duplicates = append(r.Source.Duplicates, d.name)
		}

		switch bsl := locations[[2]string{first.namespace, first.bsl}]; {
		case first.volumeNamespace == "":
			r.Why, r.NotMaintained = WhyInvalid, fmt.Sprintf("BackupRepository %s/%s has no spec.volumeNamespace", first.namespace, first.name)
		case first.bsl == "":
			r.Why, r.NotMaintained = WhyInvalid, fmt.Sprintf("BackupRepository %s/%s has no spec.backupStorageLocation", first.namespace, first.name)
		case bsl == nil:
			// It may appear later; the informer then brings it.
			r.Why, r.NotMaintained = WhyNoLocation, fmt.Sprintf("BackupStorageLocation %s/%s not found", first.namespace, first.bsl)
		default:
			loc, why, reason := translateLocation(bsl, first.volumeNamespace, opts)
			if reason != "" {
				r.Why, r.NotMaintained = why, reason
			} else {
				r.Location = loc
			}
		}

		out = append(out, r)
	}

	slices.SortFunc(out, func(a, b Repository) int { return cmp.Compare(a.Name, b.Name) })

	return out
}

// translateLocation is getStorageVariables and getStorageCredentials
// (pkg/repository/provider/unified_repo.go) for the repository of
// volumeNamespace in bsl. It returns the Location, or why there is none
// (a Why* class and the reason).
func translateLocation(bsl *unstructured.Unstructured, volumeNamespace string, opts Options) (Location, string, string) {
	where := "BackupStorageLocation " + bsl.GetNamespace() + "/" + bsl.GetName()
	fail := func(format string, args ...any) (Location, string, string) {
		return Location{}, WhyInvalid, where + ": " + fmt.Sprintf(format, args...)
	}

	provider, _, err := unstructured.NestedString(bsl.Object, "spec", "provider")
	if err != nil {
		return fail("spec.provider: %v", err)
	}

	config, _, err := unstructured.NestedStringMap(bsl.Object, "spec", "config")
	if err != nil {
		return fail("spec.config: %v", err)
	}

	mode, _, err := unstructured.NestedString(bsl.Object, "spec", "accessMode")
	if err != nil {
		return fail("spec.accessMode: %v", err)
	}

	switch mode {
	case "", accessModeReadWrite:
	case accessModeReadOnly:
		// Velero's controller runs no maintenance on a ReadOnly location
		// (backup_repository_controller.go, Reconcile).
		return Location{}, WhyReadOnly, fmt.Sprintf("location %s/%s is ReadOnly: Velero writes nothing there and runs no maintenance on it, so it is not maintained",
			bsl.GetNamespace(), bsl.GetName())
	default:
		return fail("unknown spec.accessMode %q", mode)
	}

	switch bt := backendType(provider, config); bt {
	case backendAWS:
	case backendFS:
		return Location{}, WhyUnsupported, fmt.Sprintf("provider %s: the location is filesystem-backed; only S3-compatible locations (aws, or any provider with s3Url) can be maintained", bt)
	default:
		// Azure and GCS: kopia's backends for them take settings that
		// cannot be derived from the location without guessing.
		return Location{}, WhyUnsupported, fmt.Sprintf("provider %s: only S3-compatible locations (aws, or any provider with s3Url) can be maintained", bt)
	}

	loc := Location{
		Provider: provider,
		Region:   strings.Trim(config["region"], "/"),
		Profile:  cmp.Or(config["profile"], DefaultProfile),
	}

	// Velero reads bucket and prefix from the config only when the location
	// has no objectStorage.
	bucket, prefix := config["bucket"], config["prefix"]

	objectStorage, hasObjectStorage, err := unstructured.NestedFieldNoCopy(bsl.Object, "spec", "objectStorage")
	if err != nil {
		return fail("spec.objectStorage: %v", err)
	}

	if hasObjectStorage && objectStorage != nil {
		if bucket, _, err = unstructured.NestedString(bsl.Object, "spec", "objectStorage", "bucket"); err != nil {
			return fail("spec.objectStorage.bucket: %v", err)
		}

		if prefix, _, err = unstructured.NestedString(bsl.Object, "spec", "objectStorage", "prefix"); err != nil {
			return fail("spec.objectStorage.prefix: %v", err)
		}
	}

	loc.Bucket = strings.Trim(bucket, "/")
	if loc.Bucket == "" {
		return fail("no bucket")
	}

	loc.Prefix = path.Join(strings.Trim(prefix, "/"), repoBackend, volumeNamespace) + "/"

	if s3URL := config["s3Url"]; s3URL == "" {
		loc.Endpoint = "s3.amazonaws.com"
		if loc.Region != "" {
			loc.Endpoint = "s3-" + loc.Region + ".amazonaws.com"
		}
	} else {
		u, err := url.Parse(s3URL)
		if err != nil {
			// url.Parse's error repeats the URL, which may hold user info.
			return fail("config s3Url does not parse as a URL")
		}

		if u.Path != "" && u.Path != "/" {
			return fail("config s3Url %q has a path: Velero refuses it too (path is not expected in s3Url)", u.Redacted())
		}

		loc.Endpoint = strings.Trim(u.Host, "/")
		if loc.Endpoint == "" {
			return fail("config s3Url %q has no host: write it as https://host[:port]", u.Redacted())
		}

		loc.Insecure = u.Scheme == "http"
	}

	// Velero's kopia backend ignores a value that does not parse (and so
	// verifies TLS); the daemon refuses to guess what was meant.
	if loc.SkipTLSVerify, err = parseBoolConfig(config, "insecureSkipTLSVerify"); err != nil {
		return fail("%v", err)
	}

	if loc.ForcePathStyle, err = parseBoolConfig(config, "s3ForcePathStyle"); err != nil {
		return fail("%v", err)
	}

	if reason := caCert(&loc, bsl.Object); reason != "" {
		return fail("%s", reason)
	}

	credential, hasCredential, err := secretKeyRef(bsl.Object, "spec", "credential")
	if err != nil {
		return fail("%v", err)
	}

	switch {
	case hasCredential:
		loc.Credential = credential
	case config["credentialsFile"] != "":
		// A path inside Velero's pod (pkg/repository/config/config.go,
		// CredentialsFileKey): nothing says the daemon sees the same file.
		_, _, reason := fail("config credentialsFile names a file in Velero's pod: give the location a spec.credential Secret instead")

		return Location{}, WhyUnsupported, reason
	case opts.CloudCredentialsFile != "":
		loc.CredentialsFile = opts.CloudCredentialsFile
	default:
		loc.Credential = SecretKey{Name: opts.CloudCredentialsSecret, Key: cloudCredentialsKey}
	}

	return loc, "", ""
}

// caCert sets loc's CA from the location bsl: caCertRef first, then the
// deprecated caCert, as getStorageVariables does.
func caCert(loc *Location, bsl map[string]any) string {
	ref, hasRef, err := secretKeyRef(bsl, "spec", "objectStorage", "caCertRef")
	if err != nil {
		return err.Error()
	}

	if hasRef {
		loc.CACertRef = &ref

		return ""
	}

	encoded, _, err := unstructured.NestedString(bsl, "spec", "objectStorage", "caCert")
	if err != nil {
		return fmt.Sprintf("spec.objectStorage.caCert: %v", err)
	}

	if encoded == "" {
		return ""
	}

	// caCert is []byte in Velero's type: base64 in JSON.
	pem, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return "spec.objectStorage.caCert is not base64"
	}

	loc.CACert = pem

	return ""
}

func parseBoolConfig(config map[string]string, key string) (bool, error) {
	v := config[key]
	if v == "" {
		return false, nil
	}

	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("config %s %q is not a boolean", key, v)
	}

	return b, nil
}

// secretKeyRef reads a SecretKeySelector (name, key, optional) at fields.
func secretKeyRef(obj map[string]any, fields ...string) (SecretKey, bool, error) {
	field := strings.Join(fields, ".")

	m, found, err := unstructured.NestedMap(obj, fields...)
	if err != nil || !found {
		if err != nil {
			err = fmt.Errorf("%s: %w", field, err)
		}

		return SecretKey{}, false, err
	}

	name, _, errName := unstructured.NestedString(m, "name")
	key, _, errKey := unstructured.NestedString(m, "key")

	if errName != nil || errKey != nil || name == "" || key == "" {
		return SecretKey{}, false, fmt.Errorf("%s needs a name and a key", field)
	}

	return SecretKey{Name: name, Key: key}, true, nil
}
