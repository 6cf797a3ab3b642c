package velero

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestParseAWSCredentials(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		profile string
		want    Credentials
		wantErr string
	}{
		{
			name:    "default profile",
			data:    "[default]\naws_access_key_id = AKID\naws_secret_access_key = SECRET\n",
			profile: "default",
			want:    Credentials{AccessKeyID: "AKID", SecretAccessKey: "SECRET"},
		},
		{
			name:    "session token and other keys",
			data:    "[default]\naws_access_key_id=AKID\naws_secret_access_key=SECRET\naws_session_token=TOKEN\nregion=us-east-1\n",
			profile: "default",
			want:    Credentials{AccessKeyID: "AKID", SecretAccessKey: "SECRET", SessionToken: "TOKEN"},
		},
		{
			name:    "named profile among others",
			data:    "[default]\naws_access_key_id = A1\naws_secret_access_key = S1\n\n[backup]\naws_access_key_id = A2\naws_secret_access_key = S2\n",
			profile: "backup",
			want:    Credentials{AccessKeyID: "A2", SecretAccessKey: "S2"},
		},
		{
			name:    "config-file form [profile name]",
			data:    "[profile backup]\naws_access_key_id = A2\naws_secret_access_key = S2\n",
			profile: "backup",
			want:    Credentials{AccessKeyID: "A2", SecretAccessKey: "S2"},
		},
		{
			name:    "[profile default] is default",
			data:    "[profile default]\naws_access_key_id = A\naws_secret_access_key = S\n",
			profile: "default",
			want:    Credentials{AccessKeyID: "A", SecretAccessKey: "S"},
		},
		{
			name:    "credentials-file form wins over config-file form, which fills in",
			data:    "[backup]\naws_access_key_id = FROMCRED\n[profile backup]\naws_access_key_id = FROMCONF\naws_secret_access_key = S\n",
			profile: "backup",
			want:    Credentials{AccessKeyID: "FROMCRED", SecretAccessKey: "S"},
		},
		{
			name:    "whitespace in the section header",
			data:    "[  profile \t backup  ]\naws_access_key_id = A\naws_secret_access_key = S\n",
			profile: "backup",
			want:    Credentials{AccessKeyID: "A", SecretAccessKey: "S"},
		},
		{
			name:    "comments, blank lines and surrounding whitespace",
			data:    "# a comment\n; another\n\n  # indented comment\n[default]   ; section comment\n   \naws_access_key_id   =   AKID   # trailing comment\naws_secret_access_key\t=\tSECRET\t\n",
			profile: "default",
			want:    Credentials{AccessKeyID: "AKID", SecretAccessKey: "SECRET"},
		},
		{
			name:    "CRLF",
			data:    "[default]\r\naws_access_key_id = AKID\r\naws_secret_access_key = SECRET\r\n",
			profile: "default",
			want:    Credentials{AccessKeyID: "AKID", SecretAccessKey: "SECRET"},
		},
		{
			name:    "keys are case-insensitive, profile names are not",
			data:    "[Backup]\nAWS_ACCESS_KEY_ID = A\nAws_Secret_Access_Key = S\n",
			profile: "Backup",
			want:    Credentials{AccessKeyID: "A", SecretAccessKey: "S"},
		},
		{
			name:    "legacy colon separator",
			data:    "[default]\naws_access_key_id: A\naws_secret_access_key : S\n",
			profile: "default",
			want:    Credentials{AccessKeyID: "A", SecretAccessKey: "S"},
		},
		{
			name:    "quoted values",
			data:    "[default]\naws_access_key_id = \"A1\"\naws_secret_access_key = 'S1'\n",
			profile: "default",
			want:    Credentials{AccessKeyID: "A1", SecretAccessKey: "S1"},
		},
		{
			name:    "a value with = keeps it",
			data:    "[default]\naws_access_key_id = A\naws_secret_access_key = abc/def+ghi==\n",
			profile: "default",
			want:    Credentials{AccessKeyID: "A", SecretAccessKey: "abc/def+ghi=="},
		},
		{
			name:    "indented lines are sub-properties, not keys",
			data:    "[default]\naws_access_key_id = A\naws_secret_access_key = S\ns3 =\n  aws_access_key_id = NESTED\n  max_concurrent_requests = 10\n",
			profile: "default",
			want:    Credentials{AccessKeyID: "A", SecretAccessKey: "S"},
		},
		{
			name:    "keys before the first section are ignored",
			data:    "aws_access_key_id = GLOBAL\n[default]\naws_access_key_id = A\naws_secret_access_key = S\n",
			profile: "default",
			want:    Credentials{AccessKeyID: "A", SecretAccessKey: "S"},
		},
		{
			name:    "a section given twice is merged, later wins",
			data:    "[default]\naws_access_key_id = OLD\n[other]\nx = y\n[default]\naws_access_key_id = NEW\naws_secret_access_key = S\n",
			profile: "default",
			want:    Credentials{AccessKeyID: "NEW", SecretAccessKey: "S"},
		},
		{
			name:    "other typed sections are not profiles",
			data:    "[sso-session backup]\naws_access_key_id = A\naws_secret_access_key = S\n[default]\naws_access_key_id = A\naws_secret_access_key = S\n",
			profile: "backup",
			wantErr: `profile "backup" not found (profiles found: "default")`,
		},
		{
			name:    "UTF-8 byte order mark",
			data:    "\xef\xbb\xbf[default]\naws_access_key_id = A\naws_secret_access_key = S\n",
			profile: "default",
			want:    Credentials{AccessKeyID: "A", SecretAccessKey: "S"},
		},
		{
			name:    "no newline at the end",
			data:    "[default]\naws_access_key_id = A\naws_secret_access_key = S",
			profile: "default",
			want:    Credentials{AccessKeyID: "A", SecretAccessKey: "S"},
		},
		{
			name:    "profile not found names the profiles",
			data:    "[default]\naws_access_key_id = A\naws_secret_access_key = S\n[profile b]\n[a]\n",
			profile: "prod",
			wantErr: `profile "prod" not found (profiles found: "a", "b", "default")`,
		},
		{
			name:    "empty file",
			data:    "",
			profile: "default",
			wantErr: `profile "default" not found (the file has no profiles)`,
		},
		{
			name:    "missing secret key",
			data:    "[default]\naws_access_key_id = AKIDSECRETISH\n",
			profile: "default",
			wantErr: `profile "default" has no aws_secret_access_key`,
		},
		{
			name:    "missing both keys",
			data:    "[default]\nregion = eu-west-1\n",
			profile: "default",
			wantErr: `profile "default" has no aws_access_key_id and no aws_secret_access_key`,
		},
		{
			name:    "empty key value counts as missing",
			data:    "[default]\naws_access_key_id =\naws_secret_access_key = S\n",
			profile: "default",
			wantErr: `profile "default" has no aws_access_key_id`,
		},
		{
			name:    "malformed line gives its number, not its content",
			data:    "[default]\naws_access_key_id = A\nTOPSECRETVALUE\n",
			profile: "default",
			wantErr: "line 3: not a [section], a key = value line or a comment",
		},
		{
			name:    "unclosed section is malformed",
			data:    "\n[default\n",
			profile: "default",
			wantErr: "line 2: not a [section], a key = value line or a comment",
		},
		{
			name:    "a JSON key file is malformed",
			data:    "{\n  \"type\": \"service_account\"\n}\n",
			profile: "default",
			wantErr: "line 1: not a [section], a key = value line or a comment",
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAWSCredentials([]byte(tt.data), tt.profile)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}

				for _, secret := range []string{"AKIDSECRETISH", "TOPSECRETVALUE", "service_account"} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error %q contains file content %q", err, secret)
					}
				}

				return
			}

			if err != nil {
				t.Fatalf("err = %v", err)
			}

			// Compare field by field: Credentials prints redacted.
			if got.AccessKeyID != tt.want.AccessKeyID || got.SecretAccessKey != tt.want.SecretAccessKey || got.SessionToken != tt.want.SessionToken {
				t.Errorf("got %q/%q/%q, want %q/%q/%q", got.AccessKeyID, got.SecretAccessKey, got.SessionToken,
					tt.want.AccessKeyID, tt.want.SecretAccessKey, tt.want.SessionToken)
			}
		})
	}
}

