package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
)

// Profiling for performance work (bench/, docs/performance.md): when set,
// KOPIA_MAINTD_CPUPROFILE names a file that receives a CPU profile of the
// whole command, and KOPIA_MAINTD_HEAPPROFILE one that receives a heap
// profile taken when the command returns. Both are read with `go tool pprof`.
const (
	envCPUProfile  = "KOPIA_MAINTD_CPUPROFILE"
	envHeapProfile = "KOPIA_MAINTD_HEAPPROFILE"
)

// startProfiles starts the profiles the environment asks for and returns the
// function that writes them out.
func startProfiles(stderr io.Writer) (stop func()) {
	var cpu *os.File
	if p := os.Getenv(envCPUProfile); p != "" {
		f, err := os.Create(p)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", envCPUProfile, err)
		} else {
			cpu = f
		}
	}
	return func() {
		if cpu != nil {
			pprof.StopCPUProfile()
			cpu.Close()
		}
		if p := os.Getenv(envHeapProfile); p != "" {
			runtime.GC()
			f, err := os.Create(p)
			if err == nil {
				err = pprof.WriteHeapProfile(f)
				f.Close()
			}
			if err != nil {
				fmt.Fprintf(stderr, "%s: %v\n", envHeapProfile, err)
			}
		}
	}
}
