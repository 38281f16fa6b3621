"""Real Kafka clients for kafka-tracer's tests: produce or consume with confluent-kafka
(librdkafka) or kafka-python, with a chosen codec and record headers.

  client.py produce LIB BOOTSTRAP TOPIC COUNT CODEC [--traceparent TP] [--partition P] [--acks A]
                    [--size BYTES] [--flush-every N] [--linger-ms MS] [--batch-bytes B]
                    [--interval S]
                    [--tolerate-errors]
  client.py consume LIB BOOTSTRAP TOPIC COUNT [--group G] [--partition P]
  client.py perf confluent BOOTSTRAP TOPIC COUNT [CODEC] [--size BYTES]
  client.py create-topic confluent BOOTSTRAP TOPIC PARTITIONS

Prints one JSON line: what it produced (partition, offset, headers) or consumed.

Security comes from the environment, as a deployment would give it: KT_SECURITY_PROTOCOL
(SSL, SASL_SSL, SASL_PLAINTEXT), KT_SSL_CA (a PEM CA file), KT_SASL_MECHANISM (PLAIN,
SCRAM-SHA-512), KT_SASL_USER and KT_SASL_PASSWORD.
"""
import argparse
import json
import os
import sys
import time


def security_confluent():
    """librdkafka's settings for the environment's security."""
    env, conf = os.environ, {}
    if env.get("KT_SECURITY_PROTOCOL"):
        conf["security.protocol"] = env["KT_SECURITY_PROTOCOL"]
    if env.get("KT_SSL_CA"):
        conf["ssl.ca.location"] = env["KT_SSL_CA"]
    if env.get("KT_SASL_MECHANISM"):
        conf["sasl.mechanism"] = env["KT_SASL_MECHANISM"]
        conf["sasl.username"] = env["KT_SASL_USER"]
        conf["sasl.password"] = env["KT_SASL_PASSWORD"]
    return conf


def security_kafka_python():
    """kafka-python's keyword arguments for the environment's security."""
    env, kw = os.environ, {}
    if env.get("KT_SECURITY_PROTOCOL"):
        kw["security_protocol"] = env["KT_SECURITY_PROTOCOL"]
    if env.get("KT_SSL_CA"):
        kw["ssl_cafile"] = env["KT_SSL_CA"]
        kw["ssl_check_hostname"] = False
    if env.get("KT_SASL_MECHANISM"):
        kw["sasl_mechanism"] = env["KT_SASL_MECHANISM"]
        kw["sasl_plain_username"] = env["KT_SASL_USER"]
        kw["sasl_plain_password"] = env["KT_SASL_PASSWORD"]
    return kw


def produce_confluent(a):
    from confluent_kafka import Producer

    conf = {
        "bootstrap.servers": a.bootstrap,
        "compression.type": a.codec,
        "acks": str(a.acks),
        "linger.ms": a.linger_ms,
        "batch.size": a.batch_bytes,
        "client.id": "tracer-test-confluent",
        **security_confluent(),
    }
    p = Producer(conf)
    out = []

    def done(err, msg):
        if err is not None:
            if a.tolerate_errors:
                out.append({"error": str(err)})
                return
            print(json.dumps({"error": str(err)}), file=sys.stderr)
            sys.exit(1)
        out.append({"partition": msg.partition(), "offset": msg.offset(), "time": time.time()})

    for i in range(a.count):
        headers = [("traceparent", a.traceparent.encode())] if a.traceparent else []
        headers.append(("seq", str(i).encode()))
        kwargs = {"partition": a.partition} if a.partition is not None else {}
        p.produce(a.topic, value=(f"value-{i}-" + "x" * a.size).encode(), key=f"key-{i}".encode(),
                  headers=headers, on_delivery=done, **kwargs)
        if a.flush_every and (i + 1) % a.flush_every == 0:
            p.flush(30)
        if a.interval:
            time.sleep(a.interval)
    p.flush(30)
    return out


def produce_kafka_python(a):
    from kafka import KafkaProducer

    codec = None if a.codec == "none" else a.codec
    p = KafkaProducer(bootstrap_servers=a.bootstrap, compression_type=codec, acks=a.acks,
                      client_id="tracer-test-kafka-python", linger_ms=a.linger_ms,
                      **security_kafka_python())
    futures = []
    for i in range(a.count):
        headers = [("traceparent", a.traceparent.encode())] if a.traceparent else []
        headers.append(("seq", str(i).encode()))
        futures.append(p.send(a.topic, value=(f"value-{i}-" + "x" * a.size).encode(),
                              key=f"key-{i}".encode(), headers=headers, partition=a.partition))
        if a.flush_every and (i + 1) % a.flush_every == 0:
            p.flush(30)
        if a.interval:
            time.sleep(a.interval)
    p.flush(30)
    out = []
    for f in futures:
        m = f.get(timeout=30)
        out.append({"partition": m.partition, "offset": m.offset})
    p.close()
    return out


