package harness

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

// kubeReadyTimeout bounds the wait for etcd's /health and the API server's
// /readyz. The API server is ready about 3 s after it starts on an idle
// machine; a CI machine running race builds in parallel is much slower.
const kubeReadyTimeout = 90 * time.Second

// KubeAdminUser is the user name of Kube.AdminToken, a member of
// system:masters (every permission, RBAC is bypassed).
const KubeAdminUser = "kopia-maintd-test-admin"

// Kube is a real kube-apiserver backed by a real etcd, both on 127.0.0.1,
// started by StartKube. It runs no controllers: nothing makes Pods for
// Deployments or Jobs, Pods stay Pending, and no "default" ServiceAccount
// appears in new namespaces. Tests create the objects they need directly and
// set their status with SetStatus.
//
// Authentication is by bearer token only: AdminToken (group system:masters)
// and ServiceAccount tokens from the TokenRequest API. Authorization is RBAC,
// so a ServiceAccount can do exactly what its Roles grant (plus the
// discovery and self-review access Kubernetes gives every authenticated user).
type Kube struct {
	// Host is the API server's URL, https://127.0.0.1:<port>.
	Host string
	// CAData is the PEM certificate of the CA that signed the API server's
	// serving certificate (made by StartKube, valid for 127.0.0.1).
	CAData []byte
	// AdminToken authenticates as KubeAdminUser in system:masters.
	AdminToken string
	// Audience is the API server's audience (--api-audiences) and its
	// ServiceAccount token issuer.
	Audience string
	// EtcdURL is the client URL of the etcd server, http://127.0.0.1:<port>.
	EtcdURL string

	apiBin  string
	apiArgs []string
	apiLogs *tailBuffer

	mu   sync.Mutex
	etcd *childProcess
	api  *childProcess

	clientsOnce sync.Once
	clients     *kubeClients
	clientsErr  error
}

// childProcess is a process started by the harness and reaped by a goroutine.
type childProcess struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and been reaped
	err  error         // the result of Wait, valid once done is closed
}

