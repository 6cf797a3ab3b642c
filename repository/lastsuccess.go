package repository

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/maintenance"
)

// scheduleBlobID is the blob in which kopia keeps the maintenance schedule
// and its run history, encrypted with a key derived from the password.
const scheduleBlobID blob.ID = "kopia.maintenance"

// lastSuccessFile remembers, per repository, the last cycle successes read
// from the run history together with the schedule blob's length and time
// when it was read. Reading the history costs a repository open, and so a
// key derivation from the password (scrypt, 64 MiB and about 0.2 s of a
// core); looking at the blob's metadata needs no key. While the blob is the
// one that was read, the history is the one that was read.
const lastSuccessFile = "last-success.json"

type lastSuccessRecord struct {
	Storage string    `json:"storage"` // Storage.fingerprint()
	Length  int64     `json:"length"`
	ModTime time.Time `json:"modTime"`
	Quick   time.Time `json:"quick"`
	Full    time.Time `json:"full"`
}

// cachedLastSuccess returns the remembered successes when the repository's
// schedule blob is still the one they were read from. Any doubt (no record,
// another storage, the blob changed or cannot be looked at) is a miss.
func (m *Manager) cachedLastSuccess(ctx context.Context, spec Spec) (quick, full time.Time, ok bool) {
	b, err := os.ReadFile(filepath.Join(m.repoDir(spec.Name), lastSuccessFile))
	if err != nil {
		return time.Time{}, time.Time{}, false
	}

	var rec lastSuccessRecord
	if json.Unmarshal(b, &rec) != nil || rec.Storage != spec.Storage.fingerprint() {
		return time.Time{}, time.Time{}, false
	}

	st, err := spec.Storage.openBlobStorage(ctx, false)
	if err != nil {
		return time.Time{}, time.Time{}, false
	}
	defer st.Close(ctx) //nolint:errcheck

	bm, err := st.GetMetadata(ctx, scheduleBlobID)
	if err != nil || bm.Length != rec.Length || !bm.Timestamp.Equal(rec.ModTime) {
		return time.Time{}, time.Time{}, false
	}

	return rec.Quick, rec.Full, true
}

// scheduleRemembered reads the run history of an open repository and keeps
// its last cycle successes with the schedule blob's metadata, looked at
// before and after the read: when the two differ, another client wrote the
// blob meanwhile and nothing is kept (the next lookup opens the repository).
// Every read of the history after a run or for a lookup goes through here.
func (m *Manager) scheduleRemembered(ctx context.Context, s *session) (*maintenance.Schedule, error) {
	before, merr := s.rep.BlobReader().GetMetadata(ctx, scheduleBlobID)

	sched, err := s.schedule()
	if err != nil {
		return nil, err
	}

	var after blob.Metadata
	if merr == nil {
		after, merr = s.rep.BlobReader().GetMetadata(ctx, scheduleBlobID)
	}

	if merr != nil || after.Length != before.Length || !after.Timestamp.Equal(before.Timestamp) {
		// No schedule blob yet (never maintained), it cannot be looked at,
		// or it changed under the read: nothing to remember.
		m.forgetLastSuccess(s.spec.Name)
		return sched, nil
	}

	quick, full := lastCycleSuccess(sched.Runs)

	rec, err := json.Marshal(lastSuccessRecord{
		Storage: s.spec.Storage.fingerprint(),
		Length:  before.Length,
		ModTime: before.Timestamp,
		Quick:   quick,
		Full:    full,
	})
	if err == nil {
		err = writeFileAtomic(filepath.Join(m.repoDir(s.spec.Name), lastSuccessFile), rec, false)
	}

	if err != nil {
		// Only a lookup's shortcut is lost.
		s.log.Debug("remember last cycle successes: " + err.Error())
	}

	return sched, nil
}

func (m *Manager) forgetLastSuccess(name string) {
	if err := os.Remove(filepath.Join(m.repoDir(name), lastSuccessFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		m.log.Debug("forget last cycle successes: " + err.Error())
	}
}
