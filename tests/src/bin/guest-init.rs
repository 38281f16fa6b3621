//! PID 1 of the qemu guests that run the capture tests on older kernels (see
//! `tests::guest`): mounts what the tracer reads (proc, sysfs, tracefs, cgroup2),
//! brings the loopback interface up, runs each command of `/guest-commands` (one per line,
//! arguments separated by tabs) with its output on the console, prints a marker line with each
//! exit code, and powers the machine off. Nothing else runs in the guest.

use std::{ffi::CString, process::Command};

/// Where the host test writes the commands.
const COMMANDS: &str = "/guest-commands";

fn mount(fstype: &str, target: &str) {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).expect("no NUL");
    let (src, dst, ty) = (c(fstype), c(target), c(fstype));
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        println!(
            "kt-guest: mounting {fstype} at {target}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// `ip link set lo up`, by ioctl.
fn loopback_up() {
    // SAFETY: a plain socket for the ioctl, closed below; ifreq is zeroed and named.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as i16;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
            println!("kt-guest: lo up: {}", std::io::Error::last_os_error());
        }
        libc::close(fd);
    }
}

fn main() {
    mount("proc", "/proc");
    mount("sysfs", "/sys");
    mount("devtmpfs", "/dev");
    mount("tracefs", "/sys/kernel/tracing");
    mount("cgroup2", "/sys/fs/cgroup");
    mount("bpf", "/sys/fs/bpf");
    // The initramfs is writable already; a tmpfs on /tmp would hide files kept under it (a
    // checkout in /tmp holds the test binaries there).
    let _ = std::fs::create_dir_all("/tmp");
    loopback_up();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kt-guest: up, Linux {}", release.trim());
    let commands = std::fs::read_to_string(COMMANDS).unwrap_or_default();
    for (i, line) in commands.lines().filter(|l| !l.is_empty()).enumerate() {
        let mut args = line.split('\t');
        let program = args.next().unwrap_or_default();
        println!("kt-guest: run {i} {}", line.replace('\t', " "));
        let code = match Command::new(program)
            .args(args)
            .env("PATH", "/bin:/usr/bin")
            .env("TMPDIR", "/tmp")
            .env("RUST_BACKTRACE", "1")
            .status()
        {
            Ok(s) => s.code().unwrap_or(-1),
            Err(e) => {
                println!("kt-guest: starting {program}: {e}");
                -2
            }
        };
        println!("kt-guest: exit {i} {code}");
    }
    println!("kt-guest: done");
    // SAFETY: sync and power off; PID 1 has nothing left to do.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}
