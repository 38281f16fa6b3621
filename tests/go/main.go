// Command goclient: the Go programs of kafka-tracer's end-to-end tests. The Kafka clients
// franz-go and sarama, behind the same command line and JSON output as tests/kafka/client.py,
// so a test can swap the library and keep its assertions; and the OpenTelemetry Collector's
// reader of OTLP-JSON files, for the tracer's console output.
//
//	goclient produce LIB BOOTSTRAP TOPIC COUNT CODEC [--traceparent TP] [--partition P]
//	goclient consume LIB BOOTSTRAP TOPIC COUNT [--group G] [--partition P] [--timeout S]
//	goclient otlpjson FILE
//
// LIB is franz or sarama. Prints one JSON line: the (partition, offset) of each record
// produced, the (partition, offset, headers) of each record consumed, or the lines, spans,
// span names and services found in FILE.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"
)

type args struct {
	op, lib, bootstrap, topic string
	count                     int
	codec                     string
	traceparent               string
	partition                 int
	group                     string
	timeout                   time.Duration
}

// produced is one delivered record, as client.py reports it.
type produced struct {
	Partition int32   `json:"partition"`
	Offset    int64   `json:"offset"`
	Time      float64 `json:"time"`
}

// consumed is one record a consumer returned to the application.
type consumed struct {
	Partition int32             `json:"partition"`
	Offset    int64             `json:"offset"`
	Headers   map[string]string `json:"headers"`
}

func parse() args {
	if len(os.Args) < 6 {
		fail(fmt.Errorf("usage: goclient produce|consume franz|sarama BOOTSTRAP TOPIC COUNT [CODEC] [flags]"))
	}
	a := args{op: os.Args[1], lib: os.Args[2], bootstrap: os.Args[3], topic: os.Args[4], codec: "none"}
	n, err := strconv.Atoi(os.Args[5])
	if err != nil {
		fail(err)
	}
	a.count = n
	rest := os.Args[6:]
	if len(rest) > 0 && rest[0][0] != '-' {
		a.codec, rest = rest[0], rest[1:]
	}
	fs := flag.NewFlagSet("goclient", flag.ExitOnError)
	fs.StringVar(&a.traceparent, "traceparent", "", "W3C traceparent header on every record")
	fs.IntVar(&a.partition, "partition", -1, "partition to produce to or consume from")
	fs.StringVar(&a.group, "group", "", "consumer group (subscribe) instead of assigning")
	timeout := fs.Float64("timeout", 60, "seconds to wait for COUNT records")
	if err := fs.Parse(rest); err != nil {
		fail(err)
	}
	a.timeout = time.Duration(*timeout * float64(time.Second))
	return a
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "goclient:", err)
	os.Exit(1)
}

// record headers every produced record carries: the test's traceparent, if any, and its index.
func headers(a args, i int) [][2]string {
	var h [][2]string
	if a.traceparent != "" {
		h = append(h, [2]string{"traceparent", a.traceparent})
	}
	return append(h, [2]string{"seq", strconv.Itoa(i)})
}

func value(i int) []byte { return []byte(fmt.Sprintf("value-%d-xxxxxxxxxxxxxxxxxxxx", i)) }
func key(i int) []byte   { return []byte(fmt.Sprintf("key-%d", i)) }

func main() {
	if len(os.Args) == 3 && os.Args[1] == "otlpjson" {
		out, err := readOTLPJSON(os.Args[2])
		if err != nil {
			fail(err)
		}
		if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
			fail(err)
		}
		return
	}
	a := parse()
	var out any
	var err error
	switch a.op + " " + a.lib {
	case "produce franz":
		out, err = produceFranz(a)
	case "consume franz":
		out, err = consumeFranz(a)
	case "produce sarama":
		out, err = produceSarama(a)
	case "consume sarama":
		out, err = consumeSarama(a)
	default:
		err = fmt.Errorf("unknown operation %q with library %q", a.op, a.lib)
	}
	if err != nil {
		fail(err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}
