//go:build race

package load

// Under -race the daemon is race-built too and several times slower: a
// small run that still puts four runs at once under the race detector.
const (
	defaultRepos   = 12
	defaultSpeedup = 60
)
