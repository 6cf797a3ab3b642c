package velero

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
)

// maxNameLen is the daemon's repository name limit (^[a-z0-9-]{1,63}$).
const maxNameLen = 63

// shortHashLen is the number of hex digits of the hash suffixes.
const shortHashLen = 6

// BaseName is the daemon's name for the repository of (volumeNamespace,
// bsl) before collisions are resolved: "<volumeNamespace>-<bsl>" in lower
// case, every character outside [a-z0-9-] (the dots of a location name,
// which is a DNS subdomain) turned into "-", runs of "-" collapsed and "-"
// trimmed from both ends. A name longer than 63 characters keeps its first
// 56 and ends in "-" and the first 6 hex digits of
// sha256("<volumeNamespace>/<bsl>").
func BaseName(volumeNamespace, bsl string) string {
	name := sanitize(volumeNamespace + "-" + bsl)
	if name == "" {
		// Only for objects without either name: still a valid name.
		return pairHash(volumeNamespace, bsl)[:shortHashLen]
	}

	if len(name) > maxNameLen {
		return withSuffix(name, pairHash(volumeNamespace, bsl)[:shortHashLen])
	}

	return name
}

func sanitize(s string) string {
	var b strings.Builder

	b.Grow(len(s))

	dash := false

	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)

			dash = false

			continue
		}

		if !dash {
			b.WriteByte('-')

			dash = true
		}
	}

	return strings.Trim(b.String(), "-")
}

// withSuffix returns name + "-" + suffix, cutting name so that the result
// fits in maxNameLen (and dropping a "-" the cut leaves at its end).
func withSuffix(name, suffix string) string {
	keep := maxNameLen - 1 - len(suffix)
	if keep <= 0 {
		return suffix[:min(len(suffix), maxNameLen)]
	}

	if len(name) > keep {
		name = strings.TrimRight(name[:keep], "-")
	}

	if name == "" {
		return suffix
	}

	return name + "-" + suffix
}

func pairHash(volumeNamespace, bsl string) string {
	sum := sha256.Sum256([]byte(volumeNamespace + "/" + bsl))

	return hex.EncodeToString(sum[:])
}

// namedPair is one (volume namespace, location) to be named, in the order
// names are handed out.
type namedPair struct {
	volumeNamespace, bsl string
}

// assignNames names the pairs, which must be distinct and sorted oldest
// first (by their oldest BackupRepository, ties by "<ns>/<bsl>"). Each pair
// takes its BaseName unless an older pair has it; then it takes
// "<BaseName>-<first 6 hex of sha256(ns/bsl)>" (cut to fit 63), or, in the
// unlikely case that this is taken too, a longer part of the hash, and as a
// last resort a counter. Names of older pairs never depend on newer ones,
// so adding a BackupRepository renames nothing that exists.
func assignNames(pairs []namedPair) []string {
	taken := make(map[string]bool, len(pairs))
	names := make([]string, len(pairs))

	for i, p := range pairs {
		base := BaseName(p.volumeNamespace, p.bsl)
		name := base

		if taken[name] {
			name = ""
			h := pairHash(p.volumeNamespace, p.bsl)

			for n := shortHashLen; n <= len(h) && name == ""; n += 2 {
				if c := withSuffix(base, h[:n]); !taken[c] {
					name = c
				}
			}

			for k := 2; name == ""; k++ {
				if c := withSuffix(base, h[:shortHashLen]+strconv.Itoa(k)); !taken[c] {
					name = c
				}
			}
		}

		taken[name] = true
		names[i] = name
	}

	return names
}
