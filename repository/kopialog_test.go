package repository

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// cancelOnTask cancels the run when its first task starts.
type cancelOnTask struct{ cancel context.CancelFunc }

func (c cancelOnTask) TaskStarted(string)      { c.cancel() }
func (c cancelOnTask) TaskFinished(TaskResult) {}
func (c cancelOnTask) Progress(Progress)       {}

// A run cancelled in the middle (a shutdown, a lost lease) makes kopia log
// what it could no longer write, at error level. The daemon reports the
// cancellation itself; kopia's echo of it is kept at Debug, so a clean
// shutdown leaves no error line in the log.
func TestCancelledRunLogsNoKopiaError(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	path := filepath.Join(t.TempDir(), "repo")
	m, err := NewManager(Options{
		StateDirectory: filepath.Join(t.TempDir(), "state"),
		Identity:       Identity{Username: "maintd", Hostname: "test"},
		Logger:         zap.New(core),
	}, []Spec{fsSpec("local", path, true, PolicyNever)})
	if err != nil {
		t.Fatal(err)
	}

	req := RunRequest{Cycle: Full, NextQuick: time.Now().Add(time.Hour), NextFull: time.Now().Add(24 * time.Hour), QuickInterval: time.Hour, FullInterval: 24 * time.Hour}
	if _, err := m.Run(context.Background(), testLease(t, "local"), "local", req); err != nil {
		t.Fatalf("first run: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	req.Observer = cancelOnTask{cancel}
	if _, err := m.Run(ctx, testLease(t, "local"), "local", req); err == nil {
		t.Fatal("cancelled run succeeded")
	}

	echoed := false
	for _, e := range logs.All() {
		if !strings.HasPrefix(e.LoggerName, "kopia") {
			continue
		}
		if e.Level >= zapcore.WarnLevel {
			t.Errorf("kopia logged at %s after the cancellation: %s %v", e.Level, e.Message, e.ContextMap())
		}
		if strings.Contains(e.Message, "unable to report run") {
			echoed = true
		}
	}
	if !echoed {
		t.Fatal("kopia logged nothing of the run it could not record; the test no longer sees the case it guards")
	}
}

// Before any cancellation kopia's warnings and errors keep their level; only
// its Info narration is lowered.
func TestKopiaLevelsWhileTheRunLives(t *testing.T) {
	run, cancel := context.WithCancel(context.Background())
	k := kopiaCore{run: run}

	for in, want := range map[zapcore.Level]zapcore.Level{
		zapcore.DebugLevel: zapcore.DebugLevel,
		zapcore.InfoLevel:  zapcore.DebugLevel,
		zapcore.WarnLevel:  zapcore.WarnLevel,
		zapcore.ErrorLevel: zapcore.ErrorLevel,
	} {
		if got := k.level(in); got != want {
			t.Errorf("live run: %s became %s, want %s", in, got, want)
		}
	}

	cancel()

	for _, in := range []zapcore.Level{zapcore.WarnLevel, zapcore.ErrorLevel} {
		if got := k.level(in); got != zapcore.DebugLevel {
			t.Errorf("cancelled run: %s became %s, want debug", in, got)
		}
	}
}
