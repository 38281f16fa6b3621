//! One Kafka connection: which side is the client, the frames of both directions, requests
//! waiting for their responses (pipelined, matched by correlation id), and the exchanges they
//! make. Works the same whether the traced process is the client or the broker.

use std::{borrow::Cow, collections::VecDeque};

use tracer_common::Direction;

use super::{
    DecodeError, DecodeOptions, PartitionRecords, Request, RequestHeader, Response, api,
    decode_request, decode_response,
    framing::{Frame, Framer},
    looks_like_request, parse_request_header, parse_response_header,
};
use crate::{counters::Counter, reassembly::Piece};

/// A request and, where one came, its response.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub header: RequestHeader,
    pub request: Result<Request, DecodeError>,
    /// False when the request frame was cut (bytes lost or over the frame cap).
    pub request_complete: bool,
    /// `None` when no response is expected (Produce with acks=0) or none came.
    pub response: Option<Result<Response, DecodeError>>,
    pub response_complete: bool,
    /// The traced process sent the request (it is the client: producer, consumer, admin);
    /// false when it is the broker.
    pub client_side: bool,
    /// Kernel times (CLOCK_MONOTONIC ns) of the request's first and last byte, and the
    /// response's.
    pub request_ns: (u64, u64),
    pub response_ns: Option<(u64, u64)>,
}

/// Counters of the decoding stage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionCounters {
    pub requests: u64,
    pub responses: u64,
    /// Frames whose header or body did not decode.
    pub undecodable_requests: u64,
    pub undecodable_responses: u64,
    /// Responses whose request was never seen (lost, or before the tracer attached).
    pub unmatched_responses: u64,
    /// Requests that never got a response (a later one was answered first, the connection
    /// closed, or the in-flight bounds gave them up).
    pub unanswered_requests: u64,
    /// Of those, requests given up unanswered to keep within the in-flight bounds
    /// (`--max-in-flight` per connection, `--max-in-flight-bytes` in all); a response that
    /// comes for one later is unmatched.
    pub evicted_requests: u64,
    /// Produce requests with acks=0 (no response, so no offsets).
    pub acks0_produces: u64,
    /// Frames seen before the connection's client side was known.
    pub frames_before_role: u64,
    /// Frames of a legacy SASL exchange (after SaslHandshake v0 the client and broker send raw
    /// authentication tokens, not Kafka messages): skipped unread, never decoded or logged.
    pub sasl_tokens: u64,
    /// SaslAuthenticate exchanges, and those the broker refused.
    pub sasl_authentications: u64,
    pub sasl_authentication_failures: u64,
    /// Legacy (magic 0/1) message sets skipped, and record batches that could not be read
    /// (corrupt, or failed or oversized decompression), in Produce requests and Fetch responses.
    pub legacy_batches: u64,
    pub undecodable_batches: u64,
    /// Records in batches the kernel skipped (`--record-headers`): linked by offset, their
    /// headers' trace contexts unread.
    pub records_headers_unread: u64,
}

