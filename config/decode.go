package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// The raw* types mirror the YAML file. Scalars are pointers so that "unset"
// (inherit a default) differs from an explicit zero, and durations stay
// strings until validation so that a bad one is reported with its path.

type rawConfig struct {
	Identity       rawIdentity     `yaml:"identity"`
	StateDirectory *string         `yaml:"stateDirectory"`
	Concurrency    *int            `yaml:"concurrency"`
	Server         rawServer       `yaml:"server"`
	Log            rawLog          `yaml:"log"`
	Kubernetes     rawKubernetes   `yaml:"kubernetes"`
	SafetyNone     rawSafetyNone   `yaml:"safetyNone"`
	Lease          rawLease        `yaml:"lease"`
	Maintenance    rawMaintenance  `yaml:"maintenance"`
	Defaults       rawDefaults     `yaml:"defaults"`
	Velero         rawVelero       `yaml:"velero"`
	Repositories   []rawRepository `yaml:"repositories"`
}

type rawMaintenance struct {
	ListParallelism *int `yaml:"listParallelism"`
}

type rawIdentity struct {
	Username *string `yaml:"username"`
	Hostname *string `yaml:"hostname"`
}

type rawServer struct {
	ListenAddress *string `yaml:"listenAddress"`
	ProbeAddress  *string `yaml:"probeAddress"`
	WebConfigFile *string `yaml:"webConfigFile"`
}

type rawLog struct {
	Level  *string `yaml:"level"`
	Format *string `yaml:"format"`
}

type rawLease struct {
	Kind           *string            `yaml:"kind"`
	Duration       *string            `yaml:"duration"`
	RenewInterval  *string            `yaml:"renewInterval"`
	HolderIdentity *string            `yaml:"holderIdentity"`
	SpreadStep     *string            `yaml:"spreadStep"`
	Kubernetes     rawLeaseKubernetes `yaml:"kubernetes"`
	Repository     rawLeaseRepository `yaml:"repository"`
}

type rawLeaseRepository struct {
	Settle *string `yaml:"settle"`
}

type rawLeaseKubernetes struct {
	Namespace  *string `yaml:"namespace"`
	NamePrefix *string `yaml:"namePrefix"`
}

type rawKubernetes struct {
	Kubeconfig *string `yaml:"kubeconfig"`
}

// rawSafetyNone leaves its lists as plain slices: nil when the key is absent
// or null (take the default), non-nil when a sequence was given, even [].
type rawSafetyNone struct {
	Allow            *bool       `yaml:"allow"`
	VeleroNamespaces []string    `yaml:"veleroNamespaces"`
	IgnorePods       []string    `yaml:"ignorePods"`
	QuietPeriod      *string     `yaml:"quietPeriod"`
	ScheduleMargin   *string     `yaml:"scheduleMargin"`
	WatchInterval    *string     `yaml:"watchInterval"`
	Windows          []rawWindow `yaml:"windows"`
}

type rawWindow struct {
	Schedule     *string  `yaml:"schedule"`
	Repositories []string `yaml:"repositories"`
}

// rawRepositorySafetyNone is the per-repository opt-out: only allow.
type rawRepositorySafetyNone struct {
	Allow *bool `yaml:"allow"`
}

func (*rawRepositorySafetyNone) unknownKeyHint() string {
	return "only allow may be set per repository; the other safetyNone keys are global"
}

// unknownKeyHinter is implemented by raw types whose unknown keys deserve
// more than "unknown key", e.g. a key that belongs elsewhere.
type unknownKeyHinter interface {
	unknownKeyHint() string
}

type rawDefaults struct {
	Schedule   rawSchedule   `yaml:"schedule"`
	Ownership  rawOwnership  `yaml:"ownership"`
	Compaction rawCompaction `yaml:"compaction"`
}

type rawSchedule struct {
	Quick  *string `yaml:"quick"`
	Full   *string `yaml:"full"`
	Jitter *string `yaml:"jitter"`
}

type rawOwnership struct {
	Takeover       *string `yaml:"takeover"`
	StaleAfter     *string `yaml:"staleAfter"`
	HandBackOnExit *bool   `yaml:"handBackOnExit"`
}

type rawRepository struct {
	Name         *string                 `yaml:"name"`
	Create       *bool                   `yaml:"create"`
	Storage      rawStorage              `yaml:"storage"`
	PasswordFile *string                 `yaml:"passwordFile"`
	PasswordEnv  *string                 `yaml:"passwordEnv"`
	Schedule     rawSchedule             `yaml:"schedule"`
	Ownership    rawOwnership            `yaml:"ownership"`
	SafetyNone   rawRepositorySafetyNone `yaml:"safetyNone"`
	Compaction   rawCompaction           `yaml:"compaction"`
}

type rawStorage struct {
	// Pointers to structs are allocated as soon as the key is present, even
	// with a null value, so "filesystem:" counts as a chosen backend.
	Filesystem *rawFilesystem `yaml:"filesystem"`
	S3         *rawS3         `yaml:"s3"`
}

type rawFilesystem struct {
	Path *string `yaml:"path"`
}

type rawS3 struct {
	Bucket              *string `yaml:"bucket"`
	Prefix              *string `yaml:"prefix"`
	Endpoint            *string `yaml:"endpoint"`
	Region              *string `yaml:"region"`
	Insecure            *bool   `yaml:"insecure"`
	SkipTLSVerify       *bool   `yaml:"skipTLSVerify"`
	AccessKeyIDFile     *string `yaml:"accessKeyIDFile"`
	SecretAccessKeyFile *string `yaml:"secretAccessKeyFile"`
}

