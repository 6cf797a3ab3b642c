package repository

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// writeFileAtomic replaces file with data, so that a reader sees either the
// old or the new contents and never a mix. The data goes to a temporary file
// of a unique name in the same directory, which is synced and then renamed
// over file. A fixed temporary name would let two writers (the daemon and a
// concurrent run-once on the same state directory) truncate each other's
// half-written file or rename it away from under the other. With durable,
// the file and then the directory are synced too, so the new contents
// survive a crash; a record that is only of use while this process lives
// (the run in flight) skips the syncs, which cost tens of milliseconds each
// on a busy disk and would slow the run that publishes it. The file gets mode
// 0600.
func writeFileAtomic(file string, data []byte, durable bool) (err error) {
	dir := filepath.Dir(file)

	tmp, err := os.CreateTemp(dir, "."+filepath.Base(file)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temporary file for %q: %w", file, err)
	}

	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()

	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write %q: %w", tmp.Name(), err)
	}

	if durable {
		if err := tmp.Sync(); err != nil {
			return fmt.Errorf("sync %q: %w", tmp.Name(), err)
		}
	}

	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %q: %w", tmp.Name(), err)
	}

	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("rename %q: %w", tmp.Name(), err)
	}

	if !durable {
		return nil
	}

	if err := syncDir(dir); err != nil {
		return fmt.Errorf("sync directory %q: %w", dir, err)
	}

	return nil
}

// syncDir flushes a directory's entries (a rename into it) to disk.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}

	return errors.Join(d.Sync(), d.Close())
}
