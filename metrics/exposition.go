package metrics

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// family is one exported metric: its descriptor for the registry, and what
// the text exposition writes for it.
type family struct {
	desc *prometheus.Desc
	name string
	// header is the family's "# HELP" line.
	header string
	labels []string
	// order lists the indexes of labels sorted by name: the series are
	// written with their labels in that order, as client_golang does.
	order []int
	// constLabels is the pre-rendered constant label pairs ("" for none),
	// sorted by name. A family has constant or variable labels, not both.
	constLabels string
}

func newFamily(name, help string, labels []string, constLabels prometheus.Labels) *family {
	f := &family{
		desc:   prometheus.NewDesc(name, help, labels, constLabels),
		name:   name,
		header: "# HELP " + name + " " + escapeHelp(help) + "\n",
		labels: labels,
	}

	if len(labels) > 0 && len(constLabels) > 0 {
		panic("metrics: family " + name + " has both constant and variable labels")
	}

	for i := range labels {
		f.order = append(f.order, i)
	}

	slices.SortFunc(f.order, func(a, b int) int { return strings.Compare(labels[a], labels[b]) })

	var pairs []string

	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range constLabels {
			if !yield(k) {
				return
			}
		}
	}) {
		pairs = append(pairs, k+`="`+escapeLabel(constLabels[k])+`"`)
	}

	f.constLabels = strings.Join(pairs, ",")

	return f
}

// emitter receives the collector's samples. durationBuckets are the
// histogram's bounds; buckets are the counts per bucket (not cumulative).
type emitter interface {
	sample(f *family, t prometheus.ValueType, v float64, labels ...string)
	histogram(f *family, count uint64, sum float64, buckets []uint64, labels ...string)
}

// constEmitter builds client_golang's const metrics (the registry's path).
type constEmitter struct {
	out []prometheus.Metric
}

func (e *constEmitter) sample(f *family, t prometheus.ValueType, v float64, labels ...string) {
	e.out = append(e.out, prometheus.MustNewConstMetric(f.desc, t, v, labels...))
}

func (e *constEmitter) histogram(f *family, count uint64, sum float64, buckets []uint64, labels ...string) {
	cum := make(map[float64]uint64, len(durationBuckets))

	var n uint64

	for i, b := range durationBuckets {
		n += buckets[i]
		cum[b] = n
	}

	e.out = append(e.out, prometheus.MustNewConstHistogram(f.desc, count, sum, cum, labels...))
}

// textEmitter writes the samples in Prometheus' text format (0.0.4)
// directly, one buffer per family: at 1,000 repositories (60,000 series)
// building, checking and sorting const metrics and then encoding them took
// most of a scrape's time, and the collector's samples are already grouped
// and ordered.
type textEmitter struct {
	bufs  map[*family]*bytes.Buffer
	types map[*family]string
}

func newTextEmitter() *textEmitter {
	return &textEmitter{bufs: map[*family]*bytes.Buffer{}, types: map[*family]string{}}
}

// emitters keeps text emitters between scrapes, so that their buffers keep
// the size the last scrape needed instead of growing again.
var emitters = sync.Pool{New: func() any { return newTextEmitter() }}

// reset empties the buffers and keeps their capacity.
func (e *textEmitter) reset() {
	for _, b := range e.bufs {
		b.Reset()
	}
}

func (e *textEmitter) buf(f *family, typ string) *bytes.Buffer {
	b := e.bufs[f]
	if b == nil {
		b = &bytes.Buffer{}
		e.bufs[f] = b
		e.types[f] = typ
	}

	return b
}

// series writes name{labels[,extra]} value.
func writeSeries(b *bytes.Buffer, name string, f *family, labels []string, extra string, v float64) {
	b.WriteString(name)

	if len(labels) > 0 || f.constLabels != "" || extra != "" {
		b.WriteByte('{')

		sep := false

		if f.constLabels != "" {
			b.WriteString(f.constLabels)

			sep = true
		}

		for _, i := range f.order {
			if sep {
				b.WriteByte(',')
			}

			b.WriteString(f.labels[i])
			b.WriteString(`="`)
			b.WriteString(escapeLabel(labels[i]))
			b.WriteByte('"')

			sep = true
		}

		if extra != "" {
			if sep {
				b.WriteByte(',')
			}

			b.WriteString(extra)
		}

		b.WriteByte('}')
	}

	b.WriteByte(' ')
	b.Write(appendValue(b.AvailableBuffer(), v))
	b.WriteByte('\n')
}

