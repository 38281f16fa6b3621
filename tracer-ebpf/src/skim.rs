//! The selective copy: on a walked connection's streams, the copy walk asks the shared rule
//! (`tracer_common::skim`) what each stream position holds, copies what decoding needs and
//! skips record values, writing the record as runs (`flags::RUNS`) so that every skipped byte
//! is a known gap for the daemon. The stream's walk state and the connection's Fetch requests
//! are copied into the per-CPU scratch for the syscall (map values are opaque to the verifier,
//! see `Scratch`) and back at its end; only the request walk writes the Fetch requests.

use tracer_common::skim::{FRESH, Parsed, Plan, RUN_HEADER, state};

use super::{
    copy::{NO_RUN, Walk, flush, opaque, settle, stage},
    *,
};

/// Staged bytes a record's runs may fill: room is kept for the run header of a skip still
/// pending when the record is sent.
const LIMIT: u64 = (CHUNK_SIZE - RUN_HEADER) as u64;

/// Starts the syscall's walk with the stream's state. A syscall past the copy cap cannot be
/// followed (its end is not seen): the walk stops and the stream is copied from then on. Not
/// inlined, as `end` is not: the syscall exit's own frame is in the longest call chain
/// (exit, connect's setup, open, its record), which older verifiers hold to 512 bytes.
#[inline(never)]
pub(crate) fn begin(s: *mut Scratch, key: u64, truncated: bool, responses: bool) {
    let Some(m) = SKIMS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: a map value and the per-CPU scratch, valid for this program run.
    unsafe {
        let sk = if responses {
            &raw mut (*m).responses
        } else {
            &raw mut (*m).requests
        };
        if (*sk).state == state::OFF {
            return;
        }
        if truncated {
            (*sk).stop();
            count(counter::SKIM_STOPPED_STREAMS, 1);
            return;
        }
        core::ptr::copy_nonoverlapping(sk, &raw mut (*s).skim, 1);
        core::ptr::copy_nonoverlapping(&raw const (*m).fetches, &raw mut (*s).fetches, 1);
        (*s).skim.policy = core::ptr::read_volatile(&raw const CONFIG.skim) as u8;
        (*s).walk.skim_on = 1 + responses as u64;
        (*s).hdr.flags |= flags::RUNS;
    }
}

/// Ends the syscall's walk: the state goes back to the stream's entry (and, from the request
/// walk, the Fetch requests it noted). A walk that did not reach the syscall's end (a full ring
/// buffer) has lost its place: it stops.
#[inline(never)]
pub(crate) fn end(s: *mut Scratch, incomplete: bool) {
    // SAFETY: per-CPU scratch.
    let (sk, key, responses) =
        unsafe { (&mut (*s).skim, (*s).hdr.conn_key, (*s).walk.skim_on == 2) };
    if incomplete && sk.state != state::OFF {
        sk.stop();
        count(counter::SKIM_STOPPED_STREAMS, 1);
    }
    let Some(m) = SKIMS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: a map value, valid for this program run, and the per-CPU scratch.
    unsafe {
        if responses {
            core::ptr::copy_nonoverlapping(sk, &raw mut (*m).responses, 1);
        } else {
            core::ptr::copy_nonoverlapping(sk, &raw mut (*m).requests, 1);
            core::ptr::copy_nonoverlapping(&raw const (*s).fetches, &raw mut (*m).fetches, 1);
        }
    }
}

/// One step of a walked syscall: parse a field, skip, or copy a run. Returns 1 to stop.
#[inline(always)]
pub(crate) fn step(s: *mut Scratch, w: &mut Walk) -> i64 {
    let avail = if w.seg_rem < w.cap_left {
        w.seg_rem
    } else {
        w.cap_left
    };
    if avail == 0 {
        flush(s, w);
        return 1;
    }
    // SAFETY: per-CPU scratch.
    let (sk, pos) = unsafe {
        (
            &mut (*s).skim,
            (*s).hdr.stream_offset + w.chunk_start + w.covered,
        )
    };
    match sk.plan(pos) {
        Plan::Parse => {
            skim_parse(avail);
            0
        }
        Plan::Skip(n) => {
            let n = if n < avail { n } else { avail };
            w.advance(n);
            w.skipped += n;
            w.covered += n;
            count(counter::SKIPPED_BYTES, n);
            if w.cap_left == 0 {
                flush(s, w);
                return 1;
            }
            0
        }
        Plan::Copy(n) => copy_run(s, w, if n < avail { n } else { avail }),
    }
}