impl SessionCounters {
    /// Every counter, for the stats line and `/metrics`.
    pub fn named(&self) -> Vec<Counter> {
        vec![
            Counter::count("requests", self.requests, "requests decoded"),
            Counter::count("responses", self.responses, "responses decoded"),
            Counter::count(
                "undecodable_requests",
                self.undecodable_requests,
                "request frames whose header or body did not decode",
            ),
            Counter::count(
                "undecodable_responses",
                self.undecodable_responses,
                "response frames whose header or body did not decode",
            ),
            Counter::count(
                "unmatched_responses",
                self.unmatched_responses,
                "responses without their request (lost, or before the tracer attached)",
            ),
            Counter::count(
                "unanswered_requests",
                self.unanswered_requests,
                "requests without a response",
            ),
            Counter::count(
                "evicted_requests",
                self.evicted_requests,
                "requests given up unanswered to stay within --max-in-flight or --max-in-flight-bytes",
            ),
            Counter::count(
                "acks0_produces",
                self.acks0_produces,
                "Produce requests with acks=0 (no response, so no offsets)",
            ),
            Counter::count(
                "frames_before_role",
                self.frames_before_role,
                "frames seen before the connection's client side was known",
            ),
            Counter::count(
                "sasl_tokens",
                self.sasl_tokens,
                "raw SASL tokens after a SaslHandshake v0, skipped unread",
            ),
            Counter::count(
                "sasl_authentications",
                self.sasl_authentications,
                "SASL authentications (SaslAuthenticate exchanges; their credentials are never read)",
            ),
            Counter::count(
                "sasl_authentication_failures",
                self.sasl_authentication_failures,
                "SASL authentications the broker refused",
            ),
            Counter::count(
                "legacy_batches",
                self.legacy_batches,
                "legacy (magic 0/1) message sets skipped",
            ),
            Counter::count(
                "undecodable_batches",
                self.undecodable_batches,
                "record batches that could not be read",
            ),
            Counter::count(
                "records_headers_unread",
                self.records_headers_unread,
                "records the kernel skipped after their batch header (--record-headers): headers and trace contexts unread",
            ),
        ]
    }

    /// Counts the batches (and records) of a decoded message that were not read.
    fn batches<'a>(&mut self, parts: impl Iterator<Item = &'a PartitionRecords>) {
        for p in parts {
            self.legacy_batches += u64::from(p.legacy_batches);
            self.undecodable_batches += u64::from(p.undecodable_batches);
            self.records_headers_unread += u64::from(p.headers_unread);
        }
    }
}

struct Pending {
    header: RequestHeader,
    request: Result<Request, DecodeError>,
    complete: bool,
    ns: (u64, u64),
    /// Bytes it holds, estimated: see [`Pending::weight`].
    weight: usize,
}

impl Pending {
    /// What a request held until its response costs: the frame's bytes stand for what most
    /// decoded fields keep (names, ids, lists of small structs), and a produce request's record
    /// tables (a few dozen bytes per record, however small the record on the wire) are
    /// counted as they are.
    fn weight(
        frame_bytes: usize,
        header: &RequestHeader,
        request: &Result<Request, DecodeError>,
    ) -> usize {
        let records = match request {
            Ok(Request::Produce(p)) => p.partitions.iter().map(|p| p.records.heap_bytes()).sum(),
            _ => 0,
        };
        size_of::<Pending>()
            + frame_bytes
            + header.client_id.as_ref().map_or(0, String::len)
            + records
    }
}

pub struct Session {
    framers: [Framer; 2],
    pairing: Pairing,
}

/// What a connection's frames have taught: who is the client, its client id, the requests
/// waiting for their responses, and whether raw SASL tokens are flowing. The framers find
/// frames; this decides what each one is.
struct Pairing {
    /// Direction of requests, once a request has been seen.
    request_dir: Option<Direction>,
    /// The client id of this connection's requests (clients keep one per connection): a frame
    /// found by resynchronising must carry it.
    client_id: Option<Option<String>>,
    inflight: VecDeque<Pending>,
    max_inflight: usize,
    /// What the requests in flight weigh together, and what they may (the pipeline's share of
    /// `--max-in-flight-bytes` left for this connection).
    held: usize,
    max_held: usize,
    /// After a SaslHandshake v0 request: raw SASL tokens (passwords, SCRAM proofs) follow,
    /// framed by a size prefix alone, until the client's next Kafka request.
    sasl_tokens: bool,
    /// The mechanism of the connection's last SaslHandshake, for its SaslAuthenticate.
    sasl_mechanism: Option<String>,
}

/// What a plausible frame start is in one direction, fixed for one piece (copied out of the
/// pairing state, which handling a frame changes).
enum FrameStart {
    /// A request header; carrying this client id, when it is known and the framer searches.
    Request(Option<Option<String>>),
    /// A response to one of these correlation ids.
    Response(Vec<i32>),
}

