package velero

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
	"testing"
)

var nameRule = regexp.MustCompile(`^[a-z0-9-]{1,63}$`)

func hash6(ns, bsl string) string {
	sum := sha256.Sum256([]byte(ns + "/" + bsl))

	return hex.EncodeToString(sum[:])[:6]
}

func TestBaseName(t *testing.T) {
	long := strings.Repeat("a", 40)

	tests := []struct {
		name, ns, bsl, want string
	}{
		{"plain", "app", "default", "app-default"},
		{"dots of a DNS subdomain", "app", "s3.eu-west-1.backups", "app-s3-eu-west-1-backups"},
		{"upper case and other characters", "App", "My_Location!x", "app-my-location-x"},
		{"runs collapsed", "app--x", "a..b", "app-x-a-b"},
		{"leading and trailing dashes trimmed", "-app", "bsl.", "app-bsl"},
		{"exactly 63", strings.Repeat("n", 31), strings.Repeat("b", 31), strings.Repeat("n", 31) + "-" + strings.Repeat("b", 31)},
		{"longer than 63", long, long, (long + "-" + long)[:56] + "-" + hash6(long, long)},
		{"cut ending in a dash drops it", strings.Repeat("n", 55), "bslname-that-is-long", strings.Repeat("n", 55) + "-" + hash6(strings.Repeat("n", 55), "bslname-that-is-long")},
		{"nothing left", "", "...", hash6("", "...")},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := BaseName(tt.ns, tt.bsl)
			if got != tt.want {
				t.Errorf("BaseName(%q, %q) = %q, want %q", tt.ns, tt.bsl, got, tt.want)
			}

			if !nameRule.MatchString(got) || strings.Contains(got, "--") {
				t.Errorf("BaseName(%q, %q) = %q breaks the name rule", tt.ns, tt.bsl, got)
			}
		})
	}
}

func TestAssignNames(t *testing.T) {
	long := strings.Repeat("x", 60)

	tests := []struct {
		name  string
		pairs []namedPair // oldest first
		want  []string
	}{
		{
			name:  "distinct",
			pairs: []namedPair{{"a", "default"}, {"b", "default"}},
			want:  []string{"a-default", "b-default"},
		},
		{
			name:  "collision: the oldest keeps the name",
			pairs: []namedPair{{"app", "s3.backup"}, {"app.s3", "backup"}, {"app", "s3-backup"}},
			want: []string{"app-s3-backup",
				"app-s3-backup-" + hash6("app.s3", "backup"),
				"app-s3-backup-" + hash6("app", "s3-backup")},
		},
		{
			name:  "the suffix is cut to fit",
			pairs: []namedPair{{long, "b.c"}, {long, "b-c"}},
			want: []string{
				(long + "-b-c")[:56] + "-" + hash6(long, "b.c"),
				(long + "-b-c")[:56] + "-" + hash6(long, "b-c"),
			},
		},
		{
			name: "a suffixed name taken by an older pair's base name",
			pairs: []namedPair{
				{"a", "b-" + hash6("a.b", "")},
				{"a", "b"},
				{"a.b", ""},
			},
			want: []string{
				"a-b-" + hash6("a.b", ""),
				"a-b",
				// a-b is taken, and so is a-b-<hash6>: a longer hash.
				"a-b-" + hash8("a.b", ""),
			},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := assignNames(tt.pairs)

			seen := map[string]bool{}

			for i, n := range got {
				if n != tt.want[i] {
					t.Errorf("name %d (%v) = %q, want %q", i, tt.pairs[i], n, tt.want[i])
				}

				if !nameRule.MatchString(n) {
					t.Errorf("name %q breaks the name rule", n)
				}

				if seen[n] {
					t.Errorf("name %q given twice", n)
				}

				seen[n] = true
			}
		})
	}
}

func hash8(ns, bsl string) string {
	sum := sha256.Sum256([]byte(ns + "/" + bsl))

	return hex.EncodeToString(sum[:])[:8]
}

// TestAssignNamesStable checks that adding a newer pair renames nothing.
func TestAssignNamesStable(t *testing.T) {
	pairs := []namedPair{{"app", "s3.backup"}, {"app.s3", "backup"}, {"x", "y"}}
	before := assignNames(pairs)
	after := assignNames(append(pairs, namedPair{"app", "s3-backup"}, namedPair{"app-s3", "backup"}))

	for i := range before {
		if before[i] != after[i] {
			t.Errorf("pair %v renamed from %q to %q by newer pairs", pairs[i], before[i], after[i])
		}
	}
}
