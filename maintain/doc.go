// Package maintain composes one maintenance run of kopia-maintd from its
// safety-critical parts: the repository's lease (and the fence built from
// it), the safety=none gate with its guard and re-checks, the audit record,
// and what the run reports (owner changes, metrics). Every rule here takes
// its clock and its collaborators as small interfaces, so each can be tested
// with fakes and a fake clock; the command line only parses flags and wires
// these together.
package maintain