// problems collects problems and remembers which paths failed to decode, so
// that validation does not pile a second, misleading problem on top (e.g.
// "required" for a field whose value had the wrong type).
type problems struct {
	list   []Problem
	failed []string
	// lines maps the path of every key and sequence item in the file to its
	// line, so that problems can be listed in file order.
	lines map[string]int
}

// sorted returns the problems in file order, section by section: a section
// is a top-level key, or one item of repositories. Sections absent from the
// file (a missing identity, say) come first. Within a section, problems keep
// the order in which they were found: decoding problems (unknown keys, type
// mismatches) in file order, then validation problems in schema order.
func (p *problems) sorted() []Problem {
	lineOf := func(path string) int {
		section, _, _ := strings.Cut(path, ".")
		return p.lines[section]
	}
	out := slices.Clone(p.list)
	slices.SortStableFunc(out, func(a, b Problem) int { return cmp.Compare(lineOf(a.Path), lineOf(b.Path)) })
	return out
}

func (p *problems) setLine(path string, line int) {
	if p.lines == nil {
		p.lines = map[string]int{}
	}
	p.lines[path] = line
}

func (p *problems) add(path, format string, args ...any) {
	for _, f := range p.failed {
		if path == f || strings.HasPrefix(path, f+".") || strings.HasPrefix(path, f+"[") || f == "" {
			return
		}
	}
	p.list = append(p.list, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

// fail records a decoding problem and suppresses later problems at or below path.
func (p *problems) fail(path, format string, args ...any) {
	p.add(path, format, args...)
	p.failed = append(p.failed, path)
}

// decodeDocument parses data into raw. It reports syntax errors, an empty
// file, unknown keys, duplicate keys and type mismatches. It returns false
// when nothing could be decoded at all (so validation would only add noise).
func decodeDocument(data []byte, raw *rawConfig, p *problems) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.add("", "config file is empty")
		} else {
			p.add("", "%s", err.Error())
		}
		return false
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		p.add("", "%s", err.Error())
		return false
	case !isEmptyDocument(&next):
		p.add("", "config file must hold exactly one YAML document, found more")
		return false
	}
	if isEmptyDocument(&doc) {
		p.add("", "config file is empty")
		return false
	}
	decodeNode(doc.Content[0], reflect.ValueOf(raw).Elem(), "", p)
	return true
}

func isEmptyDocument(doc *yaml.Node) bool {
	return len(doc.Content) == 0 || isNull(doc.Content[0])
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// decodeNode decodes n into v, walking the node tree against v's type and its
// yaml tags by reflection so that every unknown key and every type mismatch
// is reported with its path, not only the first one as yaml.v3 would.
func decodeNode(n *yaml.Node, v reflect.Value, path string, p *problems) {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if isNull(n) {
		// null means "unset", except that a struct pointer records presence.
		if v.Kind() == reflect.Pointer && v.Type().Elem().Kind() == reflect.Struct && v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		decodeNode(n, v.Elem(), path, p)
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			p.fail(path, "expected a mapping, got %s", describeKind(n))
			return
		}
		decodeMapping(n, v, path, p)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			p.fail(path, "expected a sequence, got %s", describeKind(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			itemPath := fmt.Sprintf("%s[%d]", path, i)
			p.setLine(itemPath, item.Line)
			decodeNode(item, s.Index(i), itemPath, p)
		}
		v.Set(s)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			p.fail(path, "expected a string, got %s", describeKind(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Int:
		var i int
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&i) != nil {
			p.fail(path, "expected an integer, got %s", describe(n))
			return
		}
		v.SetInt(int64(i))
	case reflect.Float64:
		var f float64
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!float" && n.Tag != "!!int") || n.Decode(&f) != nil {
			p.fail(path, "expected a number, got %s", describe(n))
			return
		}
		v.SetFloat(f)
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&b) != nil {
			p.fail(path, "expected a boolean (true or false), got %s", describe(n))
			return
		}
		v.SetBool(b)
	default:
		// Unreachable: the raw types only use the kinds above.
		panic(fmt.Sprintf("config: unsupported field kind %s at %q", v.Kind(), path))
	}
}

func decodeMapping(n *yaml.Node, v reflect.Value, path string, p *problems) {
	fields := map[string]int{}
	t := v.Type()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		fields[name] = i
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, value := n.Content[i], n.Content[i+1]
		for key.Kind == yaml.AliasNode {
			key = key.Alias
		}
		if key.Kind != yaml.ScalarNode {
			p.add(path, "mapping key must be a string, got %s", describeKind(key))
			continue
		}
		keyPath := key.Value
		if path != "" {
			keyPath = path + "." + key.Value
		}
		p.setLine(keyPath, key.Line)
		if key.Tag == "!!merge" {
			p.add(keyPath, "merge keys are not supported")
			continue
		}
		idx, ok := fields[key.Value]
		if !ok {
			if h, ok := v.Addr().Interface().(unknownKeyHinter); ok {
				p.add(keyPath, "unknown key (%s)", h.unknownKeyHint())
			} else {
				p.add(keyPath, "unknown key")
			}
			continue
		}
		if seen[key.Value] {
			p.add(keyPath, "duplicate key")
			continue
		}
		seen[key.Value] = true
		decodeNode(value, v.Field(idx), keyPath, p)
	}
}

// describe names a node for a mismatch in an integer or boolean field,
// quoting a scalar's value: such fields never hold secrets, and the value
// helps the reader find the mistake.
func describe(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode {
		return strconv.Quote(n.Value)
	}
	return describeKind(n)
}

// describeKind names a node by its kind only. It is used where the value
// could be anything, since a misplaced scalar might be a secret.
func describeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a sequence"
	case yaml.AliasNode:
		return "an alias"
	}
	switch n.Tag {
	case "!!int", "!!float":
		return "a number"
	case "!!bool":
		return "a boolean"
	default:
		return "a string"
	}
}
