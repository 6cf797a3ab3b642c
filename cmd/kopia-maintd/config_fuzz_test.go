package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kopia-maintd/kopia-maintd/config"
	"github.com/kopia-maintd/kopia-maintd/scheduler"
)

type nopMaintainer struct{}

func (nopMaintainer) Run(context.Context, scheduler.Job) error { return nil }
func (nopMaintainer) LastSuccess(context.Context, string) (time.Time, time.Time, error) {
	return time.Time{}, time.Time{}, nil
}

// FuzzConfig: any bytes given as the configuration file either load, and
// then every part of the daemon that consumes the configuration accepts it
// (repository specs, the scheduler, the reload check against itself), or
// are refused with a config.Error that lists at least one problem, each
// with a message. Nothing panics.
func FuzzConfig(f *testing.F) {
	dir, err := filepath.Abs("../../configs")
	if err != nil {
		f.Fatal(err)
	}

	for _, glob := range []string{"../../configs/*.yaml", "../../config/testdata/bad/*.yaml", "../../config/testdata/*/*.yaml"} {
		files, _ := filepath.Glob(glob)
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}

			f.Add(data)
		}
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 16<<10 {
			return
		}

		start := time.Now()
		defer func() {
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("loading and checking took %v", d)
			}
		}()

		cfg, err := config.Parse(data, dir)
		if err != nil {
			var ce *config.Error
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("refused without a config.Error listing problems: %T %v", err, err)
			}

			for _, p := range ce.Problems {
				if strings.TrimSpace(p.Message) == "" {
					t.Fatalf("a problem without a message: %+v", p)
				}
			}

			return
		}

		if _, err := specs(cfg, nil); err != nil {
			t.Fatalf("a loaded configuration's repository specs: %v", err)
		}

		if _, err := scheduler.New(scheduler.Options{Concurrency: cfg.Concurrency, Maintainer: nopMaintainer{}}, schedules(cfg)); err != nil {
			t.Fatalf("the scheduler refuses a loaded configuration: %v", err)
		}

		if err := config.CheckReload(cfg, cfg); err != nil {
			t.Fatalf("a configuration cannot be reloaded as itself: %v", err)
		}
	})
}
