package config

import "strings"

// Problem is one thing wrong with a configuration file.
type Problem struct {
	// Path locates the offending field in YAML terms, e.g.
	// "repositories[1].schedule.full". It is empty for problems with the
	// file as a whole (empty file, YAML syntax error).
	Path string
	// Message says what is wrong. It never contains a secret.
	Message string
}

// String returns "path: message", or just the message when Path is empty.
func (p Problem) String() string {
	if p.Path == "" {
		return p.Message
	}
	return p.Path + ": " + p.Message
}

// Error is returned by Load and Parse when a configuration is invalid. It
// lists every problem found, in file order section by section (a section is
// a top-level key or one item of repositories; problems of sections absent
// from the file come first); within a section, decoding problems (unknown
// keys, type mismatches) come before validation problems.
type Error struct {
	// Problems holds at least one problem.
	Problems []Problem
}

// Error returns one "path: message" line per problem (just "message" for
// problems without a path), joined with "\n" and without a trailing newline.
func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}
