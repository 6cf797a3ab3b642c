package config

import (
	"slices"
)

// Velero defaults.
const (
	// DefaultVeleroCredentialsSecret is Velero's own Secret holding the
	// password of every kopia repository it creates (key
	// VeleroPasswordKey).
	DefaultVeleroCredentialsSecret = "velero-repo-credentials"
	// DefaultVeleroCloudCredentialsSecret is the Secret `velero install`
	// creates with the storage credentials (key "cloud", an AWS
	// shared-credentials file), used for locations that name none.
	DefaultVeleroCloudCredentialsSecret = "cloud-credentials"
)

// Velero configures the discovery of Velero's kopia repositories and the
// coexistence with Velero's own maintenance Jobs.
type Velero struct {
	// Discover turns discovery on: every BackupRepository of type kopia in
	// Namespace, with the BackupStorageLocation it names, becomes a
	// repository to maintain, next to the configured ones.
	Discover bool
	// Namespace is Velero's namespace, a DNS-1123 label; default velero
	// (OADP: openshift-adp).
	Namespace string
	// CredentialsSecret names the Secret in Namespace holding the
	// repositories' password under key repository-password; default
	// velero-repo-credentials.
	CredentialsSecret string
	// CloudCredentialsSecret names the Secret in Namespace holding an AWS
	// shared-credentials file under key "cloud", for locations without
	// spec.credential; default cloud-credentials.
	CloudCredentialsSecret string
	// CloudCredentialsFile, when not empty, is the absolute path of that
	// file mounted into the daemon's container (the sidecar shares
	// Velero's volume), read instead of CloudCredentialsSecret.
	CloudCredentialsFile string
	// SuppressBuiltinMaintenance raises a BackupRepository's
	// spec.maintenanceFrequency while the daemon owns the repository, so
	// that Velero starts no maintenance Job for it, and restores it on
	// hand-back.
	SuppressBuiltinMaintenance bool
	// RepositoryDefaults are the settings of every discovered repository.
	RepositoryDefaults VeleroRepositoryDefaults
}

// VeleroRepositoryDefaults are the resolved settings of discovered
// repositories: the top-level defaults with velero.repositoryDefaults over
// them.
type VeleroRepositoryDefaults struct {
	// Schedule is resolved over Defaults.Schedule.
	Schedule Schedule
	// Ownership is resolved over Defaults.Ownership.
	Ownership Ownership
	// Compaction is resolved over Defaults.Compaction.
	Compaction Compaction
	// SafetyNoneOptOut is true when velero.repositoryDefaults.safetyNone.allow
	// is false: no discovered repository may run safety=none.
	SafetyNoneOptOut bool
}

type rawVelero struct {
	Discover                   *bool                 `yaml:"discover"`
	Namespace                  *string               `yaml:"namespace"`
	CredentialsSecret          *string               `yaml:"credentialsSecret"`
	CloudCredentialsSecret     *string               `yaml:"cloudCredentialsSecret"`
	CloudCredentialsFile       *string               `yaml:"cloudCredentialsFile"`
	SuppressBuiltinMaintenance *bool                 `yaml:"suppressBuiltinMaintenance"`
	RepositoryDefaults         rawVeleroRepoDefaults `yaml:"repositoryDefaults"`
}

type rawVeleroRepoDefaults struct {
	Schedule   rawSchedule             `yaml:"schedule"`
	Ownership  rawOwnership            `yaml:"ownership"`
	SafetyNone rawRepositorySafetyNone `yaml:"safetyNone"`
	Compaction rawCompaction           `yaml:"compaction"`
}

func (*rawVeleroRepoDefaults) unknownKeyHint() string {
	return "want schedule, ownership, safetyNone or compaction; the lease settings are global (lease)"
}

