//! The selective copy's rule: where in a connection's streams the kernel may skip bytes.
//!
//! Record values are most of the bytes a client sends or receives and the tracer never reads
//! them, so the kernel follows each Produce request and each Fetch response down to its records
//! (frame, header, topics, partitions, record batches, records) and skips each uncompressed
//! record's value; everything else is copied, and every skipped range is reported as a known gap
//! (`flags::RUNS`), never as loss. A response names no API: the request walk notes each Fetch
//! request's correlation id and version ([`InFlight`]), and the response walk follows only the
//! responses it finds there (any other is copied whole).
//! Anything unexpected copies the rest of the frame whole (a frame size it cannot believe stops
//! the walk for the stream): copying more is always correct, skipping wrongly never is. Compressed
//! batches are copied whole: their record headers are inside the compressed bytes. Unless the
//! [`policy`] gives up record headers: then a batch's records are skipped whole after its header
//! (one step per batch, whatever its codec), which keeps offsets and counts, not trace contexts.
//!
//! The walk is resumable at any byte (syscalls and iovecs split the stream anywhere): a field
//! cut by a segment's end is carried ([`Skim::carry`]) and finished with the next segment's
//! bytes. It lives here, not in the eBPF crate, so that the daemon's tests run the very rule
//! the kernel runs over recorded client traffic. Written for the verifier: fixed-size windows
//! read at masked indexes, no slices of computed length, no panics.

/// Bytes read from a segment for one parse step: the longest field a step needs is a record
/// batch's 61-byte header.
pub const FRESH: usize = 64;
/// The parse window: a carried field's start followed by fresh bytes.
pub const WINDOW: usize = 2 * FRESH;
/// Values shorter than this are copied: a skip costs a run header in the record.
pub const MIN_SKIP: u64 = 32;
/// Batches whose records average less than this are copied whole: a walk takes a few steps
/// per record (a 64-byte read, two or three decisions), which costs more than copying a small
/// record outright (the copy moves 8 KiB per step).
pub const MIN_WALKED_RECORD: u64 = 256;
/// Bytes that start each run of a [`flags::RUNS`](crate::flags::RUNS) payload: the bytes
/// skipped before the run (`u32`), then the bytes copied (`u16`), little-endian.
pub const RUN_HEADER: usize = 6;

/// `Skim::policy` values (the kernel's `Config::skim`, where 0 turns the walk off): which
/// records' headers the walk keeps (`--record-headers`).
pub mod policy {
    /// Every record's: values of uncompressed records are skipped, compressed batches copied.
    pub const ALL: u8 = 1;
    /// Uncompressed records' only: compressed batches' records are skipped after the header.
    pub const UNCOMPRESSED: u8 = 2;
    /// None: every batch's records are skipped after the header.
    pub const NONE: u8 = 3;
}

/// `Skim::side` values: which of a connection's streams is walked.
pub mod side {
    /// The client's requests (Produce).
    pub const REQUESTS: u8 = 0;
    /// The broker's responses (Fetch).
    pub const RESPONSES: u8 = 1;
}

/// `Skim::state` values: what the stream holds at `Skim::at`.
pub mod state {
    /// Not walked: every byte is copied.
    pub const OFF: u8 = 0;
    /// A frame's size prefix and request header.
    pub const FRAME: u8 = 1;
    /// The request header's tagged fields (flexible versions).
    pub const HEADER_TAGS: u8 = 2;
    /// Produce: the transactional id's length.
    pub const PRODUCE: u8 = 3;
    /// Produce, after the transactional id: acks, timeout, topic count.
    pub const ACKS: u8 = 4;
    /// A topic's name (or id); or, with none left, the frame's rest.
    pub const TOPIC: u8 = 5;
    /// A topic's partition count (after a name longer than the window).
    pub const PARTITIONS: u8 = 6;
    /// A partition's index and records size; or, with none left, the topic's tagged fields.
    pub const PARTITION: u8 = 7;
    /// A record batch's header, or the end of the records field.
    pub const BATCH: u8 = 8;
    /// A record's length, attributes, deltas and key; or the end of the batch.
    pub const RECORD: u8 = 9;
    /// A record's value length (after a key longer than the window).
    pub const VALUE_LEN: u8 = 10;
    /// A partition's tagged fields (flexible versions), after its records.
    pub const PARTITION_TAGS: u8 = 11;
    /// A response frame's size prefix and correlation id.
    pub const RESPONSE: u8 = 12;
    /// The response header's tagged fields (flexible versions).
    pub const RESPONSE_TAGS: u8 = 13;
    /// Fetch: throttle time, error code, session id, topic count.
    pub const FETCH: u8 = 14;
    /// A fetched partition's aborted transactions (`Skim::records` of them left), then its
    /// preferred read replica and records size.
    pub const ABORTED: u8 = 15;
}

