package safety

import "fmt"

// Level is the safety level of a maintenance cycle.
type Level string

// Safety levels.
const (
	// Full is kopia's SafetyFull: safe while other clients write; deleted
	// data is reclaimed 24 to 72 hours or more after deletion.
	Full Level = "full"
	// None is kopia's SafetyNone: deleted data is reclaimed in one cycle,
	// and the repository is corrupted if any other client writes meanwhile.
	None Level = "none"
)

// ParseLevel parses a --safety value.
func ParseLevel(s string) (Level, error) {
	switch Level(s) {
	case Full, None:
		return Level(s), nil
	default:
		return "", fmt.Errorf("unknown safety level %q (want full or none)", s)
	}
}
