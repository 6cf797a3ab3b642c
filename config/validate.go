package config

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/prometheus/exporter-toolkit/web"
	"github.com/robfig/cron/v3"
)

// repositoryNameRE is what a repository name must match. Names end up in
// metric labels, log fields and state file names, so they are kept tame.
var repositoryNameRE = regexp.MustCompile(`^[a-z0-9-]{1,63}$`)

// resolve turns a decoded raw config into a Config, applying defaults,
// resolving paths against dir and adding a problem for every invalid value.
// The result is meaningful only when no problems were added.
func resolve(raw *rawConfig, dir string, p *problems) *Config {
	cfg := &Config{
		Identity:       resolveIdentity(raw.Identity, p),
		StateDirectory: DefaultStateDirectory,
		Concurrency:    DefaultConcurrency,
		Server:         Server{ListenAddress: DefaultListenAddress},
		Log:            Log{Level: DefaultLogLevel, Format: DefaultLogFormat},
	}
	if raw.StateDirectory != nil {
		cfg.StateDirectory = resolvePath(*raw.StateDirectory, dir, "stateDirectory", p)
	}
	if raw.Concurrency != nil {
		cfg.Concurrency = *raw.Concurrency
		if cfg.Concurrency < 1 {
			p.add("concurrency", "must be >= 1, got %d", cfg.Concurrency)
		}
	}
	if v := raw.Server.ListenAddress; v != nil {
		cfg.Server.ListenAddress = *v
		if err := checkListenAddress(*v); err != nil {
			p.add("server.listenAddress", "invalid listen address %q: %s", *v, err)
		}
	}
	if v := raw.Server.ProbeAddress; v != nil {
		cfg.Server.ProbeAddress = *v
		switch err := checkListenAddress(*v); {
		case err != nil:
			p.add("server.probeAddress", "invalid listen address %q: %s", *v, err)
		case *v == cfg.Server.ListenAddress:
			p.add("server.probeAddress", "must differ from server.listenAddress %q", cfg.Server.ListenAddress)
		}
	}
	if v := raw.Server.WebConfigFile; v != nil {
		cfg.Server.WebConfigFile = resolvePath(*v, dir, "server.webConfigFile", p)
		checkWebConfig(cfg.Server.WebConfigFile, "server.webConfigFile", p)
	}
	if v := raw.Log.Level; v != nil {
		cfg.Log.Level = *v
		switch *v {
		case "debug", "info", "warn", "error":
		default:
			p.add("log.level", "unknown log level %q (want debug, info, warn or error)", *v)
		}
	}
	if v := raw.Log.Format; v != nil {
		cfg.Log.Format = *v
		switch *v {
		case "json", "console":
		default:
			p.add("log.format", "unknown log format %q (want json or console)", *v)
		}
	}

	builtin := Defaults{
		Schedule:  Schedule{Quick: DefaultQuickSchedule, Full: DefaultFullSchedule, Jitter: DefaultJitter},
		Ownership: Ownership{Takeover: DefaultTakeover, StaleAfter: DefaultStaleAfter},
		Compaction: Compaction{
			Enabled:            DefaultCompactionEnabled,
			LiveRatioThreshold: DefaultCompactionLiveRatioThreshold,
			MaxBytesPerCycle:   DefaultCompactionMaxBytesPerCycle,
		},
	}
	cfg.Defaults = Defaults{
		Schedule:   resolveSchedule(raw.Defaults.Schedule, builtin.Schedule, "defaults.schedule", p),
		Ownership:  resolveOwnership(raw.Defaults.Ownership, builtin.Ownership, "defaults.ownership", p),
		Compaction: resolveCompaction(raw.Defaults.Compaction, builtin.Compaction, "defaults.compaction", p),
	}

	cfg.Velero = resolveVelero(raw.Velero, cfg.Defaults, dir, p)
	if len(raw.Repositories) == 0 && !cfg.Velero.Discover {
		p.add("repositories", "at least one repository is required (or velero.discover: true)")
	}
	firstIndex := map[string]int{}
	for i, rr := range raw.Repositories {
		path := fmt.Sprintf("repositories[%d]", i)
		r := resolveRepository(rr, cfg.Defaults, firstIndex, dir, path, p)
		if r.Name != "" {
			if _, dup := firstIndex[r.Name]; !dup {
				firstIndex[r.Name] = i
			}
		}
		cfg.Repositories = append(cfg.Repositories, r)
	}
	cfg.Kubernetes = resolveKubernetes(raw.Kubernetes, dir, p)
	cfg.SafetyNone = resolveSafetyNone(raw.SafetyNone, cfg.Repositories, cfg.Velero.Discover, p)
	applySafetyNone(cfg.SafetyNone, raw.Repositories, cfg.Repositories)
	cfg.Lease = resolveLease(raw.Lease, cfg.Repositories, p)
	if v := raw.Maintenance.ListParallelism; v != nil {
		cfg.Maintenance.ListParallelism = *v
		if *v < 0 {
			p.add("maintenance.listParallelism", "must be >= 0, got %d", *v)
		}
	}
	return cfg
}

