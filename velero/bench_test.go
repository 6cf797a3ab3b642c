package velero

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

const (
	benchLocations    = 5
	benchRepositories = 500
)

// BenchmarkDiscovery500 measures, on a real kube-apiserver holding 500
// kopia BackupRepositories over 5 BackupStorageLocations, the time from
// Run to the OnChange with all 500 repositories (ms/sync) and the growth
// of the heap in use, after GC, with the Discovery synced (MiB-heap).
// Targets: under 10 s and under 50 MiB.
//
//	nice -n 19 go test ./velero/ -run '^$' -bench BenchmarkDiscovery500 -benchtime 3x
func BenchmarkDiscovery500(b *testing.B) {
	k := harness.StartKube(b)
	k.InstallCRDs(b)
	k.EnsureNamespace(b, veleroNS)

	dyn := k.Dynamic(b)

	for i := range benchLocations {
		k.Apply(b, bslYAML(fmt.Sprintf("location-%d.example.com", i), ""))
	}

	// Create the BackupRepositories in parallel: one at a time takes long.
	work := make(chan int)
	errs := make(chan error, benchRepositories)

	var wg sync.WaitGroup

	for range 8 {
		wg.Go(func() {
			for i := range work {
				ns, loc := fmt.Sprintf("namespace-%03d", i/benchLocations), fmt.Sprintf("location-%d.example.com", i%benchLocations)
				br := &unstructured.Unstructured{Object: map[string]any{
					"apiVersion": "velero.io/v1", "kind": "BackupRepository",
					"metadata": map[string]any{"name": fmt.Sprintf("%s-%s-kopia-%05d", ns, loc, i), "namespace": veleroNS,
						"labels": map[string]any{"velero.io/volume-namespace": ns, "velero.io/repository-type": "kopia"}},
					"spec": map[string]any{"volumeNamespace": ns, "backupStorageLocation": loc, "repositoryType": "kopia", "maintenanceFrequency": "1h0m0s"},
					"status": map[string]any{"phase": "Ready", "lastMaintenanceTime": "2026-01-01T00:00:00Z",
						"recentMaintenance": []any{map[string]any{"result": "Succeeded", "startTimestamp": "2026-01-01T00:00:00Z", "completeTimestamp": "2026-01-01T00:05:00Z"}}},
				}}

				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				_, err := dyn.Resource(backupRepositoriesGVR).Namespace(veleroNS).Create(ctx, br, metav1.CreateOptions{})

				cancel()

				errs <- err
			}
		})
	}

	for i := range benchRepositories {
		work <- i
	}

	close(work)
	wg.Wait()
	close(errs)

	for err := range errs {
		if err != nil {
			b.Fatalf("create BackupRepository: %v", err)
		}
	}

	cfg := k.AdminConfig()

	var (
		worstSync time.Duration
		worstHeap float64
	)

	for b.Loop() {
		var before, after runtime.MemStats

		runtime.GC()
		runtime.ReadMemStats(&before)

		full := make(chan struct{}, 1)
		start := time.Now()
		d := newDiscovery(b, cfg, Options{Logger: zap.NewNop(), OnChange: func(rs []Repository) {
			if len(rs) == benchRepositories {
				select {
				case full <- struct{}{}:
				default:
				}
			}
		}})

		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)

		go func() { done <- d.Run(ctx) }()

		select {
		case <-full:
		case err := <-done:
			b.Fatalf("Run = %v before the full set", err)
		case <-time.After(time.Minute):
			b.Fatal("no OnChange with all repositories within a minute")
		}

		took := time.Since(start)

		runtime.GC()
		runtime.ReadMemStats(&after)

		heap := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / (1 << 20)

		if got := len(d.Repositories()); got != benchRepositories {
			b.Errorf("Repositories = %d, want %d", got, benchRepositories)
		}

		cancel()

		if err := <-done; err != nil {
			b.Errorf("Run = %v", err)
		}

		worstSync, worstHeap = max(worstSync, took), max(worstHeap, heap)
		b.Logf("Run to OnChange with %d repositories: %v; heap in use grew %.1f MiB", benchRepositories, took.Round(time.Millisecond), heap)
	}

	b.ReportMetric(float64(worstSync.Milliseconds()), "ms/sync")
	b.ReportMetric(worstHeap, "MiB-heap")

	if worstSync > 10*time.Second || worstHeap > 50 {
		b.Errorf("worst: %v and %.1f MiB, want under 10s and 50 MiB", worstSync, worstHeap)
	}
}
