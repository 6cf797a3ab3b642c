package main

import (
	"fmt"
	"io"
	"slices"

	"go.uber.org/zap"

	"github.com/kopia-maintd/kopia-maintd/config"
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

	if cfg.Velero.Discover {
		checkDiscovery(cfg, stdout)
	}

	return nil
}

// checkDiscovery says what Velero discovery would find now, read-only.
// Without a reachable Kubernetes API it says so: the file is still valid.
func checkDiscovery(cfg *config.Config, stdout io.Writer) {
	found, _, err := discoverOnce(cfg, zap.NewNop())
	if err != nil {
		fmt.Fprintf(stdout, "velero discovery in namespace %s: not checked: %v\n", cfg.Velero.Namespace, err)
		return
	}

	fmt.Fprintf(stdout, "velero discovery in namespace %s would find %d repositories:\n", cfg.Velero.Namespace, len(found))

	for _, r := range found {
		clash := slices.ContainsFunc(cfg.Repositories, func(c config.Repository) bool { return c.Name == r.Name })

		switch {
		case r.NotMaintained != "":
			fmt.Fprintf(stdout, "  %s: not maintained: %s (BackupRepository %s)\n", r.Name, r.NotMaintained, r.Source.BackupRepository)
		case clash:
			fmt.Fprintf(stdout, "  %s: not maintained: a configured repository has this name (BackupRepository %s)\n", r.Name, r.Source.BackupRepository)
		default:
			l := r.Location
			fmt.Fprintf(stdout, "  %s: BackupRepository %s, location %s, s3 %s bucket %s prefix %s\n",
				r.Name, r.Source.BackupRepository, r.Source.BackupStorageLocation, l.Endpoint, l.Bucket, l.Prefix)
		}
	}
}
