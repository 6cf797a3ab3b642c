package repository

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/kopia/kopia/fs"
	"github.com/kopia/kopia/fs/virtualfs"
	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/content"
	"github.com/kopia/kopia/snapshot"
	"github.com/kopia/kopia/snapshot/policy"
	"github.com/kopia/kopia/snapshot/upload"
	"go.uber.org/zap"
)

// BenchmarkCompactionMeasure100k compares the compact-live step's
// measurement (listing the packs, summing live bytes per pack from the
// index kopia loaded, planning) with a full cycle, on a repository of
// about 100,000 contents: one snapshot of 100 directories of 1,000 small
// files each. Each iteration runs one full cycle with compaction off (no
// measurement at all) and then the measurement alone, on a repository
// opened and refreshed beforehand, as the step finds it inside the cycle.
// It reports both times and the measurement as a percentage of the full
// cycle (the bound: 10 %).
//
//	go test ./repository -run '^$' -bench BenchmarkCompactionMeasure100k -benchtime 5x
func BenchmarkCompactionMeasure100k(b *testing.B) {
	const (
		dirs        = 100
		filesPerDir = 1000
	)

	ctx := context.Background()
	st := newMemStorage(time.Now)

	m, err := NewManager(Options{
		StateDirectory: filepath.Join(b.TempDir(), "state"),
		Identity:       Identity{Username: "maintd", Hostname: "bench"},
		Logger:         zap.NewNop(),
	}, []Spec{{
		Name: "r", Storage: CustomStorage(func(context.Context) (blob.Storage, error) { return st, nil }),
		Password: staticPassword(testPassword), Create: true, Ownership: Ownership{Policy: PolicyNever},
		Compaction: Compaction{Disabled: true},
	}})
	if err != nil {
		b.Fatal(err)
	}

	full := func() {
		b.Helper()

		if _, err := m.Run(ctx, testLease(b, "r"), "r", RunRequest{Cycle: Full}); err != nil {
			b.Fatalf("full cycle: %v", err)
		}
	}

	full() // creates the repository

	writer := newTestClient(b, st, testPassword, "writer", "bench", nil)

	var dirEntries []fs.Entry

	for d := range dirs {
		var files []fs.Entry
		for f := range filesPerDir {
			files = append(files, virtualfs.StreamingFileFromReader(fmt.Sprintf("f%04d", f), io.NopCloser(bytes.NewReader(randomBytes(int64(d*filesPerDir+f+1), 96)))))
		}

		dirEntries = append(dirEntries, virtualfs.NewStaticDirectory(fmt.Sprintf("d%03d", d), files))
	}

	err = repo.WriteSession(ctx, writer.rep, repo.WriteSessionOptions{Purpose: "bench snapshot"}, func(ctx context.Context, w repo.RepositoryWriter) error {
		man, err := upload.NewUploader(w).Upload(ctx, virtualfs.NewStaticDirectory("root", dirEntries), policy.BuildTree(nil, policy.DefaultPolicy),
			snapshot.SourceInfo{UserName: "writer", Host: "bench", Path: "/many"})
		if err != nil {
			return err
		}

		_, err = snapshot.SaveSnapshot(ctx, w, man)

		return err
	})
	if err != nil {
		b.Fatalf("write snapshot: %v", err)
	}

	// Open the repository as the cycle has it: index loaded and refreshed.
	reader := newTestClient(b, st, testPassword, "reader", "bench", nil)
	reader.refresh()
	dr := reader.rep.(repo.DirectRepository)

	packs, err := measurePacks(ctx, dr)
	if err != nil {
		b.Fatal(err)
	}

	var contents int

	if err := dr.ContentReader().IterateContents(ctx, content.IterateOptions{}, func(content.Info) error { contents++; return nil }); err != nil {
		b.Fatal(err)
	}

	b.Logf("repository: %d contents in %d packs", contents, len(packs))

	var fullTime, measureTime time.Duration

	b.ResetTimer()

	for range b.N {
		start := time.Now()
		full()
		fullTime += time.Since(start)

		reader.refresh()

		start = time.Now()

		packs, err := measurePacks(ctx, dr)
		if err != nil {
			b.Fatal(err)
		}

		_ = planCompaction(packs, DefaultLiveRatioThreshold, DefaultCompactionMaxBytes, shortPackLimit(20<<20))
		measureTime += time.Since(start)
	}

	b.StopTimer()

	n := float64(b.N)
	b.ReportMetric(fullTime.Seconds()/n, "full-cycle-s/op")
	b.ReportMetric(measureTime.Seconds()/n, "measure-s/op")
	b.ReportMetric(100*measureTime.Seconds()/fullTime.Seconds(), "measure-%-of-full")
}
