// sarama (github.com/IBM/sarama): Produce v9/v10 and Fetch v12 with topic names, at the
// protocol version it is configured for (here Kafka 3.7, its newest known Produce).
package main

import (
	"fmt"
	"time"

	"github.com/IBM/sarama"
)

func saramaConfig(a args) (*sarama.Config, error) {
	c := sarama.NewConfig()
	c.ClientID = "tracer-test-sarama"
	c.Version = sarama.V3_7_0_0
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Flush.Frequency = 5 * time.Millisecond
	c.Consumer.Return.Errors = true
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	switch a.codec {
	case "none":
		c.Producer.Compression = sarama.CompressionNone
	case "gzip":
		c.Producer.Compression = sarama.CompressionGZIP
	case "snappy":
		c.Producer.Compression = sarama.CompressionSnappy
	case "lz4":
		c.Producer.Compression = sarama.CompressionLZ4
	case "zstd":
		c.Producer.Compression = sarama.CompressionZSTD
	default:
		return nil, fmt.Errorf("unknown codec %q", a.codec)
	}
	if a.partition >= 0 {
		c.Producer.Partitioner = sarama.NewManualPartitioner
	}
	return c, saramaSecurity(c)
}

func produceSarama(a args) ([]produced, error) {
	c, err := saramaConfig(a)
	if err != nil {
		return nil, err
	}
	p, err := sarama.NewAsyncProducer([]string{a.bootstrap}, c)
	if err != nil {
		return nil, err
	}
	for i := 0; i < a.count; i++ {
		m := &sarama.ProducerMessage{Topic: a.topic, Key: sarama.ByteEncoder(key(i)),
			Value: sarama.ByteEncoder(value(i)), Partition: int32(max(a.partition, 0))}
		for _, h := range headers(a, i) {
			m.Headers = append(m.Headers, sarama.RecordHeader{Key: []byte(h[0]), Value: []byte(h[1])})
		}
		p.Input() <- m
	}
	out := []produced{}
	deadline := time.After(a.timeout)
	for len(out) < a.count {
		select {
		case m := <-p.Successes():
			out = append(out, produced{m.Partition, m.Offset, float64(time.Now().UnixNano()) / 1e9})
		case err := <-p.Errors():
			return nil, err
		case <-deadline:
			return nil, fmt.Errorf("%d of %d records delivered in time", len(out), a.count)
		}
	}
	return out, p.Close()
}

func consumeSarama(a args) ([]consumed, error) {
	c, err := saramaConfig(a)
	if err != nil {
		return nil, err
	}
	if a.group != "" {
		return nil, fmt.Errorf("sarama consumes by assignment here")
	}
	cons, err := sarama.NewConsumer([]string{a.bootstrap}, c)
	if err != nil {
		return nil, err
	}
	defer cons.Close()
	pc, err := cons.ConsumePartition(a.topic, int32(max(a.partition, 0)), sarama.OffsetOldest)
	if err != nil {
		return nil, err
	}
	defer pc.Close()
	out := []consumed{}
	deadline := time.After(a.timeout)
	for len(out) < a.count {
		select {
		case m := <-pc.Messages():
			h := map[string]string{}
			for _, rh := range m.Headers {
				h[string(rh.Key)] = string(rh.Value)
			}
			out = append(out, consumed{m.Partition, m.Offset, h})
		case err := <-pc.Errors():
			return nil, err
		case <-deadline:
			return out, nil
		}
	}
	return out, nil
}