// resolveVelero resolves the velero section over the resolved defaults.
func resolveVelero(raw rawVelero, defaults Defaults, dir string, p *problems) Velero {
	const path = "velero"
	v := Velero{
		Discover:                   raw.Discover != nil && *raw.Discover,
		Namespace:                  DefaultVeleroNamespace,
		CredentialsSecret:          DefaultVeleroCredentialsSecret,
		CloudCredentialsSecret:     DefaultVeleroCloudCredentialsSecret,
		SuppressBuiltinMaintenance: raw.SuppressBuiltinMaintenance != nil && *raw.SuppressBuiltinMaintenance,
	}
	if raw.Namespace != nil {
		v.Namespace = *raw.Namespace
		if !namespaceRE.MatchString(v.Namespace) {
			p.add(path+".namespace", "invalid namespace name %q (must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)", v.Namespace)
		}
	}
	secret := func(raw *string, field string, dst *string) {
		if raw == nil {
			return
		}
		*dst = *raw
		if len(*raw) > 253 || !podNameRE.MatchString(*raw) {
			p.add(path+"."+field, "invalid Secret name %q (must be a DNS-1123 subdomain)", *raw)
		}
	}
	secret(raw.CredentialsSecret, "credentialsSecret", &v.CredentialsSecret)
	secret(raw.CloudCredentialsSecret, "cloudCredentialsSecret", &v.CloudCredentialsSecret)
	if raw.CloudCredentialsFile != nil {
		v.CloudCredentialsFile = resolvePath(*raw.CloudCredentialsFile, dir, path+".cloudCredentialsFile", p)
		// Read only to prove it readable; the contents are keys.
		if v.CloudCredentialsFile != "" {
			checkSecretFile(v.CloudCredentialsFile, path+".cloudCredentialsFile", p)
		}
	}
	if v.SuppressBuiltinMaintenance && !v.Discover {
		p.add(path+".suppressBuiltinMaintenance", "requires velero.discover: true (suppression patches the BackupRepository objects discovery finds)")
	}
	rd := raw.RepositoryDefaults
	v.RepositoryDefaults = VeleroRepositoryDefaults{
		Schedule:         resolveSchedule(rd.Schedule, defaults.Schedule, path+".repositoryDefaults.schedule", p),
		Ownership:        resolveOwnership(rd.Ownership, defaults.Ownership, path+".repositoryDefaults.ownership", p),
		Compaction:       resolveCompaction(rd.Compaction, defaults.Compaction, path+".repositoryDefaults.compaction", p),
		SafetyNoneOptOut: rd.SafetyNone.Allow != nil && !*rd.SafetyNone.Allow,
	}
	checkRepositorySafetyNone(rd.SafetyNone, path+".repositoryDefaults", p)
	return v
}

// DiscoveredRepository returns the resolved settings of a repository that
// Velero discovery found under name, with storage s: the schedule and
// ownership of velero.repositoryDefaults, safety=none allowed unless
// safetyNone.allow is off or repositoryDefaults opts out, and the
// safety=none windows that apply to all repositories or name this one. The
// password and the S3 credentials come from Velero's Secrets, which the
// caller provides; PasswordFile and the key files stay empty.
func (c *Config) DiscoveredRepository(name string, s *S3) Repository {
	d := c.Velero.RepositoryDefaults
	r := Repository{
		Name:              name,
		Storage:           Storage{S3: s},
		Schedule:          d.Schedule,
		Ownership:         d.Ownership,
		Compaction:        d.Compaction,
		SafetyNoneAllowed: c.SafetyNone.Allow && !d.SafetyNoneOptOut,
	}
	if r.SafetyNoneAllowed {
		for _, w := range c.SafetyNone.Windows {
			applies := len(w.Repositories) == 0 || slices.Contains(w.Repositories, name)
			if applies && !slices.Contains(r.UnsafeWindows, w.Schedule) {
				r.UnsafeWindows = append(r.UnsafeWindows, w.Schedule)
			}
		}
	}
	return r
}