/// Fetch requests a connection may have in flight at once and still have their responses
/// walked (clients keep one or two; a response whose request was pushed out is copied whole).
pub const IN_FLIGHT: usize = 8;

/// The Fetch requests a connection's request walk has seen, by correlation id: responses carry
/// no API key or version, so the response walk finds them here. Entries are single `u64`s
/// (`correlation id << 32 | version << 8 | 1`), copied word by word between the map and the
/// walks: a response walk on another CPU sees each entry whole, old or new, and a response
/// whose entry it does not see yet is copied whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InFlight {
    pub entries: [u64; IN_FLIGHT],
    /// Where the next entry goes (modulo [`IN_FLIGHT`]).
    pub next: u64,
}

impl InFlight {
    pub const fn new() -> Self {
        Self {
            entries: [0; IN_FLIGHT],
            next: 0,
        }
    }

    /// A Fetch request of `version` went out with `correlation_id`.
    #[inline(always)]
    pub fn note(&mut self, correlation_id: i32, version: u8) {
        let i = opaque(self.next as usize) & (IN_FLIGHT - 1);
        self.entries[i] = (correlation_id as u32 as u64) << 32 | (version as u64) << 8 | 1;
        self.next = self.next.wrapping_add(1);
    }

    /// The version of the Fetch request answered by `correlation_id`, if one was noted.
    #[inline(always)]
    pub fn fetch_version(&self, correlation_id: i32) -> Option<u8> {
        for e in self.entries {
            if e & 1 != 0 && (e >> 32) as u32 == correlation_id as u32 {
                return Some((e >> 8) as u8);
            }
        }
        None
    }
}

/// Where one of a connection's streams (its requests or its responses, [`side`]) is in its
/// walk. Kept per connection by the kernel; all positions are in the stream's bytes
/// (`ConnState::tx_bytes`/`rx_bytes`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Skim {
    /// Position of the next field to parse. Bytes before it are copied, but for the value
    /// from `value_start` to `value_end`, which is skipped.
    pub at: u64,
    pub frame_end: u64,
    /// End of the current partition's records field, batch and record.
    pub records_end: u64,
    pub batch_end: u64,
    pub record_end: u64,
    /// The value to skip before `at` (inert once the walk is past it).
    pub value_start: u64,
    pub value_end: u64,
    /// Topics left after the current one, partitions left in it, records left in the batch
    /// (or a fetched partition's aborted transactions left).
    pub topics: u32,
    pub partitions: u32,
    pub records: u32,
    /// The bytes from `at` on that are held in `carry` (a field cut by a segment's end).
    pub carry_len: u32,
    /// A [`state`] value.
    pub state: u8,
    /// The frame's API version (the Produce request's, or the Fetch request's a response
    /// answers).
    pub version: u8,
    /// A [`policy`] value.
    pub policy: u8,
    /// A [`side`] value.
    pub side: u8,
    pub _pad: [u8; 4],
    pub carry: [u8; FRESH],
}

impl Default for Skim {
    fn default() -> Self {
        Self::new(state::OFF, policy::ALL)
    }
}

