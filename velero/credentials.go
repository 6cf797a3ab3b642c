package velero

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"go.uber.org/zap/zapcore"
)

// DefaultProfile is the AWS profile read when a location's config has no
// profile.
const DefaultProfile = "default"

// Credentials are S3 keys read from an AWS shared-credentials file.
//
// Every way of printing a Credentials (fmt with any verb, String, GoString,
// zap) shows only which keys are set, never their values.
type Credentials struct{ AccessKeyID, SecretAccessKey, SessionToken string }

var (
	_ fmt.Formatter           = Credentials{}
	_ fmt.Stringer            = Credentials{}
	_ fmt.GoStringer          = Credentials{}
	_ zapcore.ObjectMarshaler = Credentials{}
)

// String describes the credentials without their values.
func (c Credentials) String() string {
	return fmt.Sprintf("Credentials{AccessKeyID:%s SecretAccessKey:%s SessionToken:%s}",
		redacted(c.AccessKeyID), redacted(c.SecretAccessKey), redacted(c.SessionToken))
}

// GoString is String, for %#v.
func (c Credentials) GoString() string { return c.String() }

// Format prints String for every verb, so that no verb (%d, %x, %+v ...)
// reaches the fields.
func (c Credentials) Format(f fmt.State, _ rune) {
	_, _ = io.WriteString(f, c.String())
}

// MarshalLogObject logs which keys are set.
func (c Credentials) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("access_key_id", redacted(c.AccessKeyID))
	enc.AddString("secret_access_key", redacted(c.SecretAccessKey))
	enc.AddString("session_token", redacted(c.SessionToken))

	return nil
}

func redacted(s string) string {
	if s == "" {
		return "<unset>"
	}

	return "<redacted>"
}

// The keys read from a profile (lower case: the SDK folds key case).
const (
	keyAccessKeyID     = "aws_access_key_id"
	keySecretAccessKey = "aws_secret_access_key"
	keySessionToken    = "aws_session_token"
)

// ErrProfileNotFound is wrapped by ParseAWSCredentials when the file has
// no section for the profile.
var ErrProfileNotFound = errors.New("not found")

// ParseAWSCredentials reads the static keys of profile from an AWS shared
// credentials file, as the AWS SDK for Go v2 reads one (its internal/ini
// package) when Velero passes the file both as the shared credentials and
// as the shared config file (pkg/repository/config/aws.go,
// GetS3Credentials):
//
//   - "[name]" sections are the credentials-file form of profile name and
//     "[profile name]" the config-file form; both count. A key given in both
//     forms is taken from "[name]", as credentials-file values override
//     config-file ones. Other typed sections ("[sso-session x]",
//     "[services x]") are not profiles. A section given twice is merged,
//     the later value of a key winning. Profile names are case-sensitive.
//   - "key = value" (or the SDK's legacy "key: value"); keys are
//     case-insensitive; whitespace around keys and values is dropped, and
//     so is one pair of quotes around a value. As in the SDK, a "#" or ";"
//     anywhere in a line starts a comment.
//   - Lines whose first non-blank character is "#" or ";" are comments;
//     blank lines are skipped; CRLF line ends are accepted.
//   - An indented line is a sub-property or a continuation of the previous
//     key in the SDK; it never sets a key and is ignored here. (The SDK
//     would append a continuation to the previous value; AWS keys never
//     span lines.) Keys before the first section are ignored, as the SDK
//     ignores them.
//
// It returns an error when the profile is missing (naming the profiles
// found), when aws_access_key_id or aws_secret_access_key is missing or
// empty in it, or when a line is malformed (giving its number only). No
// error contains any part of the file but profile names.
func ParseAWSCredentials(data []byte, profile string) (Credentials, error) {
	profiles, err := parseINI(data)
	if err != nil {
		return Credentials{}, err
	}

	p, ok := profiles[profile]
	if !ok {
		return Credentials{}, fmt.Errorf("profile %q %w (%s)", profile, ErrProfileNotFound, profileList(profiles))
	}

	c := Credentials{
		AccessKeyID:     p.get(keyAccessKeyID),
		SecretAccessKey: p.get(keySecretAccessKey),
		SessionToken:    p.get(keySessionToken),
	}

	var missing []string

	if c.AccessKeyID == "" {
		missing = append(missing, keyAccessKeyID)
	}

	if c.SecretAccessKey == "" {
		missing = append(missing, keySecretAccessKey)
	}

	if len(missing) > 0 {
		return Credentials{}, fmt.Errorf("profile %q has no %s", profile, strings.Join(missing, " and no "))
	}

	return c, nil
}