impl FrameStart {
    fn plausible(&self, b: &[u8]) -> Option<bool> {
        match self {
            Self::Request(known) => match (looks_like_request(b), known) {
                (Some(true), Some(known)) => same_client_id(b, known.as_deref()),
                (v, _) => v,
            },
            Self::Response(corrs) => plausible_response(b, corrs),
        }
    }
}

/// The bytes start a response to one of the requests in flight (`corrs`).
fn plausible_response(b: &[u8], corrs: &[i32]) -> Option<bool> {
    if b.len() < 8 {
        return None;
    }
    let size = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let corr = i32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    Some((4..=super::MAX_REQUEST_SIZE).contains(&size) && corrs.contains(&corr))
}

/// Whether the request header at the start of `b` (size prefix included) carries `known` as
/// its client id; `None` until the id's bytes are there.
fn same_client_id(b: &[u8], known: Option<&str>) -> Option<bool> {
    let len = i16::from_be_bytes([*b.get(12)?, *b.get(13)?]);
    match (len, known) {
        (-1, None) => Some(true),
        (n, Some(k)) if n >= 0 => Some(b.get(14..14 + n as usize)? == k.as_bytes()),
        _ => Some(false),
    }
}

/// A frame body (size prefix removed) that reads as a request header.
fn starts_like_request(body: &[u8], size: usize) -> bool {
    let mut head = [0u8; 4 + 64];
    head[..4].copy_from_slice(&(size as i32).to_be_bytes());
    let n = body.len().min(64);
    head[4..4 + n].copy_from_slice(&body[..n]);
    looks_like_request(&head[..4 + n]) == Some(true)
}

impl Pairing {
    /// What a frame start in `dir` looks like: before the roles are known both directions look
    /// for requests; after, the response direction looks for a response to a request in
    /// flight. The client id is copied only for a framer that searches (`!synced`).
    fn frame_start(&self, dir: Direction, synced: bool) -> FrameStart {
        if self.request_dir.is_none_or(|d| d == dir) {
            FrameStart::Request(if synced { None } else { self.client_id.clone() })
        } else {
            FrameStart::Response(
                self.inflight
                    .iter()
                    .map(|p| p.header.correlation_id)
                    .collect(),
            )
        }
    }

    /// Handles one frame of direction `dir`; false rejects a frame found by resynchronising
    /// (or guessed as the first request) that turned out not to be one.
    fn on_frame(
        &mut self,
        f: Frame<'_>,
        dir: Direction,
        opts: &DecodeOptions,
        counters: &mut SessionCounters,
        out: &mut dyn FnMut(Exchange),
    ) -> bool {
        let Some((as_request, guessed)) = self.role_of(&f, dir) else {
            counters.frames_before_role += 1;
            return !f.after_resync;
        };
        if self.skips_sasl_token(&f, as_request) {
            counters.sasl_tokens += 1;
            return true;
        }
        if !as_request {
            return self.on_response(f, dir, opts, counters, out);
        }
        self.sasl_tokens = f.body.get(..4) == Some(&[0, api::SASL_HANDSHAKE as u8, 0, 0][..]);
        let accepted = self.on_request(f, guessed, dir, opts, counters, out);
        // A response can pass for a request header (corr id 13 reads as Produce v13): a guess
        // the decoder rejects names no direction.
        if guessed && !accepted {
            self.request_dir = None;
            self.client_id = None;
        }
        accepted
    }

    /// Whether the frame is a request, and whether that is a guess: `None` while no frame has
    /// named the roles. The client speaks first: the first frame that reads as a request names
    /// the request direction, if it decodes as one. (When the start of the request stream is
    /// lost, the first response can read as a request header: correlation id 4 reads as
    /// Produce v4.)
    fn role_of(&mut self, f: &Frame<'_>, dir: Direction) -> Option<(bool, bool)> {
        match self.request_dir {
            Some(d) => Some((d == dir, false)),
            None if starts_like_request(f.body, f.size) => {
                self.request_dir = Some(dir);
                Some((true, true))
            }
            None => None,
        }
    }