func resolveIdentity(raw rawIdentity, p *problems) Identity {
	check := func(v *string, path string) string {
		switch {
		case v == nil || *v == "":
			p.add(path, "required")
			return ""
		case strings.ContainsFunc(*v, func(r rune) bool { return r == '@' || unicode.IsSpace(r) }):
			p.add(path, "must not contain '@' or whitespace, got %q", *v)
		}
		return *v
	}
	return Identity{
		Username: check(raw.Username, "identity.username"),
		Hostname: check(raw.Hostname, "identity.hostname"),
	}
}

// resolveSchedule returns base with the fields set in raw replacing it.
func resolveSchedule(raw rawSchedule, base Schedule, path string, p *problems) Schedule {
	s := base
	if raw.Quick != nil {
		s.Quick = *raw.Quick
		checkCron(*raw.Quick, path+".quick", p)
	}
	if raw.Full != nil {
		s.Full = *raw.Full
		checkCron(*raw.Full, path+".full", p)
	}
	if raw.Jitter != nil {
		if d, ok := parseDuration(*raw.Jitter, path+".jitter", p); ok {
			s.Jitter = d
			if d < 0 {
				p.add(path+".jitter", "must be >= 0, got %q", *raw.Jitter)
			}
		}
	}
	return s
}

// resolveOwnership returns base with the fields set in raw replacing it.
func resolveOwnership(raw rawOwnership, base Ownership, path string, p *problems) Ownership {
	o := base
	if raw.Takeover != nil {
		o.Takeover = TakeoverPolicy(*raw.Takeover)
		switch o.Takeover {
		case TakeoverNever, TakeoverIfUnowned, TakeoverStale, TakeoverAlways:
		default:
			p.add(path+".takeover", "unknown takeover policy %q (want never, if-unowned, stale or always)", *raw.Takeover)
		}
	}
	if raw.StaleAfter != nil {
		if d, ok := parseDuration(*raw.StaleAfter, path+".staleAfter", p); ok {
			o.StaleAfter = d
			if d <= 0 {
				p.add(path+".staleAfter", "must be > 0, got %q", *raw.StaleAfter)
			}
		}
	}
	if raw.HandBackOnExit != nil {
		o.HandBackOnExit = *raw.HandBackOnExit
	}
	return o
}

