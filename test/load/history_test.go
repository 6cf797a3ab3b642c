package load

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob/s3"
	"github.com/kopia/kopia/repo/maintenance"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// taskRun is one task run kopia recorded in a repository's maintenance
// schedule, the history `kopia maintenance info` shows.
type taskRun struct {
	task       string
	start, end time.Time
	success    bool
	err        string
}

// histories holds the recorded task runs of every repository.
type histories struct {
	byRepo  map[string][]taskRun
	records int
	// truncated is, per repository, the start of the oldest record of a
	// task whose history kopia has cut to its maximum length: runs before it
	// may have left no record.
	truncated map[string]time.Time
	// maxConcurrent is the most runs whose recorded tasks overlapped in
	// time, across all repositories (set by crossCheck).
	maxConcurrent int
	// tasks counts the records by task (set by crossCheck).
	tasks map[string]int
}

// retained is how many runs of one task kopia keeps in the schedule
// (maxRetainedRunInfoPerRunType in repo/maintenance).
const retained = 50

// readHistories opens every repository with the kopia library, four at a
// time, and reads its maintenance schedule's run history.
func readHistories(t *testing.T, mc *harness.MinIO, names []string) *histories {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	h := &histories{byRepo: map[string][]taskRun{}, truncated: map[string]time.Time{}}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		work = make(chan string)
	)
	for range concurrency {
		wg.Go(func() {
			for name := range work {
				runs, cut, err := readHistory(ctx, mc, filepath.Join(dir, name+".config"), name)
				mu.Lock()
				if err != nil {
					t.Errorf("read the run history of %s: %v", name, err)
				}
				h.byRepo[name] = runs
				h.records += len(runs)
				if !cut.IsZero() {
					h.truncated[name] = cut
				}
				mu.Unlock()
			}
		})
	}
	for _, name := range names {
		work <- name
	}
	close(work)
	wg.Wait()
	return h
}

func readHistory(ctx context.Context, mc *harness.MinIO, configFile, name string) ([]taskRun, time.Time, error) {
	st, err := s3.New(ctx, &s3.Options{
		BucketName: bucket, Prefix: name + "/", Endpoint: mc.Endpoint, DoNotUseTLS: true,
		AccessKeyID: mc.AccessKey, SecretAccessKey: mc.SecretKey,
	}, false)
	if err != nil {
		return nil, time.Time{}, err
	}
	if err := repo.Connect(ctx, configFile, st, password, &repo.ConnectOptions{}); err != nil {
		return nil, time.Time{}, fmt.Errorf("connect: %w", err)
	}
	r, err := repo.Open(ctx, configFile, password, &repo.Options{})
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("open: %w", err)
	}
	defer r.Close(ctx)
	dr, ok := r.(repo.DirectRepository)
	if !ok {
		return nil, time.Time{}, fmt.Errorf("not a direct repository: %T", r)
	}
	sched, err := maintenance.GetSchedule(ctx, dr)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("read maintenance schedule: %w", err)
	}
	var (
		out []taskRun
		cut time.Time
	)
	for task, infos := range sched.Runs {
		for _, ri := range infos {
			out = append(out, taskRun{task: string(task), start: ri.Start, end: ri.End, success: ri.Success, err: ri.Error})
		}
		if len(infos) >= retained {
			oldest := infos[len(infos)-1].Start
			if oldest.After(cut) {
				cut = oldest
			}
		}
	}
	slices.SortFunc(out, func(a, b taskRun) int { return a.start.Compare(b.start) })
	return out, cut, nil
}

// crossCheck holds kopia's records against the daemon's log: every
// recorded task ran inside one logged run of its repository and succeeded,
// every successful logged run left records (a full one a snapshot-gc), and
// the recorded work of all repositories never had more than concurrency
// runs at once.
func crossCheck(runs []run, h *histories) []string {
	var problems []string
	errorf := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	byRepo := map[string][]run{}
	for _, r := range runs {
		byRepo[r.repository] = append(byRepo[r.repository], r)
	}
	type span struct{ start, end time.Time }
	var work []span
	tasks := map[string]int{}
	for name, recs := range h.byRepo {
		logged := byRepo[name]
		spans := make([]span, len(logged))
		gc := make([]bool, len(logged))
		for _, rec := range recs {
			tasks[rec.task]++
			if !rec.success {
				errorf("repository %s: kopia records a failed %s at %s: %s", name, rec.task, rec.start, rec.err)
			}
			i := slices.IndexFunc(logged, func(r run) bool {
				return !rec.start.Before(r.start.Add(-slop)) && !rec.end.After(r.end.Add(slop))
			})
			if i < 0 {
				errorf("repository %s: kopia records a %s from %s to %s outside every run the daemon logged", name, rec.task, rec.start, rec.end)
				continue
			}
			s := &spans[i]
			if s.start.IsZero() || rec.start.Before(s.start) {
				s.start = rec.start
			}
			if rec.end.After(s.end) {
				s.end = rec.end
			}
			if rec.task == string(maintenance.TaskSnapshotGarbageCollection) {
				gc[i] = true
			}
		}
		for i, r := range logged {
			if r.result != "success" || r.start.Before(h.truncated[name]) {
				continue
			}
			if spans[i].start.IsZero() {
				errorf("repository %s: the %s run the daemon logged at %s left no record in kopia's history", name, r.cycle, r.start.Format(tsLayout))
			}
			if r.cycle == "full" && !gc[i] {
				errorf("repository %s: the full run the daemon logged at %s left no snapshot-gc in kopia's history", name, r.start.Format(tsLayout))
			}
		}
		for _, s := range spans {
			if !s.start.IsZero() {
				work = append(work, s)
			}
		}
	}
	h.tasks = tasks
	type edge struct {
		at time.Time
		d  int
	}
	edges := make([]edge, 0, 2*len(work))
	for _, s := range work {
		edges = append(edges, edge{s.start, 1}, edge{s.end, -1})
	}
	// An end sorts before a start at the same instant: touching is not overlapping.
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.d - b.d
	})
	cur := 0
	for _, e := range edges {
		cur += e.d
		h.maxConcurrent = max(h.maxConcurrent, cur)
	}
	if h.maxConcurrent > concurrency {
		errorf("kopia's records show %d runs at once, more than the concurrency %d", h.maxConcurrent, concurrency)
	}
	return problems
}
