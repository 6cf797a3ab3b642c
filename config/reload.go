package config

// CheckReload reports the changes from old to next that a running daemon
// cannot apply without a restart, as an *Error with one problem per changed
// field; it returns nil when next can replace old in place.
//
// A restart is required for:
//   - identity: the owner the daemon claims and has written into every
//     repository's maintenance params and lease;
//   - stateDirectory: connection files, caches and remembered owners live
//     there;
//   - concurrency: the scheduler's limit is fixed when it is created;
//   - server.listenAddress, server.probeAddress, server.webConfigFile: the
//     listeners are bound once (exporter-toolkit reads the web config file
//     again for every request, so edits to the file itself apply at once);
//   - log.format: the log encoder is built once;
//   - kubernetes.kubeconfig: the Kubernetes client (and the lease election
//     that uses it) is built once; edits to the file itself are not
//     watched either;
//   - every lease key (lease.kind, lease.duration, lease.renewInterval,
//     lease.holderIdentity, lease.kubernetes.namespace and namePrefix):
//     leases held under the old settings would otherwise be renewed,
//     released or looked for under new ones. lease.kind and the namespace
//     are compared as resolved; lease.holderIdentity as configured, so a
//     generated identity (new for every Parse) is no change: the reload
//     path keeps the running one with next.InheritRuntime(old);
//   - velero.discover, velero.namespace, the three credential sources and
//     velero.suppressBuiltinMaintenance: discovery (its informers and its
//     hand-back duties) is started once.
//
// Everything else (velero.repositoryDefaults included) (repositories added, removed or changed, schedules,
// ownership policies, defaults, log.level, every safetyNone key) applies on
// reload. safetyNone is read afresh for every safety=none request, so
// turning safetyNone.allow off, or opting a repository out, refuses the next
// request and drops its windows at once. Whether a safety=none run already
// in flight stops as well is the gate watcher's decision (its config
// check), not this package's.
func CheckReload(old, next *Config) error {
	var p problems
	changed := func(path, was, now string) {
		if was != now {
			p.add(path, "cannot be changed without a restart (was %q, now %q)", was, now)
		}
	}
	changed("identity", old.Identity.String(), next.Identity.String())
	changed("stateDirectory", old.StateDirectory, next.StateDirectory)
	if old.Concurrency != next.Concurrency {
		p.add("concurrency", "cannot be changed without a restart (was %d, now %d)", old.Concurrency, next.Concurrency)
	}
	changed("server.listenAddress", old.Server.ListenAddress, next.Server.ListenAddress)
	changed("server.probeAddress", old.Server.ProbeAddress, next.Server.ProbeAddress)
	changed("server.webConfigFile", old.Server.WebConfigFile, next.Server.WebConfigFile)
	changed("log.format", old.Log.Format, next.Log.Format)
	changed("kubernetes.kubeconfig", old.Kubernetes.Kubeconfig, next.Kubernetes.Kubeconfig)
	changed("lease.kind", old.Lease.Kind, next.Lease.Kind)
	if old.Lease.Duration != next.Lease.Duration {
		p.add("lease.duration", "cannot be changed without a restart (was %s, now %s)", old.Lease.Duration, next.Lease.Duration)
	}
	if old.Lease.RenewInterval != next.Lease.RenewInterval {
		p.add("lease.renewInterval", "cannot be changed without a restart (was %s, now %s)", old.Lease.RenewInterval, next.Lease.RenewInterval)
	}
	changed("lease.holderIdentity", old.Lease.configuredHolderIdentity(), next.Lease.configuredHolderIdentity())
	changed("lease.kubernetes.namespace", old.Lease.Kubernetes.Namespace, next.Lease.Kubernetes.Namespace)
	changed("lease.kubernetes.namePrefix", old.Lease.Kubernetes.NamePrefix, next.Lease.Kubernetes.NamePrefix)
	if old.Maintenance.ListParallelism != next.Maintenance.ListParallelism {
		p.add("maintenance.listParallelism", "cannot be changed without a restart (was %d, now %d)", old.Maintenance.ListParallelism, next.Maintenance.ListParallelism)
	}
	if old.Lease.SpreadStep != next.Lease.SpreadStep {
		p.add("lease.spreadStep", "cannot be changed without a restart (was %s, now %s)", old.Lease.SpreadStep, next.Lease.SpreadStep)
	}
	if old.Lease.Repository.Settle != next.Lease.Repository.Settle {
		p.add("lease.repository.settle", "cannot be changed without a restart (was %s, now %s)", old.Lease.Repository.Settle, next.Lease.Repository.Settle)
	}
	if old.Velero.Discover != next.Velero.Discover {
		p.add("velero.discover", "cannot be changed without a restart (was %t, now %t)", old.Velero.Discover, next.Velero.Discover)
	}
	changed("velero.namespace", old.Velero.Namespace, next.Velero.Namespace)
	changed("velero.credentialsSecret", old.Velero.CredentialsSecret, next.Velero.CredentialsSecret)
	changed("velero.cloudCredentialsSecret", old.Velero.CloudCredentialsSecret, next.Velero.CloudCredentialsSecret)
	changed("velero.cloudCredentialsFile", old.Velero.CloudCredentialsFile, next.Velero.CloudCredentialsFile)
	if old.Velero.SuppressBuiltinMaintenance != next.Velero.SuppressBuiltinMaintenance {
		p.add("velero.suppressBuiltinMaintenance", "cannot be changed without a restart (was %t, now %t)", old.Velero.SuppressBuiltinMaintenance, next.Velero.SuppressBuiltinMaintenance)
	}
	if len(p.list) > 0 {
		return &Error{Problems: p.list}
	}
	return nil
}
