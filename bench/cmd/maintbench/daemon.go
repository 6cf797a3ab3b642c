package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// daemonRepo is one repository in a generated daemon config.
type daemonRepo struct {
	name  string
	path  string       // filesystem
	minio *minioServer // or S3 on this MinIO
}

// writeDaemonConfig writes a kopia-maintd config for repos with the given
// schedules and returns its path.
func writeDaemonConfig(dir, listen, quick, full string, concurrency int, repos []daemonRepo, spreadStep string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "identity:\n  username: %s\n  hostname: %s\n", benchUser, benchHost)
	fmt.Fprintf(&b, "stateDirectory: %s\n", filepath.Join(dir, "state"))
	fmt.Fprintf(&b, "concurrency: %d\n", concurrency)
	fmt.Fprintf(&b, "server:\n  listenAddress: %s\n", listen)
	fmt.Fprintf(&b, "log:\n  level: info\n  format: json\n")
	fmt.Fprintf(&b, "lease:\n  kind: repository\n")
	if spreadStep != "" {
		fmt.Fprintf(&b, "  spreadStep: %s\n", spreadStep)
	}
	fmt.Fprintf(&b, "defaults:\n  schedule:\n    quick: %q\n    full: %q\n    jitter: 0s\n  ownership:\n    takeover: if-unowned\n", quick, full)
	b.WriteString("repositories:\n")
	for _, r := range repos {
		fmt.Fprintf(&b, "  - name: %s\n    passwordEnv: KOPIA_PASSWORD\n    storage:\n", r.name)
		if r.minio != nil {
			fmt.Fprintf(&b, "      s3:\n        bucket: %s\n        endpoint: %s\n        region: us-east-1\n        insecure: true\n", minioBucket, r.minio.endpoint)
		} else {
			fmt.Fprintf(&b, "      filesystem:\n        path: %s\n", r.path)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	p := filepath.Join(dir, "config.yaml")
	return p, os.WriteFile(p, []byte(b.String()), 0o600)
}

func daemonEnv() []string {
	return append(cleanEnv(), "KOPIA_PASSWORD="+benchPassword, "AWS_ACCESS_KEY_ID="+minioUser, "AWS_SECRET_ACCESS_KEY="+minioSecret)
}

// daemonCommand returns the measured kopia-maintd command.
func daemonCommand(bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.Env = daemonEnv()
	return cmd
}

// logLine is the part of the daemon's JSON log lines the harness reads.
type logLine struct {
	Msg        string `json:"msg"`
	Level      string `json:"level"`
	Repository string `json:"repository"`
	Error      string `json:"error"`
}

// runDaemonUntil starts `kopia-maintd run`, waits until every repository in
// want logged a successful "maintenance run finished" (or timeout), stops it
// with SIGTERM and returns the cost of the whole process.
func runDaemonUntil(ctx context.Context, bin, cfg string, want int, timeout time.Duration, logw io.Writer) (Sample, error) {
	cmd := daemonCommand(bin, "run", "--config", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return Sample{}, err
	}
	cmd.Stdout = logw
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Sample{}, err
	}
	done := make(chan error, 1)
	go func() {
		seen := map[string]bool{}
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		signalled := false
		var failure error
		for sc.Scan() {
			line := sc.Bytes()
			fmt.Fprintf(logw, "%s\n", line)
			var l logLine
			if json.Unmarshal(line, &l) != nil || l.Msg != "maintenance run finished" || signalled {
				continue
			}
			if l.Error != "" {
				failure = fmt.Errorf("repository %s: %s", l.Repository, l.Error)
			} else {
				seen[l.Repository] = true
			}
			if len(seen) == want || failure != nil {
				signalled = true
				_ = cmd.Process.Signal(syscall.SIGTERM)
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		done <- failure
	}()
	var failure error
	select {
	case failure = <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Signal(syscall.SIGTERM)
		failure = fmt.Errorf("not every repository maintained within %s", timeout)
		<-done
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-done
		failure = ctx.Err()
	}
	werr := cmd.Wait()
	s := usage(cmd.ProcessState, time.Since(start))
	if failure != nil {
		return s, failure
	}
	if werr != nil {
		return s, fmt.Errorf("kopia-maintd run: %w", werr)
	}
	return s, nil
}
