package repository

import (
	"testing"
	"time"
)

func TestDecideOwnership(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	stale := Ownership{Policy: PolicyStale, StaleAfter: 48 * time.Hour}

	tests := []struct {
		name       string
		policy     Ownership
		facts      ownershipFacts
		wantTake   bool
		wantReason string
		wantSkip   bool
	}{
		{"already owner", Ownership{Policy: PolicyNever}, ownershipFacts{Owner: "me@h", Self: "me@h"}, false, "", false},
		{"never, unowned", Ownership{Policy: PolicyNever}, ownershipFacts{Owner: "", Self: "me@h"}, false, "", true},
		{"never, other owner", Ownership{Policy: PolicyNever}, ownershipFacts{Owner: "default@default", Self: "me@h"}, false, "", true},
		{"if-unowned, unowned", Ownership{Policy: PolicyIfUnowned}, ownershipFacts{Owner: "", Self: "me@h"}, true, ReasonUnowned, false},
		{"if-unowned, other owner", Ownership{Policy: PolicyIfUnowned}, ownershipFacts{Owner: "default@default", Self: "me@h"}, false, "", true},
		{"stale, unowned", stale, ownershipFacts{Owner: "", Self: "me@h", Now: now}, true, ReasonUnowned, false},
		{"stale, owner active 47h ago", stale, ownershipFacts{Owner: "o@h", Self: "me@h", LastActivity: now.Add(-47 * time.Hour), Now: now}, false, "", true},
		{"stale, owner idle exactly 48h", stale, ownershipFacts{Owner: "o@h", Self: "me@h", LastActivity: now.Add(-48 * time.Hour), Now: now}, true, ReasonStale, false},
		{"stale, owner idle 3d", stale, ownershipFacts{Owner: "o@h", Self: "me@h", LastActivity: now.Add(-72 * time.Hour), Now: now}, true, ReasonStale, false},
		{"stale, idle but we took over 10h ago (no flapping)", stale, ownershipFacts{Owner: "o@h", Self: "me@h", LastActivity: now.Add(-72 * time.Hour), LastTakeover: now.Add(-10 * time.Hour), Now: now}, false, "", true},
		{"stale, idle and last takeover 49h ago", stale, ownershipFacts{Owner: "o@h", Self: "me@h", LastActivity: now.Add(-72 * time.Hour), LastTakeover: now.Add(-49 * time.Hour), Now: now}, true, ReasonStale, false},
		{"always, other owner", Ownership{Policy: PolicyAlways}, ownershipFacts{Owner: "o@h", Self: "me@h"}, true, ReasonAlways, false},
		{"always, already owner", Ownership{Policy: PolicyAlways}, ownershipFacts{Owner: "me@h", Self: "me@h"}, false, "", false},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			take, reason, skip := decideOwnership(tc.policy, tc.facts)
			if take != tc.wantTake || reason != tc.wantReason || (skip != "") != tc.wantSkip {
				t.Fatalf("decideOwnership = (%v, %q, %q), want take=%v reason=%q skip=%v", take, reason, skip, tc.wantTake, tc.wantReason, tc.wantSkip)
			}
		})
	}
}
