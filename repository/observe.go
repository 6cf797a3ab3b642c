package repository

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/content"
	"github.com/kopia/kopia/repo/maintenance"
	"go.uber.org/zap"
)

// Observer receives a run's progress while it happens. Its methods are
// called from kopia's goroutines; they must be quick and safe for
// concurrent use.
type Observer interface {
	// TaskStarted reports the kopia task now running.
	TaskStarted(task string)
	// TaskFinished reports a task as kopia recorded it in the run history.
	TaskFinished(t TaskResult)
	// Progress reports the run's counters so far.
	Progress(p Progress)
}

// Progress is a run's work so far.
type Progress struct {
	Task string `json:"task,omitempty"`
	// BlobsDeleted and BytesDeleted count storage deletes of the run.
	BlobsDeleted int64 `json:"blobsDeleted"`
	BytesDeleted int64 `json:"bytesDeleted"`
	// ContentsScanned counts the contents kopia's content log reports
	// individually: contents snapshot GC found unreferenced, and contents
	// rewritten out of short packs.
	ContentsScanned int64 `json:"contentsScanned"`
}

// progressInterval bounds how often Progress is reported: often enough for a
// scrape every few seconds, rarely enough to cost nothing.
const progressInterval = time.Second

// runTracker follows one run: kopia's content log tells which task runs and
// what it scans, the storage wrapper counts deletes and notices the schedule
// blob being rewritten after every task.
type runTracker struct {
	obs   Observer
	cycle Cycle

	blobsDeleted, bytesDeleted, contentsScanned atomic.Int64

	mu       sync.Mutex
	task     string
	sizes    map[blob.ID]int64 // pack and session blob sizes seen in listings
	recent   map[string]recentContent
	seen     map[string]time.Time // task -> start of the newest run reported
	lastSent time.Time
	partial  []byte

	// rep reads the schedule after kopia rewrites it; set once the
	// repository is open.
	rep    atomic.Pointer[repo.DirectRepository]
	ctx    context.Context
	log    *zap.Logger
	logged map[string]struct{}
	// publish, when set, receives the same progress as the observer, for
	// the live status file.
	publish func(Progress)
	// betweenTasks, when set, runs after every task kopia records (the
	// safety=none guard).
	betweenTasks func()
	// unreadable, when set, is called when the schedule cannot be read back
	// after kopia rewrote it: a safety=none run then cannot re-check and
	// must stop (fail closed).
	unreadable func(err error)
}

// loggedContentIDBytes is how many bytes of a content ID kopia's content log
// shows (internal/contentparam).
const loggedContentIDBytes = 5

// recentKey identifies a content by what the content log shows of it: the
// truncated ID, its packed size and its modification time, which together
// make a collision with another content negligible.
func recentKey(loggedID string, size int64, modified time.Time) string {
	return loggedID + "/" + strconv.FormatInt(size, 10) + "/" + strconv.FormatInt(modified.UnixMicro(), 10)
}

// loggedContentID renders a content ID the way kopia's content log does.
func loggedContentID(id string) string {
	prefix := ""
	if len(id)%2 == 1 {
		prefix, id = id[:1], id[1:]
	}

	if len(id) > 2*loggedContentIDBytes {
		id = id[:2*loggedContentIDBytes]
	}

	return prefix + id
}

// recentContent is an unreferenced content too young for snapshot GC to
// mark deleted, as reported by kopia's content log.
type recentContent struct {
	bytes    int64
	modified time.Time
}

func newRunTracker(obs Observer, cycle Cycle) *runTracker {
	return &runTracker{
		obs: obs, cycle: cycle,
		sizes:  map[blob.ID]int64{},
		recent: map[string]recentContent{},
		seen:   map[string]time.Time{},
		logged: map[string]struct{}{},
	}
}

func (t *runTracker) progress() Progress {
	t.mu.Lock()
	task := t.task
	t.mu.Unlock()

	return Progress{
		Task:            task,
		BlobsDeleted:    t.blobsDeleted.Load(),
		BytesDeleted:    t.bytesDeleted.Load(),
		ContentsScanned: t.contentsScanned.Load(),
	}
}

func (t *runTracker) maybeReport(force bool) {
	t.mu.Lock()
	now := time.Now()
	due := force || now.Sub(t.lastSent) >= progressInterval
	if due {
		t.lastSent = now
	}
	t.mu.Unlock()

	if !due {
		return
	}

	p := t.progress()

	if t.obs != nil {
		t.obs.Progress(p)
	}

	if t.publish != nil {
		t.publish(p)
	}
}

func (t *runTracker) setTask(task string) {
	t.mu.Lock()
	changed := t.task != task
	t.task = task
	t.mu.Unlock()

	if changed && t.obs != nil {
		t.obs.TaskStarted(task)
		t.maybeReport(true)
	}
}

