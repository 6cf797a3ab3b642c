package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// badConfigs maps each file in testdata/bad to the exact lines of the error
// that Load returns for it. "{{testdata}}" stands for the absolute path of
// testdata, which appears in os errors about secret files.
func badConfigs() map[string][]string {
	return map[string][]string{
		"comments-only.yaml": {
			`config file is empty`,
		},
		"compaction.yaml": {
			`defaults.compaction.liveRatioThreshold: must be in (0, 1], got 0`,
			`defaults.compaction.maxBytesPerCycle: must be > 0, got "0GiB"`,
			`repositories[0].compaction.enabled: expected a boolean (true or false), got "yes"`,
			`repositories[0].compaction.liveRatioThreshold: must be in (0, 1], got 1.5`,
			`repositories[0].compaction.maxBytesPerCycle: invalid size "2 gigabytes" (want bytes or a number with a unit such as 512MiB or 2GiB)`,
			`repositories[1].compaction.liveRatioThreshold: expected a number, got "half"`,
			`repositories[1].compaction.minDeadBytes: unknown key`,
			`repositories[1].compaction.maxBytesPerCycle: invalid size "-2GiB" (want bytes or a number with a unit such as 512MiB or 2GiB)`,
		},
		"concurrency.yaml": {
			`concurrency: must be >= 1, got 0`,
		},
		"cron-defaults.yaml": {
			`defaults.schedule.quick: invalid cron spec "every hour": expected exactly 5 fields, found 2: [every hour]`,
			`defaults.schedule.full: invalid cron spec "0 3 * *": expected exactly 5 fields, found 4: [0 3 * *]`,
		},
		"cron-repository.yaml": {
			`repositories[1].schedule.quick: invalid cron spec "@fortnightly": unrecognized descriptor: @fortnightly`,
			`repositories[1].schedule.full: invalid cron spec "61 * * * *": end of range (61) above maximum (59): 61`,
		},
		"cron-timezone.yaml": {
			`defaults.schedule.quick: invalid cron spec "CRON_TZ=Mars/Olympus_Mons 0 * * * *": provided bad location Mars/Olympus_Mons: unknown time zone Mars/Olympus_Mons`,
			`defaults.schedule.full: invalid cron spec "CRON_TZ=UTC": missing schedule after time zone`,
		},
		"duplicate-key.yaml": {
			`concurrency: duplicate key`,
		},
		"duration-invalid.yaml": {
			`defaults.schedule.jitter: invalid duration "5 minutes" (want a Go duration such as 90s, 5m or 48h)`,
			`defaults.ownership.staleAfter: invalid duration "2d" (want a Go duration such as 90s, 5m or 48h)`,
			`repositories[0].schedule.jitter: invalid duration "300" (want a Go duration such as 90s, 5m or 48h)`,
		},
		"empty.yaml": {
			`config file is empty`,
		},
		"filesystem-path-missing.yaml": {
			`repositories[0].storage.filesystem.path: required`,
			`repositories[1].storage.filesystem.path: required`,
			`repositories[2].storage.filesystem.path: required`,
		},
		"identity-empty-hostname.yaml": {
			`identity.hostname: required`,
		},
		"identity-invalid.yaml": {
			`identity.username: must not contain '@' or whitespace, got "maintd@cluster-a"`,
			`identity.hostname: must not contain '@' or whitespace, got "cluster a"`,
		},
		"identity-missing.yaml": {
			`identity.username: required`,
			`identity.hostname: required`,
		},
		"jitter-negative.yaml": {
			`defaults.schedule.jitter: must be >= 0, got "-5m"`,
		},
		"kubeconfig-unreadable.yaml": {
			`kubernetes.context: unknown key`,
			`kubernetes.kubeconfig: open {{testdata}}/no-such-kubeconfig: no such file or directory`,
		},
		"lease-duration-invalid.yaml": {
			`lease.duration: invalid duration "1 minute" (want a Go duration such as 90s, 5m or 48h)`,
			`lease.renewInterval: invalid duration "15" (want a Go duration such as 90s, 5m or 48h)`,
		},
		"lease-duration-range.yaml": {
			`lease.duration: must be > 0, got "0s"`,
			`lease.renewInterval: must be > 0, got "-15s"`,
		},
		"lease-holder-identity.yaml": {
			`lease.holderIdentity: invalid holder identity "maintd@Host A" (want at most 128 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit; leave it empty to generate one)`,
		},
		"lease-kind-unknown.yaml": {
			`lease.kind: unknown lease kind "etcd" (want auto, kubernetes or repository)`,
		},
		"lease-name-prefix.yaml": {
			`lease.kubernetes.namePrefix: invalid lease name prefix "Kopia_Maintd-" (namePrefix + repository name must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', starting with a letter or digit; at most 190 characters)`,
		},
		"lease-name.yaml": {
			`repositories[1].name: lease name "maintd.-dash" (lease.kubernetes.namePrefix + name) is not a valid DNS-1123 subdomain: each dot-separated part must start and end with a letter or digit`,
			`repositories[2].name: lease name "maintd.trailing-" (lease.kubernetes.namePrefix + name) is not a valid DNS-1123 subdomain: each dot-separated part must start and end with a letter or digit`,
		},
		"lease-namespace.yaml": {
			`lease.kubernetes.name: unknown key`,
			`lease.kubernetes.namespace: invalid namespace name "Backup_NS" (must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)`,
		},
		"lease-namespace-missing.yaml": {
			`lease.kubernetes.namespace: required with lease kind kubernetes: the pod's namespace is unknown (POD_NAMESPACE is not set and /nonexistent/serviceaccount/namespace is not readable)`,
		},
		"lease-settle.yaml": {
			`lease.repository.settle: must be at most a quarter of lease.duration (2s), so that a claimant's wait leaves the lease time to be renewed, got "3s"`,
		},
		"lease-settle-invalid.yaml": {
			`lease.repository.delay: unknown key`,
			`lease.repository.settle: must be > 0, got "0s"`,
		},
		"maintenance-list-parallelism.yaml": {
			`maintenance.listParallelism: must be >= 0, got -1`,
		},
		"lease-spread-step.yaml": {
			`lease.spreadStep: must be between 0s and 10s, got "11s"`,
		},
		"lease-renew-interval.yaml": {
			`lease.renewInterval: must be less than half of lease.duration (30s), so that a renewal may fail once and the next is still in time, got "30s"`,
		},
		"listen-address-port.yaml": {
			`server.listenAddress: invalid listen address "localhost:http": port must be a number from 1 to 65535, got "http"`,
		},
		"listen-address.yaml": {
			`server.listenAddress: invalid listen address "9810": address 9810: missing port in address`,
		},
		"log.yaml": {
			`log.level: unknown log level "verbose" (want debug, info, warn or error)`,
			`log.format: unknown log format "text" (want json or console)`,
		},
		"many-problems.yaml": {
			`identity.username: required`,
			`identity.hostname: required`,
			`concurrency: must be >= 1, got -1`,
			`log.level: unknown log level "trace" (want debug, info, warn or error)`,
			`repositories[0].storage.s3.bucket: required`,
			`repositories[0].schedule.quick: invalid cron spec "* * * * * *": expected exactly 5 fields, found 6: [* * * * * *]`,
			`repositories[1].ownership.handBackOnExit: expected a boolean (true or false), got "please"`,
			`repositories[1].name: duplicate repository name "first" (first used by repositories[0])`,
			`repositories[1].passwordEnv: environment variable "KOPIA_MAINTD_TEST_UNSET" is not set`,
			`repositories[1].ownership.staleAfter: invalid duration "soon" (want a Go duration such as 90s, 5m or 48h)`,
		},
		"merge-key.yaml": {
			`x-common: unknown key`,
			`repositories[0].<<: merge keys are not supported`,
			`repositories[0]: exactly one of passwordFile and passwordEnv is required, got neither`,
		},
		"multiple-documents.yaml": {
			`config file must hold exactly one YAML document, found more`,
		},
		"not-a-mapping.yaml": {
			`expected a mapping, got a sequence`,
		},
		"password-both.yaml": {
			`repositories[0]: exactly one of passwordFile and passwordEnv is required, got both`,
		},
		"password-env-unset.yaml": {
			`repositories[0].passwordEnv: environment variable "KOPIA_MAINTD_TEST_UNSET" is not set`,
			`repositories[1].passwordEnv: environment variable "KOPIA_MAINTD_TEST_EMPTY" is empty`,
		},
		"password-file-unreadable.yaml": {
			`repositories[0].passwordFile: open {{testdata}}/no-such.password: no such file or directory`,
			`repositories[1].passwordFile: {{testdata}} is a directory, not a regular file`,
			`repositories[2].passwordFile: file {{testdata}}/empty.password is empty`,
		},
		"password-none.yaml": {
			`repositories[0]: exactly one of passwordFile and passwordEnv is required, got neither`,
		},
		"probe-address.yaml": {
			`server.probeAddress: invalid listen address "localhost": address localhost: missing port in address`,
		},
		"probe-address-same.yaml": {
			`server.probeAddress: must differ from server.listenAddress ":9810"`,
		},
		"web-config-bad-hash.yaml": {
			`server.webConfigFile: invalid web config {{testdata}}/web/bad-hash.yml: crypto/bcrypt: hashedSecret too short to be a bcrypted password`,
		},
		"web-config-empty-path.yaml": {
			`server.webConfigFile: must not be empty`,
		},
		"web-config-missing-cert.yaml": {
			`server.webConfigFile: invalid web config {{testdata}}/web/missing-cert.yml: failed to read cert_file ({{testdata}}/web/no-such-cert.pem): open {{testdata}}/web/no-such-cert.pem: no such file or directory`,
		},
		"web-config-unknown-key.yaml": {
			`server.webConfigFile: invalid web config {{testdata}}/web/unknown-key.yml: yaml: unmarshal errors: line 1: field basic_auth not found in type web.Config`,
		},
		"web-config-unreadable.yaml": {
			`server.webConfigFile: open {{testdata}}/no-such-web.yml: no such file or directory`,
		},
		"repositories-empty.yaml": {
			`repositories: at least one repository is required (or velero.discover: true)`,
		},
		"repositories-missing.yaml": {
			`repositories: at least one repository is required (or velero.discover: true)`,
		},
		"repositories-not-a-list.yaml": {
			`repositories: expected a sequence, got a mapping`,
		},
		"repository-name-duplicate.yaml": {
			`repositories[2].name: duplicate repository name "local" (first used by repositories[0])`,
		},
		"repository-name-invalid.yaml": {
			`repositories[0].name: invalid repository name "Local_1" (must match ^[a-z0-9-]{1,63}$)`,
			`repositories[1].name: required`,
			`repositories[2].name: invalid repository name "a-name-that-is-far-too-long-for-a-metric-label-or-a-state-file-x" (must match ^[a-z0-9-]{1,63}$)`,
		},
		"s3-bucket-missing.yaml": {
			`repositories[0].storage.s3.bucket: required`,
		},
		"s3-endpoint.yaml": {
			`repositories[0].storage.s3.endpoint: invalid endpoint "https://minio.example.com:9000": must be host or host:port without a scheme (set insecure: true for http)`,
		},
		"s3-key-file-unreadable.yaml": {
			`repositories[0].storage.s3.accessKeyIDFile: open {{testdata}}/s3/no-such-file: no such file or directory`,
			`repositories[0].storage.s3.secretAccessKeyFile: file {{testdata}}/empty.password is empty`,
		},
		"s3-one-key-file.yaml": {
			`repositories[0].storage.s3.secretAccessKeyFile: required when accessKeyIDFile is set`,
			`repositories[1].storage.s3.accessKeyIDFile: required when secretAccessKeyFile is set`,
		},
		"safety-none-duration-invalid.yaml": {
			`safetyNone.quietPeriod: invalid duration "30 minutes" (want a Go duration such as 90s, 5m or 48h)`,
			`safetyNone.scheduleMargin: invalid duration "2" (want a Go duration such as 90s, 5m or 48h)`,
			`safetyNone.watchInterval: invalid duration "5sec" (want a Go duration such as 90s, 5m or 48h)`,
		},
		"safety-none-duration-range.yaml": {
			`safetyNone.quietPeriod: must be > 0, got "0s"`,
			`safetyNone.scheduleMargin: must be >= 0, got "-1h"`,
			`safetyNone.watchInterval: must be > 0, got "-5s"`,
		},
		"safety-none-names.yaml": {
			`safetyNone.veleroNamespaces[1]: invalid namespace name "Openshift_ADP" (must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)`,
			`safetyNone.veleroNamespaces[2]: duplicate namespace "velero"`,
			`safetyNone.veleroNamespaces[3]: invalid namespace name "-velero" (must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)`,
			`safetyNone.veleroNamespaces[4]: invalid namespace name "a-namespace-name-that-is-longer-than-the-sixty-three-characters-ok" (must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)`,
			`safetyNone.ignorePods[1]: invalid pod name "" (must be a DNS-1123 subdomain: at most 253 lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit)`,
			`safetyNone.ignorePods[2]: invalid pod name "kopia maintd" (must be a DNS-1123 subdomain: at most 253 lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit)`,
		},
		"safety-none-namespaces-empty.yaml": {
			`safetyNone.veleroNamespaces: at least one namespace is required`,
		},
		"safety-none-repository-allow.yaml": {
			`repositories[1].safetyNone.allow: only false (opt out) may be set per repository; safety=none is allowed by the top-level safetyNone.allow`,
		},
		"safety-none-type-mismatch.yaml": {
			`safetyNone.allow: expected a boolean (true or false), got "yes"`,
			`safetyNone.veleroNamespaces: expected a sequence, got a string`,
			`safetyNone.windows: expected a sequence, got a mapping`,
			`repositories[0].safetyNone: expected a mapping, got a boolean`,
		},
		"safety-none-unknown-key.yaml": {
			`safetyNone.quietperiod: unknown key`,
			`safetyNone.windows[0].repository: unknown key`,
			`repositories[0].safetyNone.quietPeriod: unknown key (only allow may be set per repository; the other safetyNone keys are global)`,
		},
		"safety-none-window-cron.yaml": {
			`safetyNone.windows[1].schedule: invalid cron spec "0 4 * * sunday": failed to parse int from sunday: strconv.Atoi: parsing "sunday": invalid syntax`,
			`safetyNone.windows[2].schedule: required`,
			`safetyNone.windows[3].schedule: invalid cron spec "CRON_TZ=UTC": missing schedule after time zone`,
		},
		"velero.yaml": {
			`safetyNone.windows[0].repositories[1]: invalid repository name "App_2" (must match ^[a-z0-9-]{1,63}$)`,
			`velero.repositoryDefaults.lease: unknown key (want schedule, ownership, safetyNone or compaction; the lease settings are global (lease))`,
			`velero.namespace: invalid namespace name "Velero" (must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)`,
			`velero.credentialsSecret: invalid Secret name "repo credentials" (must be a DNS-1123 subdomain)`,
			`velero.cloudCredentialsFile: open {{testdata}}/no-such-credentials: no such file or directory`,
			`velero.repositoryDefaults.schedule.quick: invalid cron spec "every hour": expected exactly 5 fields, found 2: [every hour]`,
			`velero.repositoryDefaults.ownership.takeover: unknown takeover policy "sometimes" (want never, if-unowned, stale or always)`,
			`velero.repositoryDefaults.safetyNone.allow: only false (opt out) may be set per repository; safety=none is allowed by the top-level safetyNone.allow`,
		},
		"velero-suppress-without-discover.yaml": {
			`velero.suppressBuiltinMaintenance: requires velero.discover: true (suppression patches the BackupRepository objects discovery finds)`,
		},
		"safety-none-window-repository.yaml": {
			`safetyNone.windows[0].repositories[1]: unknown repository "remote" (not in repositories)`,
			`safetyNone.windows[0].repositories[2]: duplicate repository "local"`,
			`safetyNone.windows[1].repositories[0]: unknown repository "Local" (not in repositories)`,
		},
		"stale-after-not-positive.yaml": {
			`defaults.ownership.staleAfter: must be > 0, got "0s"`,
			`repositories[0].ownership.staleAfter: must be > 0, got "-1h"`,
		},
		"storage-both.yaml": {
			`repositories[0].storage: exactly one backend (filesystem or s3) is required, got both`,
		},
		"storage-none.yaml": {
			`repositories[0].storage: exactly one backend (filesystem or s3) is required, got none`,
			`repositories[1].storage: exactly one backend (filesystem or s3) is required, got none`,
		},
		"syntax.yaml": {
			`yaml: line 2: did not find expected key`,
		},
		"takeover-unknown.yaml": {
			`defaults.ownership.takeover: unknown takeover policy "sometimes" (want never, if-unowned, stale or always)`,
			`repositories[0].ownership.takeover: unknown takeover policy "Always" (want never, if-unowned, stale or always)`,
		},
		"type-mismatch.yaml": {
			`concurrency: expected an integer, got "two"`,
			`server: expected a mapping, got a string`,
			`defaults.ownership.handBackOnExit: expected a boolean (true or false), got "yes"`,
			`repositories[0].create: expected a boolean (true or false), got "1"`,
			`repositories[0].storage.filesystem.path: expected a string, got a sequence`,
		},
		"unknown-keys.yaml": {
			`identity.domain: unknown key`,
			`logging: unknown key`,
			`defaults.schedule.quik: unknown key`,
			`repositories[0].storage.filesytem: unknown key`,
			`repositories[0].password: unknown key`,
			`repositories[0].storage: exactly one backend (filesystem or s3) is required, got none`,
		},
	}
}

