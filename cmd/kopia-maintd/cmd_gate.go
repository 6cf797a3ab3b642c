package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"

	"go.uber.org/zap/zapcore"

	"github.com/kopia-maintd/kopia-maintd/safety"
)

// gateNotAllowed is the gate command's answer when a safety=none cycle
// would be refused now.
type gateNotAllowed struct{ refused []string }

func (e *gateNotAllowed) Error() string {
	return "safety=none would be refused now for " + strings.Join(e.refused, ", ")
}

func cmdGate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("gate", stderr)
	cfgPath := configFlag(fs)
	only := fs.String("repository", "", "check only this repository")
	asJSON := fs.Bool("json", false, "print JSON")

	if err := parseFlags(fs, args); err != nil {
		return err
	}

	cfg, log, mgr, _, err := setup(*cfgPath, stderr, zapcore.ErrorLevel)
	if err != nil {
		return err
	}

	repos, err := repositoriesFor(cfg, *only)
	if err != nil {
		return err
	}

	u := newUnsafeRunner(cfg, mgr, nil, log.Named("safety"))

	var (
		decisions []safety.Decision
		refused   []string
	)

	for _, r := range repos {
		d := u.gate(cfg, r, nil).Check(context.Background())
		decisions = append(decisions, d)

		if !d.Allowed {
			refused = append(refused, r.Name)
		}
	}

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")

		if err := enc.Encode(decisions); err != nil {
			return err
		}
	} else {
		for _, d := range decisions {
			printDecision(stdout, d)
		}
	}

	if len(refused) > 0 {
		return &gateNotAllowed{refused: refused}
	}

	return nil
}

// printDecision prints every check of a decision with its evidence.
func printDecision(w io.Writer, d safety.Decision) {
	verdict := "ALLOWED"
	if !d.Allowed {
		verdict = "REFUSED"
	}

	fmt.Fprintf(w, "repository %s: safety=none %s at %s\n", d.Repository, verdict, d.At.UTC().Format("2006-01-02 15:04:05 UTC"))

	for _, c := range d.Checks {
		where := c.Name
		if c.Namespace != "" {
			where += " [" + c.Namespace + "]"
		}

		fmt.Fprintf(w, "  %-7s %-36s %s\n", c.Verdict, where, c.Reason)

		for _, e := range c.Evidence {
			fmt.Fprintf(w, "          - %s\n", e)
		}
	}
}

// requester names who asked for a one-shot safety=none cycle, for the audit
// log.
func requester() string {
	who := fmt.Sprintf("uid %d", os.Getuid())
	if u, err := user.Current(); err == nil {
		who = u.Username + " (" + who + ")"
	}

	host, _ := os.Hostname()

	return fmt.Sprintf("run-once by %s on %s, pid %d", who, host, os.Getpid())
}
