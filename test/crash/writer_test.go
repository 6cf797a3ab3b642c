package crash

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kopia-maintd/kopia-maintd/test/harness"
)

// maxLive bounds the writer's live snapshots.
const maxLive = 20

// writer is the other client of a repository: the kopia CLI snapshotting a
// directory that changes between snapshots, and deleting some of its older
// snapshots, in a loop until stopped.
type writer struct {
	k   *harness.KopiaCLI
	src string
	rng *rand.Rand

	mu      sync.Mutex
	created []string // snapshot IDs in creation order
	deleted map[string]bool
	pinned  map[string]bool // being verified: not to be deleted
	errs    []string
	events  []string // what it did when, for a failure's report
	files   int

	stopc chan struct{}
	done  chan struct{}
}

func newWriter(k *harness.KopiaCLI, src string, seed uint64) *writer {
	return &writer{
		k: k, src: src,
		rng:     rand.New(rand.NewPCG(seed, 0x5eed)),
		deleted: map[string]bool{},
		pinned:  map[string]bool{},
		stopc:   make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// run writes until stop is called; each round changes the directory, makes a
// snapshot and, every third round or when more than maxLive are live,
// deletes a random live snapshot.
func (w *writer) run() {
	defer close(w.done)

	for round := 1; ; round++ {
		select {
		case <-w.stopc:
			return
		default:
		}

		if err := w.change(); err != nil {
			w.fail("change the source directory: %v", err)
			return
		}

		id, err := w.snapshot()
		if err != nil {
			w.fail("round %d: %v", round, err)
			continue
		}

		w.mu.Lock()
		w.created = append(w.created, id)
		w.events = append(w.events, time.Now().Format("15:04:05.000")+" created "+id)
		w.mu.Unlock()

		// Every third round, and whenever more than maxLive are live, so
		// that the repository, and the cycles' time, stay about the same
		// size over the test.
		if round%3 == 0 || len(w.live()) > maxLive {
			w.deleteOne()
		}

		// A pause between snapshots, as a backup client would leave, and
		// CPU for the daemon on a small machine.
		select {
		case <-w.stopc:
			return
		case <-time.After(time.Duration(800+w.rng.IntN(800)) * time.Millisecond):
		}
	}
}

func (w *writer) stop() {
	close(w.stopc)
	<-w.done
}

func (w *writer) fail(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()

	w.errs = append(w.errs, fmt.Sprintf(format, args...))
}

// change adds a few files of fresh random data (4 to 64 KiB), rewrites one
// and removes one, so that each snapshot has new contents and leaves some
// of the previous ones unreferenced.
func (w *writer) change() error {
	for range 2 + w.rng.IntN(3) {
		w.files++
		if err := w.writeFile(fmt.Sprintf("f%04d.bin", w.files)); err != nil {
			return err
		}
	}

	names, err := filepath.Glob(filepath.Join(w.src, "*.bin"))
	if err != nil {
		return err
	}

	if len(names) > 12 {
		if err := w.writeFile(filepath.Base(names[w.rng.IntN(len(names))])); err != nil {
			return err
		}

		if err := os.Remove(names[w.rng.IntN(len(names))]); err != nil && !os.IsNotExist(err) {
			return err
		}
	}

	return nil
}

func (w *writer) writeFile(name string) error {
	b := make([]byte, 4<<10+w.rng.IntN(60<<10))
	for i := range b {
		b[i] = byte(w.rng.Uint32())
	}

	return os.WriteFile(filepath.Join(w.src, name), b, 0o600)
}

func (w *writer) snapshot() (string, error) {
	stdout, stderr, err := w.k.Output("snapshot", "create", w.src, "--json")
	if err != nil {
		return "", fmt.Errorf("%w\n%s", err, stderr)
	}

	var man struct {
		ID string `json:"id"`
	}

	if err := json.Unmarshal([]byte(stdout), &man); err != nil || man.ID == "" {
		return "", fmt.Errorf("snapshot create --json printed no manifest (%v): %s", err, stdout)
	}

	return man.ID, nil
}

func (w *writer) deleteOne() {
	w.mu.Lock()
	var candidates []string
	for _, id := range w.created {
		if !w.deleted[id] && !w.pinned[id] {
			candidates = append(candidates, id)
		}
	}

	if len(candidates) < 4 {
		w.mu.Unlock()
		return
	}

	// Counted as deleted from here on, so that sample never picks it.
	id := candidates[w.rng.IntN(len(candidates))]
	w.deleted[id] = true
	w.events = append(w.events, time.Now().Format("15:04:05.000")+" deleting "+id)
	w.mu.Unlock()

	if out, err := w.k.RunErr("snapshot", "delete", id, "--delete"); err != nil {
		w.mu.Lock()
		delete(w.deleted, id)
		w.mu.Unlock()
		w.fail("delete snapshot %s: %v\n%s", id, err, out)
	}
}

// sample returns the newest live snapshot and a random other one (fewer
// when there are fewer), pinned until unpin.
func (w *writer) sample(rng *rand.Rand) []string {
	w.mu.Lock()
	defer w.mu.Unlock()

	var live []string

	for _, id := range w.created {
		if !w.deleted[id] {
			live = append(live, id)
		}
	}

	var out []string

	switch n := len(live); {
	case n == 1:
		out = live
	case n > 1:
		out = []string{live[n-1], live[rng.IntN(n-1)]}
	}

	for _, id := range out {
		w.pinned[id] = true
	}
	w.events = append(w.events, time.Now().Format("15:04:05.000")+" sampled "+strings.Join(out, " "))

	return out
}

// live returns the IDs of the snapshots the writer made and did not delete,
// oldest first.
func (w *writer) live() []string {
	w.mu.Lock()
	defer w.mu.Unlock()

	var out []string

	for _, id := range w.created {
		if !w.deleted[id] {
			out = append(out, id)
		}
	}

	return out
}

// history returns the writer's snapshots, deletions and samples, with
// their times.
func (w *writer) history() string {
	w.mu.Lock()
	defer w.mu.Unlock()

	return strings.Join(w.events, "\n")
}

// unpin lets the writer delete ids again.
func (w *writer) unpin(ids ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()

	for _, id := range ids {
		delete(w.pinned, id)
	}
}

func (w *writer) errors() []string {
	w.mu.Lock()
	defer w.mu.Unlock()

	return slices.Clone(w.errs)
}

func (w *writer) counts() (created, deleted int) {
	w.mu.Lock()
	defer w.mu.Unlock()

	return len(w.created), len(w.deleted)
}

// listed returns the IDs `kopia snapshot list --all --json` shows.
func listed(k *harness.KopiaCLI) (map[string]bool, error) {
	stdout, stderr, err := k.Output("snapshot", "list", "--all", "--json")
	if err != nil {
		return nil, fmt.Errorf("%w\n%s", err, stderr)
	}

	var mans []struct {
		ID string `json:"id"`
	}

	if err := json.Unmarshal([]byte(stdout), &mans); err != nil {
		return nil, fmt.Errorf("parse snapshot list: %w: %s", err, strings.TrimSpace(stdout))
	}

	out := map[string]bool{}
	for _, m := range mans {
		out[m.ID] = true
	}

	return out, nil
}

// verify runs `kopia snapshot verify --verify-files-percent=100` on ids and
// returns how long it took.
func verify(k *harness.KopiaCLI, ids ...string) (time.Duration, error) {
	start := time.Now()

	_, stderr, err := k.Output(append([]string{"snapshot", "verify", "--verify-files-percent=100"}, ids...)...)
	if err != nil {
		return time.Since(start), fmt.Errorf("snapshot verify %v: %w\n%s", ids, err, stderr)
	}

	return time.Since(start), nil
}