// iniProfile holds one profile's keys from both section forms.
type iniProfile struct {
	cred map[string]string // from "[name]"
	conf map[string]string // from "[profile name]"
}

// get prefers the credentials-file form.
func (p *iniProfile) get(key string) string {
	if v, ok := p.cred[key]; ok {
		return v
	}

	return p.conf[key]
}

func profileList(profiles map[string]*iniProfile) string {
	if len(profiles) == 0 {
		return "the file has no profiles"
	}

	names := make([]string, 0, len(profiles))
	for n := range profiles {
		names = append(names, fmt.Sprintf("%q", n))
	}

	slices.Sort(names)

	return "profiles found: " + strings.Join(names, ", ")
}

// parseINI splits data into profiles. It is total: any input gives profiles
// or an error naming a line number.
func parseINI(data []byte) (map[string]*iniProfile, error) {
	profiles := map[string]*iniProfile{}
	// cur is the map keys of the current section go to; nil before the
	// first section and inside sections that are not profiles.
	var cur map[string]string

	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))

	for i, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSuffix(raw, "\r")
		trimmed := strings.TrimSpace(line)

		if trimmed == "" || trimmed[0] == '#' || trimmed[0] == ';' {
			continue
		}

		if line[0] == ' ' || line[0] == '\t' {
			// A sub-property or a continuation of the previous key.
			continue
		}

		content := strings.TrimSpace(cutComment(line))

		if strings.HasPrefix(content, "[") && strings.HasSuffix(content, "]") {
			cur = sectionKeys(profiles, strings.TrimSpace(content[1:len(content)-1]))

			continue
		}

		key, value, ok := splitKeyValue(content)
		if !ok {
			return nil, fmt.Errorf("line %d: not a [section], a key = value line or a comment", i+1)
		}

		if cur != nil {
			cur[strings.ToLower(key)] = unquote(value)
		}
	}

	return profiles, nil
}

// sectionKeys returns the key map of the section named by the inside of
// its brackets, creating it, or nil when the section is not a profile.
func sectionKeys(profiles map[string]*iniProfile, header string) map[string]string {
	typ, name := "", header

	if j := strings.IndexAny(header, " \t"); j >= 0 {
		typ, name = header[:j], strings.TrimLeft(header[j:], " \t")
	}

	if name == "" || (typ != "" && typ != "profile") {
		return nil
	}

	p := profiles[name]
	if p == nil {
		p = &iniProfile{cred: map[string]string{}, conf: map[string]string{}}
		profiles[name] = p
	}

	if typ == "profile" {
		return p.conf
	}

	return p.cred
}

// cutComment drops everything from the first "#" or ";", as the SDK does.
func cutComment(s string) string {
	if j := strings.IndexAny(s, "#;"); j >= 0 {
		return s[:j]
	}

	return s
}

// splitKeyValue splits at the first "=", or at a ":" before it (the SDK's
// legacy separator).
func splitKeyValue(s string) (key, value string, ok bool) {
	j := strings.IndexAny(s, "=:")
	if j < 0 {
		return "", "", false
	}

	// An empty key is accepted, as by the SDK; no key read here is empty.
	return strings.TrimSpace(s[:j]), strings.TrimSpace(s[j+1:]), true
}

// unquote drops one pair of matching quotes around a value longer than two.
func unquote(s string) string {
	if len(s) > 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}

	return s
}
