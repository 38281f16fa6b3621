//! kafka-tracer: traces Apache Kafka traffic from the kernel with eBPF.
//!
//! One module per pipeline stage, data flowing one way:
//! `capture` (kernel programs, ring buffer) -> `reassembly` (byte streams) -> `kafka` (wire
//! decoding), with `daemon` wiring them together for the `kafka-tracer` binary.

pub mod btf;
pub mod capture;
pub mod cli;
pub mod daemon;
pub mod kafka;
pub mod reassembly;
