//! When a record wakes the daemon. The ring buffer's default wakes its reader for every record
//! once the reader has caught up, which at a steady load is nearly every record: the daemon's
//! cost there was scheduling, not bytes. Here a record wakes it only when the last wake-up is
//! [`WAKE_INTERVAL_NS`] old, or [`MARK_WAKE_SPACING_NS`] old with the unread bytes past
//! `Config::wake_bytes`; the daemon reads again [`WAKE_INTERVAL_NS`] after every read that found
//! records, which collects the rest.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::Array,
};
use tracer_common::{MARK_WAKE_SPACING_NS, WAKE_INTERVAL_NS};

use super::*;

/// Wake the daemon at once (rare records it should act on without delay).
pub(crate) const NOW: u64 = BPF_RB_FORCE_WAKEUP as u64;

/// When the daemon was last woken (`bpf_ktime_get_ns`), one slot shared by every CPU: a race
/// between two CPUs only costs an extra wake-up.
#[map]
static LAST_WAKE: Array<u64> = Array::with_max_entries(1, 0);

/// The ring-buffer flags for the record about to be submitted.
#[inline(always)]
pub(crate) fn flags() -> u64 {
    let Some(last) = LAST_WAKE.get_ptr_mut(0) else {
        return NOW;
    };
    // SAFETY: helper without arguments; `last` points into the map's one value.
    let now = unsafe { bpf_ktime_get_ns() };
    let since = now.wrapping_sub(unsafe { *last });
    let due = since >= WAKE_INTERVAL_NS
        || (since >= MARK_WAKE_SPACING_NS
            && EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= config().wake_bytes as u64);
    if due {
        unsafe { *last = now };
        NOW
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
