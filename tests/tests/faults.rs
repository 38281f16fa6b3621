//! The tracer stopped as an orchestrator stops it: SIGTERM must flush and detach everything it
//! loaded, and even SIGKILL must leave no eBPF program or map behind (the kernel frees them
//! with the process's last descriptor). Checked with bpftool, by the ids the tracer's own
//! programs and maps had while it ran. Its own test binary: no other tracer loads programs
//! meanwhile.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use tests::{Broker, tracer::Tracer};

/// Ids of the loaded eBPF programs (`prog`) or maps (`map`).
fn ids(kind: &str) -> BTreeSet<u64> {
    let out = std::process::Command::new("bpftool")
        .args([kind, "show", "--json"])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

#[test]
fn sigterm_and_sigkill_leave_no_program_or_map_behind() {
    let broker = Broker::start().unwrap();
    for (signal, name) in [(libc::SIGTERM, "sigterm"), (libc::SIGKILL, "sigkill")] {
        let (progs_before, maps_before) = (ids("prog"), ids("map"));
        let mut tracer = Tracer::start(broker.port, name);
        let progs: BTreeSet<u64> = ids("prog").difference(&progs_before).copied().collect();
        let maps: BTreeSet<u64> = ids("map").difference(&maps_before).copied().collect();
        assert!(
            progs.len() >= 10 && !maps.is_empty(),
            "{name}: {progs:?} {maps:?}"
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(tracer.child.id() as i32, signal) };
        let status = tracer.child.wait().unwrap();
        if signal == libc::SIGTERM {
            assert!(status.success(), "SIGTERM: a clean exit, got {status}");
        }
        // The kernel frees them once the last reference is gone (RCU: not always at once).
        let end = Instant::now() + Duration::from_secs(10);
        let left = loop {
            let left_progs: Vec<u64> = ids("prog").intersection(&progs).copied().collect();
            let left_maps: Vec<u64> = ids("map").intersection(&maps).copied().collect();
            if (left_progs.is_empty() && left_maps.is_empty()) || Instant::now() > end {
                break (left_progs, left_maps);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(
            left,
            (vec![], vec![]),
            "{name}: programs and maps left behind"
        );
    }
}
