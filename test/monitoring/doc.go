// Package monitoring holds the tests of the monitoring kit in
// deploy/monitoring:
//
//   - the alert rules: the spec of prometheusrule.yaml is written out as a plain
//     Prometheus rule file and checked with `promtool check rules`, and the unit
//     tests in testdata/ run with `promtool test rules` against it; every alert
//     needs a test case where it fires and one where it stays quiet;
//   - every PromQL expression of the rules and of dashboard.json uses only the
//     metrics of metrics/CONTRACT.md (and a few standard ones such as up);
//   - the ServiceMonitor and PodMonitor select the Service and pods of
//     deploy/base by the labels and port name those really have, under the job
//     name the rules select; the kustomization wraps the dashboard in a
//     ConfigMap for Grafana's sidecar.
//
// promtool comes from `bash scripts/install-tools.sh prometheus`.
package monitoring
