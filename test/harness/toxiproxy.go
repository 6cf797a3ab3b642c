package harness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"testing"
)

// Toxiproxy is a running toxiproxy server: a TCP proxy whose links can be
// slowed down or cut, to put the network between the daemon and MinIO under
// the test's control.
type Toxiproxy struct {
	api string
}

// StartToxiproxy starts the real toxiproxy server on a free port.
func StartToxiproxy(t testing.TB) *Toxiproxy {
	t.Helper()

	bin := ToolPath(t, "toxiproxy-server")
	port := FreePort(t)
	cmd := exec.Command(bin, "-host", "127.0.0.1", "-port", strconv.Itoa(port))
	tp := &Toxiproxy{api: fmt.Sprintf("http://127.0.0.1:%d", port)}
	startServer(t, "toxiproxy", cmd, tp.api+"/version")

	return tp
}

func (tp *Toxiproxy) post(t testing.TB, path string, body any) {
	t.Helper()

	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}

	req, err := http.NewRequest(http.MethodPost, tp.api+path, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}

	req.Header.Set("Content-Type", "application/json")
	httpDo(t, req).Body.Close()
}

// Proxy creates a proxy named name to upstream (host:port) and returns the
// address it listens on.
func (tp *Toxiproxy) Proxy(t testing.TB, name, upstream string) string {
	t.Helper()

	listen := FreeAddr(t)
	tp.post(t, "/proxies", map[string]any{"name": name, "listen": listen, "upstream": upstream, "enabled": true})

	return listen
}

// Latency delays every response on the proxy by ms milliseconds.
func (tp *Toxiproxy) Latency(t testing.TB, name string, ms int) {
	t.Helper()

	tp.post(t, "/proxies/"+name+"/toxics", map[string]any{
		"name": "latency", "type": "latency", "stream": "downstream",
		"attributes": map[string]any{"latency": ms, "jitter": 0},
	})
}

// SetEnabled opens (true) or cuts (false) the proxy: a cut proxy refuses new
// connections and closes the open ones, like a network partition.
func (tp *Toxiproxy) SetEnabled(t testing.TB, name string, enabled bool) {
	t.Helper()

	tp.post(t, "/proxies/"+name, map[string]any{"enabled": enabled})
}

// ResetPeer makes the proxy reset (TCP RST) every connection after
// timeoutMs milliseconds of it, and, with timeoutMs 0, at once when data
// arrives: the connection resets a flaky load balancer gives.
func (tp *Toxiproxy) ResetPeer(t testing.TB, name string, timeoutMs int) {
	t.Helper()

	tp.post(t, "/proxies/"+name+"/toxics", map[string]any{
		"name": "reset", "type": "reset_peer", "stream": "upstream",
		"attributes": map[string]any{"timeout": timeoutMs},
	})
}

// RemoveToxic removes the toxic named name ("latency", "reset") from the
// proxy.
func (tp *Toxiproxy) RemoveToxic(t testing.TB, proxy, name string) {
	t.Helper()

	req, err := http.NewRequest(http.MethodDelete, tp.api+"/proxies/"+proxy+"/toxics/"+name, nil)
	if err != nil {
		t.Fatal(err)
	}

	httpDo(t, req).Body.Close()
}