// Write receives kopia's content log: JSON lines, possibly split across
// writes. Only maintenance lines are decoded; the rest are skipped cheaply.
func (t *runTracker) Write(p []byte) (int, error) {
	n := len(p)

	t.mu.Lock()
	buf := append(t.partial, p...)
	t.partial = nil
	t.mu.Unlock()

	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}

		t.line(buf[:i])
		buf = buf[i+1:]
	}

	if len(buf) > 0 {
		t.mu.Lock()
		t.partial = append([]byte(nil), buf...)
		t.mu.Unlock()
	}

	return n, nil
}

type contentLogLine struct {
	Logger   string    `json:"n"`
	Message  string    `json:"m"`
	Content  string    `json:"contentID"`
	Bytes    int64     `json:"bytes"`
	Modified time.Time `json:"modified"`
	Count    int64     `json:"count"`
}

func (t *runTracker) line(b []byte) {
	if !bytes.Contains(b, []byte(`"n":"maintenance-`)) && !bytes.Contains(b, []byte(`"span:maintenance"`)) {
		return
	}

	var l contentLogLine
	if err := json.Unmarshal(b, &l); err != nil {
		return
	}

	if task := taskOfLogLine(l.Logger, l.Message, t.cycle); task != "" {
		t.setTask(task)
	}

	switch l.Message {
	case "recent unreferenced content":
		t.contentsScanned.Add(1)
		t.mu.Lock()
		t.recent[recentKey(l.Content, l.Bytes, l.Modified)] = recentContent{bytes: l.Bytes, modified: l.Modified}
		t.mu.Unlock()
	case "unreferenced content":
		t.contentsScanned.Add(1)
	default:
		if l.Logger == "maintenance-content-rewrite" && l.Content != "" {
			t.contentsScanned.Add(1)
		}
	}

	t.maybeReport(false)
}

// taskOfLogLine maps a content log line to the kopia task that wrote it.
// Maintenance tasks log under their own logger names; the epoch tasks log
// through the epoch manager and are told apart by their messages.
func taskOfLogLine(logger, msg string, cycle Cycle) string {
	full := cycle == Full

	switch logger {
	case "maintenance-snapshot-gc":
		return maintenance.TaskSnapshotGarbageCollection
	case "maintenance-content-rewrite":
		if full {
			return maintenance.TaskRewriteContentsFull
		}

		return maintenance.TaskRewriteContentsQuick
	case "maintenance-drop-deleted-contents":
		return maintenance.TaskDropDeletedContentsFull
	case "maintenance-pack-gc":
		if full {
			return maintenance.TaskDeleteOrphanedBlobsFull
		}

		return maintenance.TaskDeleteOrphanedBlobsQuick
	case "maintenance-index-compaction":
		return maintenance.TaskIndexCompaction
	case "maintenance-cleanup-logs":
		return maintenance.TaskCleanupLogs
	case "maintenance-blob-retain":
		return maintenance.TaskExtendBlobRetentionTimeFull
	case "epoch-manager":
		m := strings.ToLower(msg)

		switch {
		case strings.Contains(m, "superseded"):
			return maintenance.TaskEpochDeleteSupersededIndexes
		case strings.Contains(m, "range checkpoint"):
			return maintenance.TaskEpochGenerateRange
		case strings.Contains(m, "marker"):
			return maintenance.TaskEpochCleanupMarkers
		case strings.Contains(m, "uncompacted epoch"), strings.Contains(m, "compacting"):
			return maintenance.TaskEpochCompactSingle
		case strings.Contains(m, "advanc"):
			return maintenance.TaskEpochAdvance
		}
	}

	return ""
}

// scheduleWritten runs after kopia rewrote its schedule blob, which it does
// after every task: the new run history entries are the tasks that just
// finished.
func (t *runTracker) scheduleWritten() {
	rp := t.rep.Load()
	if rp == nil {
		return
	}

	s, err := maintenance.GetSchedule(t.ctx, *rp)
	if err != nil {
		if t.log != nil {
			t.log.Warn("read maintenance schedule after a task", zap.Error(err))
		}

		if t.unreadable != nil {
			t.unreadable(err)
		}

		return
	}

	var finished []TaskResult

	t.mu.Lock()
	for task, runs := range s.Runs {
		// kopia keeps the newest run first; everything that started after
		// the newest run seen before is new.
		for _, r := range runs {
			if !r.Start.After(t.seen[string(task)]) {
				break
			}

			finished = append(finished, taskResult(string(task), r))
		}

		if len(runs) > 0 {
			t.seen[string(task)] = runs[0].Start
		}
	}
	t.mu.Unlock()

	for _, r := range finished {
		t.logTask(r)

		if t.obs != nil {
			t.obs.TaskFinished(r)
		}
	}

	t.maybeReport(true)

	if len(finished) > 0 && t.betweenTasks != nil {
		t.betweenTasks()
	}
}

