package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"go.uber.org/zap/zapcore"

	"github.com/kopia-maintd/kopia-maintd/lease"
	"github.com/kopia-maintd/kopia-maintd/repository"
)

func cmdOwner(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("owner: want show, take or hand-back")
	}

	action := args[0]
	fs := newFlagSet("owner "+action, stderr)
	cfgPath := configFlag(fs)
	name := fs.String("repository", "", "repository")
	to := fs.String("to", "", "hand-back: new owner user@host (default: the owner taken over from)")
	asJSON := fs.Bool("json", false, "print JSON")

	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}

	switch action {
	case "show", "take", "hand-back":
	default:
		return usagef("owner: unknown action %q (want show, take or hand-back)", action)
	}

	if *to != "" && action != "hand-back" {
		return usagef("owner %s: --to applies only to hand-back", action)
	}

	cfg, log, mgr, _, err := setup(*cfgPath, stderr, zapcore.InfoLevel)
	if err != nil {
		return err
	}

	if _, err := findRepository(cfg, *name); err != nil {
		return err
	}

	ctx := context.Background()

	var info *repository.OwnerInfo

	switch action {
	case "show":
		info, err = mgr.Owner(ctx, *name)
	default:
		// Changing the owner writes to the repository: inside its lease,
		// like every maintenance run.
		lm, lerr := newLeases(cfg, mgr, nil, log.Named("lease"))
		if lerr != nil {
			return lerr
		}

		err = lm.With(ctx, *name, func(ctx context.Context, held *lease.Held) error {
			var err error

			if action == "take" {
				info, err = mgr.TakeOwnership(ctx, held, *name)
			} else {
				info, err = mgr.HandBack(ctx, held, *name, *to)
			}

			return err
		})
	}

	if err != nil {
		return err
	}

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")

		return enc.Encode(info)
	}

	owner := info.Owner
	if owner == "" {
		owner = "(nobody)"
	}

	fmt.Fprintf(stdout, "repository %s: maintenance owner %s", info.Repository, owner)

	if info.IsSelf {
		fmt.Fprint(stdout, " (this daemon)")
	}

	fmt.Fprintln(stdout)

	if info.PreviousOwnerKnown {
		prev := info.PreviousOwner
		if prev == "" {
			prev = "(nobody)"
		}

		fmt.Fprintf(stdout, "previous owner remembered for hand-back: %s\n", prev)
	}

	return nil
}