    /// During a legacy SASL exchange, whether this frame is a raw token, skipped unread. The
    /// client's next Kafka request (its own client id in a plausible header) ends the exchange;
    /// the broker's tokens come while no request is in flight.
    fn skips_sasl_token(&mut self, f: &Frame<'_>, as_request: bool) -> bool {
        if !self.sasl_tokens {
            return false;
        }
        let resumes = as_request
            && starts_like_request(f.body, f.size)
            && parse_request_header(f.body)
                .is_ok_and(|(h, _)| Some(&h.client_id) == self.client_id.as_ref());
        if !resumes && (as_request || self.inflight.is_empty()) {
            return true;
        }
        self.sasl_tokens = !resumes;
        false
    }

    /// Handles a request frame; false rejects a frame found by resynchronising, or one that
    /// does not decode when its start was a guess (`guessed`, or found by resynchronising).
    fn on_request(
        &mut self,
        f: Frame<'_>,
        guessed: bool,
        dir: Direction,
        opts: &DecodeOptions,
        counters: &mut SessionCounters,
        out: &mut dyn FnMut(Exchange),
    ) -> bool {
        let strict = guessed || f.after_resync;
        let Ok((header, at)) = parse_request_header(f.body) else {
            counters.undecodable_requests += 1;
            return !strict;
        };
        match &self.client_id {
            Some(known) if f.after_resync && *known != header.client_id => return false,
            Some(_) => {}
            None => self.client_id = Some(header.client_id.clone()),
        }
        let opts = frame_options(&f, opts);
        let request = match decode_request(&header, &f.body[at..], !f.complete, &opts) {
            Ok(Request::SaslHandshake(m)) => {
                self.sasl_mechanism = Some(m.clone());
                Ok(Request::SaslHandshake(m))
            }
            Ok(Request::SaslAuthenticate(_)) => {
                Ok(Request::SaslAuthenticate(self.sasl_mechanism.clone()))
            }
            other => other,
        };
        if let Ok(Request::Produce(p)) = &request {
            counters.batches(p.partitions.iter().map(|p| &p.records));
        }
        if request.is_err() {
            counters.undecodable_requests += 1;
            if strict {
                return false;
            }
        }
        counters.requests += 1;
        let client_side = dir == Direction::Egress;
        let pending = Pending {
            weight: Pending::weight(f.body.len(), &header, &request),
            header,
            request,
            complete: f.complete,
            ns: (f.first_ns, f.last_ns),
        };
        if let Ok(Request::Produce(p)) = &pending.request
            && p.acks == 0
        {
            counters.acks0_produces += 1;
            out(unanswered(pending, client_side));
            return true;
        }
        self.held += pending.weight;
        self.inflight.push_back(pending);
        // Past a bound the oldest go first (the one just added too, when it alone is over).
        // Responses come in request order, so those are the next answered: giving up any other
        // would lose as many, and the oldest are the likeliest never to be answered at all.
        while (self.inflight.len() > self.max_inflight || self.held > self.max_held)
            && self.give_up_oldest(client_side, counters, out)
        {
            counters.evicted_requests += 1;
        }
        true
    }

    /// The oldest request in flight, no longer held.
    fn take_oldest(&mut self) -> Option<Pending> {
        let p = self.inflight.pop_front()?;
        self.held -= p.weight;
        Some(p)
    }

    /// Reports the oldest request in flight as unanswered; false when none was.
    fn give_up_oldest(
        &mut self,
        client_side: bool,
        counters: &mut SessionCounters,
        out: &mut dyn FnMut(Exchange),
    ) -> bool {
        let Some(old) = self.take_oldest() else {
            return false;
        };
        counters.unanswered_requests += 1;
        out(unanswered(old, client_side));
        true
    }

