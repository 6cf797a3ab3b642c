// Package harness starts and drives the real components that the integration
// tests of kopia-maintd run against: a MinIO server, the kopia CLI and binaries
// built from this module.
//
// The tools are built by scripts/install-tools.sh and cached under
// $HOME/.cache/kopia-maintd/tools/bin (or $KOPIA_MAINTD_TOOLS). A missing tool
// fails the test with the command that installs it; tests never skip, because
// CI installs every tool before it runs them.
//
// Every server binds 127.0.0.1 on a free port and is stopped by t.Cleanup.
package harness