def consume_confluent(a):
    from confluent_kafka import Consumer, TopicPartition

    conf = {"bootstrap.servers": a.bootstrap, "group.id": a.group or "tracer-test",
            "auto.offset.reset": "earliest", "enable.auto.commit": True,
            "client.id": "tracer-test-confluent",
            # tansu waits the whole rebalance timeout (max.poll.interval.ms) before the
            # first assignment: 6 s instead of librdkafka's 300 s default gives 3 s joins.
            "session.timeout.ms": 6000, "max.poll.interval.ms": 6000, **security_confluent()}
    c = Consumer(conf)
    if a.group:
        c.subscribe([a.topic])
    else:
        c.assign([TopicPartition(a.topic, a.partition or 0, 0)])
    out = []
    deadline = time.time() + a.timeout
    while len(out) < a.count and time.time() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        out.append({"partition": m.partition(), "offset": m.offset(),
                    "headers": {k: v.decode() for k, v in (m.headers() or [])}})
    if a.group:
        c.commit(asynchronous=False)
    c.close()
    return out


def consume_kafka_python(a):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=a.bootstrap, group_id=a.group, auto_offset_reset="earliest",
                      client_id="tracer-test-kafka-python", enable_auto_commit=bool(a.group),
                      session_timeout_ms=6000, max_poll_interval_ms=6000,
                      **security_kafka_python())
    if a.group:
        c.subscribe([a.topic])
    else:
        tp = TopicPartition(a.topic, a.partition or 0)
        c.assign([tp])
        c.seek(tp, 0)
    out = []
    deadline = time.time() + a.timeout
    while len(out) < a.count and time.time() < deadline:
        for tp, msgs in c.poll(timeout_ms=500).items():
            for m in msgs:
                out.append({"partition": m.partition, "offset": m.offset,
                            "headers": {k: v.decode() for k, v in m.headers}})
    if a.group:
        c.commit()
    c.close()
    return out


def perf_confluent(a):
    """Produce COUNT records of --size bytes as fast as the client goes, then consume them:
    the seconds each took. With --rate N, produce N records a second while a consumer reads
    them as they come: a steady load rather than a saturating one."""
    import threading

    from confluent_kafka import Consumer, Producer, TopicPartition

    p = Producer({"bootstrap.servers": a.bootstrap, "linger.ms": a.linger_ms,
                  "compression.type": a.codec, "client.id": "tracer-perf",
                  **security_confluent()})
    value = b"x" * a.size
    failed = []

    def consume():
        c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": "tracer-perf",
                      "enable.auto.commit": False, "client.id": "tracer-perf",
                      **security_confluent()})
        c.assign([TopicPartition(a.topic, 0, 0)])
        got = 0
        start = time.perf_counter()
        deadline = time.time() + a.timeout + (a.count / a.rate if a.rate else 0)
        while got < a.count and time.time() < deadline:
            got += len(c.consume(1000, 0.5))
        result["consumed"], result["consume_s"] = got, time.perf_counter() - start
        c.close()

    result = {}
    reader = threading.Thread(target=consume) if a.rate else None
    if reader:
        reader.start()
    start = time.perf_counter()
    for i in range(a.count):
        if a.rate:
            ahead = start + i / a.rate - time.perf_counter()
            if ahead > 0:
                p.poll(ahead)
        while True:
            try:
                p.produce(a.topic, value=value, partition=0,
                          on_delivery=lambda err, _: err and failed.append(str(err)))
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    p.flush(60)
    produce_s = time.perf_counter() - start
    if reader:
        reader.join()
    else:
        consume()
    return {"produced": a.count - len(failed), "consumed": result["consumed"],
            "produce_s": produce_s, "consume_s": result["consume_s"]}


def create_topic_confluent(a):
    """Creates TOPIC with COUNT partitions and one replica, waiting until its leader is known."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    for f in admin.create_topics([NewTopic(a.topic, a.count, 1)], request_timeout=30).values():
        f.result(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline:
        t = admin.list_topics(a.topic, timeout=10).topics.get(a.topic)
        if t and t.error is None and len(t.partitions) == a.count and all(
                p.leader >= 0 for p in t.partitions.values()):
            return {"topic": a.topic, "partitions": a.count}
        time.sleep(0.1)
    raise SystemExit(f"topic {a.topic} has no leader after 30 s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("op", choices=["produce", "consume", "perf", "create-topic"])
    ap.add_argument("lib", choices=["confluent", "kafka-python"])
    ap.add_argument("bootstrap")
    ap.add_argument("topic")
    ap.add_argument("count", type=int)
    ap.add_argument("codec", nargs="?", default="none")
    ap.add_argument("--traceparent")
    ap.add_argument("--partition", type=int)
    ap.add_argument("--acks", type=int, default=1)
    ap.add_argument("--group")
    ap.add_argument("--size", type=int, default=20)
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--batch-bytes", type=int, default=1000000, help="librdkafka batch.size")
    ap.add_argument("--interval", type=float, default=0, help="seconds between records")
    ap.add_argument("--rate", type=float, default=0,
                    help="perf: records a second, consumed as they come (0: flat out, then consume)")
    ap.add_argument("--tolerate-errors", action="store_true",
                    help="report failed deliveries in the output instead of failing (confluent)")
    ap.add_argument("--flush-every", type=int, default=0,
                    help="wait for delivery after every N records: one batch (and request) each")
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()
    fn = {("produce", "confluent"): produce_confluent, ("produce", "kafka-python"): produce_kafka_python,
          ("consume", "confluent"): consume_confluent, ("consume", "kafka-python"): consume_kafka_python,
          ("perf", "confluent"): perf_confluent, ("create-topic", "confluent"): create_topic_confluent}
    print(json.dumps(fn[(a.op, a.lib)](a)))


if __name__ == "__main__":
    main()
