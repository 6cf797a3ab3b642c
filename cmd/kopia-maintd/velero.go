package main

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/kopia-maintd/kopia-maintd/config"
	"github.com/kopia-maintd/kopia-maintd/repository"
	"github.com/kopia-maintd/kopia-maintd/velero"
)

// veleroCallTimeout bounds each read of a Velero Secret made when a run
// opens a discovered repository.
const veleroCallTimeout = 15 * time.Second

// discoveredRepo is a repository found by Velero discovery, with the
// sources of its secrets.
type discoveredRepo struct {
	repo velero.Repository
	disc *velero.Discovery
}

// repoSources maps the names of discovered repositories to their source;
// configured repositories are not in it.
type repoSources map[string]*discoveredRepo

// password reads the repositories' password from Velero's Secret.
func (d *discoveredRepo) password() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), veleroCallTimeout)
	defer cancel()

	return d.disc.Password(ctx)
}

// credentials reads the location's AWS credentials file and profile.
func (d *discoveredRepo) credentials() (repository.S3Credentials, error) {
	ctx, cancel := context.WithTimeout(context.Background(), veleroCallTimeout)
	defer cancel()

	c, err := d.disc.Credentials(ctx, d.repo)
	if err != nil {
		return repository.S3Credentials{}, err
	}

	return repository.S3Credentials{AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey, SessionToken: c.SessionToken}, nil
}

// caCert reads the location's CA bundle: caCert, or the Secret of
// caCertRef, read at every open of the repository's storage.
func (d *discoveredRepo) caCert() ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), veleroCallTimeout)
	defer cancel()

	return d.disc.CACert(ctx, d.repo)
}

// veleroOptions builds discovery's options from the configuration.
func veleroOptions(cfg *config.Config, log *zap.Logger) (velero.Options, error) {
	rc, err := kubeRESTConfig(cfg.Kubernetes.Kubeconfig)
	if err != nil {
		return velero.Options{}, fmt.Errorf("velero discovery: %w", err)
	}

	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return velero.Options{}, fmt.Errorf("velero discovery: dynamic client: %w", err)
	}

	cli, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return velero.Options{}, fmt.Errorf("velero discovery: client: %w", err)
	}

	return velero.Options{
		Dynamic:                dyn,
		Client:                 cli,
		Namespace:              cfg.Velero.Namespace,
		CredentialsSecret:      cfg.Velero.CredentialsSecret,
		CloudCredentialsSecret: cfg.Velero.CloudCredentialsSecret,
		CloudCredentialsFile:   cfg.Velero.CloudCredentialsFile,
		Logger:                 log,
	}, nil
}

// merge returns the configuration with the maintainable discovered
// repositories appended to the configured ones, and their sources. A
// discovered repository whose name a configured one already uses is left
// out and returned in clashes (the configured one keeps the name and is
// maintained as configured); so are the ones discovery cannot maintain,
// which the caller reports.
func merge(static *config.Config, found []velero.Repository, disc *velero.Discovery) (eff *config.Config, src repoSources, clashes, skipped []velero.Repository) {
	c := *static
	c.Repositories = slices.Clone(static.Repositories)
	src = repoSources{}

	for _, r := range found {
		switch {
		case r.NotMaintained != "":
			skipped = append(skipped, r)
			continue
		case slices.ContainsFunc(static.Repositories, func(s config.Repository) bool { return s.Name == r.Name }):
			clashes = append(clashes, r)
			continue
		}

		l := r.Location
		c.Repositories = append(c.Repositories, static.DiscoveredRepository(r.Name, &config.S3{
			Bucket: l.Bucket, Prefix: l.Prefix, Endpoint: l.Endpoint, Region: l.Region,
			Insecure: l.Insecure, SkipTLSVerify: l.SkipTLSVerify,
		}))
		src[r.Name] = &discoveredRepo{repo: r, disc: disc}
	}

	return &c, src, clashes, skipped
}

// whyClash is the reason class of a discovered repository whose name a
// configured repository already uses.
const whyClash = "name-clash"

// notMaintained returns the reason class of every discovered repository
// merge left out, for metrics.
func notMaintained(clashes, skipped []velero.Repository) map[string]string {
	out := make(map[string]string, len(clashes)+len(skipped))
	for _, s := range skipped {
		out[s.Name] = cmp.Or(s.Why, velero.WhyInvalid)
	}

	for _, c := range clashes {
		out[c.Name] = whyClash
	}

	return out
}