    /// Handles a response frame; false rejects a frame found by resynchronising.
    fn on_response(
        &mut self,
        f: Frame<'_>,
        dir: Direction,
        opts: &DecodeOptions,
        counters: &mut SessionCounters,
        out: &mut dyn FnMut(Exchange),
    ) -> bool {
        let client_side = dir == Direction::Ingress;
        let corr = f
            .body
            .get(..4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let Some(i) = corr.and_then(|c| {
            self.inflight
                .iter()
                .position(|p| p.header.correlation_id == c)
        }) else {
            counters.unmatched_responses += 1;
            return !f.after_resync;
        };
        // Responses come in request order: those before this one will never come.
        for _ in 0..i {
            self.give_up_oldest(client_side, counters, out);
        }
        let Some(p) = self.take_oldest() else {
            return true; // none: `i` was a position in the queue
        };
        let (key, version) = (p.header.api_key, p.header.api_version);
        let opts = frame_options(&f, opts);
        let response = parse_response_header(f.body, key, version)
            .and_then(|(_, at)| decode_response(key, version, &f.body[at..], !f.complete, &opts));
        if response.is_err() {
            counters.undecodable_responses += 1;
        }
        if let Ok(Response::SaslAuthenticate(code)) = &response {
            counters.sasl_authentications += 1;
            counters.sasl_authentication_failures += u64::from(*code != 0);
        }
        if let Ok(Response::Fetch(f)) = &response {
            counters.batches(f.partitions.iter().map(|p| &p.records));
        }
        counters.responses += 1;
        out(Exchange {
            header: p.header,
            request: p.request,
            request_complete: p.complete,
            response: Some(response),
            response_complete: f.complete,
            client_side,
            request_ns: p.ns,
            response_ns: Some((f.first_ns, f.last_ns)),
        });
        true
    }
}

/// The options one frame decodes with: the session's, told when the kernel skipped bytes of
/// the frame on purpose (a produce request's or a fetch response's record values).
fn frame_options<'a>(f: &Frame<'_>, opts: &'a DecodeOptions) -> Cow<'a, DecodeOptions> {
    if f.skipped {
        Cow::Owned(DecodeOptions {
            skipped_by_kernel: true,
            ..opts.clone()
        })
    } else {
        Cow::Borrowed(opts)
    }
}

impl Session {
    /// `midstream`: the connection existed before the tracer, so neither stream starts at a
    /// frame boundary.
    pub fn new(midstream: bool, max_frame: usize, max_inflight: usize) -> Self {
        Self {
            framers: [
                Framer::new(max_frame, !midstream),
                Framer::new(max_frame, !midstream),
            ],
            pairing: Pairing {
                request_dir: None,
                client_id: None,
                inflight: VecDeque::new(),
                max_inflight,
                held: 0,
                max_held: usize::MAX,
                sasl_tokens: false,
                sasl_mechanism: None,
            },
        }
    }

    /// The requests travel in `dir`: known from the connection's ports (a client's end of a
    /// connection to a broker port sends them), so no frame has to be guessed to name the
    /// roles. (A guess can go wrong when a stream's start is lost: a response's correlation id
    /// 4 then reads as a Produce v4 request header.)
    pub fn with_requests_from(mut self, dir: Direction) -> Self {
        self.pairing.request_dir = Some(dir);
        self
    }

    pub fn framers(&self) -> &[Framer; 2] {
        &self.framers
    }

    /// The connection closed: its framers count what they held.
    pub fn close_framers(&mut self) {
        for f in &mut self.framers {
            f.close();
        }
    }

    /// Bytes buffered by this connection's framers.
    pub fn buffered(&self) -> usize {
        self.framers.iter().map(Framer::buffered).sum()
    }

    /// What this connection's requests in flight weigh (estimated bytes).
    pub fn held(&self) -> usize {
        self.pairing.held
    }

    /// Bounds what the requests in flight may weigh from the next frame on (the share of the
    /// global bound the other connections leave).
    pub fn hold_at_most(&mut self, bytes: usize) {
        self.pairing.max_held = bytes;
    }

