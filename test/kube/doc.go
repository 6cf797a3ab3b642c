// Package kube tests the Kubernetes test infrastructure against a real
// kube-apiserver and etcd (harness.StartKube): Velero's CustomResourceDefinitions
// in test/testdata/crds, and the RBAC in deploy/, which must grant the
// daemon's ServiceAccount what it does and nothing more: what the safety gate
// reads in Velero's namespace (and get on that namespace itself), create, get
// and update on Leases in its own, and for discovery get, list and watch on
// BackupRepositories and BackupStorageLocations, get on exactly the Secrets
// its config names, list on Velero's Jobs and, with the
// suppress-builtin-maintenance Component, patch on BackupRepositories. The overlays velero, oadp and velero-sidecar
// are applied whole, as kubectl kustomize renders them, and checked with the
// token of the ServiceAccount the daemon runs as in each.
package kube
