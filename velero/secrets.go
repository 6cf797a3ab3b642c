package velero

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ErrSecretNotFound is wrapped by the errors of Password, Credentials and
// CACert when the Secret does not exist, and ErrSecretKeyNotFound when it
// lacks the key.
var (
	ErrSecretNotFound    = errors.New("not found")
	ErrSecretKeyNotFound = errors.New("has no key")
)

// secretValue gets key of Secret namespace/name. Errors name the Secret and
// the key, never a value.
func (d *Discovery) secretValue(ctx context.Context, namespace string, ref SecretKey) ([]byte, error) {
	cctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()

	s, err := d.opts.Client.CoreV1().Secrets(namespace).Get(cctx, ref.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("secret %s/%s %w", namespace, ref.Name, ErrSecretNotFound)
	}

	if err != nil {
		// The API's errors (Forbidden, timeouts) carry no Secret data.
		return nil, fmt.Errorf("get secret %s/%s: %w", namespace, ref.Name, err)
	}

	v, ok := s.Data[ref.Key]
	if !ok {
		return nil, fmt.Errorf("secret %s/%s %w %s", namespace, ref.Name, ErrSecretKeyNotFound, ref.Key)
	}

	return v, nil
}

// Password returns the repositories' password: key repository-password of
// the CredentialsSecret in Velero's namespace, trimmed of surrounding
// whitespace as Velero trims it (pkg/repository/provider/unified_repo.go,
// getRepoPassword). Errors name the Secret and the key, never the value.
func (d *Discovery) Password(ctx context.Context) (string, error) {
	v, err := d.secretValue(ctx, d.opts.Namespace, SecretKey{Name: d.opts.CredentialsSecret, Key: passwordKey})
	if err != nil {
		return "", fmt.Errorf("read repository password: %w", err)
	}

	p := strings.TrimSpace(string(v))
	if p == "" {
		return "", fmt.Errorf("read repository password: secret %s/%s key %s is empty", d.opts.Namespace, d.opts.CredentialsSecret, passwordKey)
	}

	return p, nil
}

// Credentials reads the S3 keys of r: the AWS credentials file in the
// location's spec.credential Secret, in the default cloud credentials
// Secret, or in Options.CloudCredentialsFile (see Location), and parses
// profile r.Location.Profile from it. The Secret is read at every call, so
// rotated keys are used from the next open on. Velero's other sources of
// AWS credentials (environment, IRSA web identity, instance roles, assumed
// roles) are not supported. Errors name the Secret, the key or the file
// and the profile, never any content.
func (d *Discovery) Credentials(ctx context.Context, r Repository) (Credentials, error) {
	if r.NotMaintained != "" {
		return Credentials{}, fmt.Errorf("credentials of repository %q: not maintained: %s", r.Name, r.NotMaintained)
	}

	var (
		data []byte
		from string
	)

	if f := r.Location.CredentialsFile; f != "" {
		from = "file " + f

		var err error
		if data, err = readCredentialsFile(f); err != nil {
			// os errors name the path and the cause only.
			return Credentials{}, fmt.Errorf("credentials of repository %q: %w", r.Name, err)
		}
	} else {
		ref := r.Location.Credential
		if ref.Name == "" || ref.Key == "" {
			return Credentials{}, fmt.Errorf("credentials of repository %q: no credential secret", r.Name)
		}

		from = fmt.Sprintf("secret %s/%s key %s", r.Source.Namespace, ref.Name, ref.Key)

		var err error
		if data, err = d.secretValue(ctx, r.Source.Namespace, ref); err != nil {
			return Credentials{}, fmt.Errorf("credentials of repository %q: %w", r.Name, err)
		}
	}

	c, err := ParseAWSCredentials(data, r.Location.Profile)
	if err != nil {
		return Credentials{}, fmt.Errorf("credentials of repository %q: %s: %w", r.Name, from, err)
	}

	return c, nil
}

// CACert returns the CA bundle r's S3 endpoint is verified with: the
// Secret of spec.objectStorage.caCertRef, read at every call, or else the
// location's caCert; nil when there is none (the system's roots apply).
func (d *Discovery) CACert(ctx context.Context, r Repository) ([]byte, error) {
	ref := r.Location.CACertRef
	if ref == nil {
		return r.Location.CACert, nil
	}

	v, err := d.secretValue(ctx, r.Source.Namespace, *ref)
	if err != nil {
		return nil, fmt.Errorf("CA certificate of repository %q: %w", r.Name, err)
	}

	return v, nil
}

// maxCredentialsFile bounds the credentials file read: a Kubernetes Secret
// holds at most 1 MiB, and an AWS credentials file is a few lines.
const maxCredentialsFile = 1 << 20

// readCredentialsFile reads a regular file of at most maxCredentialsFile
// bytes. A named pipe, a device or a directory mounted at the path fails at
// once instead of blocking or reading without end.
func readCredentialsFile(file string) ([]byte, error) {
	// O_NONBLOCK: opening a named pipe would otherwise wait for a writer.
	f, err := os.OpenFile(file, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	st, err := f.Stat()
	if err != nil {
		return nil, err
	}

	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (mode %s)", file, st.Mode().Type())
	}

	data, err := io.ReadAll(io.LimitReader(f, maxCredentialsFile+1))
	if err != nil {
		return nil, err
	}

	if len(data) > maxCredentialsFile {
		return nil, fmt.Errorf("%s is larger than %d MiB", file, maxCredentialsFile>>20)
	}

	return data, nil
}