/// What the walker does at a stream position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Copy at most this many bytes.
    Copy(u64),
    /// Skip at most this many bytes (the skip goes on in the next segment if it ends first).
    Skip(u64),
    /// Parse: [`Skim::load`] the window, read fresh bytes after it, [`Skim::step`].
    Parse,
}

/// A part of a segment, as [`Skim::walk`] hands it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part<'a> {
    Copy(&'a [u8]),
    Skip(u64),
}

/// What a parse step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The field was read.
    Moved,
    /// The segment ends inside the field: its start is carried into the next segment.
    Wait,
    /// Something unexpected: the rest of the frame is copied whole.
    Unparsed,
    /// The framing itself is in doubt: the stream is copied whole from now on.
    Stopped,
}

/// A field could not be read from the window.
enum Miss {
    /// More bytes are needed.
    Short,
    /// The bytes make no sense here.
    Bad,
}

/// A cursor over the parse window.
struct Cur<'a> {
    w: &'a [u8; WINDOW],
    i: usize,
    /// Bytes that may be read.
    len: usize,
}

impl Cur<'_> {
    #[inline(always)]
    fn u8(&mut self) -> Result<u8, Miss> {
        if self.i >= self.len {
            return Err(Miss::Short);
        }
        let b = self.w[opaque(self.i) & (WINDOW - 1)];
        self.i += 1;
        Ok(b)
    }

    #[inline(always)]
    fn be(&mut self, n: usize) -> Result<u64, Miss> {
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 8) | self.u8()? as u64;
        }
        Ok(v)
    }

    #[inline(always)]
    fn i16(&mut self) -> Result<i16, Miss> {
        Ok(self.be(2)? as u16 as i16)
    }

    #[inline(always)]
    fn i32(&mut self) -> Result<i32, Miss> {
        Ok(self.be(4)? as u32 as i32)
    }

    #[inline(always)]
    fn skip(&mut self, n: u64) -> Result<(), Miss> {
        if self.i as u64 + n > self.len as u64 {
            return Err(Miss::Short);
        }
        self.i += n as usize;
        Ok(())
    }

    /// An unsigned LEB128 varint of at most `max` bytes.
    #[inline(always)]
    fn uvarint(&mut self, max: u32) -> Result<u64, Miss> {
        let mut v = 0u64;
        for k in 0..max {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << (7 * k);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Miss::Bad)
    }

    /// A zigzag varint (`max` 5) or varlong (`max` 10); negative values read as 0.
    #[inline(always)]
    fn varint(&mut self, max: u32) -> Result<u64, Miss> {
        let v = self.uvarint(max)?;
        Ok(if v & 1 != 0 { 0 } else { v >> 1 })
    }

    /// A length: non-flexible `i16` or (`wide`) `i32`, flexible a uvarint of length + 1; null
    /// reads as 0.
    #[inline(always)]
    fn length(&mut self, flexible: bool, wide: bool) -> Result<u64, Miss> {
        if flexible {
            return Ok(self.uvarint(5)?.saturating_sub(1));
        }
        let n = if wide {
            self.i32()? as i64
        } else {
            self.i16()? as i64
        };
        Ok(if n < 0 { 0 } else { n as u64 })
    }

    /// An empty tagged-field section (real clients send no tags in produce requests; one with
    /// fields is copied with the rest of the frame).
    #[inline(always)]
    fn no_tags(&mut self) -> Result<(), Miss> {
        if self.uvarint(5)? != 0 {
            return Err(Miss::Bad);
        }
        Ok(())
    }
}

/// `v`, hidden from the optimiser: an index masked after it keeps its mask in the program the
/// verifier reads (LLVM drops a mask it can prove redundant, from bounds older verifiers lose
/// track of, and 6.1 then refuses the access).
#[inline(always)]
fn opaque(v: usize) -> usize {
    #[cfg(target_arch = "bpf")]
    {
        let mut v = v;
        // SAFETY: one register move onto itself, which only claims to change `v`.
        unsafe {
            core::arch::asm!("{0} = {0}", inout(reg) v, options(nomem, nostack, preserves_flags))
        };
        v
    }
    #[cfg(not(target_arch = "bpf"))]
    v
}