// baseline records the run history before the run, so only new entries are
// reported as finished tasks.
func (t *runTracker) baseline(s *maintenance.Schedule) {
	t.mu.Lock()
	defer t.mu.Unlock()

	for task, runs := range s.Runs {
		if len(runs) > 0 {
			t.seen[string(task)] = runs[0].Start
		}
	}
}

// trackingStorage wraps the blob storage kopia uses for one repository. It
// is installed once per open; the tracker it reports to is the run in flight
// (nil outside runs). Its fence is the one the open's context carried: nil
// for a read-only open, which then can write nothing.
//
// The fence itself is the inner fencedStorage's: this wrapper only adds what
// a run observes, and the safety=none gate on the first delete.
type trackingStorage struct {
	*fencedStorage
	tracker *atomic.Pointer[runTracker]
	book    *sessionBook
	now     func() time.Time
}

func (s *trackingStorage) ListBlobs(ctx context.Context, prefix blob.ID, cb func(blob.Metadata) error) error {
	t := s.tracker.Load()
	if t == nil {
		return s.fencedStorage.ListBlobs(ctx, prefix, cb)
	}

	return s.fencedStorage.ListBlobs(ctx, prefix, func(bm blob.Metadata) error {
		t.mu.Lock()
		t.sizes[bm.BlobID] = bm.Length
		t.mu.Unlock()

		return cb(bm)
	})
}

func (s *trackingStorage) DeleteBlob(ctx context.Context, id blob.ID) error {
	// The fence first, so a delete without a valid lease never waits for a
	// re-check.
	if err := s.fence.pass(s.stats, "delete", id); err != nil {
		return err
	}

	// Deleting the marker of one of our own write sessions (kopia does
	// when a session commits, e.g. the params write before the cycle)
	// removes nothing of anyone else's: only other deletes wait for the
	// re-check, which runs bounded by the lease like the delete.
	if s.fence != nil && !s.ownSessionMarker(id) {
		gctx, done := s.fence.bound(ctx)
		err := s.fence.deletes.pass(gctx)

		done()

		if err != nil {
			return fmt.Errorf("delete %s refused: %w", id, err)
		}
	}

	err := s.fencedStorage.DeleteBlob(ctx, id)

	if t := s.tracker.Load(); t != nil && err == nil {
		t.mu.Lock()
		size := t.sizes[id]
		delete(t.sizes, id)
		t.mu.Unlock()

		t.blobsDeleted.Add(1)
		t.bytesDeleted.Add(size)
		t.maybeReport(false)
	}

	return err
}

func (s *trackingStorage) PutBlob(ctx context.Context, id blob.ID, data blob.Bytes, opts blob.PutOptions) error {
	// Remember the session before the blob exists, so a concurrent activity
	// check never sees our own pack as another writer's.
	s.book.record(id, s.now())

	err := s.fencedStorage.PutBlob(ctx, id, data, opts)

	if t := s.tracker.Load(); t != nil && err == nil && id == maintenanceScheduleBlobID {
		t.scheduleWritten()
	}

	return err
}

// ownSessionMarker reports whether id is the session marker of a write
// session this daemon opened.
func (s *trackingStorage) ownSessionMarker(id blob.ID) bool {
	if !strings.HasPrefix(string(id), string(content.BlobIDPrefixSession)) {
		return false
	}

	sid := string(content.SessionIDFromBlobID(id))

	return sid != "" && s.book.ours(sid)
}

// maintenanceScheduleBlobID is the blob kopia keeps its schedule and run
// history in (repo/maintenance, unexported there).
const maintenanceScheduleBlobID = "kopia.maintenance"

// recentContents returns the unreferenced contents snapshot GC found too
// young to mark during this run.
func (t *runTracker) recentContents() map[string]recentContent {
	t.mu.Lock()
	defer t.mu.Unlock()

	return t.recent
}

// logTask logs a finished task once.
func (t *runTracker) logTask(r TaskResult) {
	t.mu.Lock()
	key := r.Task + "@" + r.Start.String()
	_, done := t.logged[key]
	t.logged[key] = struct{}{}
	t.mu.Unlock()

	if !done && t.log != nil {
		logTask(t.log, r)
	}
}

// logRemaining logs the run's tasks not logged live (for example when the
// schedule could not be read back after a task).
func (t *runTracker) logRemaining(tasks []TaskResult) {
	for _, r := range tasks {
		t.logTask(r)
	}
}
