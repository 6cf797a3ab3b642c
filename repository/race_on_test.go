//go:build race

package repository

// raceEnabled reports whether this test binary was built with -race.
const raceEnabled = true
