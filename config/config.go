// Package config loads and validates the kopia-maintd configuration file.
//
// Load and Parse decode the YAML file, reject unknown keys, apply defaults,
// resolve relative paths against the file's directory, merge the
// per-repository schedule and ownership overrides over the defaults, resolve
// each repository's safety=none permission and windows, and validate
// everything. An invalid file yields an *Error that lists every
// problem with its field path; a valid one yields a fully resolved *Config
// whose values callers can use as they are. Secrets (passwords, S3 keys) are
// never held in a Config: it holds where to find them, and Repository.Password
// and S3.Credentials read them on demand, so rotated secret files are picked
// up without a reload.
//
// A Config is not modified after Parse returns, with one exception:
// reloading means parsing the file again, checking the result with
// CheckReload, carrying over the values generated for the running process
// (the lease holder identity) with InheritRuntime, and swapping the pointer
// only when all of that succeeds.
package config

import (
	"fmt"
	"path/filepath"
	"time"
)

// Defaults applied when the configuration file leaves a field unset.
const (
	DefaultStateDirectory = "/var/lib/kopia-maintd"
	DefaultConcurrency    = 1
	DefaultListenAddress  = "127.0.0.1:9810"
	DefaultLogLevel       = "info"
	DefaultLogFormat      = "json"
	DefaultQuickSchedule  = "@hourly"
	DefaultFullSchedule   = "@daily"
	DefaultJitter         = 5 * time.Minute
	DefaultTakeover       = TakeoverStale
	DefaultStaleAfter     = 48 * time.Hour
	DefaultS3Endpoint     = "s3.amazonaws.com"

	DefaultVeleroNamespace = "velero"
	DefaultQuietPeriod     = 30 * time.Minute
	DefaultScheduleMargin  = 2 * time.Hour
	DefaultWatchInterval   = 5 * time.Second
)

// Config is a validated, fully resolved configuration.
type Config struct {
	// Identity is the maintenance owner this daemon claims.
	Identity Identity
	// StateDirectory is an absolute path for the daemon's local state.
	StateDirectory string
	// Concurrency is the maximum number of maintenance runs at once, >= 1.
	Concurrency int
	// Server configures the HTTP server for metrics and health probes.
	Server Server
	// Log configures logging.
	Log Log
	// Kubernetes says how to reach the Kubernetes API.
	Kubernetes Kubernetes
	// SafetyNone configures the gate of safety=none full cycles.
	SafetyNone SafetyNone
	// Lease configures the per-repository leases that keep every
	// repository maintained by at most one process at a time.
	Lease Lease
	// Maintenance tunes kopia's maintenance in this process.
	Maintenance Maintenance
	// Velero configures the discovery of Velero's kopia repositories and
	// the coexistence with Velero's own maintenance.
	Velero Velero
	// Defaults holds the resolved defaults. Callers should not need it:
	// every Repository already has them merged in.
	Defaults Defaults
	// Repositories lists the configured repositories to maintain, with
	// unique names, in file order: at least one, unless Velero.Discover
	// is on (discovered repositories are not in it).
	Repositories []Repository
}

// Maintenance tunes kopia's maintenance runs of this process.
type Maintenance struct {
	// ListParallelism, when > 0, caps the concurrent blob listings and
	// deletions of kopia's delete-unreferenced-blobs tasks (kopia's
	// maintenance param listParallelism; kopia uses 16 when it is 0).
	// 0 (the default) leaves kopia's value.
	ListParallelism int
}

// Identity is a kopia maintenance owner, user@host.
type Identity struct {
	// Username is non-empty and holds no '@' or whitespace.
	Username string
	// Hostname is non-empty and holds no '@' or whitespace.
	Hostname string
}

// String returns the identity as kopia writes it, "user@host".
func (i Identity) String() string {
	return i.Username + "@" + i.Hostname
}

// Server configures the HTTP server.
type Server struct {
	// ListenAddress is a host:port with a numeric port; the host may be
	// empty. It serves /metrics and POST /-/reload, and /healthz and /readyz
	// when ProbeAddress is empty.
	ListenAddress string
	// ProbeAddress, when not empty, is a host:port (different from
	// ListenAddress) that serves only /healthz and /readyz, over plain HTTP
	// and without authentication, for kubelet probes.
	ProbeAddress string
	// WebConfigFile, when not empty, is the absolute path of an
	// exporter-toolkit web configuration file (TLS, basic auth) for
	// ListenAddress. It was readable and valid when the config was parsed.
	WebConfigFile string
}

// Log configures logging.
type Log struct {
	// Level is one of debug, info, warn, error.
	Level string
	// Format is one of json, console.
	Format string
}

// Defaults holds the schedule and ownership that repositories inherit.
type Defaults struct {
	// Schedule is the default schedule.
	Schedule Schedule
	// Ownership is the default ownership policy.
	Ownership Ownership
	// Compaction is the default compact-live setting.
	Compaction Compaction
}

