// Package kube tests the Kubernetes test infrastructure against a real
// kube-apiserver and etcd (harness.StartKube): Velero's CustomResourceDefinitions
// in test/testdata/crds, and the RBAC in deploy/base, which must grant the
// daemon's ServiceAccount what the safety gate reads in Velero's namespace
// (and get on that namespace itself), and create, get and update on Leases
// in its own, and nothing more.
package kube
