// Package deploy holds the tests of the Kubernetes manifests under deploy/.
// Without a cluster: every YAML file parses, every kustomization points at
// files that exist, no file is left unreferenced, every kustomization
// renders with the real kubectl (kubectl kustomize), the kopia-maintd
// containers it renders keep their security settings, probes, port and the
// mounts their config files refer to, the overlays that discover Velero's
// repositories grant exactly what their config asks for, and every
// config.yaml is accepted by the daemon's config package. Against a real
// kube-apiserver (harness.StartKube): every rendered object is admitted by
// `kubectl apply --dry-run=server`, the sidecar patch applies to a
// Deployment shaped like Velero's, and the one-shot safety=none Job is
// admitted as documented, also in its OADP variant.
package deploy