// resolveRepository resolves one repository. firstIndex maps the names of
// the repositories before it to their index, to report duplicates.
func resolveRepository(raw rawRepository, defaults Defaults, firstIndex map[string]int, dir, path string, p *problems) Repository {
	var r Repository
	switch {
	case raw.Name == nil || *raw.Name == "":
		p.add(path+".name", "required")
	case !repositoryNameRE.MatchString(*raw.Name):
		p.add(path+".name", "invalid repository name %q (must match %s)", *raw.Name, repositoryNameRE)
	default:
		if j, dup := firstIndex[*raw.Name]; dup {
			p.add(path+".name", "duplicate repository name %q (first used by repositories[%d])", *raw.Name, j)
		}
	}
	if raw.Name != nil {
		r.Name = *raw.Name
	}
	r.Create = raw.Create != nil && *raw.Create
	r.Storage = resolveStorage(raw.Storage, dir, path+".storage", p)
	r.PasswordFile, r.PasswordEnv = resolvePassword(raw, dir, path, p)
	r.Schedule = resolveSchedule(raw.Schedule, defaults.Schedule, path+".schedule", p)
	r.Ownership = resolveOwnership(raw.Ownership, defaults.Ownership, path+".ownership", p)
	r.Compaction = resolveCompaction(raw.Compaction, defaults.Compaction, path+".compaction", p)
	checkRepositorySafetyNone(raw.SafetyNone, path, p)
	return r
}

func resolveStorage(raw rawStorage, dir, path string, p *problems) Storage {
	var s Storage
	switch {
	case raw.Filesystem == nil && raw.S3 == nil:
		p.add(path, "exactly one backend (filesystem or s3) is required, got none")
		return s
	case raw.Filesystem != nil && raw.S3 != nil:
		p.add(path, "exactly one backend (filesystem or s3) is required, got both")
		return s
	}
	if fs := raw.Filesystem; fs != nil {
		s.Filesystem = &Filesystem{Path: requiredPath(fs.Path, dir, path+".filesystem.path", p)}
	}
	if raw := raw.S3; raw != nil {
		path := path + ".s3"
		s3 := &S3{
			Bucket:        deref(raw.Bucket),
			Prefix:        deref(raw.Prefix),
			Endpoint:      DefaultS3Endpoint,
			Region:        deref(raw.Region),
			Insecure:      raw.Insecure != nil && *raw.Insecure,
			SkipTLSVerify: raw.SkipTLSVerify != nil && *raw.SkipTLSVerify,
		}
		if s3.Bucket == "" {
			p.add(path+".bucket", "required")
		}
		if raw.Endpoint != nil {
			s3.Endpoint = *raw.Endpoint
			if err := checkEndpoint(*raw.Endpoint); err != nil {
				p.add(path+".endpoint", "invalid endpoint %q: %s", *raw.Endpoint, err)
			}
		}
		idSet, secretSet := deref(raw.AccessKeyIDFile) != "", deref(raw.SecretAccessKeyFile) != ""
		switch {
		case idSet && !secretSet:
			p.add(path+".secretAccessKeyFile", "required when accessKeyIDFile is set")
		case secretSet && !idSet:
			p.add(path+".accessKeyIDFile", "required when secretAccessKeyFile is set")
		}
		if idSet {
			s3.AccessKeyIDFile = resolvePath(*raw.AccessKeyIDFile, dir, path+".accessKeyIDFile", p)
			checkSecretFile(s3.AccessKeyIDFile, path+".accessKeyIDFile", p)
		}
		if secretSet {
			s3.SecretAccessKeyFile = resolvePath(*raw.SecretAccessKeyFile, dir, path+".secretAccessKeyFile", p)
			checkSecretFile(s3.SecretAccessKeyFile, path+".secretAccessKeyFile", p)
		}
		s.S3 = s3
	}
	return s
}

// resolvePassword checks that exactly one password source is set and that
// it yields a non-empty password, without keeping the password.
func resolvePassword(raw rawRepository, dir, path string, p *problems) (file, env string) {
	fileSet, envSet := raw.PasswordFile != nil, raw.PasswordEnv != nil
	switch {
	case !fileSet && !envSet:
		p.add(path, "exactly one of passwordFile and passwordEnv is required, got neither")
		return "", ""
	case fileSet && envSet:
		p.add(path, "exactly one of passwordFile and passwordEnv is required, got both")
		return "", ""
	case fileSet:
		file = requiredPath(raw.PasswordFile, dir, path+".passwordFile", p)
		if file != "" {
			checkSecretFile(file, path+".passwordFile", p)
		}
		return file, ""
	default:
		env = *raw.PasswordEnv
		switch v, ok := os.LookupEnv(env); {
		case env == "":
			p.add(path+".passwordEnv", "required")
		case !ok:
			p.add(path+".passwordEnv", "environment variable %q is not set", env)
		case v == "":
			p.add(path+".passwordEnv", "environment variable %q is empty", env)
		}
		return "", env
	}
}

