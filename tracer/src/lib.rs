//! kafka-tracer: traces Apache Kafka traffic from the kernel with eBPF.
//!
//! One module per pipeline stage, data flowing one way:
//! `capture` (kernel programs, ring buffer) -> `reassembly` (byte streams, frames) -> `kafka`
//! (wire decoding, request/response pairing); `pipeline` runs those userspace stages per
//! connection and `daemon` drives it all for the `kafka-tracer` binary.

pub mod btf;
pub mod capture;
pub mod cli;
pub mod correlate;
pub mod counters;
pub mod daemon;
pub mod export;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod reassembly;
pub mod spans;
