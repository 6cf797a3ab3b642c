//go:build tools

// Package tools pins the kopia CLI that the integration tests use as an
// independent client: it creates repositories the daemon did not make and
// verifies snapshots after the daemon maintained them.
package tools

import _ "github.com/kopia/kopia"
