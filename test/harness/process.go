package harness

import (
	"net/http"
	"os/exec"
	"testing"
	"time"
)

// startServer starts a server process whose output goes to the test log on
// failure, waits until url answers 200, and kills it in t.Cleanup.
func startServer(t testing.TB, name string, cmd *exec.Cmd, url string) {
	t.Helper()

	logs := &tailBuffer{max: 64 << 10}
	cmd.Stdout, cmd.Stderr = logs, logs

	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}

	done := make(chan struct{})

	go func() {
		_ = cmd.Wait()
		close(done)
	}()

	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done

		if t.Failed() {
			t.Logf("%s output (tail):\n%s", name, logs.String())
		}
	})

	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)

	for {
		select {
		case <-done:
			t.Fatalf("%s exited during start-up:\n%s", name, logs.String())
		default:
		}

		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()

			if resp.StatusCode == http.StatusOK {
				return
			}
		}

		if time.Now().After(deadline) {
			t.Fatalf("%s not ready at %s after 30s:\n%s", name, url, logs.String())
		}

		time.Sleep(50 * time.Millisecond)
	}
}

// httpDo sends a request and fails the test on a transport error or a
// status outside 2xx.
func httpDo(t testing.TB, req *http.Request) *http.Response {
	t.Helper()

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}

	if resp.StatusCode/100 != 2 {
		resp.Body.Close()
		t.Fatalf("%s %s: %s", req.Method, req.URL, resp.Status)
	}

	return resp
}
