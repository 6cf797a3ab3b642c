// Command maintbench measures kopia-maintd against the kopia CLI on
// generated reference repositories: one full cycle on a large repository,
// quick and full cycles over many small ones (one process against one
// process per repository, as Velero's maintenance Jobs do), the daemon's idle
// cost with many configured repositories, and its /metrics scrape latency.
//
// It is run by bench/run.sh, which builds the binaries it needs; see
// docs/performance.md for the method and the figures.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Tools are the executables the bench runs.
type Tools struct {
	Daemon string
	Kopia  string
	MinIO  string
}

// Params are the sizes of one bench run.
type Params struct {
	CacheDir       string
	Work           string
	KopiaVersion   string
	Pairs          int
	Large          Shape
	Small          Shape
	SmallTemplates int
	Many           int           // repositories of comparison 2
	Idle           int           // repositories of comparisons 3 and 4
	IdleWindow     time.Duration // comparison 3
	Scrapes        int           // comparison 4
	Only           map[string]bool
	SpreadStep     string // lease.spreadStep of the daemon in comparison 2
}

func main() { os.Exit(run1()) }

func run1() int {
	quick := flag.Bool("quick", false, "smoke run: small repositories, one pair, short idle window")
	cache := flag.String("cache", filepath.Join(os.Getenv("HOME"), ".cache/kopia-maintd/bench"), "reference state cache")
	work := flag.String("work", filepath.Join(os.TempDir(), "kopia-maintd-bench"), "scratch directory (wiped)")
	out := flag.String("out", "", "write the results as JSON to this file")
	daemon := flag.String("daemon", "", "kopia-maintd binary")
	kopia := flag.String("kopia", "", "kopia CLI binary (v0.22.3)")
	minioBin := flag.String("minio", "", "minio binary")
	kopiaVersion := flag.String("kopia-version", "v0.22.3", "version of -kopia, part of the cache key")
	pairs := flag.Int("pairs", 0, "A B pairs per comparison (default 3, 1 with -quick)")
	spread := flag.String("spread-step", "0s", "lease.spreadStep of the daemon in comparison 2 (the daemon's default is 1s)")
	only := flag.String("only", "large-fs,large-s3,many-quick,many-full,many-quick-steady,idle", "comparisons to run, comma separated")
	flag.Parse()

	p := Params{
		CacheDir: *cache, Work: *work, KopiaVersion: *kopiaVersion, Pairs: 3,
		Large:          Shape{Files: 100_000, Snapshots: 24, Deleted: 4, Modify: 2_000, Add: 1_000, Remove: 500, MinSize: 128, MaxSize: 4096, Seed: 1},
		Small:          Shape{Files: 100, Snapshots: 3, Deleted: 1, Modify: 10, Add: 10, Remove: 5, MinSize: 128, MaxSize: 4096, Seed: 1000},
		SmallTemplates: 10,
		Many:           200,
		Idle:           1000,
		IdleWindow:     5 * time.Minute,
		Scrapes:        100,
		Only:           map[string]bool{},
		SpreadStep:     *spread,
	}
	if *quick {
		p.Pairs = 1
		p.Large = Shape{Files: 5_000, Snapshots: 5, Deleted: 1, Modify: 200, Add: 100, Remove: 50, MinSize: 128, MaxSize: 4096, Seed: 1}
		p.SmallTemplates = 3
		p.Many = 20
		p.Idle = 50
		p.IdleWindow = 30 * time.Second
		p.Scrapes = 20
	}
	if *pairs > 0 {
		p.Pairs = *pairs
	}
	for _, o := range strings.Split(*only, ",") {
		p.Only[strings.TrimSpace(o)] = true
	}
	tools := Tools{Daemon: *daemon, Kopia: *kopia, MinIO: *minioBin}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, "%s "+f+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
	}
	res, err := bench(ctx, p, tools, logf)
	if res != nil {
		res.print(os.Stdout)
		if *out != "" {
			b, _ := json.MarshalIndent(res, "", "  ")
			if werr := os.WriteFile(*out, b, 0o644); werr != nil {
				logf("write %s: %v", *out, werr)
			}
		}
	}
	if err != nil {
		logf("bench failed: %v", err)
		return 1
	}
	return 0
}
