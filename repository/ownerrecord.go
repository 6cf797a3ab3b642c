package repository

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/kopia/kopia/repo/blob"
	"go.uber.org/zap"
)

// The ownership record and the audit records live in the repository's own
// storage, beside kopia's maintenance params, and not in the state
// directory: replicas sharing one identity share them, a restart or a new
// node loses nothing, and a daemon with another identity can read them.
// Like the lease blobs, their prefixes are outside everything kopia lists or
// deletes (see LeaseBlobPrefix).
const (
	// OwnerRecordPrefix starts the names of ownership record blobs, one per
	// daemon identity: the owner it took maintenance ownership from, when,
	// and why.
	OwnerRecordPrefix = "kopia-maintd-owner-"
	// AuditRecordPrefix starts the names of audit record blobs, one per
	// record, named so that their order is the order they were written in.
	AuditRecordPrefix = "kopia-maintd-audit-"
	// AuditRecordsKept is how many audit records a repository keeps: after
	// each append the oldest beyond this many are deleted.
	AuditRecordsKept = 200
)

// ownerRecordVersion is the format written now. Version 0 is the state
// directory file of earlier releases, which had the same fields.
const ownerRecordVersion = 1

func ownerRecordID(identity string) blob.ID {
	return blob.ID(OwnerRecordPrefix + unsafeHolderChars.ReplaceAllString(strings.ToLower(identity), "-"))
}

// pendingTakeover is a takeover whose record is not yet in the repository.
type pendingTakeover struct {
	state ownerState
	// confirmed: kopia's params were written with us as the owner. An
	// unconfirmed one is a params write that returned an error and may or
	// may not have landed; the next run's params tell.
	confirmed bool
}

// ownerMemory holds, per repository, a takeover this process made but could
// not record yet; the next operation on the repository records it.
type ownerMemory struct {
	mu      sync.Mutex
	pending map[string]pendingTakeover
}

func (o *ownerMemory) get(name string) (pendingTakeover, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()

	p, ok := o.pending[name]

	return p, ok
}

func (o *ownerMemory) set(name string, p pendingTakeover) {
	o.mu.Lock()
	defer o.mu.Unlock()

	if o.pending == nil {
		o.pending = map[string]pendingTakeover{}
	}

	o.pending[name] = p
}

func (o *ownerMemory) clear(name string) {
	o.mu.Lock()
	defer o.mu.Unlock()

	delete(o.pending, name)
}

// recordStorage opens the repository's storage for its records.
func (m *Manager) recordStorage(ctx context.Context, name string) (blob.Storage, error) {
	spec, err := m.spec(name)
	if err != nil {
		return nil, err
	}

	st, err := spec.Storage.openBlobStorage(ctx, false)
	if err != nil {
		return nil, fmt.Errorf("repository %q: open %s: %w", name, spec.Storage.Location(), err)
	}

	// The records are written by operations inside the repository's
	// lease, through the same fence as kopia's writes.
	return &fencedStorage{Storage: st, fence: fenceFrom(ctx), stats: m.fenceStats(name)}, nil
}

// outputBuffer is a blob.OutputBuffer over a bytes.Buffer.
type outputBuffer struct{ bytes.Buffer }

func (b *outputBuffer) Length() int { return b.Len() }

// getBlob reads a whole blob; found is false when it does not exist.
func getBlob(ctx context.Context, st blob.Storage, id blob.ID) (data []byte, found bool, err error) {
	var buf outputBuffer

	err = st.GetBlob(ctx, id, 0, -1, &buf)
	if errors.Is(err, blob.ErrBlobNotFound) {
		return nil, false, nil
	}

	if err != nil {
		return nil, false, err
	}

	return buf.Bytes(), true, nil
}

// ownerRecordSource says where loadOwnerRecord found the record.
type ownerRecordSource int

const (
	recordNone ownerRecordSource = iota
	// recordRepository: the record in the repository.
	recordRepository
	// recordLegacy: only the state directory file of an earlier release.
	recordLegacy
	// recordPending: a takeover of this process not yet recorded.
	recordPending
)