const PRODUCE: i16 = 0;
const FETCH: i16 = 1;
/// Fetch versions whose responses the walk follows: those the daemon decodes (v4 added
/// `last_stable_offset` and the aborted-transaction list, which every walked response has).
const FETCH_VERSIONS: core::ops::RangeInclusive<i16> = 4..=18;
/// A size prefix past this is not believed (Kafka's own cap on a request).
const MAX_FRAME: u64 = 100 << 20;
/// A record batch's header, up to and including its record count.
const BATCH_HEADER: u64 = 61;

impl Skim {
    pub const fn new(state: u8, policy: u8) -> Self {
        Self {
            at: 0,
            frame_end: 0,
            records_end: 0,
            batch_end: 0,
            record_end: 0,
            value_start: 0,
            value_end: 0,
            topics: 0,
            partitions: 0,
            records: 0,
            carry_len: 0,
            state,
            version: 0,
            policy,
            side: side::REQUESTS,
            _pad: [0; 4],
            carry: [0; FRESH],
        }
    }

    /// A walk of a connection's requests from the stream's first byte, which starts a frame.
    pub const fn from_start(policy: u8) -> Self {
        Self::new(state::FRAME, policy)
    }

    /// A walk of a connection's responses from the stream's first byte.
    pub const fn responses_from_start(policy: u8) -> Self {
        let mut s = Self::new(state::RESPONSE, policy);
        s.side = side::RESPONSES;
        s
    }

    /// Whether the walk is at a frame's start (where a wrong turn puts the framing in doubt).
    #[inline(always)]
    fn at_frame_start(&self) -> bool {
        self.state == state::FRAME || self.state == state::RESPONSE
    }

    /// The state that starts this stream's frames.
    #[inline(always)]
    fn frame_state(&self) -> u8 {
        if self.side == side::RESPONSES {
            state::RESPONSE
        } else {
            state::FRAME
        }
    }

    /// What to do with the stream's bytes from `pos`, which the walk has reached.
    #[inline(always)]
    pub fn plan(&self, pos: u64) -> Plan {
        // Carried bytes were copied; parsing resumes after them.
        let parse_at = self.at + self.carry_len as u64;
        if self.state == state::OFF {
            Plan::Copy(u64::MAX)
        } else if pos < self.value_start {
            Plan::Copy(self.value_start - pos)
        } else if pos < self.value_end {
            Plan::Skip(self.value_end - pos)
        } else if parse_at > pos {
            Plan::Copy(parse_at - pos)
        } else {
            Plan::Parse
        }
    }

    /// Puts the carried bytes at the start of the window; the caller reads fresh bytes of the
    /// segment after them, at `carry_len`.
    #[inline(always)]
    pub fn load(&self, win: &mut [u8; WINDOW]) {
        if self.carry_len == 0 {
            return;
        }
        // All of it, whatever `carry_len`: bytes past it are overwritten by the fresh ones or
        // lie past the field's end, which `step` never reads. A copy without a condition per
        // byte is straight-line code the verifier walks once; the conditional loop it replaced
        // was walked byte by byte for every state that reached it (6.18.44 refused `sys_exit`
        // at the 1M-instruction limit).
        win[..FRESH].copy_from_slice(&self.carry);
    }

