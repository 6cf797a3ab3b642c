//go:build !race

package load

// CI's load step: sized to take about three minutes on two cores. The
// requirement's 500 repositories are `-load.repos 500 -load.speedup 6`.
const (
	defaultRepos   = 100
	defaultSpeedup = 24
)
