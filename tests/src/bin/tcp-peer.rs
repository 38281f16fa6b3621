//! A TCP client in its own process for the capture tests: connects to ADDR, sends the messages
//! of side 1 (write, writev, sendmsg), shuts down its write side, reads the reply to the end with
//! read/recvmsg and prints how many bytes it got.

use std::{io::Write as _, net::TcpStream, os::fd::AsRawFd as _};

fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: tcp-peer ADDR"))?;
    let stream = TcpStream::connect(&addr)?;
    let fd = stream.as_raw_fd();
    let (msgs, _) = tests::messages(1);
    for (call, data) in &msgs {
        tests::send_all(fd, *call, data)?;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let reply = tests::read_to_end_alternating(fd)?;
    let (_, expected) = tests::messages(2);
    anyhow::ensure!(reply == expected, "reply differs from what the server sent");
    writeln!(std::io::stdout(), "received {}", reply.len())?;
    Ok(())
}