func TestLoadBadConfigs(t *testing.T) {
	setBadConfigEnv(t)
	testdata, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join("testdata", "bad", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	cases := badConfigs()
	for name := range cases {
		if !slices.Contains(names, name) {
			t.Errorf("badConfigs lists %s, which is not in testdata/bad", name)
		}
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			lines, ok := cases[name]
			if !ok {
				t.Fatalf("testdata/bad/%s has no expected error in badConfigs", name)
			}
			want := strings.ReplaceAll(strings.Join(lines, "\n"), "{{testdata}}", testdata)
			cfg, err := Load(filepath.Join("testdata", "bad", name))
			if err == nil {
				t.Fatalf("Load succeeded, want error:\n%s\ngot config: %+v", want, cfg)
			}
			if cfg != nil {
				t.Errorf("Load returned a config along with its error")
			}
			var cerr *Error
			if !errors.As(err, &cerr) {
				t.Fatalf("Load error is %T, want *Error: %v", err, err)
			}
			if len(cerr.Problems) != len(lines) {
				t.Errorf("got %d problems, want %d", len(cerr.Problems), len(lines))
			}
			if got := err.Error(); got != want {
				t.Errorf("error mismatch\ngot:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestBadConfigErrorsHoldNoSecrets loads every bad config and checks that no
// secret from testdata leaks into an error, even where the file holding it
// is referenced next to the problem.
func TestBadConfigErrorsHoldNoSecrets(t *testing.T) {
	setBadConfigEnv(t)
	secrets := []string{"testdata-only-password", "TESTDATAACCESSKEYID", "testdata-secret-access-key", "never-printed"}
	files, err := filepath.Glob(filepath.Join("testdata", "bad", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		_, err := Load(f)
		if err == nil {
			t.Errorf("%s: Load succeeded", f)
			continue
		}
		for _, s := range secrets {
			if strings.Contains(err.Error(), s) {
				t.Errorf("%s: error contains secret %q:\n%v", f, s, err)
			}
		}
	}
}

// setBadConfigEnv sets up the environment that testdata/bad expects:
// KOPIA_MAINTD_TEST_EMPTY set but empty, KOPIA_MAINTD_TEST_UNSET unset.
func setBadConfigEnv(t *testing.T) {
	t.Helper()
	t.Setenv("KOPIA_MAINTD_TEST_EMPTY", "")
	t.Setenv("KOPIA_MAINTD_TEST_UNSET", "")
	// t.Setenv restores the original value (or absence) after the test.
	if err := os.Unsetenv("KOPIA_MAINTD_TEST_UNSET"); err != nil {
		t.Fatal(err)
	}
}
