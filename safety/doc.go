// Package safety decides when a maintenance cycle may run with kopia's
// SafetyNone parameters: only after proving, from the Kubernetes API and from
// the repository itself, that nothing else is writing, and while it keeps
// proving it. Every scheduled cycle otherwise runs with SafetyFull.
package safety
