package main

// The console output of kafka-tracer read as the OpenTelemetry Collector's otlpjsonfile
// receiver reads a file: each line through pdata's JSON unmarshaler, the Collector's own
// decoder of OTLP-JSON export requests.

import (
	"bufio"
	"fmt"
	"os"

	"go.opentelemetry.io/collector/pdata/ptrace"
)

// otlpFile is what the reader found in a file.
type otlpFile struct {
	Lines int      `json:"lines"`
	Spans int      `json:"spans"`
	Names []string `json:"names"`
	// Services of the resources, in order of appearance.
	Services []string `json:"services"`
}

// readOTLPJSON decodes every line of path; the first line that does not decode fails it.
func readOTLPJSON(path string) (otlpFile, error) {
	var out otlpFile
	f, err := os.Open(path)
	if err != nil {
		return out, err
	}
	defer f.Close()
	lines := bufio.NewScanner(f)
	lines.Buffer(make([]byte, 1<<20), 64<<20)
	var decoder ptrace.JSONUnmarshaler
	for lines.Scan() {
		out.Lines++
		traces, err := decoder.UnmarshalTraces(lines.Bytes())
		if err != nil {
			return out, fmt.Errorf("line %d: %w", out.Lines, err)
		}
		for _, rs := range traces.ResourceSpans().All() {
			if name, ok := rs.Resource().Attributes().Get("service.name"); ok {
				out.Services = append(out.Services, name.AsString())
			}
			for _, ss := range rs.ScopeSpans().All() {
				for _, span := range ss.Spans().All() {
					out.Spans++
					out.Names = append(out.Names, span.Name())
				}
			}
		}
	}
	return out, lines.Err()
}
