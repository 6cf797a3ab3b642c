// Package velero discovers the kopia repositories that Velero keeps, from
// its BackupRepository and BackupStorageLocation objects, and coexists with
// Velero's own maintenance of them: it tells which of Velero's maintenance
// Jobs are still running and can quiet Velero's schedule for a repository
// (spec.maintenanceFrequency) while the daemon maintains it, and restore it.
//
// Velero keeps one kopia repository per (BackupStorageLocation, volume
// namespace), at <bucket>/<location prefix>/kopia/<volume namespace>/ of the
// location's object storage, all encrypted with the password in the Secret
// velero-repo-credentials. Translate turns the objects into Repository
// values as Velero opens them (pkg/repository/provider/unified_repo.go,
// getStorageVariables and getStorageCredentials); a repository the daemon
// cannot or must not maintain is kept with the reason in NotMaintained,
// never dropped. Discovery keeps the set current with informers; Discover
// lists it once.
//
// The package reads Velero's objects through the dynamic client: it imports
// neither Velero's module nor controller-runtime.
package velero