    /// Reads the field at `at` from the window (the carry, then `fresh` bytes of the segment;
    /// `more` when the segment goes on past them) and moves on. `fetches` is the connection's:
    /// the request walk notes Fetch requests in it, the response walk looks them up.
    #[inline(always)]
    pub fn step(
        &mut self,
        win: &[u8; WINDOW],
        fresh: usize,
        more: bool,
        fetches: &mut InFlight,
    ) -> Parsed {
        let start = self.at;
        let pos = start + self.carry_len as u64;
        let mut len = self.carry_len as usize + fresh;
        if len > FRESH {
            len = FRESH;
        }
        // Inside a frame nothing past its end is read.
        let bounded = !self.at_frame_start() && self.frame_end < start + len as u64;
        if bounded {
            len = self.frame_end.saturating_sub(start) as usize;
        }
        let mut c = Cur { w: win, i: 0, len };
        let r = match self.state {
            state::FRAME => self.frame(&mut c, fetches),
            state::HEADER_TAGS => c.no_tags().map(|()| self.moved(&c, state::PRODUCE)),
            state::RESPONSE => self.response(&mut c, fetches),
            state::RESPONSE_TAGS => c.no_tags().map(|()| self.moved(&c, state::FETCH)),
            state::FETCH => self.fetch(&mut c),
            state::PRODUCE => self.produce(&mut c),
            state::ACKS => self.acks(&mut c),
            state::TOPIC => self.topic(&mut c),
            state::PARTITIONS => self.partitions(&mut c),
            state::PARTITION => self.partition(&mut c),
            state::BATCH => self.batch(&mut c),
            state::RECORD => self.record(&mut c),
            state::VALUE_LEN => self.value(&mut c),
            state::PARTITION_TAGS => c.no_tags().map(|()| self.moved(&c, state::PARTITION)),
            state::ABORTED => self.aborted(&mut c),
            _ => Err(Miss::Bad),
        };
        match r {
            Ok(()) => {
                self.carry_len = 0;
                if self.at < pos {
                    // The next field starts in the carried bytes: they stay carried.
                    self.keep(win, start, pos)
                } else {
                    Parsed::Moved
                }
            }
            Err(Miss::Short) if !more && !bounded && len < FRESH => {
                // The field's start waits for the next segment, from `at` to the window's end.
                self.carry_len = 0;
                self.keep(win, start, start + len as u64);
                Parsed::Wait
            }
            // Inside a frame its rest is copied; at a frame start the framing is in doubt.
            Err(_) => self.unparsed(),
        }
    }

    /// Carries the window's bytes from `at` to `end` (the window starts at `start`).
    #[inline(always)]
    fn keep(&mut self, win: &[u8; WINDOW], start: u64, end: u64) -> Parsed {
        let n = end.saturating_sub(self.at);
        if n >= FRESH as u64 || self.at < start {
            return self.unparsed();
        }
        // `from + n <= FRESH`: the field lies in the window's first half. All FRESH bytes
        // from `from` are carried (the ones past `n` are never read), unconditionally, for
        // the reason given in `load`.
        let from = opaque((self.at - start) as usize) & (FRESH - 1);
        self.carry.copy_from_slice(&win[from..from + FRESH]);
        self.carry_len = n as u32;
        Parsed::Moved
    }

    /// The rest of the frame is copied whole; the walk resumes at the next frame.
    #[inline(always)]
    pub fn unparsed(&mut self) -> Parsed {
        self.carry_len = 0;
        self.value_end = 0;
        self.value_start = 0;
        if self.at_frame_start() || self.frame_end < self.at {
            return self.stop();
        }
        self.jump(self.frame_end, self.frame_state());
        Parsed::Unparsed
    }

    /// The walk stops: the stream is copied whole from now on.
    #[inline(always)]
    pub fn stop(&mut self) -> Parsed {
        self.state = state::OFF;
        self.carry_len = 0;
        self.value_end = 0;
        self.value_start = 0;
        Parsed::Stopped
    }

    /// Produce requests use the flexible encoding (compact lengths, tagged fields) from v9,
    /// Fetch responses from v12.
    #[inline(always)]
    fn flexible(&self) -> bool {
        if self.side == side::RESPONSES {
            self.version >= 12
        } else {
            self.version >= 9
        }
    }

    /// `tags` in the flexible versions (a tagged-field section comes first), else `plain`.
    #[inline(always)]
    fn tags_then(&self, tags: u8, plain: u8) -> u8 {
        if self.flexible() { tags } else { plain }
    }

    /// Moves on to the field at `to` (the bytes before it copied, but a value set to skip).
    #[inline(always)]
    fn jump(&mut self, to: u64, next: u8) {
        self.at = to;
        self.state = next;
    }