// loadOwnerRecord returns this identity's ownership record: a confirmed
// takeover not yet recorded, else the repository's record, else the state
// directory file of an earlier release. A record that does not decode is
// logged and treated as missing, so one damaged blob cannot stop every run.
func (m *Manager) loadOwnerRecord(ctx context.Context, name string) (ownerState, ownerRecordSource, error) {
	if p, ok := m.owners.get(name); ok && p.confirmed {
		return p.state, recordPending, nil
	}

	st, err := m.recordStorage(ctx, name)
	if err != nil {
		return ownerState{}, recordNone, err
	}
	defer st.Close(ctx) //nolint:errcheck

	id := ownerRecordID(m.opts.Identity.String())

	b, found, err := getBlob(ctx, st, id)
	if err != nil {
		return ownerState{}, recordNone, fmt.Errorf("repository %q: read ownership record: %w", name, err)
	}

	if found {
		var rec ownerState
		if err := json.Unmarshal(b, &rec); err != nil {
			m.log.Warn("ignoring an ownership record that does not decode",
				zap.String("repository", name), zap.String("blob", string(id)), zap.Error(err))

			return ownerState{}, recordNone, nil
		}

		// Blob names fold some characters, so two identities can share a
		// name; a record of another identity is not ours to act on.
		if rec.Identity != "" && rec.Identity != m.opts.Identity.String() {
			m.log.Warn("ignoring an ownership record of another identity",
				zap.String("repository", name), zap.String("blob", string(id)), zap.String("identity", rec.Identity))

			return ownerState{}, recordNone, nil
		}

		return rec, recordRepository, nil
	}

	legacy, err := m.loadOwnerState(name)
	if err != nil {
		return ownerState{}, recordNone, err
	}

	if legacy.Remembered || !legacy.TookOverAt.IsZero() {
		return legacy, recordLegacy, nil
	}

	return ownerState{}, recordNone, nil
}

// writeOwnerRecord stores this identity's ownership record in the
// repository, through the lease fence.
func (m *Manager) writeOwnerRecord(ctx context.Context, name string, rec ownerState) error {
	rec.Version = ownerRecordVersion
	rec.Identity = m.opts.Identity.String()

	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}

	st, err := m.recordStorage(ctx, name)
	if err != nil {
		return err
	}
	defer st.Close(ctx) //nolint:errcheck

	if err := st.PutBlob(ctx, ownerRecordID(rec.Identity), byteSlice(b), blob.PutOptions{}); err != nil {
		return fmt.Errorf("repository %q: write ownership record: %w", name, err)
	}

	return nil
}

