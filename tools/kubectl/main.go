// Command kubectl is the real kubectl, built from the Go module proxy for the
// tests of kopia-maintd's manifests: `kubectl kustomize` renders every
// kustomization under deploy/ and `kubectl apply --dry-run=server` has the
// test kube-apiserver admit what it rendered. It is not part of the product.
// main is Kubernetes' own cmd/kubectl.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"

	// Import to initialize client auth plugins.
	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

func main() {
	// kubectl sets klog's verbosity before the command is built, so that
	// building it (plugins, .kuberc) logs at the requested level.
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
