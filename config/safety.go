package config

import (
	"fmt"
	"regexp"
	"slices"
	"time"
)

// Kubernetes says how to reach the Kubernetes API. Every Kubernetes feature
// of the daemon (the safety=none gate, the lease) shares it.
type Kubernetes struct {
	// Kubeconfig is the absolute path of a kubeconfig file for use outside
	// the cluster; it was readable when the config was parsed. Empty means
	// the in-cluster configuration (the pod's service account).
	Kubeconfig string
}

// SafetyNone configures the gate that a safety=none full cycle must pass:
// kopia then deletes unreferenced data at once, and corrupts the repository
// if any other client writes meanwhile.
type SafetyNone struct {
	// Allow is the master switch: without it every safety=none request is
	// refused. Repository.SafetyNoneAllowed holds the per-repository result.
	Allow bool
	// VeleroNamespaces are the namespaces where Velero runs (at least one,
	// each a valid namespace name, no duplicates); default [velero].
	VeleroNamespaces []string
	// IgnorePods are names of pods the gate ignores, e.g. the daemon's own
	// pod when it runs as a sidecar; may be empty.
	IgnorePods []string
	// QuietPeriod is how long the repository must show no write by another
	// client, > 0; default 30m.
	QuietPeriod time.Duration
	// ScheduleMargin is how far ahead a Velero Schedule's next run blocks a
	// safety=none run, >= 0; default 2h.
	ScheduleMargin time.Duration
	// WatchInterval is how often the gate's Kubernetes checks run again
	// while a safety=none run is in flight, > 0; default 5s.
	WatchInterval time.Duration
	// Windows are scheduled safety=none full cycles, in file order; each
	// still has to pass the gate. Repository.UnsafeWindows holds the specs
	// that apply to each repository.
	Windows []Window
}

// Window is one scheduled safety=none full cycle.
type Window struct {
	// Schedule is a cron spec, valid for cron.ParseStandard like
	// Schedule.Quick; the repository's jitter is added to each slot.
	Schedule string
	// Repositories names the configured repositories the window applies
	// to, without duplicates; empty means all of them.
	Repositories []string
}

// namespaceRE is a Kubernetes namespace name: a DNS-1123 label.
var namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// podNameRE is a Kubernetes object name: a DNS-1123 subdomain (its length,
// at most 253, is checked apart).
var podNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

func resolveKubernetes(raw rawKubernetes, dir string, p *problems) Kubernetes {
	// Unlike other paths, "" is meaningful here: the in-cluster config.
	if raw.Kubeconfig == nil || *raw.Kubeconfig == "" {
		return Kubernetes{}
	}
	const path = "kubernetes.kubeconfig"
	k := Kubernetes{Kubeconfig: resolvePath(*raw.Kubeconfig, dir, path, p)}
	// A kubeconfig holds credentials: the os error names the file and the
	// failure, never the contents, which are dropped at once.
	if _, err := readSecretFile(k.Kubeconfig); err != nil {
		p.add(path, "%s", err)
	}
	return k
}

