package config

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Lease defaults.
const (
	DefaultLeaseKind          = LeaseKindAuto
	DefaultLeaseDuration      = 60 * time.Second
	DefaultLeaseRenewInterval = 15 * time.Second
	DefaultLeaseNamePrefix    = "kopia-maintd-"
	DefaultLeaseSpreadStep    = time.Second
	// MaxLeaseSpreadStep bounds lease.spreadStep: the spread wait reaches
	// twelve steps.
	MaxLeaseSpreadStep = 10 * time.Second
)

// The values of lease.kind. LeaseKindAuto only appears in the file: a
// resolved Lease.Kind is always LeaseKindKubernetes or LeaseKindRepository.
const (
	LeaseKindAuto       = "auto"
	LeaseKindKubernetes = "kubernetes"
	LeaseKindRepository = "repository"
)

// Lease configures the per-repository leases that make sure at most one
// process maintains a repository at any moment. The whole section is
// restart-only (see CheckReload).
type Lease struct {
	// Kind is LeaseKindKubernetes (one coordination.k8s.io/v1 Lease per
	// repository) or LeaseKindRepository (a lease blob in the repository's
	// own storage). "auto" in the file resolves to kubernetes when the
	// process runs in a cluster (KUBERNETES_SERVICE_HOST is set and not
	// empty), else to repository.
	Kind string
	// Duration is how long a lease that is not renewed stays valid; after
	// it, the lease is stale and another holder may take it over. > 0.
	Duration time.Duration
	// RenewInterval is how often a held lease is renewed, > 0 and
	// < Duration/2, so that one renewal may fail and the next is still in
	// time.
	RenewInterval time.Duration
	// HolderIdentity names this process in the leases it holds: lower-case
	// letters, digits, '-' and '.', starting and ending with a letter or
	// digit, at most 128 characters. When the file leaves it empty, Parse
	// generates one (HolderIdentityGenerated is then true): the host name,
	// lower-cased and reduced to those characters, "-" and 8 random hex
	// digits, e.g. "kopia-maintd-7d9f-x2k4p-3fa91c07". A new process gets a
	// new one, so a restarted process never mistakes its predecessor's
	// lease for its own; a reload keeps the running one (InheritRuntime).
	//
	// A configured identity is used as it is. It must be unique among the
	// processes sharing the repositories at any moment: two processes with
	// one identity both believe they hold the same lease.
	HolderIdentity string
	// HolderIdentityGenerated is true when HolderIdentity was generated
	// because the file left lease.holderIdentity empty.
	HolderIdentityGenerated bool
	// Kubernetes configures the Lease objects of the kubernetes kind.
	Kubernetes LeaseKubernetes
	// Repository configures the lease record of the repository kind.
	Repository LeaseRepository
	// SpreadStep is the unit of the wait before a scheduled run takes its
	// lease, which lets replicas sharing a configuration split the
	// repositories (lease.Spread): the wait is SpreadStep times the
	// replica's offset in [0, 1) plus the number of other runs it started
	// in the last 12 SpreadSteps, at most 12 SpreadSteps. >= 0 and at most
	// MaxLeaseSpreadStep; 0 turns the wait off, for a process known to run
	// alone, whose batches of runs then start back to back.
	SpreadStep time.Duration
}

// LeaseRepository configures the leases kept in the repositories' own
// storage. S3 and filesystem storage write the lease record by
// compare-and-swap and need nothing here; Settle only serves a storage that
// turns out not to honour conditional writes (an S3-compatible store that
// ignores If-None-Match and If-Match, a filesystem without hard links),
// which falls back to the list-based protocol of one lease blob per holder.
type LeaseRepository struct {
	// Settle is how long the list-based protocol waits between writing
	// its lease blob and listing again: longer than a write takes to
	// become visible to every lister, and a claimant whose own write took
	// longer yields. > 0 and at most a quarter of Duration; default
	// min(Duration/20, 1s).
	Settle time.Duration
}

// LeaseKubernetes configures the Lease objects of the kubernetes kind.
type LeaseKubernetes struct {
	// Namespace holds the Lease objects: a DNS-1123 label. When the file
	// leaves it empty it is the pod's namespace, from the POD_NAMESPACE
	// environment variable or else the service account's namespace file
	// (/var/run/secrets/kubernetes.io/serviceaccount/namespace); when Kind
	// resolves to kubernetes and neither is there, Parse fails. With the
	// repository kind it is the configured value, or "".
	Namespace string
	// NamePrefix starts every Lease's name: the Lease of a repository is
	// NamePrefix + Repository.Name, which Parse has checked to be a valid
	// DNS-1123 subdomain for every configured repository (whatever Kind
	// resolves to, so that a file valid on a laptop is valid in a
	// cluster). May be empty; default "kopia-maintd-".
	NamePrefix string
}