    /// Moves past the field's bytes read, copying them.
    #[inline(always)]
    fn moved(&mut self, c: &Cur<'_>, next: u8) {
        self.jump(self.at + c.i as u64, next);
    }

    fn frame(&mut self, c: &mut Cur<'_>, fetches: &mut InFlight) -> Result<(), Miss> {
        let size = c.i32()?;
        if size < 8 || size as u64 > MAX_FRAME {
            return Err(Miss::Bad);
        }
        let api_key = c.i16()?;
        let version = c.i16()?;
        let correlation_id = c.i32()?;
        let frame_end = self.at + 4 + size as u64;
        if api_key != PRODUCE || !(3..=13).contains(&version) {
            // Not a request the walk follows (or a version it does not know): copied whole.
            if api_key == FETCH && FETCH_VERSIONS.contains(&version) {
                fetches.note(correlation_id, version as u8);
            }
            self.frame_end = frame_end;
            self.jump(frame_end, state::FRAME);
            return Ok(());
        }
        // The client id: a nullable string with an i16 length in every header version.
        let client_id = c.length(false, false)?;
        let body = self.at + c.i as u64 + client_id;
        if body > frame_end {
            return Err(Miss::Bad);
        }
        self.frame_end = frame_end;
        self.version = version as u8;
        let next = self.tags_then(state::HEADER_TAGS, state::PRODUCE);
        self.jump(body, next);
        Ok(())
    }

    /// A response frame: followed when it answers a Fetch request the request walk noted.
    fn response(&mut self, c: &mut Cur<'_>, fetches: &InFlight) -> Result<(), Miss> {
        let size = c.i32()?;
        if size < 4 || size as u64 > MAX_FRAME {
            return Err(Miss::Bad);
        }
        let correlation_id = c.i32()?;
        self.frame_end = self.at + 4 + size as u64;
        let Some(version) = fetches.fetch_version(correlation_id) else {
            self.jump(self.frame_end, state::RESPONSE);
            return Ok(());
        };
        self.version = version;
        let next = self.tags_then(state::RESPONSE_TAGS, state::FETCH);
        self.moved(c, next);
        Ok(())
    }

    fn fetch(&mut self, c: &mut Cur<'_>) -> Result<(), Miss> {
        c.skip(4)?; // throttle time
        if self.version >= 7 {
            c.skip(6)?; // error code, session id
        }
        self.acks_done(c)
    }

    fn produce(&mut self, c: &mut Cur<'_>) -> Result<(), Miss> {
        let txn = c.length(self.flexible(), false)?;
        if c.i as u64 + txn + 11 <= FRESH as u64 {
            c.skip(txn)?;
            return self.acks(c);
        }
        // A long transactional id: copied, the rest read after it.
        let to = self.at + c.i as u64 + txn;
        self.jump(to, state::ACKS);
        Ok(())
    }

    fn acks(&mut self, c: &mut Cur<'_>) -> Result<(), Miss> {
        c.skip(6)?; // acks, timeout
        self.acks_done(c)
    }

    /// The topic count that ends a Produce request's and a Fetch response's top-level fields.
    fn acks_done(&mut self, c: &mut Cur<'_>) -> Result<(), Miss> {
        let topics = c.length(self.flexible(), true)?;
        self.topics = topics.min(u32::MAX as u64) as u32;
        self.moved(c, state::TOPIC);
        Ok(())
    }

    fn topic(&mut self, c: &mut Cur<'_>) -> Result<(), Miss> {
        if self.topics == 0 {
            // The frame's tagged fields, if any: copied to its end.
            self.jump(self.frame_end, self.frame_state());
            return Ok(());
        }
        let name = if self.version >= 13 {
            16
        } else {
            c.length(self.flexible(), false)?
        };
        if c.i as u64 + name + 5 <= FRESH as u64 {
            c.skip(name)?;
            return self.partitions(c);
        }
        // A long name: copied, the partition count read after it.
        let to = self.at + c.i as u64 + name;
        self.jump(to, state::PARTITIONS);
        Ok(())
    }

