// Command kopia-maintd owns Kopia repository maintenance: it takes
// maintenance ownership of each configured repository, runs quick and full
// cycles on cron schedules with kopia's SafetyFull parameters, and exports
// progress and results as Prometheus metrics.
//
// Usage:
//
//	kopia-maintd run          --config FILE   the daemon
//	kopia-maintd check-config --config FILE   validate and exit
//	kopia-maintd run-once     --config FILE --repository NAME --cycle quick|full [--safety none]
//	kopia-maintd gate         --config FILE [--repository NAME] [--json]
//	kopia-maintd status       --config FILE [--repository NAME] [--json]
//	kopia-maintd owner show|take|hand-back --config FILE --repository NAME [--to user@host]
//
// The config file may also be given with KOPIA_MAINTD_CONFIG. Exit codes: 0
// success, 1 runtime failure, 2 usage or configuration error.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	// CRON_TZ= schedules need a zone database; distroless images have none.
	_ "time/tzdata"

	"github.com/kopia-maintd/kopia-maintd/config"
	"github.com/kopia-maintd/kopia-maintd/maintain"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	stop := startProfiles(os.Stderr)
	code := run(os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError is a mistake on the command line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

const usage = `kopia-maintd owns Kopia repository maintenance.

Usage:
  kopia-maintd run          --config FILE
  kopia-maintd check-config --config FILE
  kopia-maintd run-once     --config FILE --repository NAME --cycle quick|full [--safety none]
  kopia-maintd gate         --config FILE [--repository NAME] [--json]
  kopia-maintd status       --config FILE [--repository NAME] [--json]
  kopia-maintd owner show|take|hand-back --config FILE --repository NAME [--to user@host]
  kopia-maintd version

The config file may also be given with KOPIA_MAINTD_CONFIG.
Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error,
3 refused (or stopped) by the safety=none gate.
`

// run dispatches a subcommand and maps its error to an exit code; it is the
// only place that does.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}

	var err error

	cmd, rest := args[0], args[1:]

	switch cmd {
	case "run":
		err = cmdRun(rest, stderr)
	case "check-config":
		err = cmdCheckConfig(rest, stdout, stderr)
	case "run-once":
		err = cmdRunOnce(rest, stdout, stderr)
	case "status":
		err = cmdStatus(rest, stdout, stderr)
	case "owner":
		err = cmdOwner(rest, stdout, stderr)
	case "gate":
		err = cmdGate(rest, stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "kopia-maintd %s (kopia %s)\n", version, kopiaVersion())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		err = usagef("unknown command %q", cmd)
	}

	return report(err, stderr)
}

func report(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}

	var (
		cfgErr    *config.Error
		usageErr  *usageError
		refused   *maintain.GateRefusal
		cancelled *maintain.GateCancellation
		notNow    *gateNotAllowed
	)

	switch {
	case errors.As(err, &refused), errors.As(err, &cancelled), errors.As(err, &notNow):
		fmt.Fprintf(stderr, "kopia-maintd: %s\n", err)
		return exitRefused
	case errors.Is(err, flag.ErrHelp):
		return exitUsage
	case errors.As(err, &cfgErr):
		fmt.Fprintf(stderr, "kopia-maintd: invalid configuration:\n")

		for _, p := range cfgErr.Problems {
			fmt.Fprintf(stderr, "  %s\n", p)
		}

		return exitUsage
	case errors.As(err, &usageErr):
		fmt.Fprintf(stderr, "kopia-maintd: %s\nRun 'kopia-maintd help' for usage.\n", usageErr.msg)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "kopia-maintd: %s\n", err)
		return exitFailure
	}
}
