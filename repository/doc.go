// Package repository is the only package of kopia-maintd that imports kopia.
//
// It opens kopia repositories (filesystem and S3) through a private connection
// file per repository under the state directory, with the daemon's configured
// identity, kopia's logs routed into zap, and kopia's process-exiting defaults
// (OnFatalError, waiting forever on an upgrade lock) replaced. On top of that it
// reads and writes maintenance ownership, runs one maintenance cycle with kopia's
// SafetyFull parameters, keeps kopia's own schedule consistent with the daemon's,
// and reports every task's result with its maintenancestats summary.
//
// No kopia type crosses this package's API: callers see Specs, Cycles, Reports
// and Statuses made of plain Go values.
package repository