func (e *textEmitter) sample(f *family, t prometheus.ValueType, v float64, labels ...string) {
	typ := "gauge"
	if t == prometheus.CounterValue {
		typ = "counter"
	}

	writeSeries(e.buf(f, typ), f.name, f, labels, "", v)
}

func (e *textEmitter) histogram(f *family, count uint64, sum float64, buckets []uint64, labels ...string) {
	b := e.buf(f, "histogram")

	var n uint64

	for i, bound := range durationBuckets {
		n += buckets[i]
		writeSeries(b, f.name+"_bucket", f, labels, `le="`+string(appendValue(nil, bound))+`"`, float64(n))
	}

	writeSeries(b, f.name+"_bucket", f, labels, `le="+Inf"`, float64(count))
	writeSeries(b, f.name+"_sum", f, labels, "", sum)
	writeSeries(b, f.name+"_count", f, labels, "", float64(count))
}

// writeTo writes every family that has samples, ordered by name as the
// registry orders them.
func (e *textEmitter) writeTo(w io.Writer) error {
	fams := make([]*family, 0, len(e.bufs))
	for f, b := range e.bufs {
		if b.Len() > 0 {
			fams = append(fams, f)
		}
	}

	slices.SortFunc(fams, func(a, b *family) int { return strings.Compare(a.name, b.name) })

	for _, f := range fams {
		if _, err := io.WriteString(w, f.header+"# TYPE "+f.name+" "+e.types[f]+"\n"); err != nil {
			return err
		}

		if _, err := w.Write(e.bufs[f].Bytes()); err != nil {
			return err
		}
	}

	return nil
}

// appendValue formats v as the text format does.
func appendValue(b []byte, v float64) []byte {
	switch {
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	case math.IsNaN(v):
		return append(b, "NaN"...)
	}

	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func escapeHelp(s string) string { return helpEscaper.Replace(s) }

func escapeLabel(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '\\' || c == '\n' || c == '"' {
			return labelEscaper.Replace(s)
		}
	}

	return s
}

// writeExposition writes the whole /metrics body in the text format: the
// daemon's own families through the text emitter, then the Go runtime's and
// the process's (mfs, gathered by the caller) through client_golang.
func (m *Metrics) writeExposition(w io.Writer, mfs []*dto.MetricFamily) error {
	e := emitters.Get().(*textEmitter)
	defer emitters.Put(e)

	e.reset()
	m.collector.emit(e)

	if err := e.writeTo(w); err != nil {
		return err
	}

	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return err
		}
	}

	return nil
}

// exposition is writeExposition into memory.
func (m *Metrics) exposition() ([]byte, error) {
	mfs, err := m.runtime.Gather()
	if err != nil {
		return nil, err
	}

	var out bytes.Buffer

	err = m.writeExposition(&out, mfs)

	return out.Bytes(), err
}

var gzipWriters = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed)
	return w
}}

// Handler serves /metrics in the text format, gzip-compressed when the
// client accepts it (Prometheus does). The body is streamed as it is
// written; a failure to gather the runtime families answers 500 before any
// of it.
func (m *Metrics) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mfs, err := m.runtime.Gather()
		if err != nil {
			http.Error(w, fmt.Sprintf("gather runtime metrics: %v", err), http.StatusInternalServerError)
			return
		}

		h := w.Header()
		h.Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
		h.Add("Vary", "Accept-Encoding")

		var out io.Writer = w

		if acceptsGzip(r.Header.Get("Accept-Encoding")) {
			h.Set("Content-Encoding", "gzip")

			gz := gzipWriters.Get().(*gzip.Writer)
			defer gzipWriters.Put(gz)

			gz.Reset(w)
			defer gz.Close()

			out = gz
		}

		bw := bufio.NewWriterSize(out, 64<<10)
		defer bw.Flush()

		// Once the body has started, an error can only end it early.
		_ = m.writeExposition(bw, mfs)
	})
}

// acceptsGzip reports whether an Accept-Encoding header allows gzip.
func acceptsGzip(header string) bool {
	for part := range strings.SplitSeq(header, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.TrimSpace(name) != "gzip" {
			continue
		}

		q := strings.TrimSpace(params)

		return q != "q=0" && q != "q=0.0" && q != "q=0.00" && q != "q=0.000"
	}

	return false
}
