package safety

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Audit results.
const (
	ResultRefused   = "refused"
	ResultSuccess   = "success"
	ResultFailure   = "failure"
	ResultCancelled = "cancelled"
)

// AuditEntry records one safety=none request: refused, or run to success,
// failure or cancellation.
type AuditEntry struct {
	Repository string `json:"repository"`
	// RequestedBy says who or what asked: "run-once by uid 0 on host x",
	// "window CRON_TZ=UTC 0 4 * * 0".
	RequestedBy string    `json:"requestedBy"`
	Requested   time.Time `json:"requested"`
	// Start and End bound the run; zero for a refused request.
	Start  time.Time `json:"start,omitzero"`
	End    time.Time `json:"end,omitzero"`
	Result string    `json:"result"`
	// Decision is the gate's decision that admitted or refused the run, or,
	// for a cancellation, the watcher's decision that cancelled it.
	Decision     Decision `json:"decision"`
	CancelReason string   `json:"cancelReason,omitempty"`
	Error        string   `json:"error,omitempty"`
}

// AuditLog is an append-only JSON-lines log per repository in one
// directory (the daemon's <stateDirectory>/audit), and, with WithStore, a
// copy of every entry kept in the repository itself. Each local append is
// fsync'ed before it returns. The repository copy is the one that survives a
// restart on a fresh state directory; the local file keeps an entry the
// repository refused (lease lost, storage down). Safe for concurrent use
// within one process.
type AuditLog struct {
	dir   string
	mu    sync.Mutex
	store AuditStore
}

// AuditStore keeps encoded audit entries with the repository they describe
// (repository.Manager implements it). Records come back oldest first; the
// store may keep only the newest ones.
type AuditStore interface {
	AppendAuditRecord(ctx context.Context, repository string, record []byte) error
	AuditRecords(ctx context.Context, repository string, n int) ([][]byte, error)
}

// auditStoreTimeout bounds one append to or read from the store: an audit
// write must not hang a shutdown or a status command on a dead endpoint.
const auditStoreTimeout = time.Minute

// NewAuditLog returns the audit log kept in dir; the directory is created on
// the first append.
func NewAuditLog(dir string) *AuditLog {
	return &AuditLog{dir: dir}
}

// WithStore makes l also append every entry to store and read entries from
// it, and returns l.
func (l *AuditLog) WithStore(store AuditStore) *AuditLog {
	l.store = store
	return l
}

// Path returns the file holding repository's entries.
func (l *AuditLog) Path(repository string) string {
	return filepath.Join(l.dir, auditFileName(repository))
}

// auditFileName maps a repository name to a file name: letters, digits, '-'
// and '_' are kept, anything else (a path separator, a dot that could make
// "..") is escaped as %XX, so distinct names never share a file.
func auditFileName(repository string) string {
	var b strings.Builder

	for i := 0; i < len(repository); i++ {
		c := repository[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}

	return b.String() + ".jsonl"
}

// Append writes e as one line to its repository's file and syncs it, then
// stores it in the repository when l has a store. Both are attempted; the
// error names each that failed.
func (l *AuditLog) Append(e AuditEntry) error {
	if e.Repository == "" {
		return errors.New("append audit entry: no repository")
	}

	line, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode audit entry for repository %q: %w", e.Repository, err)
	}

	localErr := l.appendLocal(e.Repository, append(line, '\n'))

	var storeErr error

	if l.store != nil {
		ctx, cancel := context.WithTimeout(context.Background(), auditStoreTimeout)
		defer cancel()

		if err := l.store.AppendAuditRecord(ctx, e.Repository, line); err != nil {
			storeErr = fmt.Errorf("store audit entry in repository %q: %w", e.Repository, err)
		}
	}

	return errors.Join(localErr, storeErr)
}

func (l *AuditLog) appendLocal(repository string, line []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()

	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return fmt.Errorf("create audit directory %q: %w", l.dir, err)
	}

	path := l.Path(repository)

	_, statErr := os.Stat(path)
	created := errors.Is(statErr, fs.ErrNotExist)

	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open audit log %q: %w", path, err)
	}

	if err := appendLine(f, line); err != nil {
		_ = f.Close()

		return fmt.Errorf("append to audit log %q: %w", path, err)
	}

	if err := f.Close(); err != nil {
		return fmt.Errorf("close audit log %q: %w", path, err)
	}

	if created {
		// The new file's directory entry must be durable too.
		if err := syncDir(l.dir); err != nil {
			return fmt.Errorf("sync audit directory %q: %w", l.dir, err)
		}
	}

	return nil
}

// appendLine writes line after whatever the file holds. A crash during an
// earlier append can leave a torn last line without its newline; the new
// line then starts on a line of its own, so only the torn one is lost.
func appendLine(f *os.File, line []byte) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}

	if size := st.Size(); size > 0 {
		last := make([]byte, 1)

		if _, err := f.ReadAt(last, size-1); err != nil {
			return err
		}

		if last[0] != '\n' {
			line = append([]byte{'\n'}, line...)
		}
	}

	if _, err := f.Write(line); err != nil {
		return err
	}

	return f.Sync()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}

	defer d.Close() //nolint:errcheck

	return d.Sync()
}

// Recent returns the last n entries of repository, oldest first (all of
// them when n <= 0); none when it has no log yet. With a store, the entries
// kept in the repository and those in the local file are merged (an entry
// in both counts once), ordered by request time. Lines that do not decode
// (a torn line left by a crash during an append) are skipped. When the
// store cannot be read, the local entries are returned with the error.
func (l *AuditLog) Recent(repository string, n int) ([]AuditEntry, error) {
	local, err := l.recentLocal(repository, n)
	if err != nil || l.store == nil {
		return local, err
	}

	ctx, cancel := context.WithTimeout(context.Background(), auditStoreTimeout)
	defer cancel()

	records, err := l.store.AuditRecords(ctx, repository, n)
	if err != nil {
		return local, fmt.Errorf("read audit entries kept in repository %q: %w", repository, err)
	}

	seen := map[string]bool{}

	var out []AuditEntry

	add := func(e AuditEntry) {
		// Both copies are encodings of one struct: equal bytes, one entry.
		key, err := json.Marshal(e)
		if err == nil && seen[string(key)] {
			return
		}

		seen[string(key)] = true
		out = append(out, e)
	}

	for _, r := range records {
		var e AuditEntry
		if json.Unmarshal(r, &e) == nil {
			add(e)
		}
	}

	for _, e := range local {
		add(e)
	}

	sort.SliceStable(out, func(i, j int) bool { return out[i].Requested.Before(out[j].Requested) })

	if n > 0 && len(out) > n {
		out = out[len(out)-n:]
	}

	return out, nil
}

func (l *AuditLog) recentLocal(repository string, n int) ([]AuditEntry, error) {
	path := l.Path(repository)

	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}

	if err != nil {
		return nil, fmt.Errorf("open audit log %q: %w", path, err)
	}
	defer f.Close() //nolint:errcheck

	var out []AuditEntry

	r := bufio.NewReader(f)

	for {
		line, err := r.ReadBytes('\n')

		if line = bytes.TrimSpace(line); len(line) > 0 {
			var e AuditEntry
			if json.Unmarshal(line, &e) == nil {
				out = append(out, e)
				if n > 0 && len(out) > n {
					out = out[1:]
				}
			}
		}

		if errors.Is(err, io.EOF) {
			return out, nil
		}

		if err != nil {
			return nil, fmt.Errorf("read audit log %q: %w", path, err)
		}
	}
}
