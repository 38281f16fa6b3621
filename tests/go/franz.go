// franz-go (github.com/twmb/franz-go): negotiates the newest versions a broker offers (Produce
// v13 and Fetch v18 against Kafka 4.1+), snappy by default.
package main

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

func franzCodec(name string) (kgo.CompressionCodec, error) {
	switch name {
	case "none":
		return kgo.NoCompression(), nil
	case "gzip":
		return kgo.GzipCompression(), nil
	case "snappy":
		return kgo.SnappyCompression(), nil
	case "lz4":
		return kgo.Lz4Compression(), nil
	case "zstd":
		return kgo.ZstdCompression(), nil
	}
	return kgo.NoCompression(), fmt.Errorf("unknown codec %q", name)
}

func produceFranz(a args) ([]produced, error) {
	codec, err := franzCodec(a.codec)
	if err != nil {
		return nil, err
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(a.bootstrap),
		kgo.ClientID("tracer-test-franz"),
		kgo.ProducerBatchCompression(codec),
		kgo.ProducerLinger(5 * time.Millisecond),
		kgo.DefaultProduceTopic(a.topic),
	}
	if a.partition >= 0 {
		opts = append(opts, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	}
	security, err := franzSecurity()
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(append(opts, security...)...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	records := make([]*kgo.Record, a.count)
	for i := range records {
		r := &kgo.Record{Key: key(i), Value: value(i), Partition: int32(max(a.partition, 0))}
		for _, h := range headers(a, i) {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: h[0], Value: []byte(h[1])})
		}
		records[i] = r
	}
	results := cl.ProduceSync(ctx, records...)
	out := make([]produced, 0, len(results))
	now := float64(time.Now().UnixNano()) / 1e9
	for _, res := range results {
		if res.Err != nil {
			return nil, res.Err
		}
		out = append(out, produced{res.Record.Partition, res.Record.Offset, now})
	}
	return out, nil
}

func consumeFranz(a args) ([]consumed, error) {
	opts := []kgo.Opt{
		kgo.SeedBrokers(a.bootstrap),
		kgo.ClientID("tracer-test-franz"),
	}
	if a.group != "" {
		opts = append(opts, kgo.ConsumerGroup(a.group), kgo.ConsumeTopics(a.topic),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	} else {
		opts = append(opts, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{
			a.topic: {int32(max(a.partition, 0)): kgo.NewOffset().At(0)},
		}))
	}
	security, err := franzSecurity()
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(append(opts, security...)...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	out := []consumed{}
	for len(out) < a.count && ctx.Err() == nil {
		fetches := cl.PollFetches(ctx)
		fetches.EachRecord(func(r *kgo.Record) {
			h := map[string]string{}
			for _, rh := range r.Headers {
				h[rh.Key] = string(rh.Value)
			}
			out = append(out, consumed{r.Partition, r.Offset, h})
		})
	}
	if a.group != "" {
		if err := cl.CommitUncommittedOffsets(context.Background()); err != nil {
			return nil, err
		}
	}
	return out, nil
}
