package repository

import (
	"errors"
	"fmt"
)

// Sentinel errors callers act on.
var (
	// ErrUnknownRepository: no repository of that name is configured.
	ErrUnknownRepository = errors.New("unknown repository")
	// ErrNoRepository: the storage holds no kopia repository.
	ErrNoRepository = errors.New("no kopia repository")
	// ErrWrongPassword: the password does not open the repository.
	ErrWrongPassword = errors.New("wrong repository password")
)

// NotOwnerError reports a run that did not happen because another identity
// owns maintenance and the ownership policy does not allow taking it.
type NotOwnerError struct {
	Repository string
	Owner      string // "" when nobody owns it
	Reason     string
}

func (e *NotOwnerError) Error() string {
	owner := e.Owner
	if owner == "" {
		owner = "nobody"
	}

	return fmt.Sprintf("repository %q: maintenance is owned by %s: %s", e.Repository, owner, e.Reason)
}

// Skipped marks the run as skipped rather than failed.
func (e *NotOwnerError) Skipped() bool { return true }

// LockedError reports a run that did not happen because another process on
// this machine holds kopia's local maintenance lock for the connection.
type LockedError struct {
	Repository string
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("repository %q: maintenance is already running in another local process", e.Repository)
}

// Skipped marks the run as skipped rather than failed.
func (e *LockedError) Skipped() bool { return true }
