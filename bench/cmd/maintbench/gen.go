package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"
)

// Shape is the shape of a generated reference repository.
type Shape struct {
	Files     int // files in the first snapshot
	Snapshots int
	Deleted   int // snapshots deleted afterwards (every Snapshots/Deleted-th)
	Modify    int // files rewritten between snapshots
	Add       int // files added between snapshots
	Remove    int // files removed between snapshots
	MinSize   int
	MaxSize   int
	Seed      uint64
}

func (s Shape) key() string {
	return fmt.Sprintf("f%d-s%d-d%d-m%d-a%d-r%d-z%d-%d-seed%d", s.Files, s.Snapshots, s.Deleted, s.Modify, s.Add, s.Remove, s.MinSize, s.MaxSize, s.Seed)
}

// tree is the generated source directory, changed deterministically between
// snapshots.
type tree struct {
	dir   string
	rng   *rand.Rand
	shape Shape
	files []string // live files, relative
	next  int      // next file number
}

const filesPerDir = 1000

func (t *tree) write(rel string) error {
	p := filepath.Join(t.dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	n := t.shape.MinSize + t.rng.IntN(t.shape.MaxSize-t.shape.MinSize+1)
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := t.rng.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return os.WriteFile(p, b, 0o644)
}

func (t *tree) add(n int) error {
	for i := 0; i < n; i++ {
		rel := filepath.Join(fmt.Sprintf("d%04d", t.next/filesPerDir), fmt.Sprintf("f%07d", t.next))
		t.next++
		if err := t.write(rel); err != nil {
			return err
		}
		t.files = append(t.files, rel)
	}
	return nil
}

// churn rewrites, removes and adds files as the shape says.
func (t *tree) churn() error {
	for i := 0; i < t.shape.Modify; i++ {
		if err := t.write(t.files[t.rng.IntN(len(t.files))]); err != nil {
			return err
		}
	}
	for i := 0; i < t.shape.Remove && len(t.files) > 1; i++ {
		j := t.rng.IntN(len(t.files))
		if err := os.Remove(filepath.Join(t.dir, t.files[j])); err != nil {
			return err
		}
		t.files[j] = t.files[len(t.files)-1]
		t.files = t.files[:len(t.files)-1]
	}
	return t.add(t.shape.Add)
}

// genRepo creates the filesystem repository repoDir from the shape with the
// kopia CLI: a first snapshot, Snapshots-1 more after churn, then Deleted of
// them deleted. work is scratch space.
func genRepo(ctx context.Context, kopiaBin, repoDir, work string, s Shape, logf func(string, ...any)) error {
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	cli, err := newCLI(kopiaBin, filepath.Join(work, "cli"))
	if err != nil {
		return err
	}
	src := filepath.Join(work, "src")
	t := &tree{dir: src, rng: rand.New(rand.NewPCG(s.Seed, s.Seed^0x9e3779b97f4a7c15)), shape: s}
	if err := t.add(s.Files); err != nil {
		return err
	}
	if err := cli.run(ctx, append([]string{"repository", "create", "filesystem", "--path=" + repoDir, "--cache-directory=" + cli.cacheDir()}, identityFlags()...)...); err != nil {
		return err
	}
	// Keep every snapshot: the deletions below are the only ones.
	if err := cli.run(ctx, "policy", "set", "--global", "--keep-latest=10000", "--keep-hourly=0", "--keep-daily=0", "--keep-weekly=0", "--keep-monthly=0", "--keep-annual=0"); err != nil {
		return err
	}
	for i := 0; i < s.Snapshots; i++ {
		if i > 0 {
			if err := t.churn(); err != nil {
				return err
			}
		}
		start := time.Now()
		if err := cli.run(ctx, "snapshot", "create", src, "--parallel=2"); err != nil {
			return err
		}
		logf("  snapshot %d/%d of %s: %d files, %s", i+1, s.Snapshots, filepath.Base(repoDir), len(t.files), time.Since(start).Round(time.Millisecond))
	}
	out, err := cli.output(ctx, "snapshot", "list", "--json", src)
	if err != nil {
		return err
	}
	var snaps []struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(out, &snaps); err != nil {
		return fmt.Errorf("parse snapshot list: %w", err)
	}
	if s.Deleted > 0 {
		step := len(snaps) / s.Deleted
		for i := 0; i < s.Deleted; i++ {
			// Never the newest: it is the parent of the next snapshot in real life.
			id := snaps[i*step+step/2].ID
			if err := cli.run(ctx, "snapshot", "delete", id, "--delete"); err != nil {
				return err
			}
		}
	}
	return os.RemoveAll(work)
}

// maintainOnce runs one full maintenance with the CLI as maintd@bench, so
// that the repository has a run history (the state between cycles).
func maintainOnce(ctx context.Context, kopiaBin, repoDir, work string) error {
	cli, err := newCLI(kopiaBin, work)
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if err := cli.connectFS(ctx, repoDir); err != nil {
		return err
	}
	return cli.run(ctx, "maintenance", "run", "--full")
}

// toMinIO copies the filesystem repository repoDir into a new MinIO data
// directory dataDir with kopia's repository sync-to.
func toMinIO(ctx context.Context, kopiaBin, minioBin, repoDir, dataDir, work string) error {
	if err := os.RemoveAll(dataDir); err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	home := filepath.Join(work, "minio-home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		return err
	}
	logw, err := os.Create(filepath.Join(work, "minio.log"))
	if err != nil {
		return err
	}
	defer logw.Close()
	m, err := startMinIO(minioBin, dataDir, home, logw)
	if err != nil {
		return err
	}
	defer m.stop()
	if err := m.makeBucket(ctx); err != nil {
		return err
	}
	cli, err := newCLI(kopiaBin, filepath.Join(work, "cli"))
	if err != nil {
		return err
	}
	if err := cli.connectFS(ctx, repoDir); err != nil {
		return err
	}
	return cli.run(ctx, append([]string{"repository", "sync-to", "s3", "--parallel=8", "--times"}, m.kopiaFlags()...)...)
}

// Reference is the cached reference state.
type Reference struct {
	Dir        string
	Large      string   // filesystem repository
	LargeMinIO string   // MinIO data directory holding the same repository
	Small      []string // filesystem repositories, maintained once at SmallMaintained
	// SmallMaintained is when the small templates were last maintained.
	SmallMaintained time.Time
}

// ensureReference builds whatever part of the reference state is missing in
// cacheDir and returns it. A part is complete when its stamp file exists.
func ensureReference(ctx context.Context, p Params, tools Tools, logf func(string, ...any)) (*Reference, error) {
	dir := filepath.Join(p.CacheDir, "kopia-"+p.KopiaVersion)
	ref := &Reference{Dir: dir}
	largeDir := filepath.Join(dir, "large-"+p.Large.key())
	ref.Large = filepath.Join(largeDir, "repo")
	ref.LargeMinIO = filepath.Join(largeDir, "minio")
	if !exists(filepath.Join(largeDir, "repo.done")) {
		logf("generating the large repository %s", p.Large.key())
		start := time.Now()
		if err := os.RemoveAll(largeDir); err != nil {
			return nil, err
		}
		if err := genRepo(ctx, tools.Kopia, ref.Large, filepath.Join(p.Work, "gen-large"), p.Large, logf); err != nil {
			return nil, fmt.Errorf("generate large repository: %w", err)
		}
		if err := os.WriteFile(filepath.Join(largeDir, "repo.done"), nil, 0o644); err != nil {
			return nil, err
		}
		logf("large repository generated in %s", time.Since(start).Round(time.Second))
	}
	if !exists(filepath.Join(largeDir, "minio.done")) {
		logf("copying the large repository into MinIO")
		if err := toMinIO(ctx, tools.Kopia, tools.MinIO, ref.Large, ref.LargeMinIO, filepath.Join(p.Work, "gen-minio")); err != nil {
			return nil, fmt.Errorf("copy large repository to minio: %w", err)
		}
		if err := os.WriteFile(filepath.Join(largeDir, "minio.done"), nil, 0o644); err != nil {
			return nil, err
		}
	}
	smallDir := filepath.Join(dir, fmt.Sprintf("small-%d-%s", p.SmallTemplates, p.Small.key()))
	stamp := filepath.Join(smallDir, "done")
	if !exists(stamp) {
		logf("generating %d small repositories %s", p.SmallTemplates, p.Small.key())
		if err := os.RemoveAll(smallDir); err != nil {
			return nil, err
		}
		for i := 0; i < p.SmallTemplates; i++ {
			s := p.Small
			s.Seed += uint64(i)
			repo := filepath.Join(smallDir, fmt.Sprintf("t%02d", i))
			if err := genRepo(ctx, tools.Kopia, repo, filepath.Join(p.Work, "gen-small"), s, func(string, ...any) {}); err != nil {
				return nil, fmt.Errorf("generate small repository %d: %w", i, err)
			}
			if err := maintainOnce(ctx, tools.Kopia, repo, filepath.Join(p.Work, "gen-small-cli")); err != nil {
				return nil, fmt.Errorf("maintain small repository %d: %w", i, err)
			}
		}
		if err := os.WriteFile(stamp, []byte(time.Now().UTC().Format(time.RFC3339)), 0o644); err != nil {
			return nil, err
		}
	}
	for i := 0; i < p.SmallTemplates; i++ {
		ref.Small = append(ref.Small, filepath.Join(smallDir, fmt.Sprintf("t%02d", i)))
	}
	b, err := os.ReadFile(stamp)
	if err != nil {
		return nil, err
	}
	if ref.SmallMaintained, err = time.Parse(time.RFC3339, string(b)); err != nil {
		return nil, err
	}
	return ref, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