// checkSecretFile proves that a secret file is readable and not empty. The
// contents are dropped at once and never make it into a problem: os errors
// name the file and the failure, not what was read.
func checkSecretFile(file, path string, p *problems) {
	if _, err := readSecretFile(file); err != nil {
		p.add(path, "%s", err)
	}
}

// requiredPath resolves a path that must be present and non-empty.
func requiredPath(v *string, dir, path string, p *problems) string {
	if v == nil || *v == "" {
		p.add(path, "required")
		return ""
	}
	return resolvePath(*v, dir, path, p)
}

// resolvePath makes v absolute against dir. An empty v is a problem, since a
// field set to "" is almost certainly a templating mistake.
func resolvePath(v, dir, path string, p *problems) string {
	if v == "" {
		p.add(path, "must not be empty")
		return ""
	}
	if filepath.IsAbs(v) {
		return filepath.Clean(v)
	}
	return filepath.Join(dir, v)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// checkCron validates a cron spec the way the scheduler will parse it.
func checkCron(spec, path string, p *problems) {
	if err := parseCron(spec); err != nil {
		p.add(path, "invalid cron spec %q: %s", spec, err)
	}
}

// parseCron wraps cron.ParseStandard, which panics on a time zone prefix not
// followed by a space (e.g. "CRON_TZ=UTC"), robfig/cron v3.0.1; any other
// panic of it is an error too.
func parseCron(spec string) (err error) {
	if strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ=") {
		if !strings.Contains(spec, " ") {
			return fmt.Errorf("missing schedule after time zone")
		}
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	_, err = cron.ParseStandard(spec)
	return err
}

// parseDuration parses a Go duration, adding a problem when it is invalid.
func parseDuration(v, path string, p *problems) (time.Duration, bool) {
	d, err := time.ParseDuration(v)
	if err != nil {
		p.add(path, "invalid duration %q (want a Go duration such as 90s, 5m or 48h)", v)
		return 0, false
	}
	return d, true
}

// checkListenAddress accepts host:port with a numeric port; the host may be
// empty (all interfaces).
func checkListenAddress(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port must be a number from 1 to 65535, got %q", port)
	}
	return nil
}

// checkWebConfig proves that an exporter-toolkit web configuration file is
// readable and valid (its YAML, its bcrypt hashes, its certificate and key
// files), exactly as the server will read it, so that a broken file is a
// configuration error rather than a server that fails at start or reload.
func checkWebConfig(file, path string, p *problems) {
	if file == "" {
		return
	}
	if _, err := readFile(file); err != nil {
		p.add(path, "%s", err)
		return
	}
	if err := web.Validate(file); err != nil {
		// yaml errors span several lines; a problem is one line.
		msg := strings.Join(strings.Fields(err.Error()), " ")
		p.add(path, "invalid web config %s: %s", file, msg)
	}
}

// checkEndpoint accepts host or host:port. kopia's S3 backend takes the
// scheme from Insecure, so a URL here is a common mistake.
func checkEndpoint(endpoint string) error {
	switch {
	case endpoint == "":
		return fmt.Errorf("must not be empty")
	case strings.Contains(endpoint, "://"):
		return fmt.Errorf("must be host or host:port without a scheme (set insecure: true for http)")
	case strings.ContainsAny(endpoint, "/ "):
		return fmt.Errorf("must be host or host:port without a path")
	}
	return nil
}