    /// Feeds a piece of one direction; completed exchanges go to `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        dir: Direction,
        piece: &Piece<'_>,
        first_ns: u64,
        last_ns: u64,
        opts: &DecodeOptions,
        counters: &mut SessionCounters,
        out: &mut dyn FnMut(Exchange),
    ) {
        let Self { framers, pairing } = self;
        let role_known = pairing.request_dir.is_some();
        let start = pairing.frame_start(dir, framers[dir as usize].synced());
        framers[dir as usize].push(
            piece,
            first_ns,
            last_ns,
            &|b| start.plausible(b),
            &mut |f| pairing.on_frame(f, dir, opts, counters, out),
        );
        // The first request names the roles. A frame the other direction found meanwhile was
        // searched for as a request in what is the response stream: inside a fetch response,
        // zero-filled fields read as a small request header with a size that can hold up every
        // later response, so that guess goes and the search restarts for responses.
        if !role_known && pairing.request_dir == Some(dir) {
            framers[1 - dir as usize].drop_guess();
        }
    }

    /// The connection closed: requests still waiting will get no response.
    pub fn close(&mut self, counters: &mut SessionCounters, out: &mut dyn FnMut(Exchange)) {
        let client_side = self.pairing.request_dir != Some(Direction::Ingress);
        while self.pairing.give_up_oldest(client_side, counters, out) {}
    }
}