func TestParseAWSCredentialsProfileNotFoundIs(t *testing.T) {
	_, err := ParseAWSCredentials([]byte("[a]\n"), "b")
	if !errors.Is(err, ErrProfileNotFound) {
		t.Errorf("err = %v, want ErrProfileNotFound", err)
	}
}

func TestCredentialsRedacted(t *testing.T) {
	c := Credentials{AccessKeyID: "AKIAEXAMPLE", SecretAccessKey: "wJalrXUtnFEMI", SessionToken: ""}
	want := "Credentials{AccessKeyID:<redacted> SecretAccessKey:<redacted> SessionToken:<unset>}"

	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%d", "%x", "%X", "%T %v"} {
		got := fmt.Sprintf(verb, c)
		if strings.Contains(got, "AKIAEXAMPLE") || strings.Contains(got, "wJalrXUtnFEMI") ||
			strings.Contains(got, fmt.Sprintf("%x", "wJalrXUtnFEMI")) || strings.Contains(got, fmt.Sprintf("%X", "wJalrXUtnFEMI")) {
			t.Errorf("Sprintf(%q) = %q shows a key", verb, got)
		}
	}

	if got := fmt.Sprint(c); got != want {
		t.Errorf("Sprint = %q, want %q", got, want)
	}

	if got := fmt.Sprintf("%v", &c); strings.Contains(got, "wJalrXUtnFEMI") {
		t.Errorf("Sprintf(%%v, &c) = %q shows a key", got)
	}

	if got := fmt.Sprintf("%v", []Credentials{c}); strings.Contains(got, "wJalrXUtnFEMI") {
		t.Errorf("Sprintf(%%v, []Credentials) = %q shows a key", got)
	}

	var buf bytes.Buffer

	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&buf), zap.DebugLevel))
	log.Info("creds", zap.Object("credentials", c), zap.Any("any", c), zap.Stringer("stringer", c))

	if s := buf.String(); strings.Contains(s, "AKIAEXAMPLE") || strings.Contains(s, "wJalrXUtnFEMI") || !strings.Contains(s, `"secret_access_key":"<redacted>"`) {
		t.Errorf("zap output %s shows a key or lacks the redacted field", s)
	}
}