// LeaseName returns the name of repository's Kubernetes Lease.
func (l Lease) LeaseName(repository string) string {
	return l.Kubernetes.NamePrefix + repository
}

// InheritRuntime carries over from old, the configuration the process runs
// with, the values that Parse generates afresh for every call but that must
// stay the same for the life of the process: today the generated lease
// holder identity. The reload path calls it on the new configuration after
// CheckReload(old, c) accepted it and before swapping it in:
//
//	next, err := config.Load(path)
//	if err == nil { err = config.CheckReload(old, next) }
//	if err == nil { next.InheritRuntime(old); current = next }
//
// It changes nothing when either configuration names its holder identity
// explicitly (CheckReload refuses a change between the two).
func (c *Config) InheritRuntime(old *Config) {
	if old == nil {
		return
	}
	if c.Lease.HolderIdentityGenerated && old.Lease.HolderIdentityGenerated {
		c.Lease.HolderIdentity = old.Lease.HolderIdentity
	}
}

// configuredHolderIdentity is lease.holderIdentity as the file gives it:
// "" when it was generated.
func (l Lease) configuredHolderIdentity() string {
	if l.HolderIdentityGenerated {
		return ""
	}
	return l.HolderIdentity
}

// environment is what resolving the lease section reads from the process's
// surroundings. Tests replace it.
type environment struct {
	lookupEnv func(string) (string, bool)
	// namespaceFile is the service account's namespace file.
	namespaceFile string
	hostname      func() (string, error)
	random        io.Reader
}

var env = environment{
	lookupEnv:     os.LookupEnv,
	namespaceFile: "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
	hostname:      os.Hostname,
	random:        rand.Reader,
}