/// The exchange of a request that gets no response (acks=0, or none came).
fn unanswered(p: Pending, client_side: bool) -> Exchange {
    Exchange {
        header: p.header,
        request: p.request,
        request_complete: p.complete,
        response: None,
        response_complete: false,
        client_side,
        request_ns: p.ns,
        response_ns: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reassembly::Stream;

    /// A request frame: header v1 (client id "c"), then `body`.
    fn request(key: i16, version: i16, corr: i32, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(key.to_be_bytes());
        f.extend(version.to_be_bytes());
        f.extend(corr.to_be_bytes());
        f.extend(1i16.to_be_bytes());
        f.push(b'c');
        f.extend_from_slice(body);
        [(f.len() as i32).to_be_bytes().to_vec(), f].concat()
    }

    /// An ApiVersions v0 response: correlation id, no error, no APIs.
    fn api_versions_response(corr: i32) -> Vec<u8> {
        let mut f = corr.to_be_bytes().to_vec();
        f.extend(0i16.to_be_bytes());
        f.extend(0i32.to_be_bytes());
        [(f.len() as i32).to_be_bytes().to_vec(), f].concat()
    }

    /// A legacy SASL/PLAIN exchange (SaslHandshake v0, then raw tokens) and a request after
    /// it: the tokens are skipped unread, so the password never becomes a header field, and the
    /// connection's Kafka traffic goes on being decoded.
    #[test]
    fn raw_sasl_tokens_after_a_v0_handshake_are_never_decoded() {
        let mut c = Conn::new();
        // SaslHandshake v0 "PLAIN", answered with no error and the mechanisms.
        c.push(Direction::Egress, &request(17, 0, 1, b"\x00\x05PLAIN"));
        let mut resp = 1i32.to_be_bytes().to_vec();
        resp.extend(b"\x00\x00\x00\x00\x00\x01\x00\x05PLAIN");
        c.push(
            Direction::Ingress,
            &[(resp.len() as i32).to_be_bytes().to_vec(), resp].concat(),
        );
        // A client token, size-prefixed, that reads like a small request header whose client
        // id holds the password (the worst case), and a broker token (SCRAM's server-first).
        let sized = |t: &[u8]| [(t.len() as i32).to_be_bytes().to_vec(), t.to_vec()].concat();
        c.push(
            Direction::Egress,
            &sized(b"\x00\x00\x00\x05\x00\x10hunter2-password-x"),
        );
        c.push(Direction::Ingress, &sized(b"r=nonce,s=c2FsdA==,i=4096"));
        // Authenticated: an ApiVersions request and its answer.
        c.push(Direction::Egress, &request(18, 0, 2, b""));
        c.push(Direction::Ingress, &api_versions_response(2));
        assert_eq!(c.counters.sasl_tokens, 2, "{:?}", c.counters);
        let keys: Vec<(i16, i32)> = c
            .out
            .iter()
            .map(|e| (e.header.api_key, e.header.correlation_id))
            .collect();
        assert_eq!(keys, [(17, 1), (18, 2)]);
        assert!(
            c.out.iter().all(|e| !format!("{e:?}").contains("hunter2")),
            "{:?}",
            c.out
        );
        assert_eq!(c.counters.undecodable_requests, 0);
        assert_eq!(c.counters.unmatched_responses, 0);
    }

    struct Conn {
        session: Session,
        streams: [Stream; 2],
        counters: SessionCounters,
        out: Vec<Exchange>,
    }

    impl Conn {
        fn new() -> Self {
            Self::with(false)
        }
        fn with(midstream: bool) -> Self {
            Self {
                session: Session::new(midstream, 1 << 20, 4),
                streams: Default::default(),
                counters: Default::default(),
                out: Vec::new(),
            }
        }
        fn push(&mut self, dir: Direction, bytes: &[u8]) {
            let s = &mut self.streams[dir as usize];
            let pos = s.bytes;
            let piece = s.push(pos, bytes);
            let out = &mut self.out;
            self.session.push(
                dir,
                &piece,
                1,
                2,
                &DecodeOptions::default(),
                &mut self.counters,
                &mut |e| out.push(e),
            );
        }
    }

    #[test]
    fn broker_side_pipelined_requests_pair_in_order() {
        let mut c = Conn::new();
        // The broker receives three requests at once, then answers.
        let reqs = [
            request(18, 0, 1, b""),
            request(18, 0, 2, b""),
            request(18, 0, 3, b""),
        ]
        .concat();
        c.push(Direction::Ingress, &reqs);
        assert!(c.out.is_empty(), "nothing answered yet");
        c.push(
            Direction::Egress,
            &[api_versions_response(1), api_versions_response(2)].concat(),
        );
        c.push(Direction::Egress, &api_versions_response(3));
        let ids: Vec<i32> = c.out.iter().map(|e| e.header.correlation_id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert!(c.out.iter().all(|e| !e.client_side && matches!(e.response, Some(Ok(Response::ApiVersions(_))))));
        assert_eq!((c.counters.requests, c.counters.responses), (3, 3));
    }

    #[test]
    fn skipped_responses_leave_requests_unanswered_and_acks0_needs_none() {
        let mut c = Conn::new();
        c.push(
            Direction::Egress,
            &[request(18, 0, 4, b""), request(18, 0, 5, b"")].concat(),
        );
        c.push(Direction::Ingress, &api_versions_response(5));
        assert_eq!(c.out.len(), 2);
        assert_eq!(
            (c.out[0].header.correlation_id, c.out[0].response.is_none()),
            (4, true)
        );
        assert_eq!(c.counters.unanswered_requests, 1);
        assert!(c.out[1].client_side);
        // Produce v3, acks=0, no topics: reported at once, no response awaited.
        let mut body = (-1i16).to_be_bytes().to_vec(); // transactional id: null
        body.extend(0i16.to_be_bytes());
        body.extend(1000i32.to_be_bytes());
        body.extend(0i32.to_be_bytes());
        c.push(Direction::Egress, &request(0, 3, 6, &body));
        assert_eq!(c.out.len(), 3);
        assert!(matches!(&c.out[2].request, Ok(Request::Produce(p)) if p.acks == 0));
        assert_eq!(c.counters.acks0_produces, 1);
        // An unmatched response is counted, not paired.
        c.push(Direction::Ingress, &api_versions_response(99));
        assert_eq!((c.out.len(), c.counters.unmatched_responses), (3, 1));
        // Requests beyond the in-flight bound (4) push the oldest out, unanswered.
        for corr in 10..16 {
            c.push(Direction::Egress, &request(18, 0, corr, b""));
        }
        assert_eq!(c.counters.unanswered_requests, 3);
        assert_eq!(c.counters.evicted_requests, 2);
    }

    /// The bytes bound gives up the oldest requests, the one just added too when it alone is
    /// over; what is held goes back to zero as responses come, and a response to a request
    /// given up is unmatched, not paired with another.
    #[test]
    fn requests_in_flight_are_bounded_by_their_weight() {
        let mut c = Conn::new();
        let small = request(18, 0, 1, b"");
        c.push(Direction::Egress, &small);
        let one = c.session.held();
        assert!(one > small.len(), "{one}");
        // Room for two: the third pushes the first out.
        c.session.hold_at_most(2 * one);
        c.push(Direction::Egress, &request(18, 0, 2, b""));
        c.push(Direction::Egress, &request(18, 0, 3, b""));
        assert_eq!(c.session.held(), 2 * one);
        assert_eq!(c.counters.evicted_requests, 1);
        assert_eq!(
            (c.out.len(), c.out[0].header.correlation_id),
            (1, 1),
            "the oldest goes, unanswered"
        );
        c.push(Direction::Ingress, &api_versions_response(1));
        assert_eq!(c.counters.unmatched_responses, 1);
        c.push(Direction::Ingress, &api_versions_response(2));
        c.push(Direction::Ingress, &api_versions_response(3));
        assert_eq!(c.session.held(), 0);
        assert_eq!(c.out.len(), 3);
        assert!(c.out[1..].iter().all(|e| e.response.is_some()));
        // No room at all: a request is reported at once, unanswered.
        c.session.hold_at_most(0);
        c.push(Direction::Egress, &request(18, 0, 4, b""));
        assert_eq!((c.out.len(), c.session.held()), (4, 0));
        assert_eq!(c.counters.evicted_requests, 2);
        assert_eq!(c.counters.unanswered_requests, 2);
    }

    /// Mid-stream, the response stream's bytes are searched for a request until the roles are
    /// known; a guess found there (a "Produce v3" header with an empty client id in the zeros of
    /// a fetch response, announcing 1 MiB) must not outlive the first real request.
    #[test]
    fn a_guess_in_the_response_stream_goes_when_the_roles_are_known() {
        let mut c = Conn::with(true);
        let mut zeros = vec![0x00, 0x10, 0x00, 0x00, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0];
        zeros.extend([0u8; 50]);
        c.push(Direction::Ingress, &zeros);
        c.push(Direction::Egress, &request(18, 0, 7, b""));
        c.push(Direction::Ingress, &api_versions_response(7));
        assert_eq!(c.out.len(), 1, "{:?}", c.counters);
        assert!(matches!(
            c.out[0].response,
            Some(Ok(Response::ApiVersions(_)))
        ));
    }

    /// Attached mid-stream to a young connection: its first bytes are a response whose
    /// correlation id (13) reads as the start of a Produce v13 request. The guess fails to
    /// decode and names no direction, so the next request and its response still pair.
    #[test]
    fn a_response_mistaken_for_a_request_does_not_fix_the_roles() {
        let mut c = Conn::with(true);
        let mut fetch = 13i32.to_be_bytes().to_vec();
        fetch.extend([0u8; 12]);
        fetch.extend(b"value-0-xxxxxxxxxxxxxxxxxxxx");
        c.push(
            Direction::Ingress,
            &[(fetch.len() as i32).to_be_bytes().to_vec(), fetch].concat(),
        );
        assert!(c.out.is_empty());
        c.push(Direction::Egress, &request(18, 0, 14, b""));
        c.push(Direction::Ingress, &api_versions_response(14));
        assert_eq!(c.out.len(), 1, "{:?}", c.counters);
        assert!(c.out[0].client_side);
        assert!(matches!(
            c.out[0].response,
            Some(Ok(Response::ApiVersions(_)))
        ));
    }
}