func startChild(cmd *exec.Cmd) (*childProcess, error) {
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("exec %s: %w", cmd.Path, err)
	}
	p := &childProcess{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// kill sends SIGKILL and waits until the process has exited. A nil process
// is a no-op.
func (p *childProcess) kill() {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *childProcess) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// StartKube starts etcd (data in t.TempDir()) and a kube-apiserver against it,
// each on free ports of 127.0.0.1, waits until the API server's /readyz
// answers the admin, and kills both in t.Cleanup (SIGKILL: the API server
// takes seconds to stop on SIGTERM). It takes about 3 seconds.
//
// The binaries come from scripts/install-tools.sh (etcd, kube-apiserver).
func StartKube(t testing.TB) *Kube {
	t.Helper()
	etcdBin := ToolPath(t, "etcd")
	apiBin := ToolPath(t, "kube-apiserver")
	dir := t.TempDir()

	k := &Kube{
		AdminToken: randomHex(t, 24),
		Audience:   "https://kubernetes.default.svc",
		apiBin:     apiBin,
		apiLogs:    &tailBuffer{max: 64 << 10},
	}
	etcdLogs := &tailBuffer{max: 32 << 10}
	t.Cleanup(func() {
		k.mu.Lock()
		api, etcd := k.api, k.etcd
		k.api, k.etcd = nil, nil
		k.mu.Unlock()
		api.kill()
		etcd.kill()
		if t.Failed() {
			t.Logf("kube-apiserver output (tail):\n%s", k.apiLogs.String())
			t.Logf("etcd output (tail):\n%s", etcdLogs.String())
		}
	})

	ca, servingCert, servingKey, err := kubeCertificates()
	if err != nil {
		t.Fatalf("make kube-apiserver certificates: %v", err)
	}
	k.CAData = ca
	saKey, err := ecPrivateKeyPEM()
	if err != nil {
		t.Fatalf("make service account signing key: %v", err)
	}
	files := map[string][]byte{
		"serving.crt": servingCert,
		"serving.key": servingKey,
		"sa.key":      saKey,
		// token,user,uid,"group1,group2"
		"tokens.csv": fmt.Appendf(nil, "%s,%s,%s,\"system:masters\"\n", k.AdminToken, KubeAdminUser, KubeAdminUser),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// etcd. Ports are only reserved until FreePort returns: retry when
	// another process took one in between.
	for attempt := 0; ; attempt++ {
		clientURL := fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
		peerURL := fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
		cmd := exec.Command(etcdBin,
			"--name=kube",
			"--data-dir="+filepath.Join(dir, "etcd"),
			"--listen-client-urls="+clientURL,
			"--advertise-client-urls="+clientURL,
			"--listen-peer-urls="+peerURL,
			"--initial-advertise-peer-urls="+peerURL,
			"--initial-cluster=kube="+peerURL,
			"--initial-cluster-state=new",
			"--logger=zap",
			"--log-level=warn",
			// etcd 3.4 does not answer the API server's progress requests, so
			// a watch from "now" would wait 3 s for the watch cache to catch
			// up; frequent progress notifications keep it fresh.
			"--experimental-watch-progress-notify-interval=100ms",
		)
		cmd.Env = os.Environ()
		if runtime.GOARCH != "amd64" {
			// etcd 3.4 refuses to start elsewhere unless told.
			cmd.Env = append(cmd.Env, "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
		}
		cmd.Stdout, cmd.Stderr = etcdLogs, etcdLogs
		p, err := startChild(cmd)
		if err != nil {
			t.Fatalf("start etcd: %v", err)
		}
		k.mu.Lock()
		k.etcd = p
		k.mu.Unlock()
		err = waitHTTP(p, clientURL+"/health", "", nil, func(body string) bool {
			return strings.Contains(body, `"health":"true"`)
		})
		if err == nil {
			k.EtcdURL = clientURL
			break
		}
		p.kill()
		if attempt == 2 {
			t.Fatalf("start etcd: %v\netcd output:\n%s", err, etcdLogs.String())
		}
		_ = os.RemoveAll(filepath.Join(dir, "etcd"))
	}

	// kube-apiserver.
	for attempt := 0; ; attempt++ {
		port := FreePort(t)
		k.Host = fmt.Sprintf("https://127.0.0.1:%d", port)
		k.apiArgs = []string{
			"--etcd-servers=" + k.EtcdURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--cert-dir=" + filepath.Join(dir, "certs"),
			"--tls-cert-file=" + filepath.Join(dir, "serving.crt"),
			"--tls-private-key-file=" + filepath.Join(dir, "serving.key"),
			"--token-auth-file=" + filepath.Join(dir, "tokens.csv"),
			"--authorization-mode=RBAC",
			"--service-account-issuer=" + k.Audience,
			"--api-audiences=" + k.Audience,
			"--service-account-key-file=" + filepath.Join(dir, "sa.key"),
			"--service-account-signing-key-file=" + filepath.Join(dir, "sa.key"),
			// Without the controller manager no namespace gets a "default"
			// ServiceAccount, which this plugin would require of every Pod.
			"--disable-admission-plugins=ServiceAccount",
			"--service-cluster-ip-range=10.0.0.0/24",
			// The "kubernetes" Service's endpoints would point at a loopback
			// address, which the endpoint reconciler refuses.
			"--endpoint-reconciler-type=none",
			"--profiling=false",
		}
		err := k.startAPI()
		if err == nil {
			break
		}
		k.stopAPI()
		if attempt == 2 {
			t.Fatalf("start kube-apiserver: %v\nkube-apiserver output:\n%s", err, k.apiLogs.String())
		}
	}
	return k
}

// Stop kills the API server (SIGKILL, as a crash or an outage would) and
// waits until it has exited. etcd keeps running with every object; Start
// brings the API server back on the same address.
func (k *Kube) Stop(t testing.TB) {
	t.Helper()
	k.stopAPI()
}

// Start restarts a stopped API server on the same address, certificates,
// tokens and etcd, and waits until it is ready. It fails the test if the
// port has been taken in the meantime.
func (k *Kube) Start(t testing.TB) {
	t.Helper()
	k.mu.Lock()
	running := k.api != nil
	k.mu.Unlock()
	if running {
		t.Fatalf("start kube-apiserver on %s: already running", k.Host)
	}
	if err := k.startAPI(); err != nil {
		k.stopAPI()
		t.Fatalf("restart kube-apiserver on %s: %v\nkube-apiserver output:\n%s", k.Host, err, k.apiLogs.String())
	}
}

func (k *Kube) startAPI() error {
	cmd := exec.Command(k.apiBin, k.apiArgs...)
	cmd.Stdout, cmd.Stderr = k.apiLogs, k.apiLogs
	p, err := startChild(cmd)
	if err != nil {
		return err
	}
	k.mu.Lock()
	k.api = p
	k.mu.Unlock()
	return waitHTTP(p, k.Host+"/readyz", k.AdminToken, k.CAData, func(body string) bool { return body == "ok" })
}

func (k *Kube) stopAPI() {
	k.mu.Lock()
	p := k.api
	k.api = nil
	k.mu.Unlock()
	p.kill()
}

// AdminConfig returns a client configuration for the admin (system:masters).
// Each call returns a new copy.
func (k *Kube) AdminConfig() *rest.Config {
	return k.tokenConfig(k.AdminToken)
}

func (k *Kube) tokenConfig(token string) *rest.Config {
	return &rest.Config{
		Host:            k.Host,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: append([]byte(nil), k.CAData...)},
		QPS:             200,
		Burst:           400,
	}
}

// waitHTTP polls url (with a bearer token and a CA when given) until it
// answers 200 with a body ok accepts, the process exits, or
// kubeReadyTimeout passes.
func waitHTTP(p *childProcess, url, token string, caPEM []byte, ok func(body string) bool) error {
	transport := &http.Transport{}
	if caPEM != nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{Timeout: 2 * time.Second, Transport: transport}
	deadline := time.Now().Add(kubeReadyTimeout)
	var last string
	for {
		if p.exited() {
			return fmt.Errorf("exited before it was ready (%v); last answer from %s: %s", p.err, url, last)
		}
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err == nil {
			body := make([]byte, 4096)
			n, _ := resp.Body.Read(body)
			resp.Body.Close()
			last = fmt.Sprintf("%s %s", resp.Status, strings.TrimSpace(string(body[:n])))
			if resp.StatusCode == http.StatusOK && ok(strings.TrimSpace(string(body[:n]))) {
				return nil
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v; last answer: %s", url, kubeReadyTimeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kubeCertificates makes a CA and a serving certificate for 127.0.0.1 and
// localhost (and the in-cluster names of the API) signed by it, and returns
// the CA certificate, the serving certificate and its key, all PEM.
func kubeCertificates() (caPEM, certPEM, keyPEM []byte, err error) {
	ca, err := newCA("kopia-maintd test CA")
	if err != nil {
		return nil, nil, nil, err
	}
	certPEM, keyPEM, err = ca.serverCert("kubernetes", "kubernetes.default", "kubernetes.default.svc")
	if err != nil {
		return nil, nil, nil, err
	}
	return ca.PEM, certPEM, keyPEM, nil
}

// ecPrivateKeyPEM makes a P-256 key, PEM, for signing ServiceAccount tokens
// (ES256).
func ecPrivateKeyPEM() ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}