    fn partitions(&mut self, c: &mut Cur<'_>) -> Result<(), Miss> {
        let partitions = c.length(self.flexible(), true)?;
        self.topics -= 1;
        self.partitions = partitions.min(u32::MAX as u64) as u32;
        self.moved(c, state::PARTITION);
        Ok(())
    }

    fn partition(&mut self, c: &mut Cur<'_>) -> Result<(), Miss> {
        if self.partitions == 0 {
            if self.flexible() {
                c.no_tags()?; // the topic's
            }
            self.moved(c, state::TOPIC);
            return Ok(());
        }
        c.skip(4)?; // partition index
        if self.side == side::REQUESTS {
            return self.records_field(c);
        }
        // Error code, high watermark, last stable offset, log start offset (v5+).
        c.skip(if self.version >= 5 { 26 } else { 18 })?;
        let aborted = c.length(self.flexible(), true)?;
        if aborted > 0 {
            // Read one per step: a flexible entry's tagged fields tell its length.
            self.records = aborted.min(u32::MAX as u64) as u32;
            self.moved(c, state::ABORTED);
            return Ok(());
        }
        self.fetched(c)
    }

    /// An aborted transaction of a fetched partition, or after the last, what follows them.
    fn aborted(&mut self, c: &mut Cur<'_>) -> Result<(), Miss> {
        if self.records == 0 {
            return self.fetched(c);
        }
        c.skip(16)?; // producer id, first offset
        if self.flexible() {
            c.no_tags()?;
        }
        self.records -= 1;
        self.moved(c, state::ABORTED);
        Ok(())
    }

    /// A fetched partition's fields after its aborted transactions.
    fn fetched(&mut self, c: &mut Cur<'_>) -> Result<(), Miss> {
        if self.version >= 11 {
            c.skip(4)?; // preferred read replica
        }
        self.records_field(c)
    }

    /// A partition's records size, which ends its fields before the records.
    fn records_field(&mut self, c: &mut Cur<'_>) -> Result<(), Miss> {
        let size = c.length(self.flexible(), true)?;
        let records_end = self.at + c.i as u64 + size;
        if records_end > self.frame_end {
            return Err(Miss::Bad);
        }
        self.partitions -= 1;
        self.records_end = records_end;
        self.moved(c, state::BATCH);
        Ok(())
    }

    fn batch(&mut self, c: &mut Cur<'_>) -> Result<(), Miss> {
        if self.at >= self.records_end {
            let next = self.tags_then(state::PARTITION_TAGS, state::PARTITION);
            self.jump(self.at, next);
            return Ok(());
        }
        if self.records_end - self.at < BATCH_HEADER {
            return self.cut_batch();
        }
        c.skip(8)?; // base offset
        let length = c.i32()?;
        c.skip(4)?; // partition leader epoch
        let magic = c.u8()?;
        c.skip(4)?; // crc
        let attributes = c.i16()?;
        c.skip(4 + 8 + 8 + 8 + 2 + 4)?; // last offset delta .. base sequence
        let count = c.i32()?;
        let end = self.at + 12 + length as u64;
        if length < (BATCH_HEADER - 12) as i32 || magic != 2 {
            return Err(Miss::Bad);
        }
        if end > self.records_end {
            return self.cut_batch();
        }
        self.batch_end = end;
        let records = (length as u64).saturating_sub(BATCH_HEADER - 12);
        let compressed = attributes & 7 != 0;
        let headers = match self.policy {
            policy::NONE => false,
            policy::UNCOMPRESSED => !compressed,
            _ => true,
        };
        if !headers && records >= MIN_SKIP {
            // Only the header is copied: the records are skipped whole, their headers unread.
            self.value_start = self.at + BATCH_HEADER;
            self.value_end = end;
            self.jump(end, state::BATCH);
            return Ok(());
        }
        if compressed || count <= 0 || records / (count as u64) < MIN_WALKED_RECORD {
            // Compressed (its record headers are in the compressed bytes), empty, or of records
            // too small for a walk to save more than it costs: whole.
            self.jump(end, state::BATCH);
            return Ok(());
        }
        self.records = count as u32;
        self.moved(c, state::RECORD);
        Ok(())
    }

