// The Java clients of kafka-tracer's end-to-end tests (org.apache.kafka:kafka-clients and
// kafka-streams, the versions in ../pom.xml), behind a command line like tests/kafka/client.py's,
// each printing one JSON line of what it produced or consumed:
//
//   produce BOOTSTRAP TOPIC COUNT CODEC [--traceparent TP] [--partition P]
//       idempotent producer, acks=all (the client's defaults)
//   transact BOOTSTRAP TOPIC COUNT CODEC --partition P [--abort]
//       one transaction of COUNT records, committed (or aborted)
//   consume BOOTSTRAP TOPIC COUNT [--group G] [--protocol classic|consumer]
//       [--read-committed] [--partition P] [--timeout S]
//   share BOOTSTRAP TOPIC COUNT --group G [--release N] [--timeout S]
//       a share group (KIP-932) member: releases the first N records it receives (so they are
//       delivered again) and accepts everything else
//   streams BOOTSTRAP IN OUT COUNT --app-id ID [--timeout S]
//       Kafka Streams, exactly_once_v2: IN -> upper case -> OUT until COUNT records went through
//
// Compiled with javac against the copied dependencies by `cargo xtask test`; nothing else.
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.*;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.*;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;

public final class JavaClient {
    private final List<String> positional = new ArrayList<>();
    private final Map<String, String> flags = new HashMap<>();

    private JavaClient(String[] args) {
        for (int i = 0; i < args.length; i++) {
            if (args[i].startsWith("--")) {
                String name = args[i].substring(2);
                boolean valued = i + 1 < args.length && !args[i + 1].startsWith("--");
                flags.put(name, valued ? args[++i] : "true");
            } else {
                positional.add(args[i]);
            }
        }
    }

    private String arg(int i) {
        if (i >= positional.size()) throw new IllegalArgumentException("missing argument " + i);
        return positional.get(i);
    }

    private String flag(String name, String fallback) {
        return flags.getOrDefault(name, fallback);
    }

    private long timeoutMs() {
        return (long) (Double.parseDouble(flag("timeout", "60")) * 1000);
    }

    public static void main(String[] args) throws Exception {
        JavaClient c = new JavaClient(args);
        String out = switch (c.arg(0)) {
            case "produce" -> c.produce(false);
            case "transact" -> c.produce(true);
            case "consume" -> c.consume();
            case "share" -> c.share();
            case "streams" -> c.streams();
            default -> throw new IllegalArgumentException("unknown operation " + c.arg(0));
        };
        System.out.println(out);
        System.out.flush();
        // Client threads must not keep the JVM (and the test) waiting.
        System.exit(0);
    }

    /** Bootstrap, client id, and the security the environment gives (as client.py reads it:
     *  KT_SECURITY_PROTOCOL, KT_SSL_CA, KT_SASL_MECHANISM, KT_SASL_USER, KT_SASL_PASSWORD). */
    private Properties common() {
        Properties p = new Properties();
        p.put("bootstrap.servers", arg(1));
        p.put("client.id", "tracer-test-java");
        Map<String, String> env = System.getenv();
        if (env.get("KT_SECURITY_PROTOCOL") != null) p.put("security.protocol", env.get("KT_SECURITY_PROTOCOL"));
        if (env.get("KT_SSL_CA") != null) {
            p.put("ssl.truststore.type", "PEM");
            p.put("ssl.truststore.location", env.get("KT_SSL_CA"));
            p.put("ssl.endpoint.identification.algorithm", "");
        }
        String mechanism = env.get("KT_SASL_MECHANISM");
        if (mechanism != null) {
            p.put("sasl.mechanism", mechanism);
            String module = mechanism.startsWith("SCRAM")
                ? "org.apache.kafka.common.security.scram.ScramLoginModule"
                : "org.apache.kafka.common.security.plain.PlainLoginModule";
            p.put("sasl.jaas.config", module + " required username=\"" + env.get("KT_SASL_USER")
                + "\" password=\"" + env.get("KT_SASL_PASSWORD") + "\";");
        }
        return p;
    }

