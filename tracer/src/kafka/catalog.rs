//! What the wire teaches about the cluster, shared by all connections: topic ids to names and
//! cluster ids (from Metadata responses), and the consumer group of each client (from group
//! requests, which go to the coordinator while fetches go to partition leaders, so the group is
//! keyed by process and client id).

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
};

use super::{MetadataResponse, Request, Response, TopicRef, session::Exchange};

/// Entries kept per table; past it new entries are refused and counted.
const MAX_ENTRIES: usize = 100_000;
/// Share-group deliveries remembered per (process, topic, partition), oldest dropped first:
/// enough for the acknowledgements of the next few ShareFetch rounds.
const SHARE_BATCHES_PER_PARTITION: usize = 64;
/// (process, topic, partition) keys of share-group deliveries: at most 4 MiB in all.
const MAX_SHARE_PARTITIONS: usize = 4096;

#[derive(Debug, Default)]
pub struct Catalog {
    topics: HashMap<[u8; 16], Arc<str>>,
    clusters: HashMap<SocketAddr, Arc<str>>,
    groups: HashMap<(u32, String), Arc<str>>,
    /// Batches recently delivered to a share-group member, (base offset, last offset), so an
    /// acknowledgement of an offset range can be tied to the batches (and send spans) it covers.
    share_batches: HashMap<(u32, TopicRef, i32), VecDeque<(i64, i64)>>,
    /// Entries refused because a table was full.
    pub refused: u64,
}

fn insert<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, k: K, v: V, refused: &mut u64) {
    if map.len() < MAX_ENTRIES || map.contains_key(&k) {
        map.insert(k, v);
    } else {
        *refused += 1;
    }
}

impl Catalog {
    /// Learns from an exchange of process `tgid` with the broker at `broker`.
    pub fn learn(&mut self, ex: &Exchange, tgid: u32, broker: SocketAddr) {
        match &ex.response {
            Some(Ok(Response::Metadata(m))) => self.learn_metadata(m, broker),
            Some(Ok(Response::ShareFetch(f))) if ex.client_side => {
                for p in &f.partitions {
                    self.learn_share_batches(tgid, &p.topic, p.partition, &p.records);
                }
            }
            _ => {}
        }
        if let (Ok(Request::Group(g)), Some(client)) = (&ex.request, &ex.header.client_id)
            && let Some(group) = &g.group_id
        {
            insert(
                &mut self.groups,
                (tgid, client.clone()),
                group.as_str().into(),
                &mut self.refused,
            );
        }
    }

    /// Learns from a Metadata response (seen on the wire, or asked of `broker` directly): topic
    /// id names, and the cluster id of `broker` and of every broker the response lists.
    pub fn learn_metadata(&mut self, m: &MetadataResponse, broker: SocketAddr) {
        if let Some(c) = &m.cluster_id {
            insert(
                &mut self.clusters,
                broker,
                c.as_str().into(),
                &mut self.refused,
            );
            for b in &m.brokers {
                if let Ok(ip) = b.host.parse::<std::net::IpAddr>()
                    && let Ok(port) = u16::try_from(b.port)
                {
                    insert(
                        &mut self.clusters,
                        SocketAddr::new(ip, port),
                        c.as_str().into(),
                        &mut self.refused,
                    );
                }
            }
        }
        for t in &m.topics {
            if let Some(name) = &t.name
                && t.topic_id != [0; 16]
            {
                insert(
                    &mut self.topics,
                    t.topic_id,
                    name.as_str().into(),
                    &mut self.refused,
                );
            }
        }
    }

    fn learn_share_batches(
        &mut self,
        tgid: u32,
        topic: &TopicRef,
        partition: i32,
        records: &super::PartitionRecords,
    ) {
        let key = (tgid, topic.clone(), partition);
        if self.share_batches.len() >= MAX_SHARE_PARTITIONS
            && !self.share_batches.contains_key(&key)
        {
            self.refused += 1;
            return;
        }
        let seen = self.share_batches.entry(key).or_default();
        for b in records.batches.iter().filter(|b| !b.control) {
            let range = (
                b.base_offset,
                b.base_offset.saturating_add(i64::from(b.last_offset_delta)),
            );
            if !seen.contains(&range) {
                if seen.len() == SHARE_BATCHES_PER_PARTITION {
                    seen.pop_front();
                }
                seen.push_back(range);
            }
        }
    }

    /// Base offsets of the batches recently delivered to process `tgid` that overlap
    /// `first..=last` of the partition, in offset order.
    pub fn share_batches(
        &self,
        tgid: u32,
        topic: &TopicRef,
        partition: i32,
        first: i64,
        last: i64,
    ) -> Vec<i64> {
        let mut bases: Vec<i64> = self
            .share_batches
            .get(&(tgid, topic.clone(), partition))
            .into_iter()
            .flatten()
            .filter(|(base, end)| *base <= last && *end >= first)
            .map(|(base, _)| *base)
            .collect();
        bases.sort_unstable();
        bases
    }

    /// Whether the exchange names a topic by an id this catalog cannot resolve.
    pub fn has_unknown_topic(&self, ex: &Exchange) -> bool {
        let unknown = |t: &TopicRef| matches!(t, TopicRef::Id(id) if !self.topics.contains_key(id));
        let in_request = match &ex.request {
            Ok(Request::Produce(p)) => p.partitions.iter().any(|p| unknown(&p.topic)),
            Ok(Request::Fetch(f)) => f.partitions.iter().any(|p| unknown(&p.topic)),
            Ok(Request::Share(s)) => s.acknowledgements.iter().any(|a| unknown(&a.topic)),
            _ => false,
        };
        in_request
            || match &ex.response {
                Some(Ok(Response::Fetch(f))) => f.partitions.iter().any(|p| unknown(&p.topic)),
                Some(Ok(Response::ShareFetch(f))) => f.partitions.iter().any(|p| unknown(&p.topic)),
                _ => false,
            }
    }

    /// The topic's name, resolving ids seen in Metadata responses.
    pub fn topic_name(&self, t: &TopicRef) -> Option<Arc<str>> {
        match t {
            TopicRef::Name(n) => Some(n.clone()),
            TopicRef::Id(id) => self.topics.get(id).cloned(),
        }
    }

    pub fn cluster_id(&self, broker: &SocketAddr) -> Option<Arc<str>> {
        self.clusters.get(broker).cloned()
    }

    pub fn group(&self, tgid: u32, client_id: &str) -> Option<Arc<str>> {
        self.groups.get(&(tgid, client_id.to_string())).cloned()
    }
}