// forgetOwnerRecord removes this identity's ownership record from the
// repository and the state directory, and any takeover not yet recorded.
func (m *Manager) forgetOwnerRecord(ctx context.Context, name string) error {
	m.owners.clear(name)

	st, err := m.recordStorage(ctx, name)
	if err != nil {
		return err
	}
	defer st.Close(ctx) //nolint:errcheck

	if err := st.DeleteBlob(ctx, ownerRecordID(m.opts.Identity.String())); err != nil && !errors.Is(err, blob.ErrBlobNotFound) {
		return fmt.Errorf("repository %q: delete ownership record: %w", name, err)
	}

	if err := os.Remove(m.ownerStateFile(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("repository %q: remove remembered owner file: %w", name, err)
	}

	return nil
}

// settleOwnerRecord brings the repository's record up to date before an
// ownership decision, given whether kopia's params name us as the owner: it
// records a takeover this process made but could not record, drops an
// attempt that did not land, and moves an earlier release's state directory
// file into the repository. Failures are logged: the next run tries again.
func (m *Manager) settleOwnerRecord(ctx context.Context, name string, owned bool, log *zap.Logger) {
	if p, ok := m.owners.get(name); ok {
		switch {
		case p.confirmed || owned:
			// The params show the takeover happened (an unconfirmed
			// write that landed after all, when we are the owner now).
			if err := m.writeOwnerRecord(ctx, name, p.state); err != nil {
				log.Error("record ownership takeover", zap.String("previous_owner", p.state.PreviousOwner), zap.Error(err))
				return
			}

			m.owners.clear(name)
			log.Info("recorded ownership takeover", zap.String("previous_owner", p.state.PreviousOwner), zap.Time("took_over_at", p.state.TookOverAt))
		default:
			m.owners.clear(name)
		}
	}

	if _, err := os.Stat(m.ownerStateFile(name)); err != nil {
		return
	}

	rec, src, err := m.loadOwnerRecord(ctx, name)
	if err != nil {
		log.Warn("migrate remembered owner into the repository", zap.Error(err))
		return
	}

	if src == recordLegacy {
		if err := m.writeOwnerRecord(ctx, name, rec); err != nil {
			log.Warn("migrate remembered owner into the repository", zap.Error(err))
			return
		}

		log.Info("moved remembered owner from the state directory into the repository", zap.String("previous_owner", rec.PreviousOwner))
	}

	// The repository's record is the one that counts from now on.
	if err := os.Remove(m.ownerStateFile(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("remove migrated remembered owner file", zap.Error(err))
	}
}

// AppendAuditRecord stores record, one encoded audit entry, as a blob of
// its own in the repository's storage (through the lease fence), then
// deletes the oldest records beyond AuditRecordsKept. One blob per record
// means two writers never overwrite each other's records.
func (m *Manager) AppendAuditRecord(ctx context.Context, name string, record []byte) error {
	st, err := m.recordStorage(ctx, name)
	if err != nil {
		return err
	}
	defer st.Close(ctx) //nolint:errcheck

	var suffix [4]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return fmt.Errorf("repository %q: name audit record: %w", name, err)
	}

	// Zero-padded nanoseconds sort in writing order; the random suffix keeps
	// two writers in the same nanosecond apart.
	id := blob.ID(fmt.Sprintf("%s%020d-%s", AuditRecordPrefix, m.opts.Now().UnixNano(), hex.EncodeToString(suffix[:])))

	if err := st.PutBlob(ctx, id, byteSlice(record), blob.PutOptions{}); err != nil {
		return fmt.Errorf("repository %q: write audit record: %w", name, err)
	}

	ids, err := auditRecordIDs(ctx, st)
	if err != nil {
		return fmt.Errorf("repository %q: list audit records: %w", name, err)
	}

	for len(ids) > AuditRecordsKept {
		if err := st.DeleteBlob(ctx, ids[0]); err != nil && !errors.Is(err, blob.ErrBlobNotFound) {
			return fmt.Errorf("repository %q: delete old audit record: %w", name, err)
		}

		ids = ids[1:]
	}

	return nil
}

// AuditRecords returns the newest n audit records kept in the repository
// (all when n <= 0), oldest first.
func (m *Manager) AuditRecords(ctx context.Context, name string, n int) ([][]byte, error) {
	st, err := m.recordStorage(ctx, name)
	if err != nil {
		return nil, err
	}
	defer st.Close(ctx) //nolint:errcheck

	ids, err := auditRecordIDs(ctx, st)
	if err != nil {
		return nil, fmt.Errorf("repository %q: list audit records: %w", name, err)
	}

	if n > 0 && len(ids) > n {
		ids = ids[len(ids)-n:]
	}

	out := make([][]byte, 0, len(ids))

	for _, id := range ids {
		b, found, err := getBlob(ctx, st, id)
		if err != nil {
			return nil, fmt.Errorf("repository %q: read audit record %s: %w", name, id, err)
		}

		// Pruned by another writer between the listing and the read.
		if found {
			out = append(out, b)
		}
	}

	return out, nil
}

func auditRecordIDs(ctx context.Context, st blob.Storage) ([]blob.ID, error) {
	var ids []blob.ID

	err := st.ListBlobs(ctx, AuditRecordPrefix, func(bm blob.Metadata) error {
		ids = append(ids, bm.BlobID)
		return nil
	})
	if err != nil {
		return nil, err
	}

	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })

	return ids, nil
}
