package main

import (
	"fmt"
	"io"
)

func cmdCheckConfig(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check-config", stderr)
	cfgPath := configFlag(fs)

	if err := parseFlags(fs, args); err != nil {
		return err
	}

	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}

	fmt.Fprintf(stdout, "configuration %s is valid: identity %s, %d repositories\n", *cfgPath, cfg.Identity, len(cfg.Repositories))

	for _, r := range cfg.Repositories {
		fmt.Fprintf(stdout, "  %s: quick %q, full %q, jitter %s, takeover %s\n",
			r.Name, r.Schedule.Quick, r.Schedule.Full, r.Schedule.Jitter, r.Ownership.Takeover)
	}

	return nil
}