    private String produce(boolean transactional) throws Exception {
        Properties p = common();
        p.put("key.serializer", StringSerializer.class.getName());
        p.put("value.serializer", StringSerializer.class.getName());
        p.put("compression.type", positional.size() > 4 ? arg(4) : "none");
        p.put("linger.ms", "5");
        if (transactional) p.put("transactional.id", "tracer-test-" + arg(2) + "-" + UUID.randomUUID());
        String topic = arg(2);
        int count = Integer.parseInt(arg(3));
        Integer partition = flags.containsKey("partition") ? Integer.valueOf(flag("partition", "0")) : null;
        boolean abort = flags.containsKey("abort");
        List<Future<RecordMetadata>> sent = new ArrayList<>();
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            if (transactional) {
                producer.initTransactions();
                producer.beginTransaction();
            }
            for (int i = 0; i < count; i++) {
                ProducerRecord<String, String> r =
                        new ProducerRecord<>(topic, partition, "key-" + i, "value-" + i + "-xxxxxxxxxxxxxxxxxxxx");
                if (flags.containsKey("traceparent"))
                    r.headers().add("traceparent", flag("traceparent", "").getBytes(StandardCharsets.UTF_8));
                r.headers().add("seq", Integer.toString(i).getBytes(StandardCharsets.UTF_8));
                sent.add(producer.send(r));
            }
            producer.flush();
            if (transactional) {
                if (abort) producer.abortTransaction();
                else producer.commitTransaction();
            }
        }
        StringJoiner out = new StringJoiner(",", "[", "]");
        double now = System.currentTimeMillis() / 1000.0;
        for (Future<RecordMetadata> f : sent) {
            RecordMetadata m = f.get(30, TimeUnit.SECONDS);
            out.add("{\"partition\":" + m.partition() + ",\"offset\":" + m.offset() + ",\"time\":" + now
                    + (transactional ? ",\"committed\":" + !abort : "") + "}");
        }
        return out.toString();
    }

    private static String headers(Iterable<Header> headers) {
        StringJoiner h = new StringJoiner(",", "{", "}");
        for (Header x : headers)
            h.add(quote(x.key()) + ":" + quote(new String(x.value(), StandardCharsets.UTF_8)));
        return h.toString();
    }

    private static String quote(String s) {
        return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
    }

    private String consume() {
        Properties p = common();
        p.put("key.deserializer", StringDeserializer.class.getName());
        p.put("value.deserializer", StringDeserializer.class.getName());
        p.put("auto.offset.reset", "earliest");
        String group = flag("group", null);
        if (group != null) {
            p.put("group.id", group);
            p.put("group.protocol", flag("protocol", "classic"));
        }
        if (flags.containsKey("read-committed")) p.put("isolation.level", "read_committed");
        String topic = arg(2);
        int count = Integer.parseInt(arg(3));
        StringJoiner out = new StringJoiner(",", "[", "]");
        int got = 0;
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p)) {
            if (group != null) {
                consumer.subscribe(List.of(topic));
            } else {
                TopicPartition tp = new TopicPartition(topic, Integer.parseInt(flag("partition", "0")));
                consumer.assign(List.of(tp));
                consumer.seekToBeginning(List.of(tp));
            }
            long deadline = System.currentTimeMillis() + timeoutMs();
            while (got < count && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
                    out.add("{\"partition\":" + r.partition() + ",\"offset\":" + r.offset()
                            + ",\"headers\":" + headers(r.headers()) + "}");
                    got++;
                }
            }
            if (group != null) consumer.commitSync();
        }
        return out.toString();
    }

    private String share() throws Exception {
        String group = flag("group", "tracer-test-share");
        // Share groups start at the latest offset unless the group is told otherwise.
        try (Admin admin = Admin.create(common())) {
            ConfigResource resource = new ConfigResource(ConfigResource.Type.GROUP, group);
            AlterConfigOp earliest = new AlterConfigOp(
                    new ConfigEntry("share.auto.offset.reset", "earliest"), AlterConfigOp.OpType.SET);
            admin.incrementalAlterConfigs(Map.of(resource, List.of(earliest))).all().get(30, TimeUnit.SECONDS);
        }
        Properties p = common();
        p.put("key.deserializer", StringDeserializer.class.getName());
        p.put("value.deserializer", StringDeserializer.class.getName());
        p.put("group.id", group);
        p.put("share.acknowledgement.mode", "explicit");
        String topic = arg(2);
        int count = Integer.parseInt(arg(3));
        int release = Integer.parseInt(flag("release", "0"));
        StringJoiner out = new StringJoiner(",", "[", "]");
        int accepted = 0;
        try (KafkaShareConsumer<String, String> consumer = new KafkaShareConsumer<>(p)) {
            consumer.subscribe(List.of(topic));
            long deadline = System.currentTimeMillis() + timeoutMs();
            while (accepted < count && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
                    boolean releaseIt = release > 0;
                    AcknowledgeType type = releaseIt ? AcknowledgeType.RELEASE : AcknowledgeType.ACCEPT;
                    if (releaseIt) release--;
                    else accepted++;
                    consumer.acknowledge(r, type);
                    out.add("{\"partition\":" + r.partition() + ",\"offset\":" + r.offset()
                            + ",\"delivery_count\":" + r.deliveryCount().orElse((short) 0)
                            + ",\"ack\":\"" + type.name().toLowerCase(Locale.ROOT) + "\"}");
                }
                consumer.commitSync();
            }
        }
        return out.toString();
    }

    private String streams() throws Exception {
        Properties p = common();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, flag("app-id", "tracer-test-streams"));
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class.getName());
        p.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class.getName());
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, "100");
        p.put(StreamsConfig.STATE_DIR_CONFIG, System.getProperty("java.io.tmpdir") + "/kafka-tracer-streams-" + UUID.randomUUID());
        p.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        int count = Integer.parseInt(arg(4));
        AtomicInteger seen = new AtomicInteger();
        CountDownLatch done = new CountDownLatch(1);
        StreamsBuilder b = new StreamsBuilder();
        b.<String, String>stream(arg(2)).mapValues(v -> {
            if (seen.incrementAndGet() >= count) done.countDown();
            return v.toUpperCase(Locale.ROOT);
        }).to(arg(3));
        try (KafkaStreams app = new KafkaStreams(b.build(), p)) {
            app.start();
            boolean all = done.await(timeoutMs(), TimeUnit.MILLISECONDS);
            // Let the last transaction commit before closing.
            Thread.sleep(1000);
            app.close(Duration.ofSeconds(10));
            return "{\"processed\":" + seen.get() + ",\"complete\":" + all + "}";
        }
    }
}
