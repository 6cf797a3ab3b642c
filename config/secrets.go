package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
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

// maxFileSize bounds every file the configuration names (secrets,
// kubeconfig, web config) and the configuration file itself: far above any
// real one, and small enough that a wrong path (a log, a disk image) fails
// at once instead of filling memory.
const maxFileSize = 4 << 20

// readFile reads a regular file of at most maxFileSize bytes. A device, a
// FIFO or a directory is refused before it is read: /dev/zero or a pipe
// would otherwise never end (symbolic links are followed, so Kubernetes'
// Secret volumes work). The errors name the file, never its contents.
func readFile(file string) ([]byte, error) {
	// O_NONBLOCK: opening a named pipe would otherwise wait for a writer.
	// It changes nothing for a regular file.
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
		return nil, fmt.Errorf("%s is %s, not a regular file", file, fileKind(st.Mode()))
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s is larger than %d MiB", file, maxFileSize>>20)
	}
	return data, nil
}

// fileKind names a file type that is not a regular file.
func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	default:
		return "a special file"
	}
}

// readSecretFile reads a secret from file, removing trailing line ends. Its
// error is the *os.PathError from reading (which names the file and the
// failure, never the contents), or says that the file is empty, too large
// or not a regular file.
func readSecretFile(file string) (string, error) {
	data, err := readFile(file)
	if err != nil {
		return "", err
	}
	secret := strings.TrimRight(string(data), "\r\n")
	if secret == "" {
		return "", fmt.Errorf("file %s is empty", file)
	}
	return secret, nil
}
