package main

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/kopia-maintd/kopia-maintd/config"
	"github.com/kopia-maintd/kopia-maintd/velero"
)

// TestDiscoveredCACertReadAtOpen: building the specs of a discovered
// repository whose location has caCertRef reads no Secret; the CA source of
// its storage reads the Secret as it is at each call, so a Secret that was
// missing (or forbidden) when the specs were built, or rotated since, is
// used by the next run. The inline caCert needs no API call at all.
func TestDiscoveredCACertReadAtOpen(t *testing.T) {
	ctx := context.Background()
	kube := kubefake.NewClientset()

	disc, err := velero.NewDiscovery(velero.Options{Dynamic: dynamicfake.NewSimpleDynamicClient(runtime.NewScheme()), Client: kube})
	if err != nil {
		t.Fatal(err)
	}

	ref := velero.Repository{Name: "app-ref", Source: velero.Source{Namespace: "velero"}, Location: velero.Location{
		Bucket: "b", Endpoint: "minio.example:9000", CACertRef: &velero.SecretKey{Name: "minio-ca", Key: "ca.crt"},
	}}
	inline := velero.Repository{Name: "app-inline", Source: velero.Source{Namespace: "velero"}, Location: velero.Location{
		Bucket: "b", Endpoint: "minio.example:9000", CACert: []byte("inline bundle"),
	}}

	eff, src, _, _ := merge(&config.Config{}, []velero.Repository{ref, inline}, disc)

	sp, err := specs(eff, src)
	if err != nil {
		t.Fatal(err)
	}

	if n := len(kube.Actions()); n != 0 {
		t.Fatalf("building the specs made %d API calls: %v", n, kube.Actions())
	}

	if len(sp) != 2 || sp[0].Name != "app-ref" || sp[1].Name != "app-inline" {
		t.Fatalf("specs: %+v", sp)
	}

	source := sp[0].Storage.S3.CACertSource
	if source == nil {
		t.Fatal("the caCertRef repository's storage has no CA source")
	}

	if _, err := source(); err == nil || !strings.Contains(err.Error(), "velero/minio-ca") {
		t.Fatalf("CA source before the Secret exists: %v, want an error naming it", err)
	}

	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "minio-ca", Namespace: "velero"}, Data: map[string][]byte{"ca.crt": []byte("first bundle")}}
	if _, err := kube.CoreV1().Secrets("velero").Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	if ca, err := source(); err != nil || string(ca) != "first bundle" {
		t.Fatalf("CA source once the Secret exists = %q, %v", ca, err)
	}

	secret.Data["ca.crt"] = []byte("rotated bundle")
	if _, err := kube.CoreV1().Secrets("velero").Update(ctx, secret, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	if ca, err := source(); err != nil || string(ca) != "rotated bundle" {
		t.Fatalf("CA source after a rotation = %q, %v", ca, err)
	}

	calls := len(kube.Actions())

	if ca, err := sp[1].Storage.S3.CACertSource(); err != nil || string(ca) != "inline bundle" {
		t.Fatalf("inline CA = %q, %v", ca, err)
	}

	if len(kube.Actions()) != calls {
		t.Error("the inline caCert made an API call")
	}
}
