package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Password returns the repository password, read now from PasswordFile (with
// trailing "\r" and "\n" removed) or from the PasswordEnv environment
// variable. Reading on every call picks up rotated secret files. The error
// never contains the password or any file contents.
func (r Repository) Password() (string, error) {
	switch {
	case r.PasswordFile != "":
		pw, err := readSecretFile(r.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("read password of repository %q: %w", r.Name, err)
		}
		return pw, nil
	case r.PasswordEnv != "":
		pw, ok := os.LookupEnv(r.PasswordEnv)
		switch {
		case !ok:
			return "", fmt.Errorf("read password of repository %q: environment variable %q is not set", r.Name, r.PasswordEnv)
		case pw == "":
			return "", fmt.Errorf("read password of repository %q: environment variable %q is empty", r.Name, r.PasswordEnv)
		}
		return pw, nil
	default:
		return "", fmt.Errorf("read password of repository %q: no password source configured", r.Name)
	}
}

// Credentials returns the S3 access key ID and secret access key read now
// from AccessKeyIDFile and SecretAccessKeyFile (trailing "\r" and "\n"
// removed). When no files are configured both are "" and err is nil: the
// caller should then use the AWS_* environment variables or other ambient
// credentials. The error never contains a key or any file contents.
func (s S3) Credentials() (accessKeyID, secretAccessKey string, err error) {
	if s.AccessKeyIDFile == "" && s.SecretAccessKeyFile == "" {
		return "", "", nil
	}
	if s.AccessKeyIDFile == "" || s.SecretAccessKeyFile == "" {
		return "", "", errors.New("read s3 credentials: accessKeyIDFile and secretAccessKeyFile must be set together")
	}
	if accessKeyID, err = readSecretFile(s.AccessKeyIDFile); err != nil {
		return "", "", fmt.Errorf("read s3 access key id: %w", err)
	}
	if secretAccessKey, err = readSecretFile(s.SecretAccessKeyFile); err != nil {
		return "", "", fmt.Errorf("read s3 secret access key: %w", err)
	}
	return accessKeyID, secretAccessKey, nil
}

// readSecretFile reads a secret from file, removing trailing line ends. Its
// error is the *os.PathError from reading (which names the file and the
// failure, never the contents) or says that the file is empty.
func readSecretFile(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	secret := strings.TrimRight(string(data), "\r\n")
	if secret == "" {
		return "", fmt.Errorf("file %s is empty", file)
	}
	return secret, nil
}