    /// A batch that runs past its records field: a fetch response's last batch, cut by the
    /// broker's size limit, is copied as it is; in a request it makes no sense.
    fn cut_batch(&mut self) -> Result<(), Miss> {
        if self.side != side::RESPONSES {
            return Err(Miss::Bad);
        }
        self.jump(self.records_end, state::BATCH);
        Ok(())
    }

    fn record(&mut self, c: &mut Cur<'_>) -> Result<(), Miss> {
        if self.records == 0 || self.at >= self.batch_end {
            // Anything after the last record is copied with it.
            self.jump(self.batch_end, state::BATCH);
            return Ok(());
        }
        let length = c.varint(5)?;
        let end = self.at + c.i as u64 + length;
        if length == 0 || end > self.batch_end {
            return Err(Miss::Bad);
        }
        c.skip(1)?; // attributes
        c.varint(10)?; // timestamp delta
        c.varint(5)?; // offset delta
        let key = c.varint(5)?;
        let key_end = self.at + c.i as u64 + key;
        if key_end > end {
            return Err(Miss::Bad);
        }
        if c.i as u64 + key + 5 > FRESH as u64 {
            // A long key: copied, the value length read after it.
            self.record_end = end;
            self.records -= 1;
            self.jump(key_end, state::VALUE_LEN);
            return Ok(());
        }
        c.skip(key)?;
        let value = c.varint(5)?;
        self.record_end = end;
        self.records -= 1;
        self.value_at(self.at + c.i as u64, value)
    }

    /// A record's value length, after a long key.
    fn value(&mut self, c: &mut Cur<'_>) -> Result<(), Miss> {
        let value = c.varint(5)?;
        self.value_at(self.at + c.i as u64, value)
    }

    /// A value of `value` bytes from `start`: skipped when long enough to be worth it.
    fn value_at(&mut self, start: u64, value: u64) -> Result<(), Miss> {
        if start + value > self.record_end {
            return Err(Miss::Bad);
        }
        if value >= MIN_SKIP {
            self.value_start = start;
            self.value_end = start + value;
        }
        // The next record is parsed where this one ends; the value is skipped on the way.
        self.jump(self.record_end, state::RECORD);
        Ok(())
    }

    /// Walks one segment held in memory, from stream position `pos`, as the kernel walks a
    /// segment of user memory step by step: each copied or skipped part goes to `out`, in
    /// order. Returns the steps that copied a frame whole or stopped the walk. For the
    /// daemon's tests and fuzzing, which run the kernel's rule over recorded streams.
    pub fn walk<'a>(
        &mut self,
        mut pos: u64,
        seg: &'a [u8],
        fetches: &mut InFlight,
        out: &mut dyn FnMut(Part<'a>),
    ) -> u64 {
        let mut gave_up = 0;
        let mut i = 0;
        while i < seg.len() {
            let avail = (seg.len() - i) as u64;
            match self.plan(pos) {
                Plan::Parse => {
                    let mut win = [0u8; WINDOW];
                    self.load(&mut win);
                    let fresh = if avail < FRESH as u64 {
                        avail as usize
                    } else {
                        FRESH
                    };
                    let at = self.carry_len as usize;
                    win[at..at + fresh].copy_from_slice(&seg[i..i + fresh]);
                    let outcome = self.step(&win, fresh, avail > fresh as u64, fetches);
                    if matches!(outcome, Parsed::Unparsed | Parsed::Stopped) {
                        gave_up += 1;
                    }
                }
                Plan::Skip(n) => {
                    let n = if n < avail { n } else { avail };
                    out(Part::Skip(n));
                    pos += n;
                    i += n as usize;
                }
                Plan::Copy(n) => {
                    let n = if n < avail { n } else { avail } as usize;
                    out(Part::Copy(&seg[i..i + n]));
                    pos += n as u64;
                    i += n;
                }
            }
        }
        gave_up
    }
}
