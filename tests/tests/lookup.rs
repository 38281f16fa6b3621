//! The tracer's own Metadata lookup, against a real broker (tansu): topic ids to names.

use std::time::Duration;

use tests::Broker;
use tracer::kafka::lookup;

#[tokio::test]
async fn a_broker_is_asked_for_its_topic_ids() {
    let broker = Broker::start().unwrap();
    broker.create_topic("lookup-orders", 2).unwrap();
    let addr = broker.bootstrap().parse().unwrap();
    let m = lookup::metadata(addr, Duration::from_secs(5))
        .await
        .expect("lookup succeeds");
    let t = m
        .topics
        .iter()
        .find(|t| t.name.as_deref() == Some("lookup-orders"))
        .expect("topic listed");
    assert_ne!(t.topic_id, [0; 16], "topic id present");
    assert_eq!(t.partitions.len(), 2);
    assert!(m.cluster_id.is_some());

    // A port nobody listens on: a clear error, not a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = lookup::metadata(closed, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("connecting"), "{e:#}");
}
