//go:build tools

// Package tools pins the kopia CLI v0.23.1, the version the daemon's own
// kopia library has, so that the integration tests can check that a
// repository the daemon maintained is read by both this CLI and the v0.22.3
// one Velero ships (tools/kopia).
package tools

import _ "github.com/kopia/kopia"
