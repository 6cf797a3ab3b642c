package repository

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// concurrentWrites runs writers goroutines that each call write(w, i) rounds
// times, all at once, and returns every error they saw.
func concurrentWrites(writers, rounds int, write func(w, i int) error) []error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)

	start := make(chan struct{})

	for w := range writers {
		wg.Go(func() {
			<-start

			for i := range rounds {
				if err := write(w, i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}

	close(start)
	wg.Wait()

	return errs
}

// onlyFile fails the test unless dir holds exactly the file name: no
// temporary file is left behind.
func onlyFile(t *testing.T, dir, name string) {
	t.Helper()

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}

	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}

	if !slices.Equal(names, []string{name}) {
		t.Fatalf("directory %s holds %v, want only %s", dir, names, name)
	}
}

// TestWriteJSONConcurrentWriters: the daemon and a run-once on the same state
// directory publish a repository's live run at the same moment. Every write
// succeeds, the file always parses as one writer's complete record, and no
// temporary file is left.
func TestWriteJSONConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "status", "repo.live.json")

	type record struct {
		Writer  int    `json:"writer"`
		Round   int    `json:"round"`
		Padding string `json:"padding"`
	}

	// A record of some size makes a torn or interleaved write visible.
	padding := strings.Repeat("x", 64<<10)

	var (
		mu       sync.Mutex
		readErrs []error
	)

	broken := func(err error) {
		mu.Lock()
		defer mu.Unlock()

		readErrs = append(readErrs, err)
	}

	errs := concurrentWrites(4, 50, func(w, i int) error {
		// Half the writers sync, as the durable records do, and half do
		// not, as the live record does: both kinds are atomic.
		if err := writeJSON(file, record{Writer: w, Round: i, Padding: padding}, w%2 == 0); err != nil {
			return err
		}

		var got record
		if ok, err := readJSON(file, &got); err != nil || !ok {
			broken(fmt.Errorf("read back (found %v): %w", ok, err))
		} else if got.Padding != padding {
			broken(fmt.Errorf("read back a record of writer %d with %d padding bytes", got.Writer, len(got.Padding)))
		}

		return nil
	})
	if len(errs) > 0 {
		t.Fatalf("%d of 200 concurrent writes failed, first: %v", len(errs), errs[0])
	}

	if len(readErrs) > 0 {
		t.Fatalf("%d reads saw a broken file, first: %v", len(readErrs), readErrs[0])
	}

	onlyFile(t, filepath.Dir(file), filepath.Base(file))

	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}

	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
}

// TestWriteFileAtomicFailureLeavesOldFile: a write that cannot complete (the
// target is a directory, so the rename fails) returns the error, keeps
// nothing of the temporary file and leaves the directory as it was.
func TestWriteFileAtomicFailureLeavesOldFile(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")

	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(filepath.Join(target, "keep"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	if err := writeFileAtomic(target, []byte("new"), true); err == nil {
		t.Fatal("writing over a non-empty directory succeeded")
	}

	onlyFile(t, dir, "target")
}