/// Reads the window at the walk's position (the carry, then up to `FRESH` bytes of the
/// segment, `avail` of which are left) and lets the rule take its step.
///
/// A global function, so the verifier checks it once, on its own, with nothing known of the
/// scratch, instead of once for every path of the copy walk that reaches a parse: the rule's
/// branches times the walk's were past the 1M-instruction budget on Linux 6.18.44. It takes
/// and returns plain integers (what a global function may) and finds the scratch itself.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn skim_parse(avail: u64) -> u64 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch; `walk`, `skim`, `fetches` and `win` are distinct fields.
    let (w, sk, fetches, win) =
        unsafe { (&(*s).walk, &mut (*s).skim, &mut (*s).fetches, &mut (*s).win) };
    sk.load(win);
    let fresh = opaque(if avail < FRESH as u64 {
        avail
    } else {
        FRESH as u64
    });
    if fresh > FRESH as u64 {
        return 0;
    }
    let at = sk.carry_len as usize & (FRESH - 1);
    // SAFETY: at < FRESH and fresh <= FRESH, inside the 2 * FRESH window.
    let rc = unsafe {
        probe_read_user_raw(
            win.as_mut_ptr().add(at) as *mut c_void,
            fresh as u32,
            w.base as *const c_void,
        )
    };
    let outcome = if rc != 0 {
        // Unreadable: the copy records the loss; the walk cannot read what it needs.
        sk.stop()
    } else {
        sk.step(win, fresh as usize, avail > fresh, fetches)
    };
    match outcome {
        Parsed::Unparsed => count(counter::SKIM_UNPARSED_FRAMES, 1),
        Parsed::Stopped => count(counter::SKIM_STOPPED_STREAMS, 1),
        Parsed::Moved | Parsed::Wait => {}
    }
    0
}

/// Copies up to `n` bytes of the segment into the open run (opening one after a skip).
#[inline(always)]
fn copy_run(s: *mut Scratch, w: &mut Walk, n: u64) -> i64 {
    if w.run_at == NO_RUN || w.skipped > 0 {
        if w.fill + RUN_HEADER as u64 + 1 > LIMIT {
            flush(s, w);
            if w.failed != 0 {
                return 1;
            }
        }
        w.run_at = run_header(s, w);
        w.run_len = 0;
    }
    let room = LIMIT - w.fill;
    let n = if n < room { n } else { room };
    let Some(rc) = stage(s, w, n) else {
        return 1;
    };
    if rc == 0 {
        // The run's length is written before `settle` may send the record.
        w.run_len += n;
        // SAFETY: per-CPU scratch.
        let d = unsafe { &mut (*s).data };
        put_u16(
            d,
            (w.run_at & (CHUNK_SIZE as u64 - 1)) as usize,
            w.run_len as u16,
        );
    }
    // Full once no run of a byte fits any more.
    settle(s, w, n, rc, LIMIT - RUN_HEADER as u64 - 1)
}

/// Writes a run header at `fill`, for the bytes skipped since the last run and a length of 0
/// for now; returns where that length is.
#[inline(always)]
fn run_header(s: *mut Scratch, w: &mut Walk) -> u64 {
    let at = (w.fill & (CHUNK_SIZE as u64 - 1)) as usize;
    // SAFETY: per-CPU scratch; fill <= LIMIT, so the header is inside the data array.
    let d = unsafe { &mut (*s).data };
    put_u32(d, at, w.skipped as u32);
    put_u16(d, at + 4, 0);
    w.fill += RUN_HEADER as u64;
    w.skipped = 0;
    (at + 4) as u64
}

/// Before a record is sent: a skip still pending becomes a run of no bytes, and the next
/// record starts a run of its own.
#[inline(always)]
pub(crate) fn close_runs(s: *mut Scratch, w: &mut Walk) {
    if w.skipped > 0 {
        run_header(s, w);
    }
    w.run_at = NO_RUN;
    w.run_len = 0;
}

#[inline(always)]
fn put_u16(d: &mut [u8; 2 * CHUNK_SIZE], at: usize, v: u16) {
    let at = at & (CHUNK_SIZE - 1);
    d[at] = v as u8;
    d[at + 1] = (v >> 8) as u8;
}

#[inline(always)]
fn put_u32(d: &mut [u8; 2 * CHUNK_SIZE], at: usize, v: u32) {
    let at = at & (CHUNK_SIZE - 1);
    d[at] = v as u8;
    d[at + 1] = (v >> 8) as u8;
    d[at + 2] = (v >> 16) as u8;
    d[at + 3] = (v >> 24) as u8;
}