// FuzzParseAWSCredentials checks that the parser never panics and that a
// parse that succeeds returns keys found in the input, each from one line.
func FuzzParseAWSCredentials(f *testing.F) {
	f.Add([]byte("[default]\naws_access_key_id = A\naws_secret_access_key = S\n"), "default")
	f.Add([]byte("[profile p]\r\nAWS_ACCESS_KEY_ID: \"A\"\r\naws_secret_access_key=S;c\r\n"), "p")
	f.Add([]byte("\xef\xbb\xbf[p]\n  x = y\n[p]\naws_access_key_id='A'\n"), "p")

	f.Fuzz(func(t *testing.T, data []byte, profile string) {
		c, err := ParseAWSCredentials(data, profile)
		if err != nil {
			if c != (Credentials{}) {
				t.Errorf("error %v with non-zero credentials", err)
			}

			return
		}

		if c.AccessKeyID == "" || c.SecretAccessKey == "" {
			t.Errorf("success with an empty key: %q %q", c.AccessKeyID, c.SecretAccessKey)
		}

		for _, v := range []string{c.AccessKeyID, c.SecretAccessKey, c.SessionToken} {
			if !bytes.Contains(data, []byte(v)) {
				t.Errorf("key %q not in the input", v)
			}

			if strings.ContainsAny(v, "\n#;") {
				t.Errorf("key %q holds a line break or a comment", v)
			}
		}
	})
}
