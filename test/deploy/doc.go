// Package deploy holds the tests that check the Kubernetes manifests under
// deploy/ without a cluster: every YAML file parses, every kustomization
// points at files that exist, no file is left unreferenced, and the
// kopia-maintd container keeps its security settings, probes, port and the
// mounts its config files refer to, and every config.yaml is accepted by the
// daemon's config package.
package deploy
