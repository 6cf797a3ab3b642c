package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// memoryLimitPercent is the share of the cgroup's memory limit given to the
// Go runtime as its soft limit (GOMEMLIMIT) when the environment sets none.
// The rest is headroom for what the runtime does not count (thread stacks
// outside the heap, kopia's memory-mapped index files, the page cache that
// the cgroup charges), so that the garbage collector works harder before the
// kernel's OOM killer steps in.
const memoryLimitPercent = 90

// The cgroup files that hold the memory limit, relative to the file system
// root: cgroup v2 (the unified hierarchy) and the v1 memory controller.
const (
	cgroupV2MemoryMax = "sys/fs/cgroup/memory.max"
	cgroupV1MemoryMax = "sys/fs/cgroup/memory/memory.limit_in_bytes"
)

// cgroupV1Unlimited is the smallest value cgroup v1 reports for "no limit"
// (the page-rounded maximum of an int64 is 0x7FFFFFFFFFFFF000); anything
// this large is no real limit.
const cgroupV1Unlimited = 1 << 62

// cgroupMemoryLimit reads the memory limit of the cgroup the process runs
// in, under root ("/" in production, a fake tree in tests). ok is false when
// there is none: no cgroup file, "max", or v1's "unlimited" value.
func cgroupMemoryLimit(root string) (limit int64, source string, ok bool, err error) {
	for _, f := range []string{cgroupV2MemoryMax, cgroupV1MemoryMax} {
		p := filepath.Join(root, f)
		b, rerr := os.ReadFile(p)
		if errors.Is(rerr, os.ErrNotExist) {
			continue
		}
		if rerr != nil {
			return 0, p, false, fmt.Errorf("read cgroup memory limit: %w", rerr)
		}
		v := strings.TrimSpace(string(b))
		if v == "max" {
			return 0, p, false, nil
		}
		n, perr := strconv.ParseInt(v, 10, 64)
		if perr != nil {
			return 0, p, false, fmt.Errorf("parse cgroup memory limit %s: %w", p, perr)
		}
		if n <= 0 || n >= cgroupV1Unlimited {
			return 0, p, false, nil
		}
		return n, p, true, nil
	}
	return 0, "", false, nil
}

// applyMemoryLimit sets the Go runtime's soft memory limit to
// memoryLimitPercent of the cgroup's limit, unless GOMEMLIMIT is set (the
// runtime then already applied it), and logs the limit in force.
func applyMemoryLimit(log *zap.Logger, root string) {
	if v := os.Getenv("GOMEMLIMIT"); v != "" {
		log.Info("memory limit", zap.String("source", "GOMEMLIMIT"), zap.String("gomemlimit", v))
		return
	}
	limit, source, ok, err := cgroupMemoryLimit(root)
	switch {
	case err != nil:
		log.Warn("memory limit not set from the cgroup", zap.Error(err))
	case !ok:
		log.Info("memory limit", zap.String("source", "none"), zap.String("cgroup_file", source))
	default:
		soft := limit / 100 * memoryLimitPercent
		debug.SetMemoryLimit(soft)
		log.Info("memory limit", zap.String("source", "cgroup"), zap.String("cgroup_file", source),
			zap.Int64("cgroup_limit_bytes", limit), zap.Int64("gomemlimit_bytes", soft))
	}
}