// holderIdentityRE is what a holder identity must match; its length, at
// most maxHolderIdentity, is checked apart.
var holderIdentityRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`)

const (
	maxHolderIdentity = 128
	// maxHostnamePart bounds the host name in a generated holder identity.
	maxHostnamePart = 63
	// maxLeaseName is the length limit of a DNS-1123 subdomain.
	maxLeaseName = 253
)

// resolveLease resolves the lease section; repos are the resolved
// repositories, whose lease names it checks.
func resolveLease(raw rawLease, repos []Repository, p *problems) Lease {
	l := Lease{
		Kind:          DefaultLeaseKind,
		Duration:      DefaultLeaseDuration,
		RenewInterval: DefaultLeaseRenewInterval,
		Kubernetes:    LeaseKubernetes{NamePrefix: DefaultLeaseNamePrefix},
		SpreadStep:    DefaultLeaseSpreadStep,
	}
	if v := raw.SpreadStep; v != nil {
		if d, ok := parseDuration(*v, "lease.spreadStep", p); ok {
			l.SpreadStep = d
			if d < 0 || d > MaxLeaseSpreadStep {
				p.add("lease.spreadStep", "must be between 0s and %s, got %q", MaxLeaseSpreadStep, *v)
			}
		}
	}
	if v := raw.Kind; v != nil {
		l.Kind = *v
		switch *v {
		case LeaseKindAuto, LeaseKindKubernetes, LeaseKindRepository:
		default:
			p.add("lease.kind", "unknown lease kind %q (want auto, kubernetes or repository)", *v)
		}
	}
	if l.Kind == LeaseKindAuto {
		l.Kind = LeaseKindRepository
		if v, _ := env.lookupEnv("KUBERNETES_SERVICE_HOST"); v != "" {
			l.Kind = LeaseKindKubernetes
		}
	}

	durationOK := true
	if v := raw.Duration; v != nil {
		d, ok := parseDuration(*v, "lease.duration", p)
		switch {
		case !ok:
			durationOK = false
		case d <= 0:
			p.add("lease.duration", "must be > 0, got %q", *v)
			durationOK = false
		default:
			l.Duration = d
		}
	}
	if v := raw.RenewInterval; v != nil {
		if d, ok := parseDuration(*v, "lease.renewInterval", p); ok {
			l.RenewInterval = d
			if d <= 0 {
				p.add("lease.renewInterval", "must be > 0, got %q", *v)
			}
		}
	}
	if durationOK && l.RenewInterval > 0 && l.RenewInterval >= l.Duration/2 {
		// Reported at renewInterval, also when the default renewInterval
		// meets a short configured duration.
		got := fmt.Sprintf("%q (the default)", l.RenewInterval.String())
		if raw.RenewInterval != nil {
			got = strconv.Quote(*raw.RenewInterval)
		}
		p.add("lease.renewInterval", "must be less than half of lease.duration (%s), so that a renewal may fail once and the next is still in time, got %s",
			l.Duration/2, got)
	}

	l.Repository.Settle = min(l.Duration/20, time.Second)
	if v := raw.Repository.Settle; v != nil {
		if d, ok := parseDuration(*v, "lease.repository.settle", p); ok {
			l.Repository.Settle = d
			switch {
			case d <= 0:
				p.add("lease.repository.settle", "must be > 0, got %q", *v)
			case durationOK && d > l.Duration/4:
				p.add("lease.repository.settle", "must be at most a quarter of lease.duration (%s), so that a claimant's wait leaves the lease time to be renewed, got %q", l.Duration/4, *v)
			}
		}
	}

	if v := raw.HolderIdentity; v != nil && *v != "" {
		l.HolderIdentity = *v
		if len(*v) > maxHolderIdentity || !holderIdentityRE.MatchString(*v) {
			p.add("lease.holderIdentity", "invalid holder identity %q (want at most %d lower-case letters, digits, '-' and '.', starting and ending with a letter or digit; leave it empty to generate one)",
				*v, maxHolderIdentity)
		}
	} else {
		id, err := generateHolderIdentity()
		if err != nil {
			p.add("lease.holderIdentity", "generate a holder identity: %s", err)
		}
		l.HolderIdentity, l.HolderIdentityGenerated = id, true
	}

	l.Kubernetes.Namespace = resolveLeaseNamespace(raw.Kubernetes.Namespace, l.Kind, p)

	prefixOK := true
	if v := raw.Kubernetes.NamePrefix; v != nil {
		l.Kubernetes.NamePrefix = *v
		// A prefix is valid when a one-letter repository name makes a
		// valid name, and leaves room for the longest repository name.
		if len(*v) > maxLeaseName-63 || !podNameRE.MatchString(*v+"a") {
			p.add("lease.kubernetes.namePrefix", "invalid lease name prefix %q (namePrefix + repository name must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', starting with a letter or digit; at most %d characters)",
				*v, maxLeaseName-63)
			prefixOK = false
		}
	}
	if prefixOK {
		for i, r := range repos {
			if !repositoryNameRE.MatchString(r.Name) {
				continue // reported already
			}
			if name := l.LeaseName(r.Name); !podNameRE.MatchString(name) {
				p.add(fmt.Sprintf("repositories[%d].name", i), "lease name %q (lease.kubernetes.namePrefix + name) is not a valid DNS-1123 subdomain: each dot-separated part must start and end with a letter or digit", name)
			}
		}
	}
	return l
}

// resolveLeaseNamespace returns the configured namespace, or the pod's
// when none is configured and kind is kubernetes.
func resolveLeaseNamespace(raw *string, kind string, p *problems) string {
	const path = "lease.kubernetes.namespace"
	if raw != nil && *raw != "" {
		if !namespaceRE.MatchString(*raw) {
			p.add(path, "invalid namespace name %q (must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)", *raw)
		}
		return *raw
	}
	if kind != LeaseKindKubernetes {
		return ""
	}
	ns, source := podNamespace()
	switch {
	case ns == "":
		p.add(path, "required with lease kind kubernetes: the pod's namespace is unknown (POD_NAMESPACE is not set and %s is not readable)", env.namespaceFile)
	case !namespaceRE.MatchString(ns):
		p.add(path, "invalid namespace name %q from %s (must be a DNS-1123 label)", ns, source)
	}
	return ns
}

// podNamespace returns the pod's namespace and where it was found, or "".
func podNamespace() (ns, source string) {
	if v, _ := env.lookupEnv("POD_NAMESPACE"); v != "" {
		return v, "POD_NAMESPACE"
	}
	if data, err := os.ReadFile(env.namespaceFile); err == nil {
		if v := strings.TrimSpace(string(data)); v != "" {
			return v, env.namespaceFile
		}
	}
	return "", ""
}

// generateHolderIdentity returns the host name, lower-cased and reduced to
// [a-z0-9.-] ("kopia-maintd" when nothing is left), "-" and 8 random hex
// digits.
func generateHolderIdentity() (string, error) {
	host, err := env.hostname()
	if err != nil {
		host = ""
	}
	host = sanitizeHostname(host)
	if host == "" {
		host = "kopia-maintd"
	}
	var b [4]byte
	if _, err := io.ReadFull(env.random, b[:]); err != nil {
		return "", err
	}
	return host + "-" + hex.EncodeToString(b[:]), nil
}

func sanitizeHostname(host string) string {
	host = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '-':
			return r
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		default:
			return '-'
		}
	}, host)
	const edge = ".-"
	host = strings.Trim(host, edge)
	if len(host) > maxHostnamePart {
		host = strings.TrimRight(host[:maxHostnamePart], edge)
	}
	return host
}
