package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// kubectlTimeout bounds one kubectl command: a kustomize build or a dry run
// against the test API server takes well under a second.
const kubectlTimeout = 2 * time.Minute

// Kubectl runs the kubectl that scripts/install-tools.sh installs (the
// Kubernetes release of kube-apiserver) with args, stdin (nil for none) as
// its standard input, in the repository root, and returns its standard
// output and standard error. err is kubectl's failure (an *exec.ExitError
// for a non-zero exit); the test is not failed, so that tests can expect a
// refusal. Commands that talk to a server need --kubeconfig (for example
// Kube.AdminKubeconfig).
func Kubectl(t testing.TB, stdin []byte, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	bin := ToolPath(t, "kubectl")
	ctx, cancel := context.WithTimeout(context.Background(), kubectlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = RepoRoot(t)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("kubectl %v: %w", args, ctx.Err())
	}
	return out.Bytes(), errOut.Bytes(), err
}

// Kustomize renders the kustomization in dir (relative to the repository
// root, or absolute) with `kubectl kustomize` and returns the YAML and its
// objects in order. A failure fails the test with kubectl's message.
func Kustomize(t testing.TB, dir string) ([]byte, []*unstructured.Unstructured) {
	t.Helper()
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(RepoRoot(t), dir)
	}
	out, errOut, err := Kubectl(t, nil, "kustomize", dir)
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, errOut)
	}
	objs, err := DecodeObjects(out)
	if err != nil {
		t.Fatalf("kubectl kustomize %s: decode the output: %v", dir, err)
	}
	return out, objs
}

// DecodeObjects decodes YAML or JSON documents, separated by "---", into
// objects, skipping empty documents.
func DecodeObjects(data []byte) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, err
		}
		if len(obj) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: obj})
	}
}
