package safety

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func auditEntry(repo, result string, at time.Time) AuditEntry {
	return AuditEntry{
		Repository:  repo,
		RequestedBy: "window CRON_TZ=UTC 0 4 * * 0",
		Requested:   at,
		Start:       at.Add(time.Second),
		End:         at.Add(time.Minute),
		Result:      result,
		Decision: Decision{Repository: repo, Allowed: true, At: at, Checks: []Check{
			{Name: CheckBackups, Namespace: "velero", Verdict: Pass, Reason: "no Backup in flight"},
		}},
	}
}

func TestAuditLogAppendRecent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	l := NewAuditLog(dir)

	if got, err := l.Recent("local", 10); err != nil || got != nil {
		t.Fatalf("Recent before any append: %v %v", got, err)
	}

	var want []AuditEntry

	for i, result := range []string{ResultRefused, ResultSuccess, ResultCancelled, ResultFailure} {
		e := auditEntry("local", result, testNow.Add(time.Duration(i)*time.Hour))
		if result == ResultCancelled {
			e.CancelReason = "velero/backups: Backups in flight (1)"
		}

		if err := l.Append(e); err != nil {
			t.Fatal(err)
		}

		want = append(want, e)
	}

	if err := l.Append(auditEntry("other/repo", ResultSuccess, testNow)); err != nil {
		t.Fatal(err)
	}

	got, err := l.Recent("local", 2)
	if err != nil {
		t.Fatal(err)
	}

	if !reflect.DeepEqual(got, want[2:]) {
		t.Errorf("Recent(2):\n%+v\nwant\n%+v", got, want[2:])
	}

	if got, _ := l.Recent("local", 0); len(got) != 4 {
		t.Errorf("Recent(0): %d entries, want 4", len(got))
	}

	if got, _ := l.Recent("other/repo", 5); len(got) != 1 || got[0].Repository != "other/repo" {
		t.Errorf("other/repo: %+v", got)
	}

	for _, name := range []string{"local.jsonl", "other%2Frepo.jsonl"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}

		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", name, st.Mode())
		}
	}

	if err := l.Append(AuditEntry{}); err == nil {
		t.Error("Append without a repository: no error")
	}
}

func TestAuditLogTornLine(t *testing.T) {
	l := NewAuditLog(t.TempDir())
	first := auditEntry("local", ResultSuccess, testNow)

	if err := l.Append(first); err != nil {
		t.Fatal(err)
	}

	// A crash in the middle of the next append leaves half a line.
	f, err := os.OpenFile(l.Path("local"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := f.WriteString(`{"repository":"local","requestedBy":"run-once by ui`); err != nil {
		t.Fatal(err)
	}

	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	got, err := l.Recent("local", 10)
	if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], first) {
		t.Fatalf("Recent with a torn last line: %+v %v", got, err)
	}

	// The next append starts a line of its own: only the torn entry is lost.
	second := auditEntry("local", ResultRefused, testNow.Add(time.Hour))
	if err := l.Append(second); err != nil {
		t.Fatal(err)
	}

	got, err = l.Recent("local", 10)
	if err != nil || len(got) != 2 || !reflect.DeepEqual(got[1], second) {
		t.Fatalf("Recent after appending past a torn line: %+v %v", got, err)
	}

	data, _ := os.ReadFile(l.Path("local"))
	if n := strings.Count(string(data), "\n"); n != 3 {
		t.Errorf("%d lines, want 3 (good, torn, good):\n%s", n, data)
	}
}

func TestAuditFileName(t *testing.T) {
	for name, want := range map[string]string{
		"local":         "local.jsonl",
		"velero-ns_1":   "velero-ns_1.jsonl",
		"..":            "%2E%2E.jsonl",
		"a/b":           "a%2Fb.jsonl",
		"s3.bucket/x y": "s3%2Ebucket%2Fx%20y.jsonl",
	} {
		if got := auditFileName(name); got != want {
			t.Errorf("auditFileName(%q) = %q, want %q", name, got, want)
		}
	}
}

// memAuditStore is an AuditStore in memory; failing makes every call fail.
type memAuditStore struct {
	records map[string][][]byte
	failing bool
}

func (s *memAuditStore) AppendAuditRecord(_ context.Context, repository string, record []byte) error {
	if s.failing {
		return errors.New("injected: 503 slow down")
	}

	if s.records == nil {
		s.records = map[string][][]byte{}
	}

	s.records[repository] = append(s.records[repository], append([]byte(nil), record...))

	return nil
}

func (s *memAuditStore) AuditRecords(_ context.Context, repository string, n int) ([][]byte, error) {
	if s.failing {
		return nil, errors.New("injected: 503 slow down")
	}

	r := s.records[repository]
	if n > 0 && len(r) > n {
		r = r[len(r)-n:]
	}

	return r, nil
}

// TestAuditLogStoreSurvivesNewStateDirectory: entries appended with a store
// are read back by an audit log on a new, empty directory (a restarted pod),
// an entry in both copies counts once, and an entry the store refused stays
// in the local file and is still listed.
func TestAuditLogStoreSurvivesNewStateDirectory(t *testing.T) {
	store := &memAuditStore{}
	l := NewAuditLog(filepath.Join(t.TempDir(), "audit")).WithStore(store)

	first := auditEntry("r", ResultRefused, testNow)
	second := auditEntry("r", ResultSuccess, testNow.Add(time.Hour))

	for _, e := range []AuditEntry{first, second} {
		if err := l.Append(e); err != nil {
			t.Fatal(err)
		}
	}

	restarted := NewAuditLog(filepath.Join(t.TempDir(), "audit")).WithStore(store)

	got, err := restarted.Recent("r", 5)
	if err != nil || !reflect.DeepEqual(got, []AuditEntry{first, second}) {
		t.Fatalf("restarted Recent = %+v (%v), want both entries", got, err)
	}

	got, err = l.Recent("r", 5)
	if err != nil || !reflect.DeepEqual(got, []AuditEntry{first, second}) {
		t.Fatalf("Recent with both copies = %+v (%v), want each entry once", got, err)
	}

	store.failing = true
	third := auditEntry("r", ResultCancelled, testNow.Add(2*time.Hour))

	if err := l.Append(third); err == nil || !strings.Contains(err.Error(), "store audit entry in repository") {
		t.Fatalf("Append with the store failing: err = %v, want the store's error", err)
	}

	store.failing = false

	got, err = l.Recent("r", 2)
	if err != nil || !reflect.DeepEqual(got, []AuditEntry{second, third}) {
		t.Fatalf("Recent(2) after a refused store write = %+v (%v), want the newest two", got, err)
	}

	store.failing = true

	got, err = l.Recent("r", 5)
	if err == nil || !reflect.DeepEqual(got, []AuditEntry{first, second, third}) {
		t.Fatalf("Recent with the store unreadable = %+v (%v), want the local entries and an error", got, err)
	}
}
