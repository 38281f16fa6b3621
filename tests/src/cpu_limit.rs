//! A CPU limit for a process under test (the starved-tracer test): a cgroup whose CPU quota is a
//! fraction of one core, on cgroup v2 (`cpu.max`) where its `cpu` controller is available, else
//! on cgroup v1's `cpu` hierarchy (`cpu.cfs_quota_us`), as hybrid hosts such as this machine
//! have it. Removed on drop, once its processes have gone.

use std::path::{Path, PathBuf};

use crate::mount_point;

use anyhow::{Context as _, bail};

/// Scheduler period of the quota, microseconds.
const PERIOD_US: u64 = 100_000;

pub struct CpuLimit {
    dir: PathBuf,
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

impl CpuLimit {
    /// A new cgroup named `name` limited to `fraction` of one core.
    pub fn new(name: &str, fraction: f64) -> anyhow::Result<Self> {
        let quota = ((PERIOD_US as f64 * fraction) as u64).max(1000);
        let name = format!("kafka-tracer-{name}-{}", std::process::id());
        if let Some(root) = mount_point("cgroup2", None)
            && std::fs::read_to_string(root.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "cpu"))
        {
            write(&root.join("cgroup.subtree_control"), "+cpu")?;
            let dir = root.join(name);
            std::fs::create_dir_all(&dir)?;
            write(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
            return Ok(Self { dir });
        }
        let Some(root) = mount_point("cgroup", Some("cpu")) else {
            bail!("no cgroup v2 cpu controller and no cgroup v1 cpu hierarchy to limit CPU with");
        };
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
        write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
        Ok(Self { dir })
    }

    /// A command prefix that runs the command after it inside the limit (for
    /// `Tracer::start_wrapped`).
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "sh".into(),
            "-c".into(),
            format!(
                "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                self.dir.display()
            ),
        ]
    }

    /// In how many scheduler periods the limit held the cgroup's processes back (`cpu.stat`'s
    /// `nr_throttled`, on v1 and v2): whether the limit bit at all.
    pub fn throttled_periods(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("cpu.stat"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("nr_throttled ")
                        .and_then(|v| v.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // Its last process may still be exiting.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