// Schedule says when maintenance cycles run.
type Schedule struct {
	// Quick is the cron spec for quick cycles. It is valid for
	// cron.ParseStandard; without a CRON_TZ= or TZ= prefix it is in the
	// process's local time zone.
	Quick string
	// Full is the cron spec for full cycles, like Quick.
	Full string
	// Jitter is the maximum delay added to each scheduled run, >= 0. The
	// scheduler derives the actual delay deterministically from the
	// repository name.
	Jitter time.Duration
}

// TakeoverPolicy says when the daemon takes maintenance ownership of a
// repository owned by someone else.
type TakeoverPolicy string

// The takeover policies.
const (
	// TakeoverNever never takes ownership; the daemon maintains only
	// repositories it already owns.
	TakeoverNever TakeoverPolicy = "never"
	// TakeoverIfUnowned takes ownership only when no owner is set.
	TakeoverIfUnowned TakeoverPolicy = "if-unowned"
	// TakeoverStale takes ownership when there is no owner or the current
	// owner has completed no maintenance for Ownership.StaleAfter.
	TakeoverStale TakeoverPolicy = "stale"
	// TakeoverAlways takes ownership unconditionally.
	TakeoverAlways TakeoverPolicy = "always"
)

// Ownership is a repository's maintenance-ownership policy.
type Ownership struct {
	// Takeover is one of the Takeover* constants.
	Takeover TakeoverPolicy
	// StaleAfter is how long an owner may go without completing maintenance
	// before TakeoverStale takes over, > 0.
	StaleAfter time.Duration
	// HandBackOnExit restores the previous owner on shutdown.
	HandBackOnExit bool
}

// Repository is one kopia repository to maintain.
type Repository struct {
	// Name is unique within the config and matches ^[a-z0-9-]{1,63}$.
	Name string
	// Create asks for the repository to be created when it does not exist.
	Create bool
	// Storage is the repository's storage backend.
	Storage Storage
	// PasswordFile is the absolute path of a file holding the repository
	// password. Exactly one of PasswordFile and PasswordEnv is set.
	PasswordFile string
	// PasswordEnv names an environment variable holding the password.
	PasswordEnv string
	// Schedule is resolved: the defaults with this repository's overrides.
	Schedule Schedule
	// Ownership is resolved: the defaults with this repository's overrides.
	Ownership Ownership
	// SafetyNoneAllowed is resolved: SafetyNone.Allow, unless this
	// repository opts out with safetyNone.allow: false.
	SafetyNoneAllowed bool
	// Compaction is resolved: the defaults with this repository's
	// overrides.
	Compaction Compaction
	// UnsafeWindows is resolved: the cron specs of the SafetyNone.Windows
	// that apply to this repository, in file order. It is empty when
	// SafetyNoneAllowed is false, so a window never schedules a cycle on a
	// repository where safety=none is not allowed.
	UnsafeWindows []string
}

// Storage is a storage backend. Exactly one field is non-nil.
type Storage struct {
	// Filesystem is set for a repository in a local directory.
	Filesystem *Filesystem
	// S3 is set for a repository in an S3-compatible bucket.
	S3 *S3
}

// Filesystem is a repository in a local directory.
type Filesystem struct {
	// Path is the absolute path of the repository directory.
	Path string
}

// S3 is a repository in an S3-compatible bucket.
type S3 struct {
	// Bucket is the bucket name, non-empty.
	Bucket string
	// Prefix is prepended to every object name; may be empty.
	Prefix string
	// Endpoint is host[:port] without a scheme; defaults to s3.amazonaws.com.
	Endpoint string
	// Region may be empty.
	Region string
	// Insecure selects plain HTTP.
	Insecure bool
	// SkipTLSVerify disables TLS certificate verification.
	SkipTLSVerify bool
	// AccessKeyIDFile is the absolute path of a file holding the access key
	// ID. It and SecretAccessKeyFile are both set or both empty; when empty,
	// the AWS_* environment variables (or other ambient credentials) apply.
	AccessKeyIDFile string
	// SecretAccessKeyFile is the absolute path of a file holding the secret
	// access key.
	SecretAccessKeyFile string
}

// Load reads the configuration file at path and parses it with Parse,
// resolving relative paths against the file's directory. A file that cannot
// be read yields a plain wrapped error; an invalid one yields an *Error.
func Load(path string) (*Config, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config file: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("resolve config file path %q: %w", path, err)
	}
	return Parse(data, filepath.Dir(abs))
}

// Parse decodes, resolves and validates a configuration. Relative paths in it
// are resolved against dir (itself made absolute against the working
// directory if relative). Validation reads the password and S3 key files to
// prove they are readable, and looks up password environment variables, but
// keeps none of their contents. When the configuration is invalid the error
// is an *Error listing every problem.
func Parse(data []byte, dir string) (*Config, error) {
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("resolve config directory %q: %w", dir, err)
	}
	var (
		raw rawConfig
		p   problems
	)
	if !decodeDocument(data, &raw, &p) {
		return nil, &Error{Problems: p.sorted()}
	}
	cfg := resolve(&raw, absDir, &p)
	if len(p.list) > 0 {
		return nil, &Error{Problems: p.sorted()}
	}
	return cfg, nil
}
