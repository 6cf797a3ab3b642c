package config

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

// Compaction defaults: on, packs under half live, 2 GiB per cycle.
const (
	DefaultCompactionEnabled            = true
	DefaultCompactionLiveRatioThreshold = 0.5
	DefaultCompactionMaxBytesPerCycle   = 2 << 30
)

// Compaction configures the compact-live step of full cycles, the cycle's
// rewrite in place of kopia's: rewriting the live contents of short packs
// and of packs that are mostly dead, and never the deleted ones, so kopia's
// own maintenance can delete the deleted data it would otherwise keep for
// good.
type Compaction struct {
	// Enabled turns the step on.
	Enabled bool
	// LiveRatioThreshold selects packs whose live contents fill less than
	// this fraction of the pack, in (0, 1].
	LiveRatioThreshold float64
	// MaxBytesPerCycle bounds the live bytes one full cycle rewrites, > 0.
	MaxBytesPerCycle int64
}

type rawCompaction struct {
	Enabled            *bool    `yaml:"enabled"`
	LiveRatioThreshold *float64 `yaml:"liveRatioThreshold"`
	MaxBytesPerCycle   *string  `yaml:"maxBytesPerCycle"`
}

// resolveCompaction returns base with the fields set in raw replacing it.
func resolveCompaction(raw rawCompaction, base Compaction, path string, p *problems) Compaction {
	c := base
	if raw.Enabled != nil {
		c.Enabled = *raw.Enabled
	}
	if v := raw.LiveRatioThreshold; v != nil {
		c.LiveRatioThreshold = *v
		if math.IsNaN(*v) || *v <= 0 || *v > 1 {
			p.add(path+".liveRatioThreshold", "must be in (0, 1], got %v", *v)
		}
	}
	if v := raw.MaxBytesPerCycle; v != nil {
		if n, ok := parseSize(*v, path+".maxBytesPerCycle", p); ok {
			c.MaxBytesPerCycle = n
			if n <= 0 {
				p.add(path+".maxBytesPerCycle", "must be > 0, got %q", *v)
			}
		}
	}
	return c
}

var sizeRE = regexp.MustCompile(`^(\d+(?:\.\d+)?)\s*([A-Za-z]*)$`)

var sizeUnits = map[string]float64{
	"": 1, "B": 1,
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
	"kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
}

// parseSize reads a byte count: a number of bytes, or a number with a unit
// (B, KiB, MiB, GiB, TiB, or the decimal kB, MB, GB, TB), e.g. 2GiB or
// 512MiB.
func parseSize(v, path string, p *problems) (int64, bool) {
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(v))
	if m != nil {
		unit, known := sizeUnits[m[2]]
		f, err := strconv.ParseFloat(m[1], 64)
		if known && err == nil && f*unit < math.MaxInt64 {
			return int64(f * unit), true
		}
	}
	p.add(path, "invalid size %q (want bytes or a number with a unit such as 512MiB or 2GiB)", v)
	return 0, false
}

// String describes the settings, e.g. "on (live ratio < 0.5, 2.0 GiB per
// cycle)".
func (c Compaction) String() string {
	if !c.Enabled {
		return "off"
	}
	return fmt.Sprintf("on (live ratio < %v, %s per cycle)", c.LiveRatioThreshold, formatSize(c.MaxBytesPerCycle))
}

func formatSize(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d%s", n/u.size, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}
