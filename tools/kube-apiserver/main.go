// Command kube-apiserver is the real Kubernetes API server, built from the
// Go module proxy for the integration tests of kopia-maintd's Kubernetes
// features (the safety=none gate, leases). It is not part of the product.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