// resolveSafetyNone resolves the top-level safetyNone section; repos are
// the resolved repositories that windows may name.
// With discover, a window may also name repositories that are not
// configured: discovery may find them (a name it never finds matches
// nothing).
func resolveSafetyNone(raw rawSafetyNone, repos []Repository, discover bool, p *problems) SafetyNone {
	const path = "safetyNone"
	s := SafetyNone{
		Allow:            raw.Allow != nil && *raw.Allow,
		VeleroNamespaces: []string{DefaultVeleroNamespace},
		QuietPeriod:      DefaultQuietPeriod,
		ScheduleMargin:   DefaultScheduleMargin,
		WatchInterval:    DefaultWatchInterval,
	}
	if raw.VeleroNamespaces != nil {
		s.VeleroNamespaces = slices.Clone(raw.VeleroNamespaces)
		if len(s.VeleroNamespaces) == 0 {
			// An empty list would let the Kubernetes checks pass by
			// looking nowhere.
			p.add(path+".veleroNamespaces", "at least one namespace is required")
		}
		for i, ns := range s.VeleroNamespaces {
			itemPath := fmt.Sprintf("%s.veleroNamespaces[%d]", path, i)
			switch {
			case !namespaceRE.MatchString(ns):
				p.add(itemPath, "invalid namespace name %q (must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)", ns)
			case slices.Contains(s.VeleroNamespaces[:i], ns):
				p.add(itemPath, "duplicate namespace %q", ns)
			}
		}
	}
	for i, pod := range raw.IgnorePods {
		itemPath := fmt.Sprintf("%s.ignorePods[%d]", path, i)
		if len(pod) > 253 || !podNameRE.MatchString(pod) {
			p.add(itemPath, "invalid pod name %q (must be a DNS-1123 subdomain: at most 253 lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit)", pod)
		}
		s.IgnorePods = append(s.IgnorePods, pod)
	}
	positive := func(v *string, field string, d *time.Duration, allowZero bool) {
		if v == nil {
			return
		}
		got, ok := parseDuration(*v, path+"."+field, p)
		if !ok {
			return
		}
		*d = got
		switch {
		case allowZero && got < 0:
			p.add(path+"."+field, "must be >= 0, got %q", *v)
		case !allowZero && got <= 0:
			p.add(path+"."+field, "must be > 0, got %q", *v)
		}
	}
	positive(raw.QuietPeriod, "quietPeriod", &s.QuietPeriod, false)
	positive(raw.ScheduleMargin, "scheduleMargin", &s.ScheduleMargin, true)
	positive(raw.WatchInterval, "watchInterval", &s.WatchInterval, false)

	configured := make(map[string]bool, len(repos))
	for _, r := range repos {
		if r.Name != "" {
			configured[r.Name] = true
		}
	}
	for i, rw := range raw.Windows {
		wPath := fmt.Sprintf("%s.windows[%d]", path, i)
		var w Window
		if rw.Schedule == nil || *rw.Schedule == "" {
			p.add(wPath+".schedule", "required")
		} else {
			w.Schedule = *rw.Schedule
			checkCron(w.Schedule, wPath+".schedule", p)
		}
		for j, name := range rw.Repositories {
			itemPath := fmt.Sprintf("%s.repositories[%d]", wPath, j)
			switch {
			case !configured[name] && !discover:
				p.add(itemPath, "unknown repository %q (not in repositories)", name)
			case !configured[name] && !repositoryNameRE.MatchString(name):
				p.add(itemPath, "invalid repository name %q (must match %s)", name, repositoryNameRE)
			case slices.Contains(rw.Repositories[:j], name):
				p.add(itemPath, "duplicate repository %q", name)
			}
			w.Repositories = append(w.Repositories, name)
		}
		s.Windows = append(s.Windows, w)
	}
	return s
}

// checkRepositorySafetyNone validates a repository's safetyNone section.
// Only an opt-out makes sense there: allow: true could not override a
// global false, and accepting it would suggest it does.
func checkRepositorySafetyNone(raw rawRepositorySafetyNone, path string, p *problems) {
	if raw.Allow != nil && *raw.Allow {
		p.add(path+".safetyNone.allow", "only false (opt out) may be set per repository; safety=none is allowed by the top-level safetyNone.allow")
	}
}

// applySafetyNone sets each repository's SafetyNoneAllowed and
// UnsafeWindows from s and the repository's opt-out in raw.
func applySafetyNone(s SafetyNone, raw []rawRepository, repos []Repository) {
	for i := range repos {
		r := &repos[i]
		optOut := raw[i].SafetyNone.Allow != nil && !*raw[i].SafetyNone.Allow
		r.SafetyNoneAllowed = s.Allow && !optOut
		if !r.SafetyNoneAllowed {
			continue
		}
		for _, w := range s.Windows {
			applies := len(w.Repositories) == 0 || slices.Contains(w.Repositories, r.Name)
			if applies && !slices.Contains(r.UnsafeWindows, w.Schedule) {
				r.UnsafeWindows = append(r.UnsafeWindows, w.Schedule)
			}
		}
	}
}
